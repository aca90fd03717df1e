//! The inner loops of the CPU products, written once as plain Rust and
//! compiled once per instruction set (see the `isa!` instances at the end).
//!
//! Each storage format is a [`Block`]: a number of values, a number of
//! bytes, and a dequantizer that is `crate::quant`'s own (inlined here, so a
//! block dequantizes bit for bit as [`crate::quant::dequantize`] does).
//! [`gemv`] dequantizes one block of a weight row into a small stack buffer
//! (it never leaves L1) and multiply-adds it into per-activation-row lane
//! accumulators; [`dequant_rows`] fills an f32 panel for the prompt path.
//! Several independent accumulator chains per row keep the FMA units busy
//! while the next block streams in.
//!
//! Owns: the arithmetic. Must never: allocate, read past the slices it is
//! given (everything is bounds-checked slicing; no `unsafe` here), or be
//! called through an instruction set the CPU lacks (`matrix.rs` checks).

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

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Lanes;

    /// AVX2 with FMA: eight lanes.
    #[derive(Clone, Copy)]
    pub(in crate::cpu) struct Avx2(());

    impl Avx2 {
        /// # Safety
        ///
        /// The CPU must have AVX2 and FMA.
        #[inline(always)]
        pub(in crate::cpu) unsafe fn new_unchecked() -> Self {
            Self(())
        }
    }

    // SAFETY (every block below): an `Avx2` exists only where the CPU has
    // AVX2 and FMA (`new_unchecked`); loads read 8 values of a slice
    // checked to hold them.
    impl Lanes for Avx2 {
        type V = __m256;
        const N: usize = 8;
        #[inline(always)]
        fn zero(self) -> __m256 {
            // SAFETY: see the impl.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> __m256 {
            let s = &s[..8];
            // SAFETY: see the impl; `s` holds 8 values.
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: see the impl.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see the impl.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sum(self, a: __m256) -> f32 {
            // SAFETY: see the impl.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }
        }
    }

    /// AVX-512 F: sixteen lanes.
    #[derive(Clone, Copy)]
    pub(in crate::cpu) struct Avx512(());

    impl Avx512 {
        /// # Safety
        ///
        /// The CPU must have AVX-512 F.
        #[inline(always)]
        pub(in crate::cpu) unsafe fn new_unchecked() -> Self {
            Self(())
        }
    }

    // SAFETY (every block below): an `Avx512` exists only where the CPU has
    // AVX-512 F (`new_unchecked`); loads read 16 values of a slice checked
    // to hold them.
    impl Lanes for Avx512 {
        type V = __m512;
        const N: usize = 16;
        #[inline(always)]
        fn zero(self) -> __m512 {
            // SAFETY: see the impl.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        fn load(self, s: &[f32]) -> __m512 {
            let s = &s[..16];
            // SAFETY: see the impl; `s` holds 16 values.
            unsafe { _mm512_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: see the impl.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see the impl.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sum(self, a: __m512) -> f32 {
            // SAFETY: see the impl.
            unsafe { _mm512_reduce_add_ps(a) }
        }
    }
}

/// Dot products of one weight row (`row`, whole blocks plus, for element
/// formats, a tail) with `R` activation rows of `k` values each, with `C`
/// independent accumulators per row so consecutive multiply-adds do not
/// wait on each other.
#[inline(always)]
fn dot_row<S: Lanes, B: Block, const R: usize, const C: usize>(
    s: S,
    row: &[u8],
    xs: [&[f32]; R],
    buf: &mut [f32; MAX_BLOCK],
) -> [f32; R] {
    let mut acc = [[s.zero(); C]; R];
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
                let c = &mut a[i % C];
                *c = s.mul_add(s.load(w), s.load(x), *c);
            }
        }
        k0 += B::N;
    }
    let mut out = [0.0f32; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        let mut v = a[0];
        for c in &a[1..] {
            v = s.add(v, *c);
        }
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

/// `out[r][i] = Σ_k W[i][k] · x[r][k]` for the weight rows in `w` (each
/// `row_bytes` long) and the activation rows `x` (`out.len()` rows of `k`).
/// Each weight row is read from memory once; groups of four, two and one
/// activation rows reuse it from L1.
#[inline(always)]
fn gemv<S: Lanes, B: Block>(
    s: S,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) {
    let n = out.len();
    let xr = |r: usize| x.get(r * k..(r + 1) * k).unwrap_or(&[]);
    let mut buf = [0.0f32; MAX_BLOCK];
    for (i, row) in w.chunks_exact(row_bytes).enumerate() {
        let mut r = 0;
        while r + 4 <= n {
            let y =
                dot_row::<S, B, 4, 1>(s, row, [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)], &mut buf);
            for (j, v) in y.into_iter().enumerate() {
                out[r + j][i] = v;
            }
            r += 4;
        }
        if r + 2 <= n {
            let y = dot_row::<S, B, 2, 2>(s, row, [xr(r), xr(r + 1)], &mut buf);
            out[r][i] = y[0];
            out[r + 1][i] = y[1];
            r += 2;
        }
        if r < n {
            out[r][i] = dot_row::<S, B, 1, 4>(s, row, [xr(r)], &mut buf)[0];
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

/// Calls `$f::<Format>` for the [`Block`] of `$ty`; `false` for a type
/// without one.
macro_rules! by_type {
    ($ty:expr, $f:ident, $($arg:expr),*) => {
        match $ty {
            GgmlType::F32 => $f::<F32>($($arg),*),
            GgmlType::F16 => $f::<F16>($($arg),*),
            GgmlType::BF16 => $f::<Bf16>($($arg),*),
            GgmlType::Q4_0 => $f::<Q4_0>($($arg),*),
            GgmlType::Q4_1 => $f::<Q4_1>($($arg),*),
            GgmlType::Q5_0 => $f::<Q5_0>($($arg),*),
            GgmlType::Q5_1 => $f::<Q5_1>($($arg),*),
            GgmlType::Q8_0 => $f::<Q8_0>($($arg),*),
            GgmlType::Q4_K => $f::<Q4K>($($arg),*),
            GgmlType::Q5_K => $f::<Q5K>($($arg),*),
            GgmlType::Q6_K => $f::<Q6K>($($arg),*),
            _ => return false,
        }
    };
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

/// One instance of the kernels for an instruction set: `gemv` and
/// `dequant_rows` over every format, compiled with `$features` enabled and
/// the lanes `$lanes` (made by `$make`).
macro_rules! isa {
    ($module:ident, $lanes:ty, $make:expr $(, $features:literal)?) => {
        pub(super) mod $module {
            use super::*;

            /// [`super::gemv`] for `ty`; `false` when `ty` has no kernel.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) fn gemv(
                ty: GgmlType,
                w: &[u8],
                row_bytes: usize,
                x: &[f32],
                k: usize,
                out: &mut [&mut [f32]],
            ) -> bool {
                by_type!(ty, gemv_of, w, row_bytes, x, k, out);
                true
            }

            #[inline(always)]
            fn gemv_of<B: Block>(
                w: &[u8],
                row_bytes: usize,
                x: &[f32],
                k: usize,
                out: &mut [&mut [f32]],
            ) {
                let lanes: $lanes = $make;
                super::gemv::<$lanes, B>(lanes, w, row_bytes, x, k, out);
            }

            /// [`super::dequant_rows`] for `ty`; `false` when `ty` has no kernel.
            $(#[target_feature(enable = $features)])?
            pub(in crate::cpu) fn dequant_rows(
                ty: GgmlType,
                w: &[u8],
                row_bytes: usize,
                k: usize,
                out: &mut [f32],
            ) -> bool {
                by_type!(ty, dequant_of, w, row_bytes, k, out);
                true
            }

            #[inline(always)]
            fn dequant_of<B: Block>(w: &[u8], row_bytes: usize, k: usize, out: &mut [f32]) {
                super::dequant_rows::<B>(w, row_bytes, k, out);
            }
        }
    };
}

isa!(portable, Portable, Portable);
#[cfg(target_arch = "x86_64")]
isa!(
    avx2,
    Avx2,
    // SAFETY: these functions run only where `Isa::available()` found the
    // features they are compiled with (`matrix.rs` checks before calling).
    unsafe { Avx2::new_unchecked() },
    "avx2,fma,f16c"
);
#[cfg(target_arch = "x86_64")]
isa!(
    avx512,
    Avx512,
    // SAFETY: as above.
    unsafe { Avx512::new_unchecked() },
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
);
