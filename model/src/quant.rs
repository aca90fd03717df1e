//! GGML tensor element types and their dequantization to `f32`.
//!
//! Owns: the table of GGML type ids with their block sizes, and bit-exact
//! dequantizers for the storage formats our GGUF files use (F32, F16, BF16,
//! Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K). The block layouts mirror
//! ggml's `ggml-common.h` / `ggml-quants.c` (`dequantize_row_*`), and the
//! arithmetic is done in the same order so the results match ggml and gguf-py
//! bit for bit (`model/tests/gguf_quant.rs` checks this against fixtures made
//! with gguf-py).
//!
//! Must never: read files, allocate from a size it has not checked against
//! the input length, or panic on any input bytes.

use std::fmt;

use half::{bf16, f16};

/// Elements per K-quant super-block (`QK_K` in ggml).
const QK_K: usize = 256;

/// A GGML tensor element type, as stored in a GGUF tensor info record.
///
/// Ids are those of `enum ggml_type` in ggml.h (ids 4, 5 and 31..33, 36..38
/// were removed upstream and are not reused). Ids this reader does not know
/// are kept as [`GgmlType::Other`] so that error messages can name them.
#[allow(non_camel_case_types)] // ggml's own spellings, so names match llama.cpp tooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    /// An id this reader does not know (newer ggml, or a corrupt file).
    Other(u32),
}

impl GgmlType {
    /// Maps a ggml type id to a type; unknown ids become [`GgmlType::Other`].
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            16 => Self::IQ2_XXS,
            17 => Self::IQ2_XS,
            18 => Self::IQ3_XXS,
            19 => Self::IQ1_S,
            20 => Self::IQ4_NL,
            21 => Self::IQ3_S,
            22 => Self::IQ2_S,
            23 => Self::IQ4_XS,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            29 => Self::IQ1_M,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            39 => Self::MXFP4,
            other => Self::Other(other),
        }
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::IQ2_XXS => 16,
            Self::IQ2_XS => 17,
            Self::IQ3_XXS => 18,
            Self::IQ1_S => 19,
            Self::IQ4_NL => 20,
            Self::IQ3_S => 21,
            Self::IQ2_S => 22,
            Self::IQ4_XS => 23,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::IQ1_M => 29,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::MXFP4 => 39,
            Self::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`, from ggml's `type_traits`
    /// (`blck_size`, `type_size`); `None` for [`GgmlType::Other`].
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2_K => (QK_K, 84),
            Self::Q3_K => (QK_K, 110),
            Self::Q4_K => (QK_K, 144),
            Self::Q5_K => (QK_K, 176),
            Self::Q6_K => (QK_K, 210),
            Self::Q8_K => (QK_K, 292),
            Self::IQ2_XXS => (QK_K, 66),
            Self::IQ2_XS => (QK_K, 74),
            Self::IQ3_XXS => (QK_K, 98),
            Self::IQ1_S => (QK_K, 50),
            Self::IQ4_NL => (32, 18),
            Self::IQ3_S => (QK_K, 110),
            Self::IQ2_S => (QK_K, 82),
            Self::IQ4_XS => (QK_K, 136),
            Self::I8 => (1, 1),
            Self::I16 => (1, 2),
            Self::I32 => (1, 4),
            Self::I64 => (1, 8),
            Self::F64 => (1, 8),
            Self::IQ1_M => (QK_K, 56),
            Self::BF16 => (1, 2),
            Self::TQ1_0 => (QK_K, 54),
            Self::TQ2_0 => (QK_K, 66),
            Self::MXFP4 => (32, 17),
            Self::Other(_) => return None,
        })
    }

    /// Number of bytes `n_elements` values of this type occupy; `None` if the
    /// type is unknown, `n_elements` is not a whole number of blocks, or the
    /// size overflows `usize`.
    pub fn byte_size(self, n_elements: usize) -> Option<usize> {
        let (block, bytes) = self.block_layout()?;
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(bytes)
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "unknown ggml type id {id}"),
            known => write!(f, "{known:?} (ggml type id {})", known.id()),
        }
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(
        "cannot dequantize {ty}: this engine supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
         Q8_0, Q4_K, Q5_K and Q6_K; re-quantize the model to one of those"
    )]
    Unsupported { ty: GgmlType },
    #[error(
        "{n} elements of {ty} are not a whole number of {block}-element blocks; \
         the tensor shape does not fit its type, so the file is corrupt"
    )]
    NotBlockMultiple {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error(
        "{n} elements of {ty} need {expected} bytes but {actual} were given; \
         pass exactly the tensor's bytes"
    )]
    WrongByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        actual: usize,
    },
}

/// Dequantizes `n` values of type `ty` stored in `bytes` (exactly
/// `ty.byte_size(n)` bytes, little-endian, ggml block layout) to `f32`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    // Validate before allocating, so a bogus `n` cannot trigger a huge allocation.
    check_len(ty, bytes, n)?;
    let mut out = vec![0.0f32; n];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Like [`dequantize`], but writes into `out`; `out.len()` is the element count.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, bytes, out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = f16::from_le_bytes(*b).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = bf16::from_le_bytes(*b).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, out, q8_0),
        GgmlType::Q4_K => blocks::<144, QK_K>(bytes, out, q4_k),
        GgmlType::Q5_K => blocks::<176, QK_K>(bytes, out, q5_k),
        GgmlType::Q6_K => blocks::<210, QK_K>(bytes, out, q6_k),
        ty => return Err(QuantError::Unsupported { ty }),
    }
    Ok(())
}

fn check_len(ty: GgmlType, bytes: &[u8], n: usize) -> Result<(), QuantError> {
    if !ty.can_dequantize() {
        return Err(QuantError::Unsupported { ty });
    }
    let Some((block, block_bytes)) = ty.block_layout() else {
        return Err(QuantError::Unsupported { ty });
    };
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple { ty, n, block });
    }
    let expected = (n / block).saturating_mul(block_bytes);
    if bytes.len() != expected {
        return Err(QuantError::WrongByteLength {
            ty,
            n,
            expected,
            actual: bytes.len(),
        });
    }
    Ok(())
}

/// Runs `f` over each `B`-byte block and its `N` output values. The caller has
/// checked that the lengths match, so the chunk remainders are empty.
fn blocks<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: fn(&[u8; B], &mut [f32; N]),
) {
    for (b, o) in bytes
        .as_chunks::<B>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<N>().0)
    {
        f(b, o);
    }
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `block_q4_0`: f16 d, 16 bytes of nibbles; x = (q - 8)·d, low nibbles first.
#[inline(always)]
pub(crate) fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 d, f16 m, 16 bytes of nibbles; x = q·d + m.
#[inline(always)]
pub(crate) fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `block_q5_0`: f16 d, u32 high bits, 16 bytes of nibbles; x = (q - 16)·d.
#[inline(always)]
pub(crate) fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1`: f16 d, f16 m, u32 high bits, 16 bytes of nibbles; x = q·d + m.
#[inline(always)]
pub(crate) fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

