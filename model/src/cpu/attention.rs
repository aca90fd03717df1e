//! One new token's attention over its sequence's cached keys and values, on
//! the CPU, read where the cache keeps them.
//!
//! Burn's composition for a decode step (`Gemma3::attend`: a matmul with the
//! transposed key view, a scale, a five-pass softmax, a matmul with the
//! values) copies and packs the keys for the `gemm` crate and runs one core:
//! after a 512-token prompt of the 270M it cost a fifth of each decode step
//! (`perf record` of `cpu_bench --prompt-tokens 512`: gemm's packing and
//! microkernel 9.4 % of the samples; decode 40.5 tokens/s against 49 after a
//! 64-token prompt). Here each key row is read once for all the query heads
//! that share it (GQA), the softmax runs over the scores in registers and
//! one pass, and each value row is read once, accumulating every query
//! head's output. Long caches split into blocks of [`BLOCK_ROWS`] rows that
//! rayon's pool runs at once, merged with the flash-decoding rescale
//! (`e^(m_b − m)`): the blocks do not depend on the thread count, so the
//! result does not either.
//!
//! The tensors are Burn's `flex` tensors, read in place through burn's
//! extension API (`Tensor::try_into_primitive::<Flex>`): the cache's buffer
//! is shared with the cache, so `into_data` would copy it each step.
//!
//! Owns: the decode attention arithmetic over f32 slices and reading the
//! cache's flex buffers. Must never: write the cache, or see anything but
//! the activations and cache it is given.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::Isa;
use super::activation::exp;

/// Cached rows per task: 128 rows of the models' 256-value heads are 128 KiB
/// of keys and as much of values, enough to pay for a hand-off to the pool.
pub const BLOCK_ROWS: usize = 128;
/// Rows (over all KV heads) below which the blocks run on the calling thread.
const MIN_POOLED_ROWS: usize = 2 * BLOCK_ROWS;

/// One sequence's cached keys or values: `heads` KV heads of `len` rows of
/// `dim` values; row `r` of head `j` is
/// `data[offset + j·head_stride + r·dim ..][..dim]`.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    /// The buffer the rows live in.
    pub data: &'a [f32],
    /// Where head 0's row 0 starts.
    pub offset: usize,
    /// Distance between two heads' first rows.
    pub head_stride: usize,
    /// KV heads.
    pub heads: usize,
    /// Rows (cached positions) per head.
    pub len: usize,
    /// Values per row (the head dimension).
    pub dim: usize,
}

impl<'a> KvRows<'a> {
    /// `heads` heads of `len` rows of `dim` values, back to back in `data`
    /// from its start.
    pub fn contiguous(data: &'a [f32], heads: usize, len: usize, dim: usize) -> Self {
        Self {
            data,
            offset: 0,
            head_stride: len * dim,
            heads,
            len,
            dim,
        }
    }

    /// Whether every row lies inside `data` and rows of a head do not overlap.
    fn in_bounds(&self) -> bool {
        if self.heads == 0 || self.len == 0 || self.dim == 0 {
            return true;
        }
        let last = (self.heads - 1)
            .checked_mul(self.head_stride)
            .and_then(|h| h.checked_add(self.len * self.dim))
            .and_then(|e| e.checked_add(self.offset));
        last.is_some_and(|end| end <= self.data.len())
    }

    /// Rows `rows` of head `j`, back to back.
    fn rows(&self, j: usize, rows: std::ops::Range<usize>) -> &[f32] {
        let start = self.offset + j * self.head_stride;
        &self.data[start + rows.start * self.dim..start + rows.end * self.dim]
    }
}

/// `out[h] = softmax(scale · q[h] · Kⱼᵀ) · Vⱼ` for every query head `h`,
/// where `j = h / (H / KV)` is the KV head it shares (query heads `2j` and
/// `2j + 1` share head `j` when `H = 2·KV`). `q` and `out` are `[H, dim]`
/// row-major.
///
/// # Panics
///
/// If the keys and values differ in shape, have no rows, lie outside their
/// buffers, `H` is not a multiple of the KV heads, or `q`/`out` are not
/// `H` rows of `dim`.
pub fn decode_attention(
    q: &[f32],
    keys: KvRows<'_>,
    values: KvRows<'_>,
    scale: f32,
    out: &mut [f32],
) {
    decode_attention_with(Isa::best(), q, keys, values, scale, out);
}

