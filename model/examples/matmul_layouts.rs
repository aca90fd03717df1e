//! Times decode-shaped products on the CPU backend in both weight layouts.
#![allow(clippy::print_stdout)]
use std::time::Instant;

use medgemma_model::backend::cpu_device;
use medgemma_model::burn::tensor::{Distribution, Tensor};

fn main() {
    let dev = cpu_device();
    for (k, n) in [
        (640usize, 2048usize),
        (2048, 640),
        (640, 262_144),
        (2560, 10240),
    ] {
        let x = Tensor::<2>::random([1, k], Distribution::Default, &dev);
        let w_out_in = Tensor::<2>::random([n, k], Distribution::Default, &dev);
        let w_in_out = Tensor::<2>::random([k, n], Distribution::Default, &dev);
        for (name, w) in [
            ("[out,in]^T", w_out_in.clone().transpose()),
            ("[in,out]", w_in_out.clone()),
        ] {
            let _ = x.clone().matmul(w.clone()).into_data();
            let t = Instant::now();
            let reps = 10;
            for _ in 0..reps {
                let _ = x.clone().matmul(w.clone()).into_data();
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let gbs = (k * n * 4) as f64 / s / 1e9;
            println!("1x{k} @ {k}x{n} {name}: {:.3} ms ({gbs:.1} GB/s)", s * 1e3);
        }
    }
    // The LM head the other way round: E [V, d] · hᵀ [d, 1] (tall-skinny).
    let e = Tensor::<2>::random([262_144, 640], Distribution::Default, &dev);
    let h = Tensor::<2>::random([640, 1], Distribution::Default, &dev);
    let _ = e.clone().matmul(h.clone()).into_data();
    let t = Instant::now();
    for _ in 0..10 {
        let _ = e.clone().matmul(h.clone()).into_data();
    }
    let s = t.elapsed().as_secs_f64() / 10.0;
    println!(
        "262144x640 @ 640x1: {:.3} ms ({:.1} GB/s)",
        s * 1e3,
        (262_144 * 640 * 4) as f64 / s / 1e9
    );
    // Batched: the vocabulary split into blocks that run in parallel.
    for nb in [2usize, 8, 32] {
        let eb = e.clone().reshape([nb, 262_144 / nb, 640]);
        let hb = h.clone().reshape([1, 640, 1]);
        let _ = eb.clone().matmul(hb.clone()).into_data();
        let t = Instant::now();
        for _ in 0..10 {
            let _ = eb.clone().matmul(hb.clone()).into_data();
        }
        let s = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "[{nb}, {}, 640] @ [1, 640, 1]: {:.3} ms ({:.1} GB/s)",
            262_144 / nb,
            s * 1e3,
            (262_144 * 640 * 4) as f64 / s / 1e9
        );
    }
}
