//! The inner loops of the CPU products.
//!
//! Each storage format is a [`Block`]: a number of values, a number of
//! bytes, and a dequantizer that is `crate::quant`'s own (inlined here, so a
//! block dequantizes bit for bit as [`crate::quant::dequantize`] does). The
//! generic kernel ([`Dequant`]) dequantizes one block of a weight row into a
//! small stack buffer (it never leaves L1) and multiply-adds it into
//! per-activation-row lane accumulators; it is written once over [`Lanes`]
//! and compiled for each instruction set. On x86-64 the formats GGUF files
//! mostly use have hand-written kernels instead (`x86.rs`), which never
//! materialize the f32 weights. [`gemv`] drives any of them over the rows
//! of a matrix; [`dequant_rows`] fills an f32 panel for the prompt path.
//!
//! Owns: the arithmetic. Must never: allocate more than a few sums per
//! call, read past the slices it is given (everything is bounds-checked
//! slicing), or run an instruction set the CPU lacks (the tokens of
//! [`Lanes`] exist only where it has it; `matrix.rs` checks).

use half::f16;

use crate::quant::{self, GgmlType};

/// Largest block (`QK_K`).
const MAX_BLOCK: usize = 256;

/// One storage format's block.
pub(super) trait Block {
    /// Values per block.
    const N: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Dequantizes one block: `b` holds `BYTES` bytes, `y` `N` values.
    fn dequant(b: &[u8], y: &mut [f32]);
    /// Dequantizes the values of a partial block at the end of a row
    /// (element formats only: a ggml row is whole blocks).
    fn dequant_tail(_b: &[u8], _y: &mut [f32]) {}
}

/// Implements [`Block`] for a ggml block format through its `quant` function.
macro_rules! ggml_block {
    ($name:ident, $n:literal, $bytes:literal, $f:path) => {
        pub(super) struct $name;
        impl Block for $name {
            const N: usize = $n;
            const BYTES: usize = $bytes;
            #[inline(always)]
            fn dequant(b: &[u8], y: &mut [f32]) {
                if let (Some(b), Some(y)) = (b.first_chunk::<$bytes>(), y.first_chunk_mut::<$n>()) {
                    $f(b, y);
                }
            }
        }
    };
}

ggml_block!(Q4_0, 32, 18, quant::q4_0);
ggml_block!(Q4_1, 32, 20, quant::q4_1);
ggml_block!(Q5_0, 32, 22, quant::q5_0);
ggml_block!(Q5_1, 32, 24, quant::q5_1);
ggml_block!(Q8_0, 32, 34, quant::q8_0);
ggml_block!(Q4K, 256, 144, quant::q4_k);
ggml_block!(Q5K, 256, 176, quant::q5_k);
ggml_block!(Q6K, 256, 210, quant::q6_k);

/// Implements [`Block`] for an element format, 32 values at a time.
macro_rules! element_block {
    ($name:ident, $size:literal, |$c:ident| $conv:expr) => {
        pub(super) struct $name;
        impl Block for $name {
            const N: usize = 32;
            const BYTES: usize = 32 * $size;
            #[inline(always)]
            fn dequant(b: &[u8], y: &mut [f32]) {
                Self::dequant_tail(b, y);
            }
            #[inline(always)]
            fn dequant_tail(b: &[u8], y: &mut [f32]) {
                for (o, $c) in y.iter_mut().zip(b.as_chunks::<$size>().0) {
                    *o = $conv;
                }
            }
        }
    };
}

element_block!(F32, 4, |c| f32::from_le_bytes(*c));
// bf16 is the top half of an f32: exact, and vectorizes to a shift.
element_block!(Bf16, 2, |c| f32::from_bits(
    u32::from(u16::from_le_bytes(*c)) << 16
));
element_block!(F16, 2, |c| f16::from_le_bytes(*c).to_f32());

/// A vector of f32 lanes of one instruction set. Values are tokens: one
/// exists only where its instruction set may run (see the constructors).
pub(super) trait Lanes: Copy {
    /// The vector.
    type V: Copy;
    /// Lanes per vector.
    const N: usize;
    /// All zero.
    fn zero(self) -> Self::V;
    /// The first `N` values of `s` (which holds at least `N`).
    fn load(self, s: &[f32]) -> Self::V;
    /// `a · b + c`.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn sum(self, a: Self::V) -> f32;
}

