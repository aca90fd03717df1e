//! CPU benchmark of one conversation: prefill of a fixed prompt, greedy
//! decode, peak memory. Prints numbers, judges nothing.
//!
//! ```text
//! cargo run --release -p medgemma-model --example cpu_bench -- \
//!     [--model GGUF_OR_DIR | --random-4b Q4_K|Q8_0|BF16|...] \
//!     [--cpu-weights as-stored|q8_0|f32] [--activations f32|q8_prompt|q8] \
//!     [--prompt-tokens 512] [--new-tokens 64] [--json]
//! ```
//!
//! `--random-4b` builds the MedGemma 4B text decoder's shapes with random
//! weights held in the given format (no checkpoint needed; the tokens are
//! noise). `--cpu-weights` is the loader's mode for a checkpoint
//! (`engine.cpu_weights`): as stored (default), bf16/f16/f32 matrices
//! quantized to Q8_0 at load, or everything dequantized to f32 (the engine
//! before the CPU kernels). `--activations` is `engine.cpu_activations`
//! (default f32; q8_prompt and q8 round activations to 8 bits for
//! integer products, for prompts or everywhere); the JSON says which ran.
//!
//! The model defaults to the real Gemma 3 270M Q4_K_M GGUF in
//! `$MEDGEMMA_ASSETS` (`scripts/fetch-assets.sh`). Threads: rayon's global
//! pool, all cores unless `RAYON_NUM_THREADS` says otherwise. The prompt is
//! `<bos>` and one clinical sentence repeated, the same ids
//! `scripts/bench/llamacpp_bench.py` feeds llama.cpp, so the two compare
//! (`scripts/bench-270m.sh`). One untimed 8-token run first, as llama.cpp's
//! side does. The `--json` line has the keys `scripts/bench-270m.sh` reads:
//! `load_s`, `prompt_tokens`, `new_tokens`, `threads`,
//! `prefill_tokens_per_s`, `decode_tokens_per_s`, `peak_rss_mib`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use medgemma_model::backend::{cpu_device, cpu_dtype};
use medgemma_model::config::Gemma3Config;
use medgemma_model::cpu::{Activations, set_activations};
use medgemma_model::gemma3::Gemma3;
use medgemma_model::generate::{Flow, GenerateOptions, generate};
use medgemma_model::load::load_model_with;
use medgemma_model::quant::GgmlType;
use medgemma_model::sampling::SamplingParams;
use medgemma_model::weights::CpuWeights;

/// One real clinical sentence in Gemma 3 ids (no `<bos>`), as in
/// `scripts/bench/llamacpp_bench.py`.
const SENTENCE_IDS: [u32; 45] = [
    12689, 34154, 65723, 128616, 563, 496, 17044, 77645, 529, 15886, 98310, 528, 837, 33086,
    170855, 3284, 11226, 19607, 506, 75143, 9548, 236764, 5830, 531, 63958, 37692, 236764, 496,
    23288, 16670, 528, 165025, 40330, 3136, 532, 236764, 10734, 236764, 1345, 236772, 17585, 29491,
    5933, 236761, 236743,
];

/// `<bos>` then the sentence repeated, `n` ids in all.
fn prompt(n: usize) -> Vec<u32> {
    let mut ids = vec![2u32];
    ids.extend(SENTENCE_IDS.iter().cycle().take(n.saturating_sub(1)));
    ids
}

/// Peak resident set size of this process in MiB (`VmHWM`, proc(5)).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time all threads of this process have run, in seconds: the sum of
/// `/proc/self/task/*/schedstat`'s run times (proc(5), nanoseconds). Unlike
/// wall time it does not grow while other processes hold the cores, so
/// runs on a busy machine still compare.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

struct Args {
    model: PathBuf,
    random_4b: Option<GgmlType>,
    cpu_weights: CpuWeights,
    activations: Activations,
    prompt_tokens: usize,
    new_tokens: usize,
    json: bool,
}

