//! x86-64 kernels: the AVX2 and AVX-512 lanes of the generic kernel, and
//! fused kernels for the formats GGUF files mostly use (`Q8_0`, `Q4_0`,
//! `Q5_0`, `Q4_K`, `Q6_K`, and `BF16` checkpoints), written once over
//! sixteen values ([`Wide`]) and built for AVX-512 and for AVX2.
//!
//! The fused kernels never write the f32 weights anywhere: each block's
//! integers are unpacked in SSE registers, widened and converted, multiplied
//! with the activations, and the block's scale is applied once to the
//! block's sum (`Σ (d·q)·x = d·Σ q·x`; with a minimum, `− m·Σ x` from the
//! precomputed sums of 32 activations). The integers and their layout are
//! ggml's (`ggml-common.h`), decoded as `crate::quant` decodes them; the
//! result equals dequantize-then-multiply up to the order of the f32 sums
//! (`tests/cpu_kernels.rs` checks every format on every instruction set).
//! X rows are checked once per weight row ([`X`]), not at every load.
//!
//! Owns: the `unsafe` of the intrinsics. Must never: be reached without the
//! CPU features it is compiled for (the [`Avx2`] and [`Avx512`] tokens are
//! made only by the `#[target_feature]` entry points below, which
//! `matrix.rs` calls only after `Isa::available()` found those features),
//! or load past a slice (every load reads a subslice checked to be long
//! enough, or an activation row below the length checked for it).

use std::arch::x86_64::*;

use super::kernels::{Lanes, RowDot, gemv, generic_dequant_rows, generic_gemv};
use crate::quant::{GgmlType, scale_min_k4};

/// AVX2 with FMA: eight lanes.
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

/// AVX-512 F/BW/VL: sixteen lanes.
#[derive(Clone, Copy)]
pub(super) struct Avx512(());

// SAFETY (every `unsafe` block of this impl): an `Avx2` is made only inside
// a function compiled for AVX2, FMA and F16C, called where the CPU has them;
// loads read 8 values of a slice checked to hold them.
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

// SAFETY (every `unsafe` block of this impl): an `Avx512` is made only
// inside a function compiled for AVX-512 F/BW/VL, AVX2, FMA and F16C, called
// where the CPU has them; loads read 16 values of a slice checked to hold
// them.
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

/// Sixteen f32 values in one instruction set's registers: one AVX-512
/// vector, or two AVX2 ones. The fused kernels below are written over it
/// once; what differs between the instruction sets is only how 16 values
/// are widened and multiplied.
trait Wide: Copy {
    /// Sixteen f32.
    type V: Copy;
    /// All zero.
    fn zero(self) -> Self::V;
    /// `v` in every lane.
    fn splat(self, v: f32) -> Self::V;
    /// The little-endian f16 at `b[at..at + 2]` in every lane (exact).
    fn f16_splat(self, b: &[u8], at: usize) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn sum(self, a: Self::V) -> f32;
    /// `x[at..at + 16]` (`at + 16 <= x.len`).
    fn x16(self, x: X, at: usize) -> Self::V;
    /// 16 unsigned bytes minus `offset`, as f32.
    fn u8_f32(self, v: __m128i, offset: i32) -> Self::V;
    /// 16 signed bytes as f32.
    fn i8_f32(self, v: __m128i) -> Self::V;
    /// 16 bf16 as f32 (exact).
    fn bf16_f32(self, h: __m256i) -> Self::V;
}

