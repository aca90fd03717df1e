//! x86-64 kernels: the AVX2 and AVX-512 lanes of the generic kernel, and
//! hand-written AVX-512 kernels for the formats GGUF files mostly use
//! (`Q8_0`, `Q4_0`, `Q5_0`, `Q4_K`, `Q6_K`, and `BF16` checkpoints).
//!
//! The hand-written kernels never write the f32 weights anywhere: each
//! block's integers are widened and converted in registers, multiplied with
//! the activations, and the block's scale is applied once to the block's
//! sum (`Σ (d·q)·x = d·Σ q·x`; with a minimum, `− m·Σ x` from the
//! precomputed sums of 32 activations). The integers and their layout are
//! ggml's (`ggml-common.h`), decoded as `crate::quant` decodes them; the
//! result equals dequantize-then-multiply up to the order of the f32 sums
//! (`tests/cpu_kernels.rs` checks every format on every instruction set).
//!
//! Owns: the `unsafe` of the intrinsics. Must never: be reached without the
//! CPU features it is compiled for (the [`Avx2`] and [`Avx512`] tokens are
//! made only by the `#[target_feature]` entry points below, which
//! `matrix.rs` calls only after `Isa::available()` found those features),
//! or load past a slice (every load reads a subslice checked to be long
//! enough).

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

// SAFETY (every `unsafe` block from here to the entry points): the
// functions take an `Avx512` token, which exists only where the CPU has
// AVX-512 F/BW/VL, AVX2, FMA and F16C (see the impl above); every load
// reads a subslice whose length was checked by slicing just before.
impl Avx512 {
    /// The little-endian f16 at `b[at..at + 2]` in every lane, as f32
    /// (exact). Broadcast before converting: inserting the half into a
    /// register would tie each block to the last one's accumulator (the
    /// insert keeps the register's other lanes), a chain of ~20 cycles.
    #[inline(always)]
    fn f16x16(self, b: &[u8], at: usize) -> __m512 {
        let h = i16::from_le_bytes([b[at], b[at + 1]]);
        // SAFETY: see above.
        unsafe { _mm512_cvtph_ps(_mm256_set1_epi16(h)) }
    }

    /// The little-endian f16 at `b[at..at + 2]`, as f32 (exact).
    #[inline(always)]
    fn f16(self, b: &[u8], at: usize) -> f32 {
        // SAFETY: see above.
        unsafe { _mm512_cvtss_f32(self.f16x16(b, at)) }
    }

    /// 16 activations from `x[at..at + 16]` (`at + 16 <= x.len`).
    #[inline(always)]
    fn x16(self, x: X, at: usize) -> __m512 {
        debug_assert!(at + 16 <= x.len);
        // SAFETY: see above; `X::new` checked that `x` holds `len` values,
        // and every caller reads below the `len` it asked for.
        unsafe { _mm512_loadu_ps(x.p.add(at)) }
    }

    /// The 16 bytes of `b[at..at + 16]`.
    #[inline(always)]
    fn bytes16(self, b: &[u8], at: usize) -> __m128i {
        let b = &b[at..at + 16];
        // SAFETY: see above; `b` holds 16 bytes.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    /// 16 unsigned bytes as f32 after subtracting `offset`.
    #[inline(always)]
    fn u8_minus(self, v: __m128i, offset: i32) -> __m512 {
        // SAFETY: see above.
        unsafe {
            _mm512_cvtepi32_ps(_mm512_sub_epi32(
                _mm512_cvtepu8_epi32(v),
                _mm512_set1_epi32(offset),
            ))
        }
    }

    /// 16 unsigned bytes as f32.
    #[inline(always)]
    fn u8_f32(self, v: __m128i) -> __m512 {
        // SAFETY: see above.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)) }
    }

    /// Bits `2k..2k + 2` of each byte of `h`, moved to bits 4 and 5.
    #[inline(always)]
    fn two_bits_at_4(self, h: __m128i, k: usize) -> __m128i {
        // SAFETY: see above.
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

    /// The sums of `acc`'s lanes.
    #[inline(always)]
    fn sums<const R: usize>(self, acc: [__m512; R]) -> [f32; R] {
        let mut out = [0.0f32; R];
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: see above.
            *o = unsafe { _mm512_reduce_add_ps(a) };
        }
        out
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
    /// `x`, of which the kernel reads the first `len` values.
    ///
    /// # Panics
    ///
    /// If `x` is shorter (the caller's rows are `k` long: never).
    #[inline(always)]
    fn new(x: &[f32], len: usize) -> Self {
        assert!(
            x.len() >= len,
            "an activation row is shorter than the weight row"
        );
        Self { p: x.as_ptr(), len }
    }

    /// The rows of `xs`, each checked to hold `len` values.
    #[inline(always)]
    fn rows<const R: usize>(xs: [&[f32]; R], len: usize) -> [X; R] {
        let mut out = [X {
            p: std::ptr::null(),
            len: 0,
        }; R];
        for (o, x) in out.iter_mut().zip(xs) {
            *o = X::new(x, len);
        }
        out
    }
}

/// `Q8_0`: 32 signed bytes times an f16 scale.
#[derive(Clone, Copy)]
struct Q8_0x16(Avx512);

impl RowDot for Q8_0x16 {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 34 * 32);
        // SAFETY: see above.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for (i, b) in row.chunks_exact(34).enumerate() {
                let d = s.f16x16(b, 0);
                let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s.bytes16(b, 2)));
                let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s.bytes16(b, 18)));
                for (a, x) in acc.iter_mut().zip(xs) {
                    let p = _mm512_mul_ps(q0, s.x16(x, 32 * i));
                    let p = _mm512_fmadd_ps(q1, s.x16(x, 32 * i + 16), p);
                    *a = _mm512_fmadd_ps(p, d, *a);
                }
            }
            s.sums(acc)
        }
    }
}

