//! Attention of one new token over its sequence's cache in one launch
//! (decode, `t == 1`): `softmax(q·Kᵀ · scale) · V` for every query head,
//! with grouped-query heads (query heads `rep·j .. rep·j + rep` read KV head
//! `j`), the scores and the softmax in f32, the output `[1, H·hd]` in the
//! activations' dtype.
//!
//! Visibility: after a one-token write the cache hands out exactly the slots
//! this query may see (every cached position on a global layer; on a
//! sliding-window layer the ring's `W` slots, the oldest just overwritten by
//! this token: `kv_cache.rs`), in any order. So the kernel takes the first
//! `len` slots of the cache buffer, read in place through its strides
//! (no copy of the view, no mask upload): slot order does not matter to a
//! softmax.
//!
//! One cube per KV head, so the `rep` query heads sharing it read K and V
//! once. Its units form `groups` rows of `lanes`: each row takes every
//! `groups`-th key with an online softmax (running maximum, sum and
//! weighted values), its lanes splitting the head dimension and meeting in a
//! plane sum on a GPU (one lane where planes have one unit: CubeCL's CPU
//! runtime); the rows' partial results are merged in shared memory. A row
//! folds [`DECODE_KEYS_PER_STEP`] of its keys at a time
//! ([`Rows::fold_keys`]), so their loads and plane sums are in flight
//! together instead of each waiting for the last.
//!
//! Owns: the kernel and its launch. Must never: see a key outside the
//! visible slots it is given, or round scores or probabilities below f32.

use burn::tensor::{DType, Tensor};
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

/// Below every score (`online_softmax.rs`'s; `prefill_attention.rs` takes it from here).
use super::online_softmax::LOW;
use super::online_softmax::Rows;
use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor, vector_width};

/// Shared memory for the rows' partial outputs, in f32 values.
const SHARED_PARTIALS: usize = 8192;

/// Most rows of lanes per cube.
const MAX_GROUPS: usize = 16;

/// Fewest keys per part of a split cache.
const KEYS_PER_PART: usize = 256;

/// Cubes a split aims at in all (about the SMs of an H100/H200).
pub(super) const WANT_CUBES: usize = 128;

/// Slots a row folds at a time ([`Rows::fold_keys`]), in this kernel and
/// the batch's (`batch_attention.rs`): with a cube's few planes and one
/// load of a key and a value each in flight, a row waits on memory for
/// every slot; four keep four of each in flight.
pub(crate) const DECODE_KEYS_PER_STEP: usize = 4;

/// Rows of lanes per cube: as many as the cube holds, at most
/// [`MAX_GROUPS`], and few enough that their partial outputs fit
/// [`SHARED_PARTIALS`].
pub(super) fn partial_groups(max_units: usize, lanes: usize, rep: usize, hd: usize) -> usize {
    (max_units / lanes)
        .min(MAX_GROUPS)
        .min(SHARED_PARTIALS / (rep * hd))
        .max(1)
}

/// How `s` slots split over at most `want` cubes (flash-decoding): `(chunk,
/// parts)`, at least `keys_per_part` slots a part (but for the last), so
/// that every part of the longest cache has a key.
pub(super) fn split_slots(s: usize, want: usize, keys_per_part: usize) -> (usize, usize) {
    let splits = want.min(s.div_ceil(keys_per_part.max(1))).max(1);
    let chunk = s.div_ceil(splits);
    (chunk, s.div_ceil(chunk))
}

/// How a decode batch's attention (`batch_attention.rs`) splits the slots
/// over cubes and folds them: [`DecodeTuning::DEFAULT`] runs; the
/// micro-benchmark times others, for a card to say which is faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeTuning {
    /// Slots a row folds at a time ([`Rows::fold_keys`]).
    pub per_step: usize,
    /// Cubes a split aims at in all, over the batch's sequences and heads.
    pub want_cubes: usize,
    /// Fewest slots per part of a split cache.
    pub keys_per_part: usize,
}

