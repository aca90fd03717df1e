//! Integer products: activation rows quantized to 8 bits, multiplied with
//! the stored weight blocks by integer dot products (`engine.cpu_activations`).
//!
//! The f32 path (`matrix.rs`) keeps activations exact; this one does what
//! llama.cpp does to go faster, at a measured fidelity cost (README):
//! every 32 activations of a row become signed bytes `q = round(x / d)`
//! with `d = max|x| / 127` (an f32 scale, finer than llama.cpp's f16 or
//! per-256 scales), and the products are sums of byte products, exact in
//! 32-bit integers, scaled once per 16 or 32 values.
//!
//! Weights: every block format is read as unsigned integers `u` with a
//! scale and an offset per 16 or 32 values, `w = s·u − m` (exactly the
//! value `crate::quant` dequantizes: `Q8_0` is `d·(u − 128)`, `Q4_K`
//! `(d·sc)·u − dmin·min`, `Q6_K` `(d·sc)·(u − 32)` per 16, ...). So one
//! block of 32 contributes `d_x · (s · Σ u·q) − m · (d_x · Σ q)`, where
//! `Σ u·q` is what `vpdpbusd` (unsigned × signed bytes, AVX-512 VNNI and
//! AVX-VNNI) computes four products at a time, and `d_x · Σ q` is
//! precomputed once per activation block.
//!
//! Prompts (more than `GEMV_MAX_ROWS` rows): a task repacks sixteen weight
//! rows at a time into a small panel (one byte per weight, four
//! consecutive values of each of the sixteen rows side by side, so that a
//! 64-byte load feeds one `vpdpbusd` for sixteen rows; scales and offsets
//! as f32 beside it) and multiplies it with a tile of activation rows held
//! in registers: each weight load serves [`TILE`] activation rows, each
//! broadcast activation word sixteen weight rows. Decode (up to
//! `GEMV_MAX_ROWS` rows) streams the stored blocks directly through the
//! same arithmetic (`stream`: AVX-512 VNNI, for `Q8_0`, `Q4_0`, `Q5_0`,
//! `Q4_K` and `Q6_K`, each 32 values unpacked once and multiplied with up
//! to four activation rows held in registers); other formats and
//! instruction sets repack for decode too, which costs about as much as
//! the product.
//!
//! Owns: activation quantization, the repacked panels, the integer kernels
//! and which of them runs. Must never: change the f32 path's results (it
//! is chosen per product by [`Activations`]), run an instruction set the
//! CPU lacks (the kernels are reached only through [`product`], whose
//! caller checks `has_kernel`), or read past a slice.

use std::sync::atomic::{AtomicU8, Ordering};

use half::f16;
use rayon::prelude::*;

use super::{Isa, OutPtr};
use crate::quant::{GgmlType, scale_min_k4};

/// Activation rows multiplied together with one repacked weight load.
pub(super) const TILE: usize = 8;

/// Weight rows of one repacked group (one 512-bit vector of i32 sums).
const GROUP: usize = 16;

/// How the CPU products treat their activations (`engine.cpu_activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activations {
    /// f32 activations everywhere: the exact path (products equal
    /// dequantize-then-multiply up to the order of the sums).
    #[default]
    F32,
    /// Prompts (more than `GEMV_MAX_ROWS` rows) quantize their activations
    /// to 8 bits and use integer products; decode stays f32.
    Q8Prompt,
    /// Every product of a block-quantized matrix uses 8-bit activations, as
    /// llama.cpp does.
    Q8,
}

impl Activations {
    /// Every mode, in the order of the configuration's documentation.
    pub const ALL: [Activations; 3] = [Activations::F32, Activations::Q8Prompt, Activations::Q8];

    /// The configuration's name ("f32", "q8_prompt", "q8").
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8Prompt => "q8_prompt",
            Self::Q8 => "q8",
        }
    }

    /// The mode named `s` (as [`Activations::name`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether a product of `n` activation rows quantizes them.
    pub fn quantizes(self, n: usize) -> bool {
        match self {
            Self::F32 => false,
            Self::Q8Prompt => n > super::GEMV_MAX_ROWS,
            Self::Q8 => true,
        }
    }
}

/// The process's mode, as an index into [`Activations::ALL`].
static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets how every later CPU product of this process treats its activations
/// (the engine calls it once, from its configuration, before loading).
pub fn set_activations(mode: Activations) {
    let i = Activations::ALL
        .iter()
        .position(|m| *m == mode)
        .unwrap_or(0);
    MODE.store(i as u8, Ordering::Relaxed);
}

/// The mode [`set_activations`] set ([`Activations::F32`] until then).
pub fn activations() -> Activations {
    Activations::ALL
        .get(usize::from(MODE.load(Ordering::Relaxed)))
        .copied()
        .unwrap_or_default()
}

