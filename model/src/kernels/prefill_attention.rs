//! Attention of a prompt chunk (prefill, `t > 1`) over its cache in one
//! launch, without the score matrix: `softmax(q·Kᵀ · scale + mask) · V`
//! for every query token and head, with grouped-query heads (query heads
//! `rep·j .. rep·j + rep` read KV head `j`), the scores and the softmax in
//! f32, the output `[T, H·hd]` in the activations' dtype.
//!
//! Before, each layer built `[1, KV, rep·T, S]` scores in f32, added a mask
//! of the same size (2 MB for a 512-token chunk, built on the device once
//! per chunk and layer type), ran a softmax and a second product: five
//! launches and two full score matrices per layer. Here each query row runs
//! an online softmax (running maximum, sum and weighted values) over the
//! keys it may see, and decides which it may see from the keys' absolute
//! positions: a table of `2·S + T` integers ([`KeyTable`]), uploaded once
//! per chunk and layer type.
//!
//! Visibility (spec §2.6, §5.4; `gemma3.rs`'s `mask`): query position `i`
//! sees key position `j` iff `j ≤ i` or both lie in the same image block,
//! and, on sliding-window layers, `j + W > i`. The cache hands its keys out
//! in slot order (a ring's order on sliding-window layers), so the kernel
//! tests every slot; slot order does not matter to a softmax.
//!
//! One cube per (KV head, tile of query tokens). Its units form `rows` rows
//! of `lanes`: a row takes one query token and the `rep` query heads of its
//! KV head, its lanes splitting the head dimension and meeting in a plane
//! sum on a GPU (one lane where planes have one unit: CubeCL's CPU
//! runtime). The rows of a cube read the same keys in the same order, so
//! the cache lines they share come from the cache, not from memory. A row
//! folds [`KEYS_PER_STEP`] keys at a time, so their dots and plane sums
//! overlap instead of each waiting for the last. Every query sees at least
//! itself, so every row's sum is positive.
//!
//! Owns: the kernel, its key table and its launch. Must never: let a query
//! see a key its mask hides, or round scores or probabilities below f32.

use std::ops::Range;

use burn::tensor::Tensor;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::online_softmax::Rows;
use super::{
    contiguous, cube, enabled, float_elem, reduce_units, tensor, upload_u32, vector_width,
};

/// Most query rows (tokens) per cube.
const MAX_ROWS: usize = 8;

/// Keys each query row folds into its online softmax at a time
/// ([`super::online_softmax::Rows::fold_keys`]): their dots and plane sums
/// overlap on a GPU instead of each waiting for the last key's plane sum.
/// At 4 a row holds 4 keys' and values' share (for the 4B's 256-wide
/// heads over 32 lanes, 8 bf16 each) in registers.
pub(crate) const KEYS_PER_STEP: usize = 4;

/// What a chunk's queries may see, on the device: per key slot its absolute
/// position and image block number (1-based, 0 outside every block), per
/// query its block number, as `u32`s `[positions (S) | key blocks (S) |
/// query blocks (T)]`; the block parts are absent when there are no blocks.
/// Built once per chunk and layer type ([`key_table`]) and shared by every
/// layer of the type.
#[derive(Debug, Clone)]
pub(crate) struct KeyTable {
    table: CubeTensor,
    /// Key slots.
    keys: usize,
    /// Query tokens.
    queries: usize,
    /// The first query's absolute position.
    start: u32,
    /// The window on sliding-window layers, `None` on global ones.
    window: Option<u32>,
    /// Whether the table holds block numbers.
    blocks: bool,
}