/// `Q4_0` (high nibbles `None`) and `Q5_0`: 4-bit values, with a fifth bit
/// from a 32-bit mask for `Q5_0`, offset by 8 or 16, times an f16 scale.
#[derive(Clone, Copy)]
struct Q45_0x16<const FIVE: bool>(Avx512);

impl<const FIVE: bool> RowDot for Q45_0x16<FIVE> {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let (size, qs_at) = if FIVE { (22, 6) } else { (18, 2) };
        let xs = X::rows(xs, row.len() / size * 32);
        // SAFETY: see above.
        unsafe {
            let low = _mm_set1_epi8(0x0F);
            let sixteen = _mm512_set1_epi32(16);
            let mut acc = [_mm512_setzero_ps(); R];
            for (i, b) in row.chunks_exact(size).enumerate() {
                let d = s.f16x16(b, 0);
                let qs = s.bytes16(b, qs_at);
                let lo = _mm512_cvtepu8_epi32(_mm_and_si128(qs, low));
                let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(qs), low));
                let (lo, hi) = if FIVE {
                    // Value j's fifth bit is bit j of `qh`: add 16 where set.
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let lo = _mm512_mask_add_epi32(lo, qh as u16, lo, sixteen);
                    let hi = _mm512_mask_add_epi32(hi, (qh >> 16) as u16, hi, sixteen);
                    (_mm512_sub_epi32(lo, sixteen), _mm512_sub_epi32(hi, sixteen))
                } else {
                    let eight = _mm512_set1_epi32(8);
                    (_mm512_sub_epi32(lo, eight), _mm512_sub_epi32(hi, eight))
                };
                let (lo, hi) = (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi));
                for (a, x) in acc.iter_mut().zip(xs) {
                    let p = _mm512_mul_ps(lo, s.x16(x, 32 * i));
                    let p = _mm512_fmadd_ps(hi, s.x16(x, 32 * i + 16), p);
                    *a = _mm512_fmadd_ps(p, d, *a);
                }
            }
            s.sums(acc)
        }
    }
}

/// `Q4_K`: super-blocks of 256 in eight sub-blocks of 32, each
/// `(d·sc)·q − (dmin·m)` with 6-bit `sc`, `m`.
#[derive(Clone, Copy)]
struct Q4Kx16(Avx512);

impl RowDot for Q4Kx16 {
    const NEEDS_SUMS: bool = true;

    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], sums: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 144 * 256);
        // SAFETY: see above.
        unsafe {
            let low = _mm_set1_epi8(0x0F);
            let mut acc = [_mm512_setzero_ps(); R];
            let mut mins = [0.0f32; R];
            for (i, b) in row.chunks_exact(144).enumerate() {
                let d = s.f16(b, 0);
                let dmin = s.f16(b, 2);
                let scales = &b[4..16];
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let at = 16 + 32 * j;
                    let (qa, qb) = (s.bytes16(b, at), s.bytes16(b, at + 16));
                    let lo = [_mm_and_si128(qa, low), _mm_and_si128(qb, low)];
                    let hi = [
                        _mm_and_si128(_mm_srli_epi16::<4>(qa), low),
                        _mm_and_si128(_mm_srli_epi16::<4>(qb), low),
                    ];
                    let (l0, l1) = (s.u8_f32(lo[0]), s.u8_f32(lo[1]));
                    let (h0, h1) = (s.u8_f32(hi[0]), s.u8_f32(hi[1]));
                    let d1 = _mm512_set1_ps(d * f32::from(sc1));
                    let d2 = _mm512_set1_ps(d * f32::from(sc2));
                    let base = 256 * i + 64 * j;
                    for ((a, x), (m, sum)) in acc.iter_mut().zip(xs).zip(mins.iter_mut().zip(sums))
                    {
                        let p = _mm512_mul_ps(l0, s.x16(x, base));
                        let p = _mm512_fmadd_ps(l1, s.x16(x, base + 16), p);
                        *a = _mm512_fmadd_ps(p, d1, *a);
                        let p = _mm512_mul_ps(h0, s.x16(x, base + 32));
                        let p = _mm512_fmadd_ps(h1, s.x16(x, base + 48), p);
                        *a = _mm512_fmadd_ps(p, d2, *a);
                        let sb = 8 * i + 2 * j;
                        *m += dmin * f32::from(m1) * sum[sb] + dmin * f32::from(m2) * sum[sb + 1];
                    }
                }
            }
            let mut out = s.sums(acc);
            for (o, m) in out.iter_mut().zip(mins) {
                *o -= m;
            }
            out
        }
    }
}

