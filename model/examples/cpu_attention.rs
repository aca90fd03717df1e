//! Speed of the CPU decode attention (`medgemma_model::cpu::decode_attention`)
//! per cache length and instruction set, on random caches of the Gemma 3
//! 270M's and MedGemma 4B's head shapes. Prints numbers, judges nothing.
//!
//! ```text
//! cargo run --release -p medgemma-model --example cpu_attention -- [--lens 128,512,2048,8192]
//! ```
//!
//! For each: microseconds per call (best of the runs: a decode step calls it
//! once per layer), and the cache bytes read per second (keys and values,
//! f32), next to a plain sum over the same bytes on the pool's threads.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use medgemma_model::cpu::{Isa, KvRows, decode_attention_with};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Best seconds of `runs` calls of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut lens = vec![128usize, 512, 2048, 8192];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--lens" {
            let v = args.next().unwrap_or_default();
            lens = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        }
    }
    let threads = rayon::current_num_threads();
    println!("decode attention, f32 cache, {threads} threads");
    println!(
        "{:<6}{:>8}{:>10}{:>12}{:>12}{:>14}",
        "model", "len", "isa", "µs/call", "GB/s", "sum GB/s"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (name, h, kv, dim) in [("270m", 4, 1, 256), ("4b", 8, 4, 256)] {
        for &len in &lens {
            let n = kv * len * dim;
            let k: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q: Vec<f32> = (0..h * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let rows = |data| KvRows::contiguous(data, kv, len, dim);
            let bytes = (2 * n * 4) as f64;
            let sum = best(20, || {
                let s: f32 = k
                    .par_chunks(1 << 14)
                    .map(|c| c.iter().sum::<f32>())
                    .sum::<f32>()
                    + v.par_chunks(1 << 14)
                        .map(|c| c.iter().sum::<f32>())
                        .sum::<f32>();
                std::hint::black_box(s);
            });
            for isa in Isa::available() {
                let mut out = vec![0.0f32; h * dim];
                let t = best(20, || {
                    decode_attention_with(isa, &q, rows(&k), rows(&v), 0.0625, &mut out);
                    std::hint::black_box(&out);
                });
                println!(
                    "{name:<6}{len:>8}{:>10}{:>12.1}{:>12.1}{:>14.1}",
                    isa.name(),
                    t * 1e6,
                    bytes / t / 1e9,
                    bytes / sum / 1e9
                );
            }
        }
    }
}