/// Plain Rust, eight lanes the compiler maps to the target's baseline
/// vectors (SSE2 on x86-64: a multiply then an add; NEON on aarch64,
/// where fused multiply-add is part of the baseline).
#[derive(Clone, Copy)]
pub(super) struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const N: usize = 8;
    #[inline(always)]
    fn zero(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> [f32; 8] {
        let mut v = [0.0; 8];
        v.copy_from_slice(&s[..8]);
        v
    }
    #[inline(always)]
    fn mul_add(self, a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        // Without the FMA instruction `mul_add` is a slow library call.
        std::array::from_fn(|i| {
            if cfg!(target_arch = "aarch64") {
                a[i].mul_add(b[i], c[i])
            } else {
                a[i] * b[i] + c[i]
            }
        })
    }
    #[inline(always)]
    fn add(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sum(self, a: [f32; 8]) -> f32 {
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
}

/// Dot products of one weight row with up to four activation rows: one
/// format's kernel.
pub(super) trait RowDot: Copy {
    /// Whether [`RowDot::dot`] needs the sums of each 32 activations (for
    /// formats with a per-block minimum: `Σ (d·q − m)·x = d·Σ q·x − m·Σ x`).
    const NEEDS_SUMS: bool = false;
    /// `Σ_k row[k] · xs[r][k]` for each `r`; `sums[r][j]` is the sum of
    /// `xs[r][32j..32j + 32]` when [`RowDot::NEEDS_SUMS`] (else empty).
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], sums: [&[f32]; R]) -> [f32; R];
}

/// The generic kernel: each block dequantized by `B` into a stack buffer,
/// then multiplied with `S`'s lanes.
pub(super) struct Dequant<S, B>(S, std::marker::PhantomData<B>);

impl<S: Copy, B> Clone for Dequant<S, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Copy, B> Copy for Dequant<S, B> {}

impl<S: Lanes, B: Block> Dequant<S, B> {
    #[inline(always)]
    pub(super) fn new(s: S) -> Self {
        Self(s, std::marker::PhantomData)
    }
}

impl<S: Lanes, B: Block> RowDot for Dequant<S, B> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _sums: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let mut buf = [0.0f32; MAX_BLOCK];
        // Independent accumulators per row so that consecutive
        // multiply-adds do not wait on each other: four for one row, one
        // each for four.
        let mut acc = [[s.zero(); 4]; R];
        let chains = 4 / R.max(1);
        let mut blocks = row.chunks_exact(B::BYTES);
        let mut k0 = 0;
        for b in &mut blocks {
            let w = &mut buf[..B::N];
            B::dequant(b, w);
            for (a, x) in acc.iter_mut().zip(xs) {
                let Some(x) = x.get(k0..k0 + B::N) else {
                    continue;
                };
                for (i, (w, x)) in w.chunks_exact(S::N).zip(x.chunks_exact(S::N)).enumerate() {
                    let c = &mut a[i % chains];
                    *c = s.mul_add(s.load(w), s.load(x), *c);
                }
            }
            k0 += B::N;
        }
        let mut out = [0.0f32; R];
        for (o, a) in out.iter_mut().zip(&acc) {
            let v = s.add(s.add(a[0], a[1]), s.add(a[2], a[3]));
            *o = s.sum(v);
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let n = (tail.len() * B::N / B::BYTES).min(MAX_BLOCK);
            let w = &mut buf[..n];
            B::dequant_tail(tail, w);
            for (o, x) in out.iter_mut().zip(xs) {
                if let Some(x) = x.get(k0..k0 + n) {
                    *o += w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
                }
            }
        }
        out
    }
}

/// Asks for the cache line holding `p[0]` to be fetched (a hint; reads
/// nothing).
#[inline(always)]
fn prefetch(p: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(b) = p.first() {
        // SAFETY: `_mm_prefetch` is SSE, part of every x86-64 CPU; a
        // prefetch does not read memory architecturally and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(b).cast(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How far ahead of the row being multiplied the weights are prefetched:
/// the hardware prefetcher alone leaves a streaming product at about half
/// the memory's read speed (`examples/cpu_kernels.rs`).
const PREFETCH_BYTES: usize = 8192;

/// `out[r][i] = Σ_k W[i][k] · x[r][k]` for the weight rows in `w` (each
/// `row_bytes` long) and the activation rows `x` (`out.len()` rows of `k`).
/// Each weight row is read from memory once; groups of four, two and one
/// activation rows reuse it from L1.
#[inline(always)]
pub(super) fn gemv<D: RowDot>(
    d: D,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) {
    let n = out.len();
    let xr = |r: usize| x.get(r * k..(r + 1) * k).unwrap_or(&[]);
    let sums: Vec<f32> = if D::NEEDS_SUMS {
        (0..n)
            .flat_map(|r| xr(r).chunks(32).map(|c| c.iter().sum::<f32>()))
            .collect()
    } else {
        Vec::new()
    };
    let per_row = k.div_ceil(32);
    let sr = |r: usize| sums.get(r * per_row..(r + 1) * per_row).unwrap_or(&[]);
    for (i, row) in w.chunks_exact(row_bytes).enumerate() {
        let ahead = (i * row_bytes + PREFETCH_BYTES).min(w.len());
        for line in w[ahead..(ahead + row_bytes).min(w.len())].chunks(64) {
            prefetch(line);
        }
        let mut r = 0;
        while r + 4 <= n {
            let xs = [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)];
            let ss = [sr(r), sr(r + 1), sr(r + 2), sr(r + 3)];
            for (j, v) in d.dot::<4>(row, xs, ss).into_iter().enumerate() {
                out[r + j][i] = v;
            }
            r += 4;
        }
        if r + 2 <= n {
            let y = d.dot::<2>(row, [xr(r), xr(r + 1)], [sr(r), sr(r + 1)]);
            out[r][i] = y[0];
            out[r + 1][i] = y[1];
            r += 2;
        }
        if r < n {
            out[r][i] = d.dot::<1>(row, [xr(r)], [sr(r)])[0];
        }
    }
}

/// Dequantizes the weight rows in `w` (each `row_bytes` long) into `out`,
/// `k` values per row.
#[inline(always)]
fn dequant_rows<B: Block>(w: &[u8], row_bytes: usize, k: usize, out: &mut [f32]) {
    for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        let mut blocks = row.chunks_exact(B::BYTES);
        let mut values = o.chunks_exact_mut(B::N);
        for (b, y) in (&mut blocks).zip(&mut values) {
            B::dequant(b, y);
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            B::dequant_tail(tail, values.into_remainder());
        }
    }
}

