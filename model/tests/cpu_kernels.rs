//! The CPU weight products (`medgemma_model::cpu`) against the reference
//! they must equal up to summation order: dequantize with
//! `quant::dequantize` (bit-exact with gguf-py, `gguf_quant.rs`), then
//! multiply in f64. Every storage format, every instruction set this CPU
//! runs (each forced in turn), both kernel paths (streamed rows for a few
//! activation rows, f32 panels for many), on the gguf-py fixture blocks and
//! on random blocks.

use std::path::PathBuf;

use half::{bf16, f16};
use medgemma_model::cpu::{Activations, CpuError, CpuMatrix, GEMV_MAX_ROWS, Isa, WeightBytes};
use medgemma_model::quant::{self, GgmlType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FORMATS: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Activation rows to try: 1..=4 cover every group of the streamed kernel
/// (4, 2, 1), up to `GEMV_MAX_ROWS` its largest case, then the panel path.
const ROWS: [usize; 9] = [1, 2, 3, 4, 5, 7, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 37];

/// Byte offsets of the f16 scale fields of one block (ggml-common.h), so
/// random blocks get finite scales of realistic size.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// `rows × cols` random values of `ty` as stored.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let len = ty.byte_size(cols).expect("whole blocks") * rows;
    let mut b = vec![0u8; len];
    match ty {
        GgmlType::F32 => {
            for c in b.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.random_range(-1.0f32..1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut b[..]);
            let (_, block) = ty.block_layout().expect("known");
            for blk in b.chunks_exact_mut(block) {
                for &at in scale_fields(ty) {
                    let s = f16::from_f32(rng.random_range(0.0005..0.02));
                    blk[at..at + 2].copy_from_slice(&s.to_le_bytes());
                }
            }
        }
    }
    b
}

/// `x · Wᵀ` by the reference: dequantize `W`, multiply in f64. Also the
/// sum of |w·x| per output (the scale of the rounding error).
fn reference(
    ty: GgmlType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let w = quant::dequantize(ty, bytes, rows * cols).expect("dequantizes");
    let n = x.len() / cols;
    let mut out = vec![0.0; n * rows];
    let mut mag = vec![0.0; n * rows];
    for r in 0..n {
        for i in 0..rows {
            let (mut s, mut m) = (0.0f64, 0.0f64);
            for k in 0..cols {
                let p = f64::from(w[i * cols + k]) * f64::from(x[r * cols + k]);
                s += p;
                m += p.abs();
            }
            out[r * rows + i] = s;
            mag[r * rows + i] = m;
        }
    }
    (out, mag)
}

/// Checks every instruction set and row count on one matrix.
fn check(ty: GgmlType, bytes: Vec<u8>, rows: usize, cols: usize, rng: &mut StdRng, what: &str) {
    let m = CpuMatrix::new(
        what,
        ty,
        rows,
        cols,
        WeightBytes::Owned(bytes.clone().into()),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(m.byte_len(), bytes.len());
    for n in ROWS {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        let (want, mag) = reference(ty, &bytes, rows, cols, &x);
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; n * rows];
            m.matmul_with(isa, &x, &mut got);
            for (j, ((g, w), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                // f32 products and sums in another order: a few ulps of
                // the magnitude of the terms.
                let tol = 1e-5 * m + 1e-6;
                assert!(
                    (f64::from(*g) - w).abs() <= tol,
                    "{what} {ty:?} {isa:?} n={n}: output {j} is {g}, reference {w} (tolerance {tol})"
                );
            }
        }
    }
}

#[test]
fn every_format_and_instruction_set_matches_dequantize_then_multiply_on_random_blocks() {
    let mut rng = StdRng::seed_from_u64(18);
    for ty in FORMATS {
        let (block, _) = ty.block_layout().expect("known");
        // Rows that do not split evenly across tasks; several blocks per row.
        let cols = if block == 1 { 96 } else { 3 * block.max(32) };
        let bytes = random_matrix(ty, 45, cols, &mut rng);
        check(ty, bytes, 45, cols, &mut rng, "random");
    }
}

