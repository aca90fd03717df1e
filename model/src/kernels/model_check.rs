//! The whole decoder with every kernel in place against the plain Burn ops:
//! one small Gemma 3 (a local and a global layer, grouped-query heads, a
//! window the decode runs past) built from the same deterministic weights
//! on CubeCL's CPU runtime (kernels on) and on the `flex` CPU backend (no
//! kernels), fed the same tokens: prefill, single-sequence decode, batched
//! decode of sequences at different lengths, and greedy generation; then the
//! captured decode step (`decode_graph.rs`) against `forward_batch`.
//!
//! Owns: nothing but this test. Must never: hide a difference the kernels'
//! own tests would not (it checks their wiring in `gemma3.rs` and
//! `generate.rs`: head layout, table rows, cache slots, greedy ids).

use std::sync::atomic::AtomicBool;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::{Gemma3Config, LayerType, Rope};
use crate::gemma3::{Gemma3, Logits, TensorSource};
use crate::generate::{GenerateOptions, generate};
use crate::kernels::test_support::{device, max_abs_diff};
use crate::kv_cache::KvCache;
use crate::sampling::SamplingParams;
use crate::weights::WeightsError;

/// Values from a hash of the tensor's name and index, so both devices get
/// the same weights.
struct Pattern<'a> {
    device: &'a Device,
}

fn pattern(name: &str, n: usize, scale: f32) -> Vec<f32> {
    let salt = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt)
                .rotate_left(13)
                ^ salt;
            ((h >> 8) as f32 / (1u32 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

impl TensorSource for Pattern<'_> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        // Uniform(±0.3): unit-variance outputs for 32–64 inputs.
        let v = pattern(name, shape[0] * shape[1], 0.3);
        Ok(Tensor::<2>::from_data(
            TensorData::new(v, shape),
            (self.device, DType::F32),
        ))
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        let v = pattern(name, n, 0.5);
        Ok(Tensor::<1>::from_data(
            TensorData::new(v, [n]),
            (self.device, DType::F32),
        ))
    }
}

fn config() -> Gemma3Config {
    let mut c = Gemma3Config::medgemma_4b();
    c.vocab_size = 300;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.query_pre_attn_scalar = 32.0;
    c.layer_types = vec![LayerType::Local, LayerType::Global];
    c.sliding_window = 5;
    c.rope_global = Rope {
        theta: 1_000_000.0,
        linear_factor: 8.0,
    };
    c.max_position_embeddings = 512;
    c
}

fn model(device: &Device) -> Gemma3 {
    let cfg = config();
    match Gemma3::build(&cfg, &mut Pattern { device }, device, DType::F32) {
        Ok(m) => m,
        Err(e) => panic!("pattern weights cannot fail: {e}"),
    }
}

/// Logits of each step, from `forward` over `prompt` then one token at a
/// time (`steps` tokens taken from `feed`), and from `forward_batch` over
/// two caches of different lengths.
fn run(m: &Gemma3) -> Vec<Tensor<2>> {
    let prompt: Vec<u32> = (0..7).map(|i| (i * 37 + 3) % 300).collect();
    let mut out = Vec::new();
    let mut a = KvCache::new(m.config());
    out.push(m.forward(&prompt, &mut a, Logits::All));
    let mut b = KvCache::new(m.config());
    out.push(m.forward(&prompt[..3], &mut b, Logits::Last));
    // Single-sequence decode past the window (7 + 6 > 5) on both layer kinds.
    for i in 0..6u32 {
        out.push(m.forward(&[(i * 53 + 11) % 300], &mut a, Logits::Last));
    }
    // Batched decode: sequences at positions 13 and 3.
    for i in 0..4u32 {
        let toks = [(i * 29 + 5) % 300, (i * 31 + 7) % 300];
        out.push(m.forward_batch(&toks, &mut [&mut a, &mut b]));
    }
    out
}

#[test]
fn the_decoder_with_kernels_equals_the_plain_burn_decoder() {
    let (cube, flex) = (device(), Device::flex());
    let (mc, mf) = (model(&cube), model(&flex));
    let (got, want) = (run(&mc), run(&mf));
    for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-3, "step {i}: logits differ by {d}");
    }

    // Greedy generation (the device argmax on CubeCL) picks the same ids.
    let opts = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams::default(),
        stop_ids: vec![],
        ignore_eos: true,
        context_limit: 512,
        valid_vocab: 300,
        suppressed: vec![],
    };
    let prompt: Vec<u32> = vec![2, 17, 250, 9, 41];
    let gen_on = |m: &Gemma3| {
        let mut cache = KvCache::new(m.config());
        generate(
            m,
            &mut cache,
            &prompt,
            &opts,
            &AtomicBool::new(false),
            |_| crate::generate::Flow::Continue,
        )
        .expect("generates")
        .tokens
    };
    let (tc, tf) = (gen_on(&mc), gen_on(&mf));
    assert_eq!(tc.len(), 12);
    assert_eq!(tc, tf, "greedy tokens differ");
}

/// The captured decode step against `forward_batch` on the same device:
/// three sequences at 252, 3 and 1 positions (one global buffer fills at
/// 256 and the step is captured anew; rings full and not yet full), their
/// graph caches cloned from the plain ones (shared buffers, which the graph
/// must copy before writing). Each step's logits agree, the plain caches
/// are untouched by the graph's writes, and the caches handed back go on
/// as the plain ones do.
#[test]
fn the_captured_decode_step_equals_forward_batch() {
    use crate::decode_graph::DecodeGraph;
    let m = model(&device());
    let prompts: Vec<Vec<u32>> = [252usize, 3, 1]
        .iter()
        .map(|&n| (0..n as u32).map(|i| (i * 37 + 3) % 300).collect())
        .collect();
    let mut plain: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            let mut c = KvCache::new(m.config());
            let _ = m.forward(p, &mut c, Logits::Last);
            c
        })
        .collect();
    let mut graphed = plain.clone();
    let mut tokens = vec![5u32, 6, 7];
    let greedy = |logits: &Tensor<2>| -> Vec<u32> {
        let [b, v] = logits.dims();
        let x: Vec<f32> = logits.clone().into_data().iter::<f32>().collect();
        (0..b)
            .map(|r| {
                let row = &x[r * v..(r + 1) * v];
                (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as u32
            })
            .collect()
    };
    {
        let mut g = DecodeGraph::new(&m, graphed.iter_mut().collect(), 2).expect("covered");
        for step in 0..7 {
            let got = g.step(&tokens);
            let mut refs: Vec<&mut KvCache> = plain.iter_mut().collect();
            let want = m.forward_batch(&tokens, &mut refs);
            let d = max_abs_diff(got, want.clone());
            assert!(d < 1e-4, "step {step}: logits differ by {d}");
            tokens = greedy(&want);
        }
        // CubeCL's CPU runtime has no graphs: replays re-run the step.
        assert!(!g.is_hardware(), "{g:?}");
    }
    for (a, b) in graphed.iter_mut().zip(plain.iter_mut()) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.cached_per_layer(), b.cached_per_layer());
        let (x, y) = (
            m.forward(&[9], a, Logits::Last),
            m.forward(&[9], b, Logits::Last),
        );
        let d = max_abs_diff(x, y);
        assert!(d < 1e-4, "after the graph, logits differ by {d}");
    }
}