impl DecodeTuning {
    /// What a decode step runs: [`DECODE_KEYS_PER_STEP`] slots a step,
    /// parts of at least [`KEYS_PER_PART`] slots over about [`WANT_CUBES`]
    /// cubes.
    pub(crate) const DEFAULT: Self = Self {
        per_step: DECODE_KEYS_PER_STEP,
        want_cubes: WANT_CUBES,
        keys_per_part: KEYS_PER_PART,
    };

    /// The default split, folding `per_step` slots at a time.
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn stepping(per_step: usize) -> Self {
        Self {
            per_step,
            ..Self::DEFAULT
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_kernel<F: Float, N: Size>(
    q: &cubecl::prelude::Tensor<Vector<F, N>>,
    keys: &cubecl::prelude::Tensor<Vector<F, N>>,
    values: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<F>,
    part_o: &mut cubecl::prelude::Tensor<f32>,
    part_ml: &mut cubecl::prelude::Tensor<f32>,
    len: u32,
    chunk: u32,
    k_head: u32,
    k_slot: u32,
    v_head: u32,
    v_slot: u32,
    scale: f32,
    #[comptime] rep: usize,
    #[comptime] head_dim: usize,
    #[comptime] head_vectors: usize,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
    #[comptime] per_step: usize,
    #[comptime] plane: bool,
    #[comptime] split: bool,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let kvh = CUBE_POS_X as usize;
    // This cube's keys: `chunk` of them from `first` (all when not split).
    let part = CUBE_POS_Y as usize;
    let first = part * chunk as usize;
    let end = select(
        first + (chunk as usize) < len as usize,
        first + chunk as usize,
        len as usize,
    );
    let per_lane = comptime!(head_vectors / lanes);

    // This lane's share of each query head: vectors tx, tx + lanes, ...
    let mut rows = Rows::<N>::start::<F>(q, 0, kvh, rep, head_dim, head_vectors, lanes, groups);

    let n = end - first;
    // A slot a row does not see keeps the vectors it held (zeros at
    // first): `fold_keys` reads none of them, and they are never undefined.
    let mut kv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
    let mut vv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
    let mut valid = Array::<u32>::new(per_step);
    #[unroll]
    for j in 0..comptime!(per_step * per_lane) {
        kv[j] = Vector::new(0.0f32);
        vv[j] = Vector::new(0.0f32);
    }
    // A step's keys of a row lie `groups` apart, so the rows of a step
    // still read adjacent slots.
    let stride = comptime!(groups * per_step);
    // The same trip count in every row (the plane sums need whole planes).
    let trips = n.div_ceil(stride);
    let mut it = 0usize;
    while it < trips {
        #[unroll]
        for k in 0..per_step {
            let s = it * stride + k * groups + ty;
            let seen = s < n;
            valid[k] = u32::cast_from(seen);
            if seen {
                let slot = first + s;
                let kb = kvh * k_head as usize + slot * k_slot as usize;
                let vb = kvh * v_head as usize + slot * v_slot as usize;
                #[unroll]
                for j in 0..per_lane {
                    kv[k * per_lane + j] = Vector::<f32, N>::cast_from(keys[kb + tx + j * lanes]);
                    vv[k * per_lane + j] = Vector::<f32, N>::cast_from(values[vb + tx + j * lanes]);
                }
            }
        }
        rows.fold_keys(&kv, &vv, &valid, scale, per_step, plane);
        it += 1;
    }

    // Merge the rows; every cube has a key (each part of a split has one).
    rows.merge::<F>(out, part_o, part_ml, kvh, split, false);
}

/// Merges the parts of a split attention: per output element, the parts'
/// outputs weighted by `sum · exp(max − overall max)`. Sequences of a batch
/// (`batch_attention.rs`) follow each other, `per_seq` output elements and
/// `H · splits` parts each.
#[cube(launch)]
pub(super) fn merge_parts_kernel<F: Float>(
    part_o: &cubecl::prelude::Tensor<f32>,
    part_ml: &cubecl::prelude::Tensor<f32>,
    out: &mut cubecl::prelude::Tensor<F>,
    elements: u32,
    per_seq: u32,
    splits: u32,
    #[comptime] rep: usize,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i < elements as usize {
        // Output element i = (sequence, head h = kvh·rep + r, d).
        let seq = i / per_seq as usize;
        let within = i % per_seq as usize;
        let h = within / head_dim;
        let d = within % head_dim;
        let kvh = h / rep;
        let r = h % rep;
        let n = splits as usize;
        // The sequence's first part: H · n parts before it per sequence.
        let first = seq * (per_seq as usize / head_dim) * n;
        let mut top = LOW.runtime();
        for p in 0..n {
            let m = part_ml[(first + (kvh * n + p) * rep + r) * 2];
            top = select(m > top, m, top);
        }
        let mut sum = 0.0f32;
        let mut o = 0.0f32;
        for p in 0..n {
            let pr = first + (kvh * n + p) * rep + r;
            let w = part_ml[pr * 2 + 1] * (part_ml[pr * 2] - top).exp();
            sum += w;
            o += part_o[pr * head_dim + d] * w;
        }
        out[i] = F::cast_from(o / sum);
    }
}

/// One token's attention: `q: [1, H·hd]` (after q-norm and RoPE) over the
/// first `S` slots of `keys`/`values: [1, KV, S, hd]` (views of the cache
/// buffer, read in place), `scale` applied to the scores; `[1, H·hd]` in
/// `q`'s dtype. `None` off a CubeCL device, or for shapes it does not cover
/// (H not a multiple of KV, no keys, head dim not split evenly by the lanes).
pub(crate) fn decode_attention(
    q: &Tensor<2>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    heads: usize,
    scale: f64,
) -> Option<Tensor<2>> {
    decode_attention_stepping(q, keys, values, heads, scale, DECODE_KEYS_PER_STEP)
}

/// [`decode_attention`] folding `per_step` slots at a time into each row
/// (the tests and the bench; 1 is one slot at a time). `None` as well for
/// no slot a step.
pub(crate) fn decode_attention_stepping(
    q: &Tensor<2>,
    keys: &Tensor<4>,
    values: &Tensor<4>,
    heads: usize,
    scale: f64,
    per_step: usize,
) -> Option<Tensor<2>> {
    let [one, qw] = q.dims();
    let [b, kvh, s, hd] = keys.dims();
    let dtype = q.dtype();
    let fits = one == 1
        && b == 1
        && s > 0
        && hd > 0
        && kvh > 0
        && heads.is_multiple_of(kvh)
        && qw == heads * hd
        && values.dims() == keys.dims()
        && keys.dtype() == dtype
        && values.dtype() == dtype
        && s <= u32::MAX as usize
        && per_step > 0;
    if !enabled() || !fits {
        return None;
    }
    let elem = float_elem(dtype)?;
    let qc = contiguous(cube(q)?);
    // Read in place: a view's strides say where each slot lives.
    let (kc, vc) = (cube(keys)?, cube(values)?);
    let strides_ok = |t: &burn_cubecl::tensor::CubeTensor| t.meta.strides()[3] == 1;
    if !strides_ok(&kc) || !strides_ok(&vc) {
        return None;
    }
    let (lanes, plane) = match reduce_units(&qc, 32) {
        (units, true) => (units as usize, true),
        _ => (1, false),
    };
    let vec = vector_width(hd, dtype, 16);
    let head_vectors = hd / vec;
    let aligned = |t: &burn_cubecl::tensor::CubeTensor| {
        let st = t.meta.strides();
        st[1].is_multiple_of(vec) && st[2].is_multiple_of(vec)
    };
    if !head_vectors.is_multiple_of(lanes) || !aligned(&kc) || !aligned(&vc) {
        return None;
    }
    let rep = heads / kvh;
    let max_units = qc.client.properties().hardware.max_units_per_cube.max(1) as usize;
    let groups = partial_groups(max_units, lanes, rep, hd);
    // Long caches split over more cubes (flash-decoding): every part has
    // at least one key, so each part's sum is positive.
    let (chunk, splits) = split_slots(s, (WANT_CUBES / kvh).max(1), KEYS_PER_PART);
    let (ks, vs) = (kc.meta.strides().clone(), vc.meta.strides().clone());
    let client = qc.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        qc.device.clone(),
        qc.meta.shape().clone(),
        dtype,
    );
    let split = splits > 1;
    // Unused (one element each) when not split.
    let parts = |n: usize| {
        empty_device_dtype(
            client.clone(),
            qc.device.clone(),
            burn::tensor::Shape::new([n.max(1)]),
            DType::F32,
        )
    };
    let (part_o, part_ml) = if split {
        (
            parts(kvh * splits * rep * hd),
            parts(kvh * splits * rep * 2),
        )
    } else {
        (parts(1), parts(1))
    };
    decode_attention_kernel::launch(
        &client,
        CubeCount::Static(kvh as u32, splits as u32, 1),
        CubeDim::new_2d(lanes as u32, groups as u32),
        vec,
        qc.into_tensor_arg(),
        kc.into_tensor_arg(),
        vc.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        part_o.clone().into_tensor_arg(),
        part_ml.clone().into_tensor_arg(),
        s as u32,
        chunk as u32,
        (ks[1] / vec) as u32,
        (ks[2] / vec) as u32,
        (vs[1] / vec) as u32,
        (vs[2] / vec) as u32,
        scale as f32,
        rep,
        hd,
        head_vectors,
        lanes,
        groups,
        per_step,
        plane,
        split,
        elem,
    );
    if split {
        let elements = heads * hd;
        let units = client
            .properties()
            .hardware
            .max_units_per_cube
            .clamp(1, 256);
        merge_parts_kernel::launch(
            &client,
            CubeCount::Static((elements as u32).div_ceil(units), 1, 1),
            CubeDim::new_1d(units),
            part_o.into_tensor_arg(),
            part_ml.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            elements as u32,
            elements as u32,
            splits as u32,
            rep,
            hd,
            elem,
        );
    }
    Some(tensor(out))
}

/// The attention and merge kernels as a GPU launches them for the 4B's
/// bf16 heads (2 query heads per KV head, 256 wide in 32 vectors of 8 over
/// 32 lanes, 8 rows, [`DECODE_KEYS_PER_STEP`] slots a step, plane sums,
/// split over parts), compiled to PTX for
/// sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let attention = decode_attention_kernel::DecodeAttentionKernel::new(
        settings(CubeDim::new_2d(32, 8)),
        props.clone(),
        target.clone(),
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
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
        8,
        DECODE_KEYS_PER_STEP,
        true,
        true,
        bf16()?,
    );
    let merge = merge_parts_kernel::MergePartsKernel::new(
        settings(CubeDim::new_1d(256)),
        props,
        target,
        t(),
        t(),
        t(),
        (),
        (),
        (),
        2,
        256,
        bf16()?,
    );
    Ok(super::ptx::ptx_of(attention, arch)? + &super::ptx::ptx_of(merge, arch)?)
}