// SAFETY (every `unsafe` block from here to the entry points): the
// functions take an `Avx512` or `Avx2` token, which exists only where the
// CPU has the features its impl of `Lanes` above names; every load reads a
// subslice whose length was checked by slicing just before, or an `X` row
// below its checked length.
impl Wide for Avx512 {
    type V = __m512;
    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn f16_splat(self, b: &[u8], at: usize) -> __m512 {
        // Broadcast, then convert: inserting the half into a register would
        // keep the register's other lanes and so tie each block to the
        // last one's accumulator, a chain of ~20 cycles.
        let h = i16::from_le_bytes([b[at], b[at + 1]]);
        // SAFETY: see above.
        unsafe { _mm512_cvtph_ps(_mm256_set1_epi16(h)) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn sum(self, a: __m512) -> f32 {
        // SAFETY: see above.
        unsafe { _mm512_reduce_add_ps(a) }
    }
    #[inline(always)]
    fn x16(self, x: X, at: usize) -> __m512 {
        debug_assert!(at + 16 <= x.len);
        // SAFETY: see above.
        unsafe { _mm512_loadu_ps(x.p.add(at)) }
    }
    #[inline(always)]
    fn u8_f32(self, v: __m128i, offset: i32) -> __m512 {
        // SAFETY: see above.
        unsafe {
            _mm512_cvtepi32_ps(_mm512_sub_epi32(
                _mm512_cvtepu8_epi32(v),
                _mm512_set1_epi32(offset),
            ))
        }
    }
    #[inline(always)]
    fn i8_f32(self, v: __m128i) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)) }
    }
    #[inline(always)]
    fn bf16_f32(self, h: __m256i) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))) }
    }
}

impl Wide for Avx2 {
    type V = [__m256; 2];
    #[inline(always)]
    fn zero(self) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe { [_mm256_setzero_ps(); 2] }
    }
    #[inline(always)]
    fn splat(self, v: f32) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe { [_mm256_set1_ps(v); 2] }
    }
    #[inline(always)]
    fn f16_splat(self, b: &[u8], at: usize) -> [__m256; 2] {
        let h = i16::from_le_bytes([b[at], b[at + 1]]);
        // SAFETY: see above (and `Avx512::f16_splat` for why broadcast first).
        unsafe { [_mm256_cvtph_ps(_mm_set1_epi16(h)); 2] }
    }
    #[inline(always)]
    fn mul(self, a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe { [_mm256_mul_ps(a[0], b[0]), _mm256_mul_ps(a[1], b[1])] }
    }
    #[inline(always)]
    fn mul_add(self, a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    fn sum(self, a: [__m256; 2]) -> f32 {
        // SAFETY: see above.
        let v = unsafe { _mm256_add_ps(a[0], a[1]) };
        Lanes::sum(self, v)
    }
    #[inline(always)]
    fn x16(self, x: X, at: usize) -> [__m256; 2] {
        debug_assert!(at + 16 <= x.len);
        // SAFETY: see above.
        unsafe {
            [
                _mm256_loadu_ps(x.p.add(at)),
                _mm256_loadu_ps(x.p.add(at + 8)),
            ]
        }
    }
    #[inline(always)]
    fn u8_f32(self, v: __m128i, offset: i32) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe {
            let o = _mm256_set1_epi32(offset);
            let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v), o));
            [f(v), f(_mm_srli_si128::<8>(v))]
        }
    }
    #[inline(always)]
    fn i8_f32(self, v: __m128i) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe {
            [
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(v))),
            ]
        }
    }
    #[inline(always)]
    fn bf16_f32(self, h: __m256i) -> [__m256; 2] {
        // SAFETY: see above.
        unsafe {
            let f =
                |v: __m128i| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)));
            [
                f(_mm256_castsi256_si128(h)),
                f(_mm256_extracti128_si256::<1>(h)),
            ]
        }
    }
}

/// One row of activations, its length checked once per weight row rather
/// than at every load.
#[derive(Clone, Copy)]
struct X {
    p: *const f32,
    len: usize,
}

impl X {
    /// The rows of `xs`, each checked to hold `len` values.
    ///
    /// # Panics
    ///
    /// If a row is shorter (the caller's rows are `k` long: never).
    #[inline(always)]
    fn rows<const R: usize>(xs: [&[f32]; R], len: usize) -> [X; R] {
        let mut out = [X {
            p: std::ptr::null(),
            len: 0,
        }; R];
        for (o, x) in out.iter_mut().zip(xs) {
            assert!(
                x.len() >= len,
                "an activation row is shorter than the weight row"
            );
            *o = X { p: x.as_ptr(), len };
        }
        out
    }
}

