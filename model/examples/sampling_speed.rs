//! Host time of one sampled token: `Sampler::sample` over one row of the
//! real 262 208-id vocabulary, as the engine runs it for every row whose
//! request asked for a temperature above 0 (the chat API's `temperature`,
//! the OpenAI route's), once per row and decode step. Greedy rows never
//! come here: their argmax runs on the device.
//!
//! ```text
//! cargo run -p medgemma-model --example sampling_speed -- [STEPS, default 200]
//! ```
//!
//! Prints, per setting (temperature, top-k, top-p), the median and best
//! microseconds a call, and the distinct ids drawn (a check that it
//! samples). The logits are a model-like row: a seeded normal spread
//! (σ = 2) with a few dozen ids raised well above it.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::time::Instant;

use medgemma_model::sampling::{Sampler, SamplingParams};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The Gemma 3 vocabulary (spec model.md §3).
const VOCAB: usize = 262_208;

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("STEPS is a whole number"))
        .unwrap_or(200);
    let mut rng = StdRng::seed_from_u64(5);
    let row: Vec<f32> = (0..VOCAB)
        .map(|i| {
            // Box–Muller: a normal logit, σ = 2; every 8 000th id raised.
            let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-9), rng.random());
            let z = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
            2.0 * z + if i % 8_000 == 7 { 12.0 } else { 0.0 }
        })
        .collect();
    println!("setting                         median_us    best_us  distinct_ids");
    for (t, k, p) in [
        (0.7, 64, 0.95),
        (1.0, 64, 0.95),
        (1.0, 0, 0.95),
        (1.0, 0, 1.0),
    ] {
        let params = SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: 11,
        };
        let mut s = Sampler::new(params, VOCAB, vec![0, 1, 2, 3]);
        let mut times = Vec::with_capacity(steps);
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..steps {
            let mut l = row.clone();
            let start = Instant::now();
            let id = s.sample(&mut l);
            times.push(start.elapsed().as_secs_f64() * 1e6);
            ids.insert(id);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "t={t:<4} top_k={k:<3} top_p={p:<5}      {:>9.1}  {:>9.1}  {:>12}",
            times[times.len() / 2],
            times[0],
            ids.len()
        );
    }
}