#[cfg(all(test, feature = "cube-cpu"))]
pub(super) mod tests {
    use burn::tensor::activation::softmax;
    use burn::tensor::{DType, Device};

    use super::*;
    use crate::config::{Gemma3Config, LayerType};
    use crate::kernels::test_support::{device, max_abs_diff, random};
    use crate::kv_cache::KvCache;

    /// `gemma3.rs`'s `attend` for one token (no mask: every visible slot counts).
    pub(crate) fn burn_attend(
        q: Tensor<2>,
        keys: Tensor<4>,
        values: Tensor<4>,
        heads: usize,
        scale: f64,
    ) -> Tensor<2> {
        let [_, kv, _, hd] = keys.dims();
        let rep = heads / kv;
        let dtype = q.dtype();
        let q = q.reshape([1, kv, rep, hd]);
        let scores = q
            .matmul(keys.swap_dims(2, 3))
            .mul_scalar(scale)
            .cast(DType::F32);
        let probs = softmax(scores, 3).cast(dtype);
        probs.matmul(values).reshape([1, heads * hd])
    }

    /// A one-layer cache of `kind` (window `w`) filled token by token with
    /// random keys/values up to `len` positions, as decode fills it; returns
    /// what the last token sees.
    #[allow(clippy::too_many_arguments)]
    fn filled(
        kind: LayerType,
        w: usize,
        kv: usize,
        hd: usize,
        len: usize,
        dtype: DType,
        dev: &Device,
        seed: u64,
    ) -> (Tensor<4>, Tensor<4>) {
        let mut cfg = Gemma3Config::medgemma_4b();
        cfg.layer_types = vec![kind];
        cfg.sliding_window = w;
        let mut cache = KvCache::new(&cfg);
        // A prompt chunk first (as prefill writes), then a few single tokens.
        let first = len.saturating_sub(4).max(1);
        let k = random([1, kv, first, hd], dtype, seed, dev);
        let v = random([1, kv, first, hd], dtype, seed + 1, dev);
        let _ = cache.layers[0].append(k, v);
        let mut last = None;
        for p in first..len {
            let k = random([1, kv, 1, hd], dtype, seed + 2 + p as u64 * 2, dev);
            let v = random([1, kv, 1, hd], dtype, seed + 3 + p as u64 * 2, dev);
            last = Some(cache.layers[0].append(k, v));
        }
        let vis = last.expect("at least one decode token");
        assert!(vis.positions.is_none(), "a one-token step needs no mask");
        (vis.keys, vis.values)
    }