/// [`decode_attention`] through the code built for `isa` (tests force each
/// instruction set; one this CPU lacks runs the baseline).
///
/// # Panics
///
/// As [`decode_attention`].
pub fn decode_attention_with(
    isa: Isa,
    q: &[f32],
    keys: KvRows<'_>,
    values: KvRows<'_>,
    scale: f32,
    out: &mut [f32],
) {
    let (kv, len, dim) = (keys.heads, keys.len, keys.dim);
    assert!(
        (values.heads, values.len, values.dim) == (kv, len, dim),
        "keys and values of one shape"
    );
    assert!(
        kv > 0 && len > 0 && dim > 0,
        "attention over an empty cache"
    );
    assert!(
        keys.in_bounds() && values.in_bounds(),
        "cache rows outside their buffer"
    );
    assert!(
        q.len() == out.len() && q.len().is_multiple_of(kv * dim),
        "queries are whole groups of heads"
    );
    let rep = q.len() / (kv * dim);
    let blocks = len.div_ceil(BLOCK_ROWS);
    // Each task: one KV head's block of rows, its rep query heads' partial
    // maximum, sum of exponentials and weighted values.
    let task = |t: usize| {
        let (j, b) = (t / blocks, t % blocks);
        let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(len);
        let qj = &q[j * rep * dim..(j + 1) * rep * dim];
        block_with(
            isa,
            qj,
            keys.rows(j, rows.clone()),
            values.rows(j, rows),
            dim,
            scale,
        )
    };
    let partial: Vec<Partial> = if kv * len < MIN_POOLED_ROWS {
        (0..kv * blocks).map(task).collect()
    } else {
        (0..kv * blocks).into_par_iter().map(task).collect()
    };
    for (j, parts) in partial.chunks_exact(blocks).enumerate() {
        for r in 0..rep {
            let m = parts
                .iter()
                .map(|p| p.max[r])
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[(j * rep + r) * dim..(j * rep + r + 1) * dim];
            o.fill(0.0);
            let mut sum = 0.0f32;
            for p in parts {
                // exp(m_b − m) rescales a block's sums to the common maximum.
                let w = (p.max[r] - m).exp();
                sum += p.sum[r] * w;
                for (o, a) in o.iter_mut().zip(&p.acc[r * dim..(r + 1) * dim]) {
                    *o += a * w;
                }
            }
            let inv = 1.0 / sum;
            for o in o.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// A block's contribution for each of its query heads: the largest scaled
/// score, `Σ e^(s − max)`, and `Σ e^(s − max)·v` (`[rep, dim]`).
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// [`block`] through the code built for `isa` (the baseline where this CPU
/// lacks it).
fn block_with(isa: Isa, q: &[f32], k: &[f32], v: &[f32], dim: usize, scale: f32) -> Partial {
    #[cfg(target_arch = "x86_64")]
    {
        let available = Isa::detected();
        if isa == Isa::Avx512 && available.contains(&Isa::Avx512) {
            // SAFETY: AVX-512 F/BW/VL and FMA were detected on this CPU
            // (`Isa::available`), which is all `block_avx512` is built for.
            return unsafe { block_avx512(q, k, v, dim, scale) };
        }
        if matches!(isa, Isa::Avx2 | Isa::Avx512) && available.contains(&Isa::Avx2) {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { block_avx2(q, k, v, dim, scale) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        // NEON (always present on aarch64) has a fused multiply-add.
        return block::<Fused>(q, k, v, dim, scale);
    }
    block::<Plain>(q, k, v, dim, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn block_avx512(q: &[f32], k: &[f32], v: &[f32], dim: usize, scale: f32) -> Partial {
    block::<Fused>(q, k, v, dim, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(q: &[f32], k: &[f32], v: &[f32], dim: usize, scale: f32) -> Partial {
    block::<Fused>(q, k, v, dim, scale)
}

/// `a·b + c`: one fused instruction where the caller enables FMA
/// ([`Fused`]), a multiply and an add on the baseline ([`Plain`], where
/// `mul_add` would call libm's software `fmaf`).
trait Mac {
    fn mac(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;
struct Plain;

impl Mac for Fused {
    #[inline(always)]
    fn mac(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl Mac for Plain {
    #[inline(always)]
    fn mac(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Lanes of one running sum: one AVX-512 register, two of AVX2.
const LANES: usize = 16;

/// One block: `q` holds `rep` query rows of `dim`, `k` and `v` the block's
/// rows. Query heads go in groups of up to four, so each key or value read
/// from memory feeds four independent multiply-add chains held in
/// registers; written over sixteen lanes with no calls, so the compiler
/// vectorizes it for whichever instruction set the caller enables.
#[inline(always)]
fn block<M: Mac>(q: &[f32], k: &[f32], v: &[f32], dim: usize, scale: f32) -> Partial {
    let rep = q.len() / dim;
    let n = k.len() / dim;
    // scores[r·n + i]: query head r against row i.
    let mut scores = vec![0.0f32; rep * n];
    let mut r0 = 0;
    while r0 < rep {
        let g = (rep - r0).min(4);
        let (qg, sg) = (
            &q[r0 * dim..(r0 + g) * dim],
            &mut scores[r0 * n..(r0 + g) * n],
        );
        match g {
            4 => qk::<M, 4>(qg, k, dim, scale, sg),
            3 => qk::<M, 3>(qg, k, dim, scale, sg),
            2 => qk::<M, 2>(qg, k, dim, scale, sg),
            _ => qk::<M, 1>(qg, k, dim, scale, sg),
        }
        r0 += g;
    }
    let mut max = vec![f32::NEG_INFINITY; rep];
    let mut sum = vec![0.0f32; rep];
    for r in 0..rep {
        let s = &mut scores[r * n..(r + 1) * n];
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in s.iter_mut() {
            *x = exp(*x - m);
        }
        max[r] = m;
        sum[r] = lane_sum(s);
    }
    let mut acc = vec![0.0f32; rep * dim];
    let mut r0 = 0;
    while r0 < rep {
        let g = (rep - r0).min(4);
        let (pg, ag) = (
            &scores[r0 * n..(r0 + g) * n],
            &mut acc[r0 * dim..(r0 + g) * dim],
        );
        match g {
            4 => pv::<M, 4>(pg, v, dim, ag),
            3 => pv::<M, 3>(pg, v, dim, ag),
            2 => pv::<M, 2>(pg, v, dim, ag),
            _ => pv::<M, 1>(pg, v, dim, ag),
        }
        r0 += g;
    }
    Partial { max, sum, acc }
}

/// `scores[r·n + i] = scale · q[r] · k[i]` for `R` query rows: each key
/// row is read once into `R` running sums of [`LANES`] lanes.
#[inline(always)]
fn qk<M: Mac, const R: usize>(q: &[f32], k: &[f32], dim: usize, scale: f32, scores: &mut [f32]) {
    let n = k.len() / dim;
    let qrows: [&[f32]; R] = std::array::from_fn(|r| &q[r * dim..(r + 1) * dim]);
    let qchunks: [&[[f32; LANES]]; R] = qrows.map(|row| row.as_chunks::<LANES>().0);
    for (i, kr) in k.chunks_exact(dim).enumerate() {
        let (kc, tail) = kr.as_chunks::<LANES>();
        let mut acc = [[0.0f32; LANES]; R];
        for (c, kc) in kc.iter().enumerate() {
            for r in 0..R {
                mac_lanes::<M>(&mut acc[r], &qchunks[r][c], kc);
            }
        }
        let whole = dim - tail.len();
        for r in 0..R {
            let mut s: f32 = acc[r].iter().sum();
            for (d, kd) in tail.iter().enumerate() {
                s = M::mac(qrows[r][whole + d], *kd, s);
            }
            scores[r * n + i] = s * scale;
        }
    }
}

/// `acc[r] = Σᵢ p[r·n + i] · v[i]` for `R` query rows, a tile of four
/// [`LANES`]-wide columns at a time held in registers while the block's
/// value rows stream past.
#[inline(always)]
fn pv<M: Mac, const R: usize>(p: &[f32], v: &[f32], dim: usize, acc: &mut [f32]) {
    const TILE: usize = 4;
    let n = v.len() / dim;
    let whole = dim / (TILE * LANES) * (TILE * LANES);
    for t in (0..whole).step_by(TILE * LANES) {
        let mut a = [[[0.0f32; LANES]; TILE]; R];
        for (i, vr) in v.chunks_exact(dim).enumerate() {
            let vt = vr[t..t + TILE * LANES].as_chunks::<LANES>().0;
            for r in 0..R {
                let pr = p[r * n + i];
                for c in 0..TILE {
                    scale_add_lanes::<M>(&mut a[r][c], pr, &vt[c]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            acc[r * dim + t..r * dim + t + TILE * LANES].copy_from_slice(ar.as_flattened());
        }
    }
    for d in whole..dim {
        for r in 0..R {
            let mut s = 0.0f32;
            for (i, vr) in v.chunks_exact(dim).enumerate() {
                s = M::mac(p[r * n + i], vr[d], s);
            }
            acc[r * dim + d] = s;
        }
    }
}

/// `a += x ⊙ y`, lane by lane.
#[inline(always)]
fn mac_lanes<M: Mac>(a: &mut [f32; LANES], x: &[f32; LANES], y: &[f32; LANES]) {
    for l in 0..LANES {
        a[l] = M::mac(x[l], y[l], a[l]);
    }
}

/// `a += s · y`, lane by lane.
#[inline(always)]
fn scale_add_lanes<M: Mac>(a: &mut [f32; LANES], s: f32, y: &[f32; LANES]) {
    for l in 0..LANES {
        a[l] = M::mac(s, y[l], a[l]);
    }
}

/// `Σ x` in [`LANES`] running sums (vectorizes; a single running sum
/// cannot be reordered by the compiler).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] += c[l];
        }
    }
    chunks.remainder().iter().sum::<f32>() + lanes.iter().sum::<f32>()
}

/// The decode attention of [`decode_attention`] on Burn tensors of the CPU
/// backend: `q: [1, H, 1, dim]`, `keys`/`values: [1, KV, S, dim]` (views of
/// a sequence's cache) in f32; returns `[1, H·dim]`. `None` when the
/// tensors are not flex f32 tensors of those shapes with rows laid out back
/// to back (the caller runs Burn's ops instead).
pub(crate) fn decode_attention_flex(
    q: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    scale: f32,
) -> Option<Tensor<2>> {
    let [b, h, t, dim] = q.dims();
    let [kb, kv, len, kdim] = keys.dims();
    if b != 1 || t != 1 || kb != 1 || kdim != dim || len == 0 || kv == 0 {
        return None;
    }
    if !h.is_multiple_of(kv) || values.dims() != keys.dims() || q.dtype() != DType::F32 {
        return None;
    }
    let device = q.device();
    let k = keys.clone().try_into_primitive::<Flex>().ok()?;
    let v = values.clone().try_into_primitive::<Flex>().ok()?;
    let (krows, vrows) = (rows(&k, kv, len, dim)?, rows(&v, kv, len, dim)?);
    let qdata = q.clone().into_data();
    let qs = qdata.as_slice::<f32>().ok()?;
    let mut out = vec![0.0f32; h * dim];
    decode_attention(qs, krows, vrows, scale, &mut out);
    Some(Tensor::<2>::from_data(
        TensorData::new(out, [1, h * dim]),
        (&device, DType::F32),
    ))
}

/// The rows of a `[1, KV, S, dim]` f32 flex tensor, when each head's rows
/// are back to back (the cache's buffer and its views are).
fn rows(t: &FlexTensor, kv: usize, len: usize, dim: usize) -> Option<KvRows<'_>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let layout = t.layout();
    let s = layout.strides();
    let row = isize::try_from(dim).ok()?;
    if s.len() != 4 || s[3] != 1 || (len > 1 && s[2] != row) || (kv > 1 && s[1] < 0) {
        return None;
    }
    let rows = KvRows {
        data: t.storage::<f32>(),
        offset: layout.start_offset(),
        head_stride: usize::try_from(s[1]).ok()?,
        heads: kv,
        len,
        dim,
    };
    // Heads must not overlap one another's rows.
    (kv == 1 || rows.head_stride >= len * dim).then_some(rows)?;
    rows.in_bounds().then_some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::tensor::activation::softmax;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// The attention in f64, straight from its definition.
    fn truth(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv: usize,
        len: usize,
        dim: usize,
        scale: f32,
    ) -> Vec<f64> {
        let rep = q.len() / (kv * dim);
        let mut out = vec![0.0f64; q.len()];
        for h in 0..kv * rep {
            let j = h / rep;
            let qh = &q[h * dim..(h + 1) * dim];
            let s: Vec<f64> = (0..len)
                .map(|i| {
                    let kr = &k[(j * len + i) * dim..(j * len + i + 1) * dim];
                    qh.iter()
                        .zip(kr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = e.iter().sum();
            for i in 0..len {
                let vr = &v[(j * len + i) * dim..(j * len + i + 1) * dim];
                for d in 0..dim {
                    out[h * dim + d] += e[i] / total * f64::from(vr[d]);
                }
            }
        }
        out
    }

    fn contiguous(data: &[f32], kv: usize, len: usize, dim: usize) -> KvRows<'_> {
        KvRows::contiguous(data, kv, len, dim)
    }

    #[test]
    fn every_instruction_set_and_block_split_matches_the_definition() {
        // The models' head shapes (270M: 4 heads on 1 KV head; 4B: 8 on 4),
        // lengths around the block size and one past the pooled threshold.
        for &(h, kv, dim) in &[(4, 1, 256), (8, 4, 256), (2, 2, 40)] {
            for &len in &[1, 7, BLOCK_ROWS, BLOCK_ROWS + 1, 3 * BLOCK_ROWS + 5, 700] {
                let seed = (h * 1000 + len) as u64;
                let q = random(h * dim, seed);
                let k = random(kv * len * dim, seed + 1);
                let v = random(kv * len * dim, seed + 2);
                let scale = 1.0 / (dim as f32).sqrt();
                let want = truth(&q, &k, &v, kv, len, dim, scale);
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; h * dim];
                    decode_attention_with(
                        isa,
                        &q,
                        contiguous(&k, kv, len, dim),
                        contiguous(&v, kv, len, dim),
                        scale,
                        &mut out,
                    );
                    for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                        let err = (f64::from(*o) - w).abs();
                        assert!(
                            err <= 1e-5 + 1e-5 * w.abs(),
                            "{isa:?} h={h} kv={kv} len={len} value {i}: {o} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn equals_burns_composition_on_cache_views() {
        // A cache buffer of 300 slots with 2 KV heads, of which the first
        // 261 are visible: the view `attend` hands over.
        let device = Device::flex();
        let (h, kv, cap, len, dim) = (8, 2, 300, 261, 64);
        let buf = |seed| {
            Tensor::<4>::from_data(
                TensorData::new(random(kv * cap * dim, seed), [1, kv, cap, dim]),
                &device,
            )
        };
        let (kb, vb) = (buf(5), buf(6));
        let view = |t: &Tensor<4>| t.clone().slice([0..1, 0..kv, 0..len, 0..dim]);
        let (keys, values) = (view(&kb), view(&vb));
        let q =
            Tensor::<4>::from_data(TensorData::new(random(h * dim, 7), [1, h, 1, dim]), &device);
        let scale = 0.125;
        let got = decode_attention_flex(&q, &keys, &values, scale).expect("flex f32 views qualify");
        // Burn's composition as `Gemma3::attend` runs it.
        let rep = h / kv;
        let scores = q
            .clone()
            .reshape([1, kv, rep, dim])
            .matmul(keys.clone().swap_dims(2, 3))
            .mul_scalar(scale);
        let want = softmax(scores, 3)
            .matmul(values.clone())
            .reshape([1, h * dim]);
        let (got, want) = (
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-6 + 1e-5 * w.abs(),
                "value {i}: {g} vs {w}"
            );
        }
        // A head offset bug (reading head 0 for every head) would not pass:
        // the heads' outputs differ.
        assert_ne!(got[..rep * dim], got[rep * dim..2 * rep * dim]);
    }

    #[test]
    fn other_tensors_are_left_to_burn() {
        let device = Device::flex();
        let z = |s: [usize; 4]| Tensor::<4>::zeros(s, &device);
        // Two query tokens, and a batch of two: not a one-token decode.
        assert!(
            decode_attention_flex(&z([1, 4, 2, 8]), &z([1, 1, 5, 8]), &z([1, 1, 5, 8]), 1.0)
                .is_none()
        );
        assert!(
            decode_attention_flex(&z([2, 4, 1, 8]), &z([2, 1, 5, 8]), &z([2, 1, 5, 8]), 1.0)
                .is_none()
        );
        // Keys laid out with the head dimension strided (a transposed view).
        let kt = z([1, 1, 8, 5]).swap_dims(2, 3);
        assert!(decode_attention_flex(&z([1, 4, 1, 8]), &kt, &z([1, 1, 5, 8]), 1.0).is_none());
    }

    #[test]
    fn large_scores_do_not_overflow() {
        // Scores near 1e3 overflow a plain e^s; the running maximum keeps
        // every exponent ≤ 0, across blocks too.
        let (kv, len, dim) = (1, 3 * BLOCK_ROWS, 16);
        let q = vec![10.0f32; 2 * dim];
        let mut k = random(kv * len * dim, 3);
        k.iter_mut().for_each(|x| *x *= 4.0);
        let v = random(kv * len * dim, 4);
        let mut out = vec![0.0f32; 2 * dim];
        decode_attention(
            &q,
            contiguous(&k, kv, len, dim),
            contiguous(&v, kv, len, dim),
            1.0,
            &mut out,
        );
        let want = truth(&q, &k, &v, kv, len, dim, 1.0);
        for (o, w) in out.iter().zip(&want) {
            assert!(
                o.is_finite() && (f64::from(*o) - w).abs() <= 1e-4,
                "{o} vs {w}"
            );
        }
    }
}