/// [`gemv`] through the generic kernel of `ty` with lanes `s`; `false`
/// when `ty` has no kernel.
#[inline(always)]
pub(super) fn generic_gemv<S: Lanes>(
    s: S,
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) -> bool {
    macro_rules! run {
        ($b:ty) => {
            gemv(Dequant::<S, $b>::new(s), w, row_bytes, x, k, out)
        };
    }
    match ty {
        GgmlType::F32 => run!(F32),
        GgmlType::F16 => run!(F16),
        GgmlType::BF16 => run!(Bf16),
        GgmlType::Q4_0 => run!(Q4_0),
        GgmlType::Q4_1 => run!(Q4_1),
        GgmlType::Q5_0 => run!(Q5_0),
        GgmlType::Q5_1 => run!(Q5_1),
        GgmlType::Q8_0 => run!(Q8_0),
        GgmlType::Q4_K => run!(Q4K),
        GgmlType::Q5_K => run!(Q5K),
        GgmlType::Q6_K => run!(Q6K),
        _ => return false,
    }
    true
}

/// [`dequant_rows`] for `ty`; `false` when `ty` has no kernel.
#[inline(always)]
pub(super) fn generic_dequant_rows(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    k: usize,
    out: &mut [f32],
) -> bool {
    match ty {
        GgmlType::F32 => dequant_rows::<F32>(w, row_bytes, k, out),
        GgmlType::F16 => dequant_rows::<F16>(w, row_bytes, k, out),
        GgmlType::BF16 => dequant_rows::<Bf16>(w, row_bytes, k, out),
        GgmlType::Q4_0 => dequant_rows::<Q4_0>(w, row_bytes, k, out),
        GgmlType::Q4_1 => dequant_rows::<Q4_1>(w, row_bytes, k, out),
        GgmlType::Q5_0 => dequant_rows::<Q5_0>(w, row_bytes, k, out),
        GgmlType::Q5_1 => dequant_rows::<Q5_1>(w, row_bytes, k, out),
        GgmlType::Q8_0 => dequant_rows::<Q8_0>(w, row_bytes, k, out),
        GgmlType::Q4_K => dequant_rows::<Q4K>(w, row_bytes, k, out),
        GgmlType::Q5_K => dequant_rows::<Q5K>(w, row_bytes, k, out),
        GgmlType::Q6_K => dequant_rows::<Q6K>(w, row_bytes, k, out),
        _ => return false,
    }
    true
}

/// Whether `ty` has a CPU kernel.
pub(super) fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// The kernels at the target's baseline (SSE2 on x86-64, NEON on aarch64).
pub(super) mod portable {
    use super::*;

    /// [`super::gemv`] for `ty`; `false` when `ty` has no kernel.
    pub(in crate::cpu) fn gemv(
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        x: &[f32],
        k: usize,
        out: &mut [&mut [f32]],
    ) -> bool {
        generic_gemv(Portable, ty, w, row_bytes, x, k, out)
    }

    /// [`super::dequant_rows`] for `ty`; `false` when `ty` has no kernel.
    pub(in crate::cpu) fn dequant_rows(
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        k: usize,
        out: &mut [f32],
    ) -> bool {
        generic_dequant_rows(ty, w, row_bytes, k, out)
    }
}
