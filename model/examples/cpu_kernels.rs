//! Speed of the CPU weight products (`medgemma_model::cpu`) per storage
//! format, instruction set and number of activation rows, on random weights
//! of the Gemma 3 270M's and MedGemma 4B's shapes. Prints numbers, judges
//! nothing.
//!
//! ```text
//! cargo run --release -p medgemma-model --example cpu_kernels -- \
//!     [--formats Q8_0,Q4_K,...] [--rows 1,4,8,16,512] [--isa avx512,avx2,portable] [--shapes 270m|4b|all] \
//!     [--activations f32,q8_prompt,q8]
//! ```
//!
//! For each product: milliseconds, the weight bytes read per second (what
//! decode is bound by) and f32 multiply-adds per second (what a prompt is
//! bound by). The bandwidth line at the start is the best of five passes
//! summing a 1 GiB buffer on every thread: the memory's speed here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use medgemma_model::cpu::{Activations, CpuMatrix, Isa, WeightBytes};
use medgemma_model::quant::GgmlType;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Random blocks of `ty` for `rows × cols` values: random quants with
/// finite, realistic f16 scales.
fn random_bytes(ty: GgmlType, rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<u8> {
    let n = rows * cols;
    let len = ty.byte_size(n).expect("a whole number of blocks");
    let mut b = vec![0u8; len];
    rng.fill(&mut b[..]);
    let (block, bytes) = ty.block_layout().expect("a known type");
    let scale = |rng: &mut dyn rand::RngCore| {
        half::f16::from_f32(0.001 + 0.01 * (rng.next_u32() % 100) as f32 / 100.0).to_le_bytes()
    };
    let scales: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    match ty {
        GgmlType::F32 => {
            for c in b.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.random::<f32>() - 0.5).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(rng.random::<f32>() - 0.5).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.random::<f32>() - 0.5).to_le_bytes());
            }
        }
        _ => {
            for blk in b.chunks_exact_mut(bytes) {
                for &at in scales {
                    blk[at..at + 2].copy_from_slice(&scale(rng));
                }
            }
        }
    }
    let _ = block;
    b
}

/// Best of five passes summing a 1 GiB buffer on every thread, bytes/s.
fn bandwidth() -> f64 {
    let v = vec![1u64; 1 << 27];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = v
            .par_chunks(1 << 16)
            .map(|c| c.iter().copied().fold(0u64, u64::wrapping_add))
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (v.len() * 8) as f64 / best
}

/// CPU time all threads of this process have run, seconds: the sum of
/// each thread's `/proc/self/task/*/schedstat` run time (proc(5),
/// nanoseconds), which does not count time spent waiting for a core.
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