/// Whether `ty` has integer kernels (the block formats).
pub(super) fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// Values per scale of `ty` (16 for `Q6_K`, 32 otherwise).
fn sub_len(ty: GgmlType) -> usize {
    if ty == GgmlType::Q6_K { 16 } else { 32 }
}

/// The instruction sets with an integer kernel on this CPU: `Portable`
/// always; `Avx512` where AVX-512 VNNI is present; `Avx2` where AVX-VNNI is.
pub(super) fn has_kernel(isa: Isa) -> bool {
    match isa {
        Isa::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("avxvnni")
        }
        _ => false,
    }
}

/// Activation rows quantized to signed bytes, per 32 values an f32 scale
/// and per 16 and per 32 values `d · Σ q` (for the weights' offsets).
#[derive(Default)]
pub(super) struct QuantRows {
    /// Values per row.
    k: usize,
    /// `n × k` signed bytes (as `u8` bit patterns).
    q: Vec<u8>,
    /// `n × k/32` scales.
    d: Vec<f32>,
    /// `n × k/16` values `d · Σ q` over 16.
    s16: Vec<f32>,
    /// `n × k/32` values `d · Σ q` over 32.
    s32: Vec<f32>,
}

/// Quantizes 32 activations: their bytes in `q`, the scale, and the sums
/// of the two halves' integers.
fn quantize_block(x: &[f32; 32], q: &mut [u8; 32]) -> (f32, [i32; 2]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sums = [0i32; 2];
    for (i, (q, v)) in q.iter_mut().zip(x).enumerate() {
        // Round half away from zero without `f32::round` (a library call
        // below SSE4.1): `t - trunc(t)` is exact.
        let t = (v * inv).clamp(-127.0, 127.0);
        let whole = t as i32;
        let f = t - whole as f32;
        let v = (whole + i32::from(f >= 0.5) - i32::from(f <= -0.5)) as i8;
        sums[i / 16] += i32::from(v);
        *q = v as u8;
    }
    (scale, sums)
}

/// [`quantize_block`] with AVX-512 (the same arithmetic, sixteen at a time).
///
/// # Safety
///
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_block_avx512(x: &[f32; 32], q: &mut [u8; 32]) -> (f32, [i32; 2]) {
    use std::arch::x86_64::*;
    // SAFETY: `x` holds 32 values and `q` 32 bytes: two loads of 16
    // values, two stores of 16 bytes; unaligned.
    unsafe {
        let a = _mm512_loadu_ps(x.as_ptr());
        let b = _mm512_loadu_ps(x.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        let one = _mm512_set1_epi32(1);
        let round = |v: __m512| {
            let t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), lo), hi);
            let w = _mm512_cvttps_epi32(t);
            let f = _mm512_sub_ps(t, _mm512_cvtepi32_ps(w));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, _mm512_set1_ps(0.5));
            let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(f, _mm512_set1_ps(-0.5));
            let w = _mm512_mask_add_epi32(w, up, w, one);
            _mm512_mask_sub_epi32(w, down, w, one)
        };
        let (qa, qb) = (round(a), round(b));
        _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qb));
        (
            scale,
            [_mm512_reduce_add_epi32(qa), _mm512_reduce_add_epi32(qb)],
        )
    }
}

impl QuantRows {
    /// Quantizes the rows of `k` values (`k` a multiple of 32) in `x`,
    /// reusing this buffer's memory; `isa` is the product's (AVX-512 runs
    /// its own build of the same arithmetic).
    fn fill(&mut self, isa: Isa, x: &[f32], k: usize) {
        let n = x.len().checked_div(k).unwrap_or(0);
        let blocks = n * k / 32;
        self.k = k;
        self.q.resize(n * k, 0);
        self.d.resize(blocks, 0.0);
        self.s16.resize(2 * blocks, 0.0);
        self.s32.resize(blocks, 0.0);
        let (xb, _) = x.as_chunks::<32>();
        let (qb, _) = self.q.as_chunks_mut::<32>();
        let (s16, _) = self.s16.as_chunks_mut::<2>();
        #[cfg(target_arch = "x86_64")]
        let wide = isa == Isa::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        for ((((x, q), d), s16), s32) in xb
            .iter()
            .zip(qb)
            .zip(&mut self.d)
            .zip(s16)
            .zip(&mut self.s32)
        {
            #[cfg(target_arch = "x86_64")]
            let (scale, sums) = if wide {
                // SAFETY: `product` runs `Avx512` only where
                // `has_kernel` found AVX-512 F.
                unsafe { quantize_block_avx512(x, q) }
            } else {
                quantize_block(x, q)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (scale, sums) = quantize_block(x, q);
            *d = scale;
            *s16 = [scale * sums[0] as f32, scale * sums[1] as f32];
            *s32 = scale * (sums[0] + sums[1]) as f32;
        }
    }

    /// Row `r`'s bytes, scales and sums per `sub` values (16 or 32).
    fn row(&self, r: usize, sub: usize) -> XRow<'_> {
        let k = self.k;
        let sums = if sub == 16 { &self.s16 } else { &self.s32 };
        let per = k / sub;
        XRow {
            q: self.q.get(r * k..(r + 1) * k).unwrap_or(&[]),
            d: self.d.get(r * k / 32..(r + 1) * k / 32).unwrap_or(&[]),
            s: sums.get(r * per..(r + 1) * per).unwrap_or(&[]),
        }
    }
}