/// The 16 bytes of `b[at..at + 16]`.
#[inline(always)]
fn bytes16(b: &[u8], at: usize) -> __m128i {
    let b = &b[at..at + 16];
    // SAFETY: SSE2 is part of every x86-64 CPU; `b` holds 16 bytes.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// The little-endian f16 at `b[at..at + 2]` as f32, exactly (IEEE 754
/// binary16 widened by hand: no vector register involved).
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]);
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1F;
    let man = u32::from(h & 0x3FF);
    match exp {
        // Zero and subnormals: man · 2⁻²⁴, exact in f32.
        0 => {
            let v = man as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 { -v } else { v }
        }
        // Infinities and NaNs keep their payload.
        31 => f32::from_bits(sign | 0x7F80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Bits `first..first + 16` of `bits`, one per byte, as 0x10 (set) or 0.
#[inline(always)]
fn bits_as_16(bits: u32, first: u32) -> __m128i {
    // SAFETY: SSE2 and SSSE3 (`pshufb`) are part of every CPU these
    // kernels run on (AVX2 implies both).
    unsafe {
        let v = _mm_set1_epi16(((bits >> first) & 0xFFFF) as u16 as i16);
        // Byte j takes the low byte for j < 8, the high byte after.
        let spread = _mm_shuffle_epi8(
            v,
            _mm_set_epi8(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        );
        let mask = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm_cmpeq_epi8(_mm_and_si128(spread, mask), mask);
        _mm_and_si128(set, _mm_set1_epi8(0x10))
    }
}

/// Bits `2k..2k + 2` of each byte of `h`, moved to bits 4 and 5.
#[inline(always)]
fn two_bits_at_4(h: __m128i, k: usize) -> __m128i {
    // SAFETY: SSE2 is part of every x86-64 CPU.
    unsafe {
        let h = match k {
            0 => h,
            1 => _mm_srli_epi16::<2>(h),
            2 => _mm_srli_epi16::<4>(h),
            _ => _mm_srli_epi16::<6>(h),
        };
        _mm_slli_epi16::<4>(_mm_and_si128(h, _mm_set1_epi8(0x03)))
    }
}

/// Low and high nibbles of 16 bytes.
#[inline(always)]
fn nibbles(v: __m128i) -> (__m128i, __m128i) {
    // SAFETY: SSE2 is part of every x86-64 CPU.
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        (
            _mm_and_si128(v, low),
            _mm_and_si128(_mm_srli_epi16::<4>(v), low),
        )
    }
}

/// The sums of each row's accumulator.
#[inline(always)]
fn sums<W: Wide, const R: usize>(w: W, acc: [W::V; R]) -> [f32; R] {
    let mut out = [0.0f32; R];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = w.sum(a);
    }
    out
}

/// `Q8_0`: 32 signed bytes times an f16 scale.
#[derive(Clone, Copy)]
struct Q8_0<W>(W);

impl<W: Wide> RowDot for Q8_0<W> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 34 * 32);
        let mut acc = [s.zero(); R];
        for (i, b) in row.chunks_exact(34).enumerate() {
            let d = s.f16_splat(b, 0);
            let q0 = s.i8_f32(bytes16(b, 2));
            let q1 = s.i8_f32(bytes16(b, 18));
            for (a, &x) in acc.iter_mut().zip(&xs) {
                let p = s.mul(q0, s.x16(x, 32 * i));
                let p = s.mul_add(q1, s.x16(x, 32 * i + 16), p);
                *a = s.mul_add(p, d, *a);
            }
        }
        sums(s, acc)
    }
}

/// `Q4_0` and (`FIVE`) `Q5_0`: 4-bit values, with a fifth bit from a 32-bit
/// mask for `Q5_0`, offset by 8 or 16, times an f16 scale.
#[derive(Clone, Copy)]
struct Q45_0<W, const FIVE: bool>(W);