#[test]
fn element_formats_handle_rows_that_are_not_whole_32_value_chunks() {
    // bf16 checkpoints with hidden sizes like 48 (the tiny fixtures) or 70.
    let mut rng = StdRng::seed_from_u64(70);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for cols in [1, 5, 48, 70] {
            let bytes = random_matrix(ty, 9, cols, &mut rng);
            check(ty, bytes, 9, cols, &mut rng, "tail");
        }
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

#[test]
fn gguf_py_fixture_blocks_multiply_like_their_dequantized_values() {
    // The blocks of `gguf_quant.rs` (made by gguf-py, including ±0,
    // subnormals and the f16 maximum for F16), read as one-row matrices.
    let mut rng = StdRng::seed_from_u64(5);
    for ty in FORMATS {
        let name = format!("{ty:?}");
        let bytes = std::fs::read(fixture_dir().join(format!("{name}.bin"))).expect("fixture");
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture_dir().join(format!("{name}.json"))).expect("fixture json"),
        )
        .expect("json");
        let n = meta["n"].as_u64().expect("n") as usize;
        check(ty, bytes, 1, n, &mut rng, "gguf-py fixture");
    }
}

#[test]
fn lookups_are_the_dequantized_rows() {
    let mut rng = StdRng::seed_from_u64(3);
    for ty in FORMATS {
        let (block, _) = ty.block_layout().expect("known");
        let cols = if block == 1 { 40 } else { 2 * block.max(32) };
        let rows = 11;
        let bytes = random_matrix(ty, rows, cols, &mut rng);
        let all = quant::dequantize(ty, &bytes, rows * cols).expect("dequantizes");
        let m = CpuMatrix::new("lookup", ty, rows, cols, WeightBytes::Owned(bytes.into()))
            .expect("matrix");
        let ids = [3u32, 0, 10, 3];
        let mut got = vec![0.0f32; ids.len() * cols];
        m.dequantize_rows(&ids, &mut got);
        for (r, &id) in ids.iter().enumerate() {
            let want = &all[id as usize * cols..(id as usize + 1) * cols];
            let got = &got[r * cols..(r + 1) * cols];
            assert!(
                want.iter()
                    .zip(got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?}: row {id} differs"
            );
        }
    }
}

