//! Decode speed against context length on the CPU (the KV cache's cost).
//!
//! Loads the Gemma 3 270M GGUF, prefills one sequence in 256-token chunks up
//! to each context length, then times single-token decode steps there (one
//! untimed step first). Run in release mode:
//!
//! ```text
//! cargo run --release -p medgemma-model --example kv_cache_speed -- \
//!     [GGUF] [CONTEXTS, e.g. 64,1024,4096] [STEPS, default 32]
//! ```
//!
//! The contexts are reached one after another on the same cache, so each is
//! measured from the length the previous one left (plus its decode steps).
//!
//! Last it times the two Burn operations the cache relies on, on a buffer
//! the size of a 32k-token global layer: `slice_assign` of one position into
//! a uniquely owned buffer (in place: microseconds) versus one that a second
//! handle shares (copy on write: the whole buffer), and a prefix `slice`.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::path::PathBuf;
use std::time::Instant;

use medgemma_model::backend::cpu_device;
use medgemma_model::burn::tensor::{DType, Device, Tensor};
use medgemma_model::gemma3::{Gemma3, Logits};
use medgemma_model::kv_cache::KvCache;
use medgemma_model::load::load_model;

const DEFAULT_GGUF: &str = "/root/.cache/medgemma-assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf";

/// Largest logit's index.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// One decode step; returns the greedy next token (reading the logits back
/// forces the whole step to run).
fn step(model: &Gemma3, cache: &mut KvCache, token: u32) -> u32 {
    let logits: Vec<f32> = model
        .forward(&[token], cache, Logits::Last)
        .into_data()
        .try_into_vec()
        .unwrap_or_default();
    argmax(&logits)
}

/// Times `slice_assign` of one position into a `[1, 1, 32768, 256]` f32
/// buffer, uniquely owned and shared, and a half-length prefix `slice`.
fn probe_slice_ops(device: &Device) {
    let (cap, hd, reps) = (32_768usize, 256usize, 64usize);
    let mut buf = Tensor::<4>::zeros([1, 1, cap, hd], device);
    let row = Tensor::<4>::ones([1, 1, 1, hd], device);
    let at = |i: usize| [0..1, 0..1, i..i + 1, 0..hd];
    let t = Instant::now();
    for i in 0..reps {
        buf = buf.slice_assign(at(i), row.clone());
    }
    let unique = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let t = Instant::now();
    for i in 0..reps {
        let other = buf.clone();
        buf = buf.slice_assign(at(i), row.clone());
        drop(other);
    }
    let shared = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let t = Instant::now();
    for i in 0..reps {
        let view = buf.clone().slice([0..1, 0..1, 0..cap / 2 + i, 0..hd]);
        drop(view);
    }
    let view = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let _ = buf.slice([0..1, 0..1, 0..1, 0..1]).into_data();
    println!(
        "slice_assign of 1 of {cap} positions: {unique:.1} µs unique, {shared:.1} µs shared; \
         prefix slice: {view:.1} µs"
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().unwrap_or_else(|| DEFAULT_GGUF.into()));
    let contexts: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "64,1024,4096".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let steps: usize = args.next().map_or(Ok(32), |s| s.parse())?;

    let device = cpu_device();
    let m = load_model(&path, None, &device, DType::F32)?;
    let model = &m.model;
    let vocab = model.config().vocab_size as u32;
    let mut cache = model.new_cache();
    // Deterministic, varied prompt ids away from the special tokens.
    let prompt_id = |i: usize| 1000 + ((i as u32).wrapping_mul(7919) % (vocab - 2000));

    println!("context  prefill_s  mean_ms  median_ms  (per decode token, {steps} steps)");
    let mut token = 2;
    for &n in &contexts {
        let t0 = Instant::now();
        while cache.len() < n {
            let chunk: Vec<u32> = (cache.len()..n.min(cache.len() + 256))
                .map(prompt_id)
                .collect();
            let logits: Vec<f32> = model
                .forward(&chunk, &mut cache, Logits::Last)
                .into_data()
                .try_into_vec()
                .unwrap_or_default();
            token = argmax(&logits);
        }
        let prefill = t0.elapsed().as_secs_f64();
        let at = cache.len();
        token = step(model, &mut cache, token);
        let mut times: Vec<f64> = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
            token = step(model, &mut cache, token);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mean = times.iter().sum::<f64>() / steps.max(1) as f64;
        times.sort_by(f64::total_cmp);
        let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
        println!("{at:7}  {prefill:9.2}  {mean:8.2}  {median:8.2}");
    }
    // Last, so its large allocations do not change the allocator's state
    // (glibc's mmap threshold) for the timings above.
    probe_slice_ops(&device);
    Ok(())
}