impl<W: Wide, const FIVE: bool> RowDot for Q45_0<W, FIVE> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let (size, qs_at, offset) = if FIVE { (22, 6, 16) } else { (18, 2, 8) };
        let xs = X::rows(xs, row.len() / size * 32);
        let mut acc = [s.zero(); R];
        for (i, b) in row.chunks_exact(size).enumerate() {
            let d = s.f16_splat(b, 0);
            let (mut lo, mut hi) = nibbles(bytes16(b, qs_at));
            if FIVE {
                // Value j's fifth bit is bit j of `qh`.
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                // SAFETY: SSE2 is part of every x86-64 CPU.
                unsafe {
                    lo = _mm_or_si128(lo, bits_as_16(qh, 0));
                    hi = _mm_or_si128(hi, bits_as_16(qh, 16));
                }
            }
            let (lo, hi) = (s.u8_f32(lo, offset), s.u8_f32(hi, offset));
            for (a, &x) in acc.iter_mut().zip(&xs) {
                let p = s.mul(lo, s.x16(x, 32 * i));
                let p = s.mul_add(hi, s.x16(x, 32 * i + 16), p);
                *a = s.mul_add(p, d, *a);
            }
        }
        sums(s, acc)
    }
}

/// `Q4_K`: super-blocks of 256 in eight sub-blocks of 32, each
/// `(d·sc)·q − (dmin·m)` with 6-bit `sc`, `m`.
#[derive(Clone, Copy)]
struct Q4K<W>(W);

impl<W: Wide> RowDot for Q4K<W> {
    const NEEDS_SUMS: bool = true;

    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], sums32: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 144 * 256);
        let mut acc = [s.zero(); R];
        let mut mins = [0.0f32; R];
        for (i, b) in row.chunks_exact(144).enumerate() {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            for j in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * j, scales);
                let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                let at = 16 + 32 * j;
                let (la, ha) = nibbles(bytes16(b, at));
                let (lb, hb) = nibbles(bytes16(b, at + 16));
                let (l0, l1) = (s.u8_f32(la, 0), s.u8_f32(lb, 0));
                let (h0, h1) = (s.u8_f32(ha, 0), s.u8_f32(hb, 0));
                let d1 = s.splat(d * f32::from(sc1));
                let d2 = s.splat(d * f32::from(sc2));
                let base = 256 * i + 64 * j;
                let sb = 8 * i + 2 * j;
                for ((a, &x), (m, sum)) in acc.iter_mut().zip(&xs).zip(mins.iter_mut().zip(sums32))
                {
                    let p = s.mul(l0, s.x16(x, base));
                    let p = s.mul_add(l1, s.x16(x, base + 16), p);
                    *a = s.mul_add(p, d1, *a);
                    let p = s.mul(h0, s.x16(x, base + 32));
                    let p = s.mul_add(h1, s.x16(x, base + 48), p);
                    *a = s.mul_add(p, d2, *a);
                    *m += dmin * f32::from(m1) * sum[sb] + dmin * f32::from(m2) * sum[sb + 1];
                }
            }
        }
        let mut out = sums(s, acc);
        for (o, m) in out.iter_mut().zip(mins) {
            *o -= m;
        }
        out
    }
}

/// `Q6_K`: super-blocks of 256, 6-bit values (4 low bits in `ql`, 2 high
/// in `qh`) offset by 32, times `d` and a signed 8-bit scale per 16.
#[derive(Clone, Copy)]
struct Q6K<W>(W);