/// The [`KeyTable`] of a chunk of `t` queries from absolute position
/// `start` over keys at absolute positions `keys` (cache order), on the
/// CubeCL device `like` lives on. `None` off a CubeCL device, or when a
/// position does not fit in `u32`.
pub(crate) fn key_table(
    like: &Tensor<4>,
    start: usize,
    t: usize,
    keys: &[usize],
    window: Option<usize>,
    blocks: &[Range<usize>],
) -> Option<KeyTable> {
    let c = cube(like)?;
    let u = |p: usize| u32::try_from(p).ok();
    let number = |p: usize| {
        blocks
            .iter()
            .position(|b| b.contains(&p))
            .map_or(0, |i| i as u32 + 1)
    };
    let mut table = keys.iter().map(|&p| u(p)).collect::<Option<Vec<u32>>>()?;
    u(start + t)?;
    // The kernel tests `key + window > pos` in u32: the largest key plus the
    // window must fit too, or the launched path would wrap where the host
    // mask does not (the caller falls back to the masked softmax).
    let window = match window {
        Some(w) => {
            u(start + t + w)?;
            Some(u(w)?)
        }
        None => None,
    };
    if !blocks.is_empty() {
        table.extend(keys.iter().map(|&p| number(p)));
        table.extend((start..start + t).map(number));
    }
    Some(KeyTable {
        table: upload_u32(&c, &table),
        keys: keys.len(),
        queries: t,
        start: start as u32,
        window,
        blocks: !blocks.is_empty(),
    })
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn prefill_attention_kernel<F: Float, N: Size>(
    q: &cubecl::prelude::Tensor<Vector<F, N>>,
    keys: &cubecl::prelude::Tensor<Vector<F, N>>,
    values: &cubecl::prelude::Tensor<Vector<F, N>>,
    table: &cubecl::prelude::Tensor<u32>,
    out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    n_keys: u32,
    n_queries: u32,
    start: u32,
    window: u32,
    k_head: u32,
    k_slot: u32,
    v_head: u32,
    v_slot: u32,
    scale: f32,
    #[comptime] rep: usize,
    #[comptime] head_dim: usize,
    #[comptime] head_vectors: usize,
    #[comptime] lanes: usize,
    #[comptime] plane: bool,
    #[comptime] local: bool,
    #[comptime] blocks: bool,
    #[comptime] per_step: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let kvh = CUBE_POS_X as usize;
    let kv_heads = CUBE_COUNT_X as usize;
    // This row's query token (a whole plane per row: the plane sums stay uniform).
    let i = CUBE_POS_Y as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    if i < n_queries as usize {
        let per_lane = comptime!(head_vectors / lanes);
        let s_len = n_keys as usize;
        let pos = start + i as u32;
        let mut q_block = 0u32;
        if comptime!(blocks) {
            q_block = table[2 * s_len + i];
        }
        // Queries and output are [T, H·hd]: row i's heads side by side.
        let row = i * kv_heads * rep * head_vectors;
        let mut rows =
            Rows::<N>::start::<F>(q, row, kvh, rep, head_dim, head_vectors, lanes, 1usize);
        let mut kv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
        let mut vv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
        let mut valid = Array::<u32>::new(per_step);
        #[unroll]
        for j in 0..comptime!(per_step * per_lane) {
            kv[j] = Vector::new(0.0f32);
            vv[j] = Vector::new(0.0f32);
        }
        let mut s0 = 0usize;
        while s0 < s_len {
            // Which of the next `per_step` slots this query sees: the same
            // in every lane of the row, so the plane sums stay whole.
            let mut any = 0u32;
            #[unroll]
            for k in 0..per_step {
                let s = s0 + k;
                let mut seen = false;
                if s < s_len {
                    let key = table[s];
                    seen = key <= pos;
                    if comptime!(blocks) {
                        seen = seen || (q_block != 0 && table[s_len + s] == q_block);
                    }
                    if comptime!(local) {
                        seen = seen && key + window > pos;
                    }
                }
                valid[k] = u32::cast_from(seen);
                any += valid[k];
            }
            if any > 0 {
                #[unroll]
                for k in 0..per_step {
                    if valid[k] == 1 {
                        let s = s0 + k;
                        let kb = kvh * k_head as usize + s * k_slot as usize;
                        let vb = kvh * v_head as usize + s * v_slot as usize;
                        #[unroll]
                        for j in 0..per_lane {
                            kv[k * per_lane + j] =
                                Vector::<f32, N>::cast_from(keys[kb + tx + j * lanes]);
                            vv[k * per_lane + j] =
                                Vector::<f32, N>::cast_from(values[vb + tx + j * lanes]);
                        }
                    }
                }
                rows.fold_keys(&kv, &vv, &valid, scale, per_step, plane);
            }
            s0 += per_step;
        }
        rows.store::<F>(out, row, kvh);
    }
}

/// A chunk's attention: `q: [1, H, T, hd]` (after q-norm and RoPE; read as
/// `[T, H, hd]` rows, copied to that layout unless it is a view of it, as
/// the q/k-norm + RoPE kernel's output is) over `keys`/`values: [1, KV, S, hd]` (the cache's
/// visible slots, read in place), what each query sees given by `table`
/// (built for these `S` keys and `T` queries), scores scaled by `scale`;
/// `[T, H·hd]` in `q`'s dtype. `None` off a CubeCL device, or for shapes it
/// does not cover (H not a multiple of KV, a table built for other sizes,
/// head dim not split evenly by the lanes, rows not aligned to a vector).
pub(crate) fn prefill_attention(
    q: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    table: &KeyTable,
    scale: f64,
) -> Option<Tensor<2>> {
    prefill_attention_stepping(q, keys, values, table, scale, KEYS_PER_STEP)
}

/// [`prefill_attention`] folding `per_step` keys at a time into each
/// query's online softmax (the micro-benchmark compares 1 with
/// [`KEYS_PER_STEP`]).
pub(crate) fn prefill_attention_stepping(
    q: &Tensor<4>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    table: &KeyTable,
    scale: f64,
    per_step: usize,
) -> Option<Tensor<2>> {
    let [one, heads, t, hd] = q.dims();
    let [b, kvh, s, khd] = keys.dims();
    let dtype = q.dtype();
    let fits = one == 1
        && b == 1
        && t > 0
        && s > 0
        && hd > 0
        && khd == hd
        && kvh > 0
        && heads.is_multiple_of(kvh)
        && values.dims() == keys.dims()
        && keys.dtype() == dtype
        && values.dtype() == dtype
        && table.keys == s
        && table.queries == t;
    if !enabled() || !fits {
        return None;
    }
    let elem = float_elem(dtype)?;
    // Queries as [T, H·hd] rows (what the q/k-norm + RoPE kernel leaves:
    // no copy then).
    let qc = contiguous(cube(&q.clone().swap_dims(1, 2))?);
    let (kc, vc) = (cube(keys)?, cube(values)?);
    let vec = vector_width(hd, dtype, 16);
    let head_vectors = hd / vec;
    // Unit last stride, every other stride a whole number of vectors.
    let strided = |c: &CubeTensor| {
        let st = c.meta.strides();
        st[3] == 1 && st[1].is_multiple_of(vec) && st[2].is_multiple_of(vec)
    };
    if !strided(&kc) || !strided(&vc) {
        return None;
    }
    let (lanes, plane) = match reduce_units(&qc, 32) {
        (units, true) => (units as usize, true),
        _ => (1, false),
    };
    if !head_vectors.is_multiple_of(lanes) {
        return None;
    }
    let client = qc.client.clone();
    let max_units = client.properties().hardware.max_units_per_cube.max(1) as usize;
    let rows = (max_units / lanes).clamp(1, MAX_ROWS).min(t);
    let out = empty_device_dtype(
        client.clone(),
        qc.device.clone(),
        burn::tensor::Shape::new([t, heads * hd]),
        dtype,
    );
    let (ks, vs) = (kc.meta.strides().clone(), vc.meta.strides().clone());
    prefill_attention_kernel::launch(
        &client,
        CubeCount::Static(kvh as u32, t.div_ceil(rows) as u32, 1),
        CubeDim::new_2d(lanes as u32, rows as u32),
        vec,
        qc.into_tensor_arg(),
        kc.into_tensor_arg(),
        vc.into_tensor_arg(),
        table.table.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        s as u32,
        t as u32,
        table.start,
        table.window.unwrap_or(0),
        (ks[1] / vec) as u32,
        (ks[2] / vec) as u32,
        (vs[1] / vec) as u32,
        (vs[2] / vec) as u32,
        scale as f32,
        heads / kvh,
        hd,
        head_vectors,
        lanes,
        plane,
        table.window.is_some(),
        table.blocks,
        per_step.max(1),
        elem,
    );
    Some(tensor(out))
}

/// The kernel as the 4B's bf16 chunks launch it on a plane-32 GPU (`rep`
/// 2, heads of 256 in 32 vectors of 8 over 32 lanes, plane sums, a
/// sliding-window layer with an image block), `per_step` keys per step,
/// compiled to PTX for sm_`arch` with no GPU ([`super::ptx::ptx_of`]).
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(per_step: usize, arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as tensor};
    let (props, target) = offline();
    let kernel = prefill_attention_kernel::PrefillAttentionKernel::new(
        settings(CubeDim::new_2d(32, MAX_ROWS as u32)),
        props,
        target,
        tensor(),
        tensor(),
        tensor(),
        tensor(),
        tensor(),
        (),
        (),
        (),
        (),
        (),
        (),
        (),
        (),
        (),
        8,
        2,
        256,
        32,
        32,
        true,
        true,
        true,
        per_step,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}