fn args() -> Args {
    let assets = std::env::var_os("MEDGEMMA_ASSETS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medgemma-assets"))
        })
        .unwrap_or_default();
    let mut a = Args {
        model: assets.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf"),
        random_4b: None,
        cpu_weights: CpuWeights::AsStored,
        activations: Activations::F32,
        prompt_tokens: 512,
        new_tokens: 64,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()),
            "--random-4b" => {
                a.random_4b = Some(match value().as_str() {
                    "Q4_0" => GgmlType::Q4_0,
                    "Q5_0" => GgmlType::Q5_0,
                    "Q8_0" => GgmlType::Q8_0,
                    "Q4_K" => GgmlType::Q4_K,
                    "Q5_K" => GgmlType::Q5_K,
                    "Q6_K" => GgmlType::Q6_K,
                    "BF16" => GgmlType::BF16,
                    other => panic!("unknown format {other}"),
                })
            }
            "--cpu-weights" => {
                a.cpu_weights = match value().as_str() {
                    "as-stored" => CpuWeights::AsStored,
                    "q8_0" => CpuWeights::Q8_0,
                    "f32" => CpuWeights::F32,
                    other => panic!("unknown --cpu-weights {other}"),
                }
            }
            "--activations" => {
                let v = value();
                a.activations = Activations::parse(&v)
                    .unwrap_or_else(|| panic!("unknown --activations {v}: f32, q8_prompt or q8"));
            }
            "--prompt-tokens" => a.prompt_tokens = value().parse().expect("a number"),
            "--new-tokens" => a.new_tokens = value().parse().expect("a number"),
            "--json" => a.json = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    set_activations(a.activations);
    let device = cpu_device();
    let t0 = Instant::now();
    let (model, mut opts, name) = match a.random_4b {
        Some(ty) => {
            let cfg = Gemma3Config::medgemma_4b();
            let model = Gemma3::random_cpu(&cfg, ty, 0).expect("random weights");
            let opts = GenerateOptions {
                max_new_tokens: a.new_tokens,
                sampling: SamplingParams::default(),
                stop_ids: cfg.eos_token_ids.clone(),
                ignore_eos: true,
                context_limit: cfg.max_position_embeddings,
                valid_vocab: cfg.vocab_size,
                suppressed: Vec::new(),
            };
            (model, opts, format!("random MedGemma 4B shapes, {ty:?}"))
        }
        None => {
            let m = load_model_with(&a.model, None, &device, cpu_dtype(), a.cpu_weights)
                .expect("the model loads");
            let opts = m.default_options(a.new_tokens, SamplingParams::default());
            (m.model, opts, a.model.display().to_string())
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = prompt(a.prompt_tokens)
        .into_iter()
        .map(|i| i % vocab)
        .collect();
    opts.ignore_eos = true;
    let cancel = AtomicBool::new(false);

    let mut warm = opts.clone();
    warm.max_new_tokens = 2;
    let _ = generate(
        &model,
        &mut model.new_cache(),
        &ids[..8.min(ids.len())],
        &warm,
        &cancel,
        |_| Flow::Continue,
    )
    .expect("warm-up runs");

    let cpu0 = cpu_seconds();
    let mut cpu_first = None;
    let g = generate(&model, &mut model.new_cache(), &ids, &opts, &cancel, |_| {
        cpu_first.get_or_insert_with(cpu_seconds);
        Flow::Continue
    })
    .expect("generation runs");
    let cpu_end = cpu_seconds();
    let cpu_first = cpu_first.unwrap_or(cpu_end);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let result = serde_json::json!({
        "runtime": "medgemma-model cpu_bench",
        "model": name,
        "cpu_weights": format!("{:?}", a.cpu_weights),
        "activations": a.activations.name(),
        "threads": threads,
        "load_s": load_s,
        "prompt_tokens": ids.len(),
        "new_tokens": g.tokens.len(),
        "prefill_s": g.prefill.as_secs_f64(),
        "prefill_tokens_per_s": g.prefill_tokens_per_s(),
        "decode_s": g.decode.as_secs_f64(),
        "decode_tokens_per_s": g.decode_tokens_per_s(),
        "peak_rss_mib": peak_rss_mib(),
        "prefill_cpu_s": cpu_first - cpu0,
        "decode_cpu_s": cpu_end - cpu_first,
        // The first token comes from the prefill.
        "decode_steps": g.tokens.len().saturating_sub(1),
        "first_generated_ids": &g.tokens[..8.min(g.tokens.len())],
    });
    if a.json {
        println!("{result}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    }
}