    #[test]
    fn decode_attention_equals_the_burn_composition() {
        let dev = device();
        // (kind, window, H, KV, hd, positions, dtype, tolerance, slots a
        // step): the 4B's heads (8 over 4), the 270M's (4 over 1), global
        // caches grown past one GROWTH step, rings wrapped around (more
        // positions than the window), a ring not yet full; caches of more
        // than 256 keys run split over cubes (300 keys: 2 parts, 700: 3, a
        // wrapped ring of 512: 2). Slots a step: 4 (the kernel's), 3 (a
        // step's last slots past a part's end), 1 (one at a time).
        for (i, &(kind, w, h, kv, hd, len, dtype, tol, per_step)) in [
            (LayerType::Global, 1024, 8, 4, 256, 300, DType::F32, 2e-5, 4),
            (LayerType::Local, 16, 8, 4, 256, 45, DType::F32, 2e-5, 3),
            (LayerType::Local, 16, 4, 1, 256, 40, DType::F32, 2e-5, 1),
            (LayerType::Local, 64, 2, 2, 64, 20, DType::F32, 2e-5, 3),
            (LayerType::Local, 16, 8, 4, 256, 37, DType::BF16, 2e-2, 4),
            // Split over cubes (more than 256 keys) and merged.
            (LayerType::Global, 1024, 4, 1, 256, 700, DType::F32, 2e-5, 3),
            (LayerType::Local, 512, 8, 4, 256, 1500, DType::BF16, 2e-2, 4),
        ]
        .iter()
        .enumerate()
        {
            let seed = 900 + 100 * i as u64;
            let (keys, values) = filled(kind, w, kv, hd, len, dtype, &dev, seed);
            let s = keys.dims()[2];
            assert_eq!(
                s,
                if kind == LayerType::Global {
                    len
                } else {
                    len.min(w)
                }
            );
            // Scaled up so the softmax is far from uniform.
            let q = random([1, h * hd], dtype, seed + 99, &dev).mul_scalar(4.0);
            let scale = 256f64.powf(-0.5);
            let got = decode_attention_stepping(&q, &keys, &values, h, scale, per_step)
                .expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.dtype(), dtype);
            let want = burn_attend(q, keys, values, h, scale);
            let d = max_abs_diff(got, want);
            assert!(
                d <= tol,
                "{kind:?} w={w} h={h} kv={kv} hd={hd} len={len} {dtype:?} {per_step} a step: differs by {d}"
            );
        }
    }
}