#[test]
fn a_matrix_with_the_wrong_length_or_an_unsupported_type_is_refused() {
    let e = CpuMatrix::new(
        "t",
        GgmlType::Q8_0,
        2,
        64,
        WeightBytes::Owned(vec![0u8; 135].into()),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CpuError::Length {
                expected: 136,
                actual: 135,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"), "{e}");
    // Q4_K rows must be whole 256-value blocks.
    let e = CpuMatrix::new(
        "t",
        GgmlType::Q4_K,
        1,
        640,
        WeightBytes::Owned(vec![0u8; 360].into()),
    )
    .unwrap_err();
    assert!(matches!(e, CpuError::Length { .. }), "{e}");
    let e = CpuMatrix::new(
        "t",
        GgmlType::Q2_K,
        1,
        256,
        WeightBytes::Owned(vec![0u8; 84].into()),
    )
    .unwrap_err();
    assert!(matches!(e, CpuError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("Q4_K"),
        "the message lists what works: {e}"
    );
}

#[test]
fn q8_0_quantization_rounds_each_weight_to_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(8);
    let values: Vec<f32> = (0..32 * 64)
        .map(|i| {
            if i % 97 == 0 {
                0.0
            } else {
                rng.random_range(-3.0..3.0)
            }
        })
        .collect();
    let mut q = vec![0u8; 64 * 34];
    assert!(quant::quantize_q8_0(&values, &mut q));
    let back = quant::dequantize(GgmlType::Q8_0, &q, values.len()).expect("dequantizes");
    for (b, (x, y)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16::from_le_bytes([q[b * 34], q[b * 34 + 1]]).to_f32();
        // The scale is max|x| / 127 in f16, and the largest value maps to ±127.
        assert_eq!(d, f16::from_f32(amax / 127.0).to_f32());
        let qs = &q[b * 34 + 2..b * 34 + 34];
        assert_eq!(
            qs.iter().map(|&v| (v as i8).unsigned_abs()).max(),
            Some(127)
        );
        for (a, c) in x.iter().zip(y) {
            assert!(
                (a - c).abs() <= d * 0.5 + amax * 1e-3,
                "block {b}: {a} became {c}"
            );
        }
    }
    // Quantizing what a Q8_0 block dequantizes to gives the block back.
    let grid: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25).collect();
    let mut q2 = vec![0u8; 34];
    assert!(quant::quantize_q8_0(&grid, &mut q2));
    let mut again = vec![0u8; 34];
    let back = quant::dequantize(GgmlType::Q8_0, &q2, 32).expect("dequantizes");
    assert!(quant::quantize_q8_0(&back, &mut again));
    assert_eq!(q2, again);
    // Lengths that are not whole blocks are refused.
    assert!(!quant::quantize_q8_0(&values[..31], &mut q2));
}

#[test]
fn products_sharing_one_input_equal_each_product_alone_bit_for_bit() {
    // A layer's q/k/v (three formats, as the 270M's GGUF mixes Q5_0 and
    // Q8_0) and gate/up: one hand-off must give each output exactly what
    // its own product gives, for every row count the fused path takes and
    // the prompt path beyond it, in every activation mode.
    let mut rng = StdRng::seed_from_u64(41);
    let cols = 256;
    let shapes = [
        (GgmlType::Q5_0, 96),
        (GgmlType::Q8_0, 40),
        (GgmlType::Q4_K, 130),
        (GgmlType::Q6_K, 7),
        (GgmlType::BF16, 64),
    ];
    let mats: Vec<CpuMatrix> = shapes
        .iter()
        .map(|&(ty, rows)| {
            let bytes = random_matrix(ty, rows, cols, &mut rng);
            CpuMatrix::new("w", ty, rows, cols, WeightBytes::Owned(bytes.into()))
                .expect("a supported format of the right length")
        })
        .collect();
    let refs: Vec<&CpuMatrix> = mats.iter().collect();
    for isa in Isa::available() {
        for mode in [Activations::F32, Activations::Q8Prompt, Activations::Q8] {
            for n in [1, 2, 5, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let mut outs: Vec<Vec<f32>> =
                    mats.iter().map(|m| vec![f32::NAN; n * m.rows()]).collect();
                {
                    let mut views: Vec<&mut [f32]> =
                        outs.iter_mut().map(Vec::as_mut_slice).collect();
                    CpuMatrix::matmul_many_mode(isa, mode, &refs, &x, &mut views);
                }
                for (m, got) in mats.iter().zip(&outs) {
                    let mut alone = vec![f32::NAN; n * m.rows()];
                    m.matmul_mode(isa, mode, &x, &mut alone);
                    let (got, alone): (Vec<u32>, Vec<u32>) = (
                        got.iter().map(|v| v.to_bits()).collect(),
                        alone.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(got, alone, "{isa:?} {mode:?} n={n} {:?}", m.ty());
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "matrices of one width")]
fn products_sharing_one_input_must_have_one_width() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut q8 = |cols: usize| {
        let bytes = random_matrix(GgmlType::Q8_0, 4, cols, &mut rng);
        CpuMatrix::new(
            "w",
            GgmlType::Q8_0,
            4,
            cols,
            WeightBytes::Owned(bytes.into()),
        )
        .expect("valid")
    };
    let (a, b) = (q8(64), q8(32));
    let x = vec![0.5f32; 64];
    let (mut oa, mut ob) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    CpuMatrix::matmul_many(&[&a, &b], &x, &mut [&mut oa, &mut ob]);
}
