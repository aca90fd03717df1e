//! Image speed on the CPU: encoding one 896 × 896 image with a SigLIP tower
//! of MedGemma's real shapes (27 layers, width 1152, MLP 4304, 16 heads:
//! 417M parameters, random weights), and the time to first token of one image
//! plus a 100-token question through the real Gemma 3 270M decoder (its
//! projector, random, maps to the 270M's width 640).
//!
//! ```text
//! cargo run --release -p medgemma-model --example vision_speed -- [GGUF] [RUNS, default 2]
//! ```
//!
//! GGUF defaults to `$MEDGEMMA_ASSETS/gemma-3-270m/gemma-3-270m-q4_k_m.gguf`
//! (`scripts/fetch-assets.sh`). The first run includes one-time costs
//! (allocator warm-up); the others are steady state. Time to first token =
//! preprocessing (decode + resize + normalise of a PNG) + encode + prefill
//! of the 360-token prompt (100 text tokens, one 260-token image block) in
//! 512-token chunks + the first greedy token.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::path::PathBuf;
use std::time::Instant;

use medgemma_model::backend::{cpu_device, cpu_dtype};
use medgemma_model::burn::tensor::DType;
use medgemma_model::gemma3::Logits;
use medgemma_model::generate::PREFILL_CHUNK;
use medgemma_model::image::{self, Limits};
use medgemma_model::load::load_model;
use medgemma_model::vision::{ImagePrefill, VisionConfig, VisionTower};

/// A 1024 × 768 PNG made here (a smooth pattern): decoding it is part of the
/// measured preprocessing.
fn test_png() -> Vec<u8> {
    let (w, h) = (1024u32, 768u32);
    let mut buf = Vec::new();
    let pixels: Vec<u8> = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    (x % 256) as u8,
                    (y % 256) as u8,
                    ((x / 7 + y / 5) % 256) as u8,
                ]
            })
        })
        .collect();
    let enc = ::image::codecs::png::PngEncoder::new(&mut buf);
    ::image::ImageEncoder::write_image(enc, &pixels, w, h, ::image::ExtendedColorType::Rgb8)
        .expect("PNG encoding of a generated image");
    buf
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// CPU seconds this process has used (user + system, `/proc/self/stat`):
/// on a shared machine wall time also counts other processes' turns, so
/// CPU time / threads bounds what an idle machine would take.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'), from the state:
    // utime is the 12th and stime the 13th, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gguf = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let dir = std::env::var_os("MEDGEMMA_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/medgemma-assets")
            });
        dir.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
    });
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let device = cpu_device();
    let dtype: DType = cpu_dtype();
    println!(
        "CPU: {} threads (rayon), dtype {dtype:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Encode one 896 × 896 image with the real tower shapes.
    let cfg = VisionConfig::medgemma_4b();
    let t = Instant::now();
    let tower = VisionTower::random(&cfg, &device, dtype, 7);
    println!(
        "tower: {} layers, width {}, MLP {}, {} heads, {:.1}M parameters (random), built in {:.0} ms",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.parameter_count() as f64 / 1e6,
        ms(t)
    );
    let png = test_png();
    for run in 0..runs {
        let t = Instant::now();
        let pv = image::preprocess(&png, &Limits::default()).expect("generated PNG decodes");
        let pre = ms(t);
        let (t, c) = (Instant::now(), cpu_s());
        let rows = tower.encode(&[pv]).expect("896 image");
        let _ = rows.into_data(); // wait for the result
        println!(
            "run {run}: preprocess (PNG 1024×768 → 896²) {pre:.1} ms, encode one 896×896 image {:.0} ms wall, {:.1} s CPU",
            ms(t),
            cpu_s() - c
        );
    }
    drop(tower);

    // 2. Time to first token: one image + a 100-token question, 270M decoder.
    let m = match load_model(&gguf, None, &device, dtype) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping time to first token: {e} (run scripts/fetch-assets.sh)");
            return;
        }
    };
    let text_cfg = m.model.config().clone();
    let mut vcfg = VisionConfig::medgemma_4b();
    vcfg.text_hidden_size = text_cfg.hidden_size;
    let tower = VisionTower::random(&vcfg, &device, dtype, 8);
    let tok = m
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    // 100 question tokens from ordinary text, the image block before them.
    let mut question = tok
        .encode_plain(&"Describe the findings on this chest radiograph and whether they suggest an acute process. ".repeat(8))
        .expect("tokenizes");
    question.truncate(100);
    let img = vcfg.image_tokens();
    let mut ids = vec![text_cfg.bos_token_id, 105];
    ids.extend(tok.encode_plain("user\n").expect("tokenizes"));
    ids.extend([108, img.start]);
    ids.extend(std::iter::repeat_n(img.soft, img.per_image));
    ids.extend([img.end, 108]);
    ids.extend(&question);
    ids.push(106);
    ids.extend(tok.encode_plain("\n").expect("tokenizes"));
    ids.push(105);
    ids.extend(tok.encode_plain("model\n").expect("tokenizes"));
    // The 270M's vocabulary has the image ids; nothing here depends on their embedding rows.
    println!(
        "decoder: {} ({} layers, width {}); prompt {} tokens ({} question + one image block of {})",
        gguf.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        text_cfg.num_layers(),
        text_cfg.hidden_size,
        ids.len(),
        question.len(),
        img.per_image + 4
    );
    for run in 0..runs {
        let (t0, c0) = (Instant::now(), cpu_s());
        let pv = image::preprocess(&png, &Limits::default()).expect("generated PNG decodes");
        let rows = tower.encode(&[pv]).expect("896 image");
        let _ = rows.clone().into_data();
        let enc = ms(t0);
        let t1 = Instant::now();
        let mut cache = m.model.new_cache();
        let mut pre =
            ImagePrefill::new(ids.clone(), rows, vcfg.image_token_index).expect("counts match");
        pre.run(&m.model, &mut cache, PREFILL_CHUNK);
        let last = pre.last_token().expect("non-empty prompt");
        let logits: Vec<f32> = m
            .model
            .forward(&[last], &mut cache, Logits::Last)
            .into_data()
            .try_into_vec()
            .unwrap_or_default();
        let first = logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        println!(
            "run {run}: time to first token {:.0} ms wall, {:.1} s CPU (preprocess + encode {enc:.0} ms, prefill + first token {:.0} ms; token {first})",
            ms(t0),
            cpu_s() - c0,
            ms(t1)
        );
    }
}