/// One quantized activation row (see [`QuantRows::row`]).
#[derive(Clone, Copy)]
struct XRow<'a> {
    q: &'a [u8],
    d: &'a [f32],
    s: &'a [f32],
}

/// Decodes one weight row of `ty` into unsigned values `u` (`k`), and per
/// `sub_len(ty)` values a scale `s` and an offset `m` with `w = s·u − m`.
fn decode_row(ty: GgmlType, row: &[u8], u: &mut [u8], s: &mut [f32], m: &mut [f32]) {
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::Q8_0 => {
            for (((b, u), s), m) in row
                .chunks_exact(34)
                .zip(u.chunks_exact_mut(32))
                .zip(s)
                .zip(m)
            {
                let d = h(b, 0);
                for (u, &q) in u.iter_mut().zip(&b[2..34]) {
                    *u = q ^ 0x80;
                }
                (*s, *m) = (d, 128.0 * d);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bytes, min) = if ty == GgmlType::Q4_0 {
                (18, false)
            } else {
                (20, true)
            };
            for (((b, u), s), m) in row
                .chunks_exact(bytes)
                .zip(u.chunks_exact_mut(32))
                .zip(s)
                .zip(m)
            {
                let d = h(b, 0);
                let qs = &b[bytes - 16..bytes];
                let (lo, hi) = u.split_at_mut(16);
                for ((l, hh), &q) in lo.iter_mut().zip(hi).zip(qs) {
                    (*l, *hh) = (q & 0x0F, q >> 4);
                }
                (*s, *m) = if min { (d, -h(b, 2)) } else { (d, 8.0 * d) };
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (bytes, min) = if ty == GgmlType::Q5_0 {
                (22, false)
            } else {
                (24, true)
            };
            for (((b, u), s), m) in row
                .chunks_exact(bytes)
                .zip(u.chunks_exact_mut(32))
                .zip(s)
                .zip(m)
            {
                let d = h(b, 0);
                let qh_at = bytes - 20;
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let qs = &b[bytes - 16..bytes];
                for (j, &q) in qs.iter().enumerate() {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    u[j] = (q & 0x0F) | xh0;
                    u[j + 16] = (q >> 4) | xh1;
                }
                (*s, *m) = if min { (d, -h(b, 2)) } else { (d, 16.0 * d) };
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let bytes = if ty == GgmlType::Q4_K { 144 } else { 176 };
            for (((b, u), s), m) in row
                .chunks_exact(bytes)
                .zip(u.chunks_exact_mut(256))
                .zip(s.chunks_exact_mut(8))
                .zip(m.chunks_exact_mut(8))
            {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let (qh, ql) = if bytes == 144 {
                    (&b[0..0], &b[16..144])
                } else {
                    (&b[16..48], &b[48..176])
                };
                for (j, (q, u)) in ql.chunks_exact(32).zip(u.chunks_exact_mut(64)).enumerate() {
                    for t in 0..2 {
                        let (sc, mn) = scale_min_k4(2 * j + t, scales);
                        s[2 * j + t] = d * f32::from(sc);
                        m[2 * j + t] = dmin * f32::from(mn);
                    }
                    let (lo, hi) = u.split_at_mut(32);
                    for l in 0..32 {
                        let (mut a, mut c) = (q[l] & 0x0F, q[l] >> 4);
                        if let Some(&qh) = qh.get(l) {
                            a |= ((qh >> (2 * j)) & 1) << 4;
                            c |= ((qh >> (2 * j + 1)) & 1) << 4;
                        }
                        lo[l] = a;
                        hi[l] = c;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (((b, u), s), m) in row
                .chunks_exact(210)
                .zip(u.chunks_exact_mut(256))
                .zip(s.chunks_exact_mut(16))
                .zip(m.chunks_exact_mut(16))
            {
                let d = h(b, 208);
                for (c, (s, m)) in s.iter_mut().zip(m.iter_mut()).enumerate() {
                    let sc = d * f32::from(b[192 + c] as i8);
                    (*s, *m) = (sc, 32.0 * sc);
                }
                for (n, u) in u.chunks_exact_mut(128).enumerate() {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    for l in 0..32 {
                        u[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                        u[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                        u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Sixteen weight rows repacked for the integer kernels: `u` holds, for
/// each 4 values of the row length, the 4 bytes of each of the 16 rows
/// (64 bytes, one vector); `s` and `m` hold, per `sub` values, the 16 rows'
/// scales and offsets. Rows past the matrix's end are zero.
#[derive(Default)]
struct Panel {
    u: Vec<u8>,
    s: Vec<f32>,
    m: Vec<f32>,
    /// Scratch for one decoded row.
    row_u: Vec<u8>,
    row_s: Vec<f32>,
    row_m: Vec<f32>,
}

impl Panel {
    /// Repacks the (at most 16) rows in `w`.
    fn fill(&mut self, ty: GgmlType, w: &[u8], row_bytes: usize, k: usize) {
        let subs = k / sub_len(ty);
        self.u.clear();
        self.u.resize(k * GROUP, 0);
        self.s.clear();
        self.s.resize(subs * GROUP, 0.0);
        self.m.clear();
        self.m.resize(subs * GROUP, 0.0);
        self.row_u.resize(k, 0);
        self.row_s.resize(subs, 0.0);
        self.row_m.resize(subs, 0.0);
        for (i, row) in w.chunks_exact(row_bytes).take(GROUP).enumerate() {
            decode_row(ty, row, &mut self.row_u, &mut self.row_s, &mut self.row_m);
            let (words, _) = self.row_u.as_chunks::<4>();
            let (dst, _) = self.u.as_chunks_mut::<4>();
            for (g, word) in words.iter().enumerate() {
                dst[g * GROUP + i] = *word;
            }
            for (j, (s, m)) in self.row_s.iter().zip(&self.row_m).enumerate() {
                self.s[j * GROUP + i] = *s;
                self.m[j * GROUP + i] = *m;
            }
        }
    }
}

/// `out[r][i] = Σ_k W[i][k] · x[r][k]` for `R` activation rows and the 16
/// rows of `p`, in plain Rust.
fn tile_portable<const R: usize>(p: &Panel, sub: usize, xs: [XRow<'_>; R]) -> [[f32; GROUP]; R] {
    let mut out = [[0.0f32; GROUP]; R];
    let subs = p.s.len() / GROUP;
    for j in 0..subs {
        let words = &p.u[j * sub * GROUP..(j + 1) * sub * GROUP];
        for (o, x) in out.iter_mut().zip(xs) {
            let mut acc = [0i32; GROUP];
            for (g, w) in words.chunks_exact(4 * GROUP).enumerate() {
                let xq = &x.q[j * sub + 4 * g..j * sub + 4 * g + 4];
                for (a, w) in acc.iter_mut().zip(w.chunks_exact(4)) {
                    *a += w
                        .iter()
                        .zip(xq)
                        .map(|(&w, &q)| i32::from(w) * i32::from(q as i8))
                        .sum::<i32>();
                }
            }
            let dx = x.d[j * sub / 32];
            let sx = x.s[j];
            for (i, (o, a)) in o.iter_mut().zip(acc).enumerate() {
                *o += a as f32 * (p.s[j * GROUP + i] * dx) - p.m[j * GROUP + i] * sx;
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX-512 VNNI and AVX-VNNI builds of the tile kernel.
    use std::arch::x86_64::*;

    use super::{GROUP, Panel, XRow};
    use crate::quant::GgmlType;

    /// How far ahead of the weight row being multiplied the streamed
    /// kernel prefetches (as the f32 kernels do).
    const PREFETCH_BYTES: usize = 8192;

    /// Whether `p` and `xs` hold what a tile of `sub`-value scales reads:
    /// `subs · sub` bytes per row (16 rows in `p`), a scale per 32 and a
    /// sum per `sub` activations.
    fn fits(p: &Panel, sub: usize, xs: &[XRow<'_>]) -> bool {
        let subs = p.s.len() / GROUP;
        let k = subs * sub;
        p.u.len() >= k * GROUP
            && p.m.len() >= subs * GROUP
            && xs
                .iter()
                .all(|x| x.q.len() >= k && x.d.len() >= k.div_ceil(32) && x.s.len() >= subs)
    }

    /// [`super::tile_portable`] with AVX-512 VNNI: sixteen rows per vector.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F/BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const R: usize, const SUB: usize>(
        p: &Panel,
        xs: [XRow<'_>; R],
    ) -> [[f32; GROUP]; R] {
        let mut out = [[0.0f32; GROUP]; R];
        if !fits(p, SUB, &xs) {
            return out;
        }
        let subs = p.s.len() / GROUP;
        let xq: [*const u8; R] = std::array::from_fn(|r| xs[r].q.as_ptr());
        let xd: [*const f32; R] = std::array::from_fn(|r| xs[r].d.as_ptr());
        let xsum: [*const f32; R] = std::array::from_fn(|r| xs[r].s.as_ptr());
        let (wp, sp, mp) = (p.u.as_ptr(), p.s.as_ptr(), p.m.as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        // SAFETY: `fits` checked every read below: for `j < subs`, `g <
        // SUB / 4`, weight bytes `(j·SUB/4 + g)·64 .. + 64 <= subs·SUB·16`,
        // activation bytes `j·SUB + 4g .. + 4 <= subs·SUB`, scales
        // `j·SUB/32 < k/32` rounded up, sums `j < subs`, and panel scales
        // and offsets `j·16 .. + 16 <= subs·16`. Loads are unaligned.
        unsafe {
            for j in 0..subs {
                let mut sums = [_mm512_setzero_si512(); R];
                for g in 0..SUB / 4 {
                    let w = _mm512_loadu_si512(wp.add((j * SUB / 4 + g) * 64).cast());
                    for r in 0..R {
                        let q = xq[r].add(j * SUB + 4 * g).cast::<i32>().read_unaligned();
                        sums[r] = _mm512_dpbusd_epi32(sums[r], w, _mm512_set1_epi32(q));
                    }
                }
                let sc = _mm512_loadu_ps(sp.add(j * GROUP));
                let mn = _mm512_loadu_ps(mp.add(j * GROUP));
                for r in 0..R {
                    let dx = _mm512_set1_ps(*xd[r].add(j * SUB / 32));
                    let sx = _mm512_set1_ps(*xsum[r].add(j));
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), _mm512_mul_ps(sc, dx), acc[r]);
                    acc[r] = _mm512_fnmadd_ps(mn, sx, acc[r]);
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                _mm512_storeu_ps(o.as_mut_ptr(), a);
            }
        }
        out
    }

    /// [`super::tile_portable`] with AVX-VNNI: eight rows per vector, two
    /// vectors per group.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and AVX-VNNI.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn tile_avx2<const R: usize, const SUB: usize>(
        p: &Panel,
        xs: [XRow<'_>; R],
    ) -> [[f32; GROUP]; R] {
        let mut out = [[0.0f32; GROUP]; R];
        if !fits(p, SUB, &xs) {
            return out;
        }
        let subs = p.s.len() / GROUP;
        let xq: [*const u8; R] = std::array::from_fn(|r| xs[r].q.as_ptr());
        let xd: [*const f32; R] = std::array::from_fn(|r| xs[r].d.as_ptr());
        let xsum: [*const f32; R] = std::array::from_fn(|r| xs[r].s.as_ptr());
        let (wp, sp, mp) = (p.u.as_ptr(), p.s.as_ptr(), p.m.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY: as in `tile_avx512` (the same reads, in halves of 32
        // bytes and 8 values).
        unsafe {
            for j in 0..subs {
                let mut sums = [[_mm256_setzero_si256(); 2]; R];
                for g in 0..SUB / 4 {
                    let at = wp.add((j * SUB / 4 + g) * 64);
                    let w0 = _mm256_loadu_si256(at.cast());
                    let w1 = _mm256_loadu_si256(at.add(32).cast());
                    for r in 0..R {
                        let q = xq[r].add(j * SUB + 4 * g).cast::<i32>().read_unaligned();
                        let q = _mm256_set1_epi32(q);
                        sums[r][0] = _mm256_dpbusd_avx_epi32(sums[r][0], w0, q);
                        sums[r][1] = _mm256_dpbusd_avx_epi32(sums[r][1], w1, q);
                    }
                }
                for h in 0..2 {
                    let sc = _mm256_loadu_ps(sp.add(j * GROUP + 8 * h));
                    let mn = _mm256_loadu_ps(mp.add(j * GROUP + 8 * h));
                    for r in 0..R {
                        let dx = _mm256_set1_ps(*xd[r].add(j * SUB / 32));
                        let sx = _mm256_set1_ps(*xsum[r].add(j));
                        let a = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sums[r][h]),
                            _mm256_mul_ps(sc, dx),
                            acc[r][h],
                        );
                        acc[r][h] = _mm256_fnmadd_ps(mn, sx, a);
                    }
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
            }
        }
        out
    }

    /// Whether [`gemv_avx512`] has a kernel for `ty`.
    pub(super) fn streams(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q6_K
        )
    }

    /// The f16 at `b[i..i + 2]`, widened by F16C.
    ///
    /// # Safety
    ///
    /// The CPU must have F16C (inlined into callers compiled for it).
    #[inline(always)]
    unsafe fn half(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        // SAFETY: the caller runs where F16C is present.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
    }

    /// Weight rows times the quantized activation rows `xs`, streaming the
    /// stored blocks (no panel): `out[r][i]` for each row `i` of `w`.
    /// Each 32 values are unpacked once into unsigned bytes and multiplied
    /// with every activation row by one `vpdpbusd`; the scales as in the
    /// panels (`w = s·u − m`).
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F/BW/VL and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn gemv_avx512<const R: usize>(
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        k: usize,
        xs: &[XRow<'_>; R],
        out: &mut [&mut [f32]],
    ) {
        if out.len() < R {
            return;
        }
        let n = R;
        let blocks = k / 32;
        // Every activation row holds `k` bytes, `k/32` scales and `k/16`
        // sums (`QuantRows::row` with sub 16); checked once here.
        if xs
            .iter()
            .any(|x| x.q.len() < k || x.d.len() < blocks || x.s.len() < 2 * blocks)
        {
            return;
        }
        // SAFETY: the features are present (caller); activation reads are below the lengths checked above (block
        // `b < k/32`: bytes `32b .. 32b + 32`, scale `b`, sums `2b, 2b + 1`);
        // weight reads are subslices of a block of the format's size.
        unsafe {
            let qp: [*const u8; R] = std::array::from_fn(|r| xs[r].q.as_ptr());
            let dp: [*const f32; R] = std::array::from_fn(|r| xs[r].d.as_ptr());
            let sp: [*const f32; R] = std::array::from_fn(|r| xs[r].s.as_ptr());
            for (i, row) in w.chunks_exact(row_bytes).enumerate() {
                // The hardware prefetcher alone leaves a streamed product at
                // about half the memory's speed (as in `kernels::gemv`).
                let ahead = (i * row_bytes + PREFETCH_BYTES).min(w.len());
                for line in w[ahead..(ahead + row_bytes).min(w.len())].chunks(64) {
                    _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                }
                let mut acc = [_mm256_setzero_ps(); R];
                let mut off = [0.0f32; R];
                // One 32-value chunk: unsigned bytes `u`, the scales of its
                // halves `(sa, sb)` and offsets `(ma, mb)`, at block `b`.
                macro_rules! chunk {
                    ($u:expr, $sa:expr, $sb:expr, $ma:expr, $mb:expr, $b:expr) => {{
                        let (u, b) = ($u, $b);
                        let sv = _mm256_setr_m128(_mm_set1_ps($sa), _mm_set1_ps($sb));
                        for r in 0..n {
                            let q = _mm256_loadu_si256(qp[r].add(32 * b).cast());
                            let d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q);
                            let dx = _mm256_set1_ps(*dp[r].add(b));
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(d),
                                _mm256_mul_ps(sv, dx),
                                acc[r],
                            );
                            off[r] += $ma * *sp[r].add(2 * b) + $mb * *sp[r].add(2 * b + 1);
                        }
                    }};
                }
                let nib = _mm_set1_epi8(0x0F);
                match ty {
                    GgmlType::Q8_0 => {
                        for (b, blk) in row.chunks_exact(34).enumerate().take(blocks) {
                            let d = half(blk, 0);
                            let q = _mm256_loadu_si256(blk[2..34].as_ptr().cast());
                            let u = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
                            chunk!(u, d, d, 128.0 * d, 128.0 * d, b);
                        }
                    }
                    GgmlType::Q4_0 | GgmlType::Q5_0 => {
                        let five = ty == GgmlType::Q5_0;
                        let size = if five { 22 } else { 18 };
                        for (b, blk) in row.chunks_exact(size).enumerate().take(blocks) {
                            let d = half(blk, 0);
                            let q = _mm_loadu_si128(blk[size - 16..size].as_ptr().cast());
                            let lo = _mm_and_si128(q, nib);
                            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), nib);
                            let mut u = _mm256_set_m128i(hi, lo);
                            let mut m = 8.0 * d;
                            if five {
                                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                                u = _mm256_or_si256(u, _mm256_maskz_set1_epi8(qh, 16));
                                m = 16.0 * d;
                            }
                            chunk!(u, d, d, m, m, b);
                        }
                    }
                    GgmlType::Q4_K => {
                        for (sb, blk) in row.chunks_exact(144).enumerate().take(blocks / 8) {
                            let (d, dmin) = (half(blk, 0), half(blk, 2));
                            let scales = &blk[4..16];
                            for j in 0..4 {
                                let q = _mm256_loadu_si256(
                                    blk[16 + 32 * j..48 + 32 * j].as_ptr().cast(),
                                );
                                let n256 = _mm256_set1_epi8(0x0F);
                                let lo = _mm256_and_si256(q, n256);
                                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), n256);
                                let (s1, m1) = crate::quant::scale_min_k4(2 * j, scales);
                                let (s2, m2) = crate::quant::scale_min_k4(2 * j + 1, scales);
                                let (s1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
                                let (s2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
                                chunk!(lo, s1, s1, m1, m1, 8 * sb + 2 * j);
                                chunk!(hi, s2, s2, m2, m2, 8 * sb + 2 * j + 1);
                            }
                        }
                    }
                    GgmlType::Q6_K => {
                        let n256 = _mm256_set1_epi8(0x0F);
                        let three = _mm256_set1_epi8(3);
                        for (sb, blk) in row.chunks_exact(210).enumerate().take(blocks / 8) {
                            let d = half(blk, 208);
                            let sc = |c: usize| d * f32::from(blk[192 + c] as i8);
                            for h in 0..2 {
                                let ql0 =
                                    _mm256_loadu_si256(blk[64 * h..64 * h + 32].as_ptr().cast());
                                let ql1 = _mm256_loadu_si256(
                                    blk[64 * h + 32..64 * h + 64].as_ptr().cast(),
                                );
                                let qh = _mm256_loadu_si256(
                                    blk[128 + 32 * h..160 + 32 * h].as_ptr().cast(),
                                );
                                let bits = |s: i32| {
                                    let v = match s {
                                        0 => qh,
                                        2 => _mm256_srli_epi16::<2>(qh),
                                        4 => _mm256_srli_epi16::<4>(qh),
                                        _ => _mm256_srli_epi16::<6>(qh),
                                    };
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(v, three))
                                };
                                let us = [
                                    _mm256_or_si256(_mm256_and_si256(ql0, n256), bits(0)),
                                    _mm256_or_si256(_mm256_and_si256(ql1, n256), bits(2)),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), n256),
                                        bits(4),
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), n256),
                                        bits(6),
                                    ),
                                ];
                                for (t, u) in us.into_iter().enumerate() {
                                    // Values 128h + 32t .. + 32: scales
                                    // 8h + 2t and 8h + 2t + 1 (per 16).
                                    let (sa, sb2) = (sc(8 * h + 2 * t), sc(8 * h + 2 * t + 1));
                                    chunk!(u, sa, sb2, 32.0 * sa, 32.0 * sb2, 8 * sb + 4 * h + t);
                                }
                            }
                        }
                    }
                    _ => return,
                }
                for r in 0..n {
                    let a = acc[r];
                    let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
                    if let Some(o) = out[r].get_mut(i) {
                        *o = _mm_cvtss_f32(s1) - off[r];
                    }
                }
            }
        }
    }
}

/// One tile through `isa`'s kernel (which `has_kernel` found).
#[inline(always)]
fn tile<const R: usize>(isa: Isa, p: &Panel, sub: usize, xs: [XRow<'_>; R]) -> [[f32; GROUP]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        // `product` runs `isa` only when `has_kernel(isa)`, which found
        // AVX-512 F/BW and VNNI for `Avx512`, AVX2, FMA and AVX-VNNI for
        // `Avx2`.
        match (isa, sub) {
            // SAFETY: see above (AVX-512 VNNI present).
            (Isa::Avx512, 16) => return unsafe { x86::tile_avx512::<R, 16>(p, xs) },
            // SAFETY: see above (AVX-512 VNNI present).
            (Isa::Avx512, _) => return unsafe { x86::tile_avx512::<R, 32>(p, xs) },
            // SAFETY: see above (AVX-VNNI present).
            (Isa::Avx2, 16) => return unsafe { x86::tile_avx2::<R, 16>(p, xs) },
            // SAFETY: see above (AVX-VNNI present).
            (Isa::Avx2, _) => return unsafe { x86::tile_avx2::<R, 32>(p, xs) },
            _ => {}
        }
    }
    tile_portable::<R>(p, sub, xs)
}

/// Decode-sized products (up to `GEMV_MAX_ROWS` rows) through the
/// streamed AVX-512 VNNI kernel: tasks of consecutive weight rows, each
/// read once for all `n` activation rows (as `matrix.rs`'s f32 gemv).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn stream(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    k: usize,
    xq: &QuantRows,
    n: usize,
    out: &mut [f32],
) {
    let threads = rayon::current_num_threads().max(1);
    let per_task = rows
        .div_ceil(4 * threads)
        .max((32 << 10) / row_bytes.max(1))
        .clamp(1, rows.max(1));
    let xs: Vec<XRow<'_>> = (0..n).map(|r| xq.row(r, 16)).collect();
    let tasks = rows.div_ceil(per_task);
    let mut pieces: Vec<Vec<&mut [f32]>> = (0..tasks).map(|_| Vec::with_capacity(n)).collect();
    for row in out.chunks_exact_mut(rows) {
        for (t, piece) in row.chunks_mut(per_task).enumerate() {
            pieces[t].push(piece);
        }
    }
    pieces
        .into_par_iter()
        .zip(w.par_chunks(per_task * row_bytes))
        .for_each(|(mut out, w)| {
            // Groups of four, two and one activation rows, each with its
            // sums in registers; the task's weights stay in L2 between them.
            let mut r = 0;
            while r < n {
                let take = if n - r >= 4 {
                    4
                } else if n - r >= 2 {
                    2
                } else {
                    1
                };
                let o = &mut out[r..r + take];
                // SAFETY: `product` calls this for `Avx512` only when
                // `has_kernel` found AVX-512 F/BW and VNNI; `Isa::available`
                // (checked by `matmul_mode`) found VL, AVX2, FMA and F16C.
                unsafe {
                    match take {
                        4 => x86::gemv_avx512::<4>(
                            ty,
                            w,
                            row_bytes,
                            k,
                            &[xs[r], xs[r + 1], xs[r + 2], xs[r + 3]],
                            o,
                        ),
                        2 => x86::gemv_avx512::<2>(ty, w, row_bytes, k, &[xs[r], xs[r + 1]], o),
                        _ => x86::gemv_avx512::<1>(ty, w, row_bytes, k, &[xs[r]], o),
                    }
                }
                r += take;
            }
        });
}

/// Weight rows per task at most: the panels of one task stay in L2.
const TASK_ROWS: usize = 128;

/// `out = x · Wᵀ` with `x` quantized to 8 bits, for `W` the `rows` rows of
/// `row_bytes` bytes in `w` (format `ty`, `k` columns, a multiple of 32),
/// `x: [n, k]`, `out: [n, rows]`, through `isa`'s integer kernel.
///
/// The caller checked the lengths, that `ty` is [`supported`], and that
/// `has_kernel(isa)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn product(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    k: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    thread_local! {
        /// The calling thread's quantized activations, kept between
        /// products: a prompt's layers reuse the memory.
        static SCRATCH: std::cell::Cell<Option<QuantRows>> = const { std::cell::Cell::new(None) };
    }
    let mut xq = SCRATCH.take().unwrap_or_default();
    xq.fill(isa, x, k);
    #[cfg(target_arch = "x86_64")]
    if n <= super::GEMV_MAX_ROWS && isa == Isa::Avx512 && x86::streams(ty) {
        stream(ty, w, rows, row_bytes, k, &xq, n, out);
        SCRATCH.set(Some(xq));
        return;
    }
    let sub = sub_len(ty);
    let threads = rayon::current_num_threads().max(1);
    let groups = rows.div_ceil(GROUP);
    let per_task = groups.div_ceil(2 * threads).clamp(1, TASK_ROWS / GROUP) * GROUP;
    let dst = OutPtr(out.as_mut_ptr());
    let total = out.len();
    w.par_chunks(per_task * row_bytes)
        .enumerate()
        .for_each_init(Vec::<Panel>::new, |panels, (t, w)| {
            let first = t * per_task;
            let m = w.len() / row_bytes;
            let count = m.div_ceil(GROUP);
            panels.resize_with(count.max(panels.len()), Panel::default);
            for (p, w) in panels.iter_mut().zip(w.chunks(GROUP * row_bytes)) {
                p.fill(ty, w, row_bytes, k);
            }
            let write = |r: usize, col: usize, vals: &[f32; GROUP]| {
                let valid = GROUP.min(first + m - col);
                let at = r * rows + col;
                debug_assert!(at + valid <= total);
                // SAFETY: `at + valid <= n·rows == out.len()` (`col + valid
                // <= rows`, `r < n`); tasks own disjoint column ranges
                // `first..first + m`, so no two write the same element, and
                // `out` outlives the loop.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.at(at), valid) };
                o.copy_from_slice(&vals[..valid]);
            };
            let mut r = 0;
            while r + TILE <= n {
                let xs: [XRow<'_>; TILE] = std::array::from_fn(|i| xq.row(r + i, sub));
                for (gi, p) in panels[..count].iter().enumerate() {
                    let res = tile::<TILE>(isa, p, sub, xs);
                    for (i, v) in res.iter().enumerate() {
                        write(r + i, first + gi * GROUP, v);
                    }
                }
                r += TILE;
            }
            while r < n {
                let xs = [xq.row(r, sub)];
                for (gi, p) in panels[..count].iter().enumerate() {
                    let res = tile::<1>(isa, p, sub, xs);
                    write(r, first + gi * GROUP, &res[0]);
                }
                r += 1;
            }
        });
    SCRATCH.set(Some(xq));
}