impl<W: Wide> RowDot for Q6K<W> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 210 * 256);
        let mut acc = [s.zero(); R];
        for (i, b) in row.chunks_exact(210).enumerate() {
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (64 * n, 128 + 32 * n, 192 + 8 * n);
                for half in 0..2 {
                    let l = 16 * half;
                    let (a_lo, a_hi) = nibbles(bytes16(b, ql + l));
                    let (c_lo, c_hi) = nibbles(bytes16(b, ql + l + 32));
                    let h = bytes16(b, qh + l);
                    // SAFETY: SSE2 is part of every x86-64 CPU.
                    let q = unsafe {
                        [
                            _mm_or_si128(a_lo, two_bits_at_4(h, 0)),
                            _mm_or_si128(c_lo, two_bits_at_4(h, 1)),
                            _mm_or_si128(a_hi, two_bits_at_4(h, 2)),
                            _mm_or_si128(c_hi, two_bits_at_4(h, 3)),
                        ]
                    };
                    let base = 256 * i + 128 * n + l;
                    for (k, q) in q.into_iter().enumerate() {
                        let scale = s.splat(d * f32::from(b[sc + half + 2 * k] as i8));
                        let v = s.mul(s.u8_f32(q, 32), scale);
                        for (a, &x) in acc.iter_mut().zip(&xs) {
                            *a = s.mul_add(v, s.x16(x, base + 32 * k), *a);
                        }
                    }
                }
            }
        }
        sums(s, acc)
    }
}

/// `BF16`: the top halves of f32s.
#[derive(Clone, Copy)]
struct Bf16<W>(W);

impl<W: Wide> RowDot for Bf16<W> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let whole = row.len() / 64 * 64;
        let rows = X::rows(xs, whole / 2);
        let mut acc = [[s.zero(); 2]; R];
        for (i, c) in row[..whole].chunks_exact(32).enumerate() {
            // SAFETY: AVX2 is part of both tokens' features; `c` holds 32 bytes.
            let h = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
            let w = s.bf16_f32(h);
            for (a, &x) in acc.iter_mut().zip(&rows) {
                a[i % 2] = s.mul_add(w, s.x16(x, 16 * i), a[i % 2]);
            }
        }
        let mut out = [0.0f32; R];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = s.sum(a[0]) + s.sum(a[1]);
        }
        // A row that is not whole 32-value chunks ends one value at a time.
        let k0 = whole / 2;
        for (o, x) in out.iter_mut().zip(xs) {
            for (j, c) in row[whole..].chunks_exact(2).enumerate() {
                let w = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                *o += w * x[k0 + j];
            }
        }
        out
    }
}

/// [`gemv`] through the fused kernel of `ty`, or the generic one.
#[inline(always)]
fn fused_gemv<W: Wide + Lanes>(
    s: W,
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) -> bool {
    match ty {
        GgmlType::Q8_0 => gemv(Q8_0(s), w, row_bytes, x, k, out),
        GgmlType::Q4_0 => gemv(Q45_0::<W, false>(s), w, row_bytes, x, k, out),
        GgmlType::Q5_0 => gemv(Q45_0::<W, true>(s), w, row_bytes, x, k, out),
        GgmlType::Q4_K => gemv(Q4K(s), w, row_bytes, x, k, out),
        GgmlType::Q6_K => gemv(Q6K(s), w, row_bytes, x, k, out),
        GgmlType::BF16 => gemv(Bf16(s), w, row_bytes, x, k, out),
        _ => return generic_gemv(s, ty, w, row_bytes, x, k, out),
    }
    true
}

/// The AVX-512 kernels' entry for a run of weight rows (see
/// `kernels::gemv`); `false` when `ty` has no kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn gemv_avx512(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) -> bool {
    // The token: this function is compiled for the features `Avx512`
    // stands for and runs only where the CPU has them (`matrix.rs`).
    fused_gemv(Avx512(()), ty, w, row_bytes, x, k, out)
}

/// The AVX-512 build of `kernels::dequant_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_rows_avx512(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    k: usize,
    out: &mut [f32],
) -> bool {
    generic_dequant_rows(ty, w, row_bytes, k, out)
}

/// The AVX2 kernels' entry (see [`gemv_avx512`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemv_avx2(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) -> bool {
    // The token: this function is compiled for the features `Avx2` stands
    // for and runs only where the CPU has them (`matrix.rs`).
    fused_gemv(Avx2(()), ty, w, row_bytes, x, k, out)
}

/// The AVX2 build of `kernels::dequant_rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dequant_rows_avx2(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    k: usize,
    out: &mut [f32],
) -> bool {
    generic_dequant_rows(ty, w, row_bytes, k, out)
}