/// `Q6_K`: super-blocks of 256, 6-bit values (4 low bits in `ql`, 2 high
/// in `qh`) offset by 32, times `d` and a signed 8-bit scale per 16.
#[derive(Clone, Copy)]
struct Q6Kx16(Avx512);

impl RowDot for Q6Kx16 {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let xs = X::rows(xs, row.len() / 210 * 256);
        // SAFETY: see above.
        unsafe {
            let low4 = _mm_set1_epi8(0x0F);
            let mut acc = [_mm512_setzero_ps(); R];
            for (i, b) in row.chunks_exact(210).enumerate() {
                let d = s.f16(b, 208);
                for n in 0..2 {
                    let (ql, qh, sc) = (64 * n, 128 + 32 * n, 192 + 8 * n);
                    for half in 0..2 {
                        let l = 16 * half;
                        let a = s.bytes16(b, ql + l);
                        let c = s.bytes16(b, ql + l + 32);
                        let h = s.bytes16(b, qh + l);
                        let q = [
                            _mm_or_si128(_mm_and_si128(a, low4), s.two_bits_at_4(h, 0)),
                            _mm_or_si128(_mm_and_si128(c, low4), s.two_bits_at_4(h, 1)),
                            _mm_or_si128(
                                _mm_and_si128(_mm_srli_epi16::<4>(a), low4),
                                s.two_bits_at_4(h, 2),
                            ),
                            _mm_or_si128(
                                _mm_and_si128(_mm_srli_epi16::<4>(c), low4),
                                s.two_bits_at_4(h, 3),
                            ),
                        ];
                        let base = 256 * i + 128 * n + l;
                        for (k, q) in q.into_iter().enumerate() {
                            let v = s.u8_minus(q, 32);
                            let scale = _mm512_set1_ps(d * f32::from(b[sc + half + 2 * k] as i8));
                            let v = _mm512_mul_ps(v, scale);
                            for (acc, x) in acc.iter_mut().zip(xs) {
                                *acc = _mm512_fmadd_ps(v, s.x16(x, base + 32 * k), *acc);
                            }
                        }
                    }
                }
            }
            s.sums(acc)
        }
    }
}

/// `BF16`: the top halves of f32s.
#[derive(Clone, Copy)]
struct Bf16x16(Avx512);

impl RowDot for Bf16x16 {
    #[inline(always)]
    fn dot<const R: usize>(self, row: &[u8], xs: [&[f32]; R], _: [&[f32]; R]) -> [f32; R] {
        let s = self.0;
        let mut out = [0.0f32; R];
        let whole = row.len() / 64 * 64;
        let tails = xs;
        let xs = X::rows(xs, whole / 2);
        // SAFETY: see above; each chunk holds 32 bytes.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for (i, c) in row[..whole].chunks_exact(32).enumerate() {
                let h = _mm256_loadu_si256(c.as_ptr().cast());
                let w = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
                for (a, x) in acc.iter_mut().zip(xs) {
                    a[i % 2] = _mm512_fmadd_ps(w, s.x16(x, 16 * i), a[i % 2]);
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
            }
        }
        // A row that is not whole 32-value chunks ends one value at a time.
        let k0 = whole / 2;
        for (o, x) in out.iter_mut().zip(tails) {
            for (j, c) in row[whole..].chunks_exact(2).enumerate() {
                let w = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                *o += w * x[k0 + j];
            }
        }
        out
    }
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
    // SAFETY: this function is compiled for the features `Avx512` stands
    // for and runs only where the CPU has them (`matrix.rs`).
    let s = Avx512(());
    match ty {
        GgmlType::Q8_0 => gemv(Q8_0x16(s), w, row_bytes, x, k, out),
        GgmlType::Q4_0 => gemv(Q45_0x16::<false>(s), w, row_bytes, x, k, out),
        GgmlType::Q5_0 => gemv(Q45_0x16::<true>(s), w, row_bytes, x, k, out),
        GgmlType::Q4_K => gemv(Q4Kx16(s), w, row_bytes, x, k, out),
        GgmlType::Q6_K => gemv(Q6Kx16(s), w, row_bytes, x, k, out),
        GgmlType::BF16 => gemv(Bf16x16(s), w, row_bytes, x, k, out),
        _ => return generic_gemv(s, ty, w, row_bytes, x, k, out),
    }
    true
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

/// The AVX2 kernels' entry (the generic kernel on eight lanes).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemv_avx2(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) -> bool {
    // SAFETY: this function is compiled for the features `Avx2` stands for
    // and runs only where the CPU has them (`matrix.rs`).
    generic_gemv(Avx2(()), ty, w, row_bytes, x, k, out)
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
