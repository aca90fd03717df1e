//! The integer products (`engine.cpu_activations` = `q8_prompt` or `q8`)
//! against two references, on random blocks of every block format, for
//! every instruction set this CPU runs (each forced in turn) and both
//! shapes (a few activation rows, and prompts):
//!
//! - exactness: with the activations rounded to 8 bits per 32 values as
//!   the mode defines (`d = max|x| / 127`, `q = round(x / d)`), the product
//!   equals dequantize-then-multiply in f64 up to f32 summation order;
//! - the fidelity bound against the f32 path: each activation moves by at
//!   most half a step, `d / 2`, so an output moves by at most
//!   `Σ_blocks d_b / 2 · Σ_{k in b} |w_k|`, computed here for each output.
//!
//! And the mode `f32` is the f32 path, bit for bit.

use half::f16;
use medgemma_model::cpu::{Activations, CpuMatrix, GEMV_MAX_ROWS, Isa, WeightBytes};
use medgemma_model::quant::{self, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCK_FORMATS: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Activation rows: decode sizes, the largest streamed case, then prompts
/// (whole tiles of 8 and a remainder).
const ROWS: [usize; 7] = [1, 3, 4, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 24, 37];

/// Byte offsets of the f16 scale fields of one block (ggml-common.h).
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// `rows × cols` random blocks of `ty` with finite scales of realistic size.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let len = ty.byte_size(cols).expect("whole blocks") * rows;
    let mut b = vec![0u8; len];
    rng.fill(&mut b[..]);
    let (_, block) = ty.block_layout().expect("known");
    for blk in b.chunks_exact_mut(block) {
        for &at in scale_fields(ty) {
            let s = f16::from_f32(rng.random_range(0.0005..0.02));
            blk[at..at + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    b
}

/// The activations as the mode rounds them: per 32 values `d = max|x| /
/// 127`, `q = round(x / d)` (half away from zero), `x' = d·q`; and `d`.
fn rounded(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut out = Vec::with_capacity(x.len());
    let mut steps = Vec::with_capacity(x.len() / 32);
    for b in x.chunks_exact(32) {
        let d = b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(b.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) * d));
        steps.push(d);
    }
    (out, steps)
}

#[test]
fn integer_products_equal_the_rounded_activations_times_the_weights_within_the_stated_bound() {
    let mut rng = StdRng::seed_from_u64(1808);
    let modes = [Activations::Q8Prompt, Activations::Q8];
    let mut checked = 0usize;
    for ty in BLOCK_FORMATS {
        let (block, _) = ty.block_layout().expect("known");
        // Rows that do not fill the last group of 16; several blocks.
        let (rows, cols) = (45, 2 * block.max(64));
        let bytes = random_matrix(ty, rows, cols, &mut rng);
        let w = quant::dequantize(ty, &bytes, rows * cols).expect("dequantizes");
        let m = CpuMatrix::new("random", ty, rows, cols, WeightBytes::Owned(bytes.into()))
            .expect("a matrix");
        for n in ROWS {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (xr, steps) = rounded(&x);
            for isa in Isa::available() {
                let mut exact = vec![f32::NAN; n * rows];
                m.matmul_mode(isa, Activations::F32, &x, &mut exact);
                let mut plain = vec![f32::NAN; n * rows];
                m.matmul_with(isa, &x, &mut plain);
                assert_eq!(
                    exact.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{ty:?} {isa:?} n={n}: the f32 mode is the f32 path"
                );
                for mode in modes {
                    let quantized = m.quantizes(isa, mode, n);
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul_mode(isa, mode, &x, &mut got);
                    if !quantized {
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            exact.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{ty:?} {isa:?} {mode:?} n={n}: not quantized, so the f32 path"
                        );
                        continue;
                    }
                    checked += 1;
                    for r in 0..n {
                        for i in 0..rows {
                            let wi = &w[i * cols..(i + 1) * cols];
                            let (mut want, mut mag, mut bound) = (0.0f64, 0.0f64, 0.0f64);
                            for (kb, (wb, d)) in
                                wi.chunks_exact(32).zip(&steps[r * cols / 32..]).enumerate()
                            {
                                let xb = &xr[r * cols + 32 * kb..r * cols + 32 * kb + 32];
                                let mut wsum = 0.0f64;
                                for (a, b) in wb.iter().zip(xb) {
                                    let p = f64::from(*a) * f64::from(*b);
                                    want += p;
                                    mag += p.abs();
                                    wsum += f64::from(a.abs());
                                }
                                bound += f64::from(*d) / 2.0 * wsum;
                            }
                            let g = f64::from(got[r * rows + i]);
                            // f32 scaling and sums of exact integer dot
                            // products: a few ulps of the terms' size.
                            let tol = 2e-5 * mag + 1e-5;
                            assert!(
                                (g - want).abs() <= tol,
                                "{ty:?} {isa:?} {mode:?} n={n}: output ({r}, {i}) is {g}, \
                                 rounded-activation reference {want} (tolerance {tol})"
                            );
                            let e = f64::from(exact[r * rows + i]);
                            assert!(
                                (g - e).abs() <= bound + tol,
                                "{ty:?} {isa:?} {mode:?} n={n}: output ({r}, {i}) moved {} from \
                                 the f32 path, more than half a step per activation allows ({bound})",
                                (g - e).abs()
                            );
                        }
                    }
                }
            }
        }
    }
    // The portable integer kernel runs everywhere: at least it was checked
    // for every format, prompt size and mode.
    assert!(
        checked >= BLOCK_FORMATS.len() * ROWS.len(),
        "only {checked} integer products ran"
    );
}

#[test]
fn modes_are_named_as_the_configuration_names_them() {
    for mode in Activations::ALL {
        assert_eq!(Activations::parse(mode.name()), Some(mode));
    }
    assert_eq!(Activations::parse("int8"), None);
    assert_eq!(Activations::default(), Activations::F32);
    assert!(!Activations::Q8Prompt.quantizes(GEMV_MAX_ROWS));
    assert!(Activations::Q8Prompt.quantizes(GEMV_MAX_ROWS + 1));
    assert!(Activations::Q8.quantizes(1));
    assert!(!Activations::F32.quantizes(512));
}