/// Best of five parallel passes summing `bytes` as u64 words, seconds.
fn read_time(bytes: &[u8]) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = bytes
            .par_chunks(1 << 16)
            .map(|c| {
                c.chunks_exact(8)
                    .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                    .fold(0u64, u64::wrapping_add)
            })
            .sum();
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let mut formats = vec![
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];
    let mut rows_list = vec![1usize, 4, 8, 16, 512];
    let mut isas = Isa::available();
    isas.reverse();
    let mut shapes = "270m".to_owned();
    let mut modes = vec![Activations::F32, Activations::Q8];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--formats" => {
                formats = value
                    .split(',')
                    .map(|f| match f {
                        "F32" => GgmlType::F32,
                        "F16" => GgmlType::F16,
                        "BF16" => GgmlType::BF16,
                        "Q4_0" => GgmlType::Q4_0,
                        "Q4_1" => GgmlType::Q4_1,
                        "Q5_0" => GgmlType::Q5_0,
                        "Q5_1" => GgmlType::Q5_1,
                        "Q8_0" => GgmlType::Q8_0,
                        "Q4_K" => GgmlType::Q4_K,
                        "Q5_K" => GgmlType::Q5_K,
                        "Q6_K" => GgmlType::Q6_K,
                        other => panic!("unknown format {other}"),
                    })
                    .collect()
            }
            "--rows" => {
                rows_list = value
                    .split(',')
                    .map(|r| r.parse().expect("a number"))
                    .collect()
            }
            "--isa" => {
                isas = value
                    .split(',')
                    .map(|i| match i {
                        "avx512" => Isa::Avx512,
                        "avx2" => Isa::Avx2,
                        "neon" => Isa::Neon,
                        "portable" => Isa::Portable,
                        other => panic!("unknown isa {other}"),
                    })
                    .collect()
            }
            "--shapes" => shapes = value,
            "--activations" => {
                modes = value
                    .split(',')
                    .map(|m| {
                        Activations::parse(m).unwrap_or_else(|| panic!("unknown activations {m}"))
                    })
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let mut shape_list: Vec<(&str, usize, usize)> = Vec::new();
    if shapes == "270m" || shapes == "all" {
        shape_list.extend([
            ("270m q_proj", 1024, 640),
            ("270m down", 640, 2048),
            ("270m gate", 2048, 640),
            ("270m head", 262_144, 640),
        ]);
    }
    if shapes == "270m-layers" {
        shape_list.extend([
            ("270m q_proj", 1024, 640),
            ("270m down", 640, 2048),
            ("270m gate", 2048, 640),
        ]);
    }
    if shapes == "4b" || shapes == "all" {
        shape_list.extend([
            ("4b q_proj", 2048, 2560),
            ("4b gate", 10240, 2560),
            ("4b down", 2560, 10240),
        ]);
    }
    println!(
        "threads {}, memory bandwidth {:.1} GB/s (sum over 1 GiB, best of 5); isas available: {:?}",
        rayon::current_num_threads(),
        bandwidth() / 1e9,
        Isa::available()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for &ty in &formats {
        for &(name, out, k) in &shape_list {
            if ty.byte_size(k).is_none() {
                println!("{ty:?} {name}: {k} columns are not whole blocks, skipped");
                continue;
            }
            let bytes = random_bytes(ty, out, k, &mut rng);
            let read = read_time(&bytes);
            println!(
                "{ty:?} {name}: reading its {} bytes takes {:.3} ms ({:.1} GB/s)",
                bytes.len(),
                read * 1e3,
                bytes.len() as f64 / read / 1e9
            );
            let m =
                CpuMatrix::new(name, ty, out, k, WeightBytes::Owned(bytes.into())).expect("matrix");
            for &isa in &isas {
                for (&n, &mode) in rows_list
                    .iter()
                    .flat_map(|n| modes.iter().map(move |m| (n, m)))
                {
                    let x: Vec<f32> = (0..n * k).map(|_| rng.random::<f32>() - 0.5).collect();
                    let mut y = vec![0.0f32; n * out];
                    m.matmul_mode(isa, mode, &x, &mut y);
                    let reps = ((std::env::var("BENCH_BYTES")
                        .ok()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(2e8)
                        / (m.byte_len() as f64 * n.max(1) as f64).max(1.0))
                        as usize)
                        .clamp(2, 100_000);
                    let t = Instant::now();
                    let c = cpu_seconds();
                    for _ in 0..reps {
                        m.matmul_mode(isa, mode, &x, &mut y);
                    }
                    let s = t.elapsed().as_secs_f64() / reps as f64;
                    let cpu = (cpu_seconds() - c) / reps as f64;
                    println!(
                        "{ty:?} {name} [{out}x{k}] {isa:?} {} n={n}: {:.3} ms ({:.3} CPU-ms), {:.1} GB/s weights, {:.1} GFLOP/s",
                        if m.quantizes(isa, mode, n) {
                            "q8"
                        } else {
                            "f32"
                        },
                        s * 1e3,
                        cpu * 1e3,
                        m.byte_len() as f64 / s / 1e9,
                        2.0 * (n * out * k) as f64 / s / 1e9
                    );
                }
            }
        }
    }
}
