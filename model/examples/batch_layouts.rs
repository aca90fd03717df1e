//! Times batched decode-shaped products `X [B, in] · Wᵀ` (W stored `[out, in]`)
//! on the CPU backend: the plain product against the row-blocked view that
//! one-token decoding uses (`gemma3.rs`, `row_blocked_product`).
//!
//! `cargo run --features medgemmad/test-engine --example batch_layouts`
//! (with the workspace's usual flags). Prints numbers; judges nothing.
#![allow(clippy::print_stdout)]
use std::time::Instant;

use medgemma_model::backend::cpu_device;
use medgemma_model::burn::tensor::{Distribution, Tensor};

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let dev = cpu_device();
    let shapes: Vec<(usize, usize)> = match std::env::args().nth(1).as_deref() {
        Some("4b") => vec![(2560, 2048), (2048, 2560), (2560, 10240), (10240, 2560)],
        _ => vec![
            (640, 1024),
            (1024, 640),
            (640, 2048),
            (2048, 640),
            (640, 262_144),
        ],
    };
    for (k, n) in shapes {
        let w = Tensor::<2>::random([n, k], Distribution::Default, &dev);
        let reps = if n > 100_000 { 3 } else { 20 };
        for b in [1usize, 2, 4, 8, 16, 32] {
            let x = Tensor::<2>::random([b, k], Distribution::Default, &dev);
            let plain = time(reps, || {
                let _ = x.clone().matmul(w.clone().transpose()).into_data();
            });
            let blocks = 8;
            let blocked = time(reps, || {
                let y = w
                    .clone()
                    .reshape([blocks, n / blocks, k])
                    .matmul(x.clone().transpose().reshape([1, k, b]))
                    .reshape([n, b])
                    .transpose();
                let _ = y.into_data();
            });
            let wx = time(reps, || {
                let y = w.clone().matmul(x.clone().transpose()).transpose();
                let _ = y.into_data();
            });
            let b32 = time(reps, || {
                let y = w
                    .clone()
                    .reshape([32, n / 32, k])
                    .matmul(x.clone().transpose().reshape([1, k, b]))
                    .reshape([n, b])
                    .transpose();
                let _ = y.into_data();
            });
            let gbs = |s: f64| (k * n * 4) as f64 / s / 1e9;
            println!(
                "      W·xᵀ {:8.3} ms ({:5.1} GB/s)  32 row blocks {:8.3} ms ({:5.1} GB/s)",
                wx * 1e3,
                gbs(wx),
                b32 * 1e3,
                gbs(b32)
            );
            println!(
                "B={b:2} {k:6}->{n:6}: plain {:8.3} ms ({:5.1} GB/s)  row-blocked {:8.3} ms ({:5.1} GB/s)",
                plain * 1e3,
                gbs(plain),
                blocked * 1e3,
                gbs(blocked)
            );
        }
    }
}