/// `block_q8_0`: f16 d, 32 signed bytes; x = q·d.
#[inline(always)]
pub(crate) fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// ggml's `get_scale_min_k4`: unpacks the j-th 6-bit (scale, min) pair from
/// the 12-byte K-quant scale array.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of
/// nibbles; eight 32-value sub-blocks, x = (d·sc)·q − (dmin·m).
#[inline(always)]
pub(crate) fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K`: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of high
/// bits, 128 bytes of nibbles; x = (d·sc)·q − (dmin·m) with 5-bit q.
#[inline(always)]
pub(crate) fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let ql = &b[48..176];
    for (j, (q, y)) in ql.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K`: 128 bytes of low nibbles, 64 bytes of 2-bit high parts,
/// 16 signed 8-bit scales, f16 d; x = (d·sc)·(q − 32).
#[inline(always)]
pub(crate) fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = half_at(b, 208);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &ql_all[64 * n..64 * n + 64];
        let qh = &qh_all[32 * n..32 * n + 32];
        let sc = &sc_all[8 * n..8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc[is] as i8 as f32 * q1 as f32;
            y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
            y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
            y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
        }
    }
}

/// Quantizes `values` (a whole number of 32-value blocks) to ggml's `Q8_0`
/// layout in `out` (34 bytes per block): per block an f16 scale
/// `d = max|x| / 127` and 32 signed bytes `round(x / d)`, exactly as ggml's
/// `quantize_row_q8_0_ref` (rounding half away from zero). Returns `false`
/// and writes nothing when the lengths do not match.
pub fn quantize_q8_0(values: &[f32], out: &mut [u8]) -> bool {
    let (blocks, rest) = values.as_chunks::<32>();
    let (outs, out_rest) = out.as_chunks_mut::<34>();
    if !rest.is_empty() || !out_rest.is_empty() || outs.len() != blocks.len() {
        return false;
    }
    for (x, y) in blocks.iter().zip(outs) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (dh, qs) = y.split_at_mut(2);
        dh.copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
    true
}
