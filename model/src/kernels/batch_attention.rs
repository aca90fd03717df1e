//! Attention of one new token for every sequence of a decode batch in few
//! launches, with the write of the B new key/value rows into their caches in
//! the same launch: `q: [B, H·hd]` (after q-norm and RoPE), the new rows
//! `k, v: [B, KV·hd]`, and B caches, each its own buffer `[1, KV, cap, hd]`
//! (`kv_cache.rs`) with its own slot for the new row and its own number of
//! visible slots; the output `[B, H·hd]` in the activations' dtype.
//!
//! The caches stay one buffer per conversation (kept between turns, cloned
//! copy-on-write, counted in the memory budget), read and written in place:
//! a launch takes up to [`GROUP`] sequences, each cache a pair of kernel
//! arguments (CubeCL has no arrays of tensors: its `Sequence` needs sized
//! items), and each cube runs the branch of its own sequence (uniform in a
//! cube). So a batch of up to 32 (the scheduler's largest) is one launch,
//! plus one merge when the slots are split, instead of about four launches
//! per sequence. A launch of up to [`SMALL_GROUP`] sequences takes the
//! kernel compiled with that many branches (its other pairs of arguments
//! are never read), so small batches do not compile or carry the large one.
//!
//! The math is `decode_attention.rs`'s (one cube per KV head and part of
//! the slots, the online softmax in f32 of `online_softmax.rs`,
//! flash-decoding split over cubes past 256 keys, merged by its merge
//! kernel). The new token's slot is read from
//! the new rows, never from the buffer, so the cubes that write it (the
//! first part of each KV head) race with no reader.
//!
//! The per-sequence table (visible slots, new slot, capacity) is the same
//! for every layer of one type in a step: a thread keeps its last two
//! uploads and uploads a table only when it is neither of them.
//!
//! Owns: the batched kernel, its launch and the kept tables. Must never: write into a buffer
//! another cache still shares (a shared buffer is copied first, as the
//! cache's copy on write does), see a slot outside a sequence's visible
//! ones, or round scores or probabilities below f32.

use std::cell::RefCell;

use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeDevice;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::decode_attention::{DecodeTuning, merge_parts_kernel, partial_groups, split_slots};
use super::online_softmax::Rows;
use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor, vector_width};
use crate::kv_cache::CacheSlot;

/// Sequences per launch: each has its cache as its own pair of kernel
/// arguments, and the kernel body is repeated once per pair it compiles
/// (`pairs`).
pub(crate) const GROUP: usize = 32;

/// The kernel's branches for a launch of up to this many sequences: the
/// same kernel compiled with only the first `SMALL_GROUP` pairs read.
pub(crate) const SMALL_GROUP: usize = 8;

/// The branches the kernel compiles for a launch of `n` sequences.
fn pairs_for(n: usize) -> usize {
    if n <= SMALL_GROUP { SMALL_GROUP } else { GROUP }
}

/// Most sequences per call.
pub(crate) const MAX_BATCH: usize = 256;

/// Per-sequence tables kept on their devices: one per layer type (Gemma 3
/// has two).
const KEPT_TABLES: usize = 2;

thread_local! {
    /// The per-sequence tables this thread lately uploaded, with their
    /// devices, newest last (per thread: a device stream is per thread).
    static TABLES: RefCell<Vec<(CubeDevice, Vec<u32>, CubeTensor)>> =
        const { RefCell::new(Vec::new()) };
}

/// The per-sequence table `meta` on `like`'s device: a kept upload of the
/// same numbers, else a new upload (kept in place of the oldest). The layers
/// of one type hand the same table in a decode step (the same visible
/// slots, new slot and capacity per sequence), so a step uploads one per
/// layer type instead of one per layer. The kernel only reads it.
fn table(like: &CubeTensor, meta: Vec<u32>) -> CubeTensor {
    TABLES.with_borrow_mut(|kept| {
        if let Some((_, _, t)) = kept
            .iter()
            .find(|(device, numbers, _)| *device == like.device && *numbers == meta)
        {
            return t.clone();
        }
        let t = super::upload_u32(like, &meta);
        if kept.len() == KEPT_TABLES {
            kept.remove(0);
        }
        kept.push((like.device.clone(), meta, t.clone()));
        t
    })
}

/// One sequence's part of the slots for one KV head: writes the new row
/// (when `write`), then folds each visible slot of `first..first + n` into
/// the running maxima `m`, sums `l` and weighted values `acc`, `per_step`
/// slots a row at a time ([`Rows::fold_keys`]: their loads, dots and plane
/// sums in flight together; a row's slots of a step are `groups` apart, so
/// the rows of a step still read `groups · per_step` adjacent slots).
#[cube]
#[allow(clippy::too_many_arguments)]
fn scan_cache<F: Float, N: Size>(
    kc: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    vc: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    k_new: &cubecl::prelude::Tensor<Vector<F, N>>,
    v_new: &cubecl::prelude::Tensor<Vector<F, N>>,
    rows: &mut Rows<N>,
    new_slot: usize,
    head: usize,
    new_row: usize,
    first: usize,
    n: usize,
    write: bool,
    scale: f32,
    #[comptime] head_vectors: usize,
    #[comptime] lanes: usize,
    #[comptime] groups: usize,
    #[comptime] per_step: usize,
    #[comptime] plane: bool,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let per_lane = comptime!(head_vectors / lanes);
    let threads = comptime!(lanes * groups);
    if write {
        let mut e = ty * lanes + tx;
        while e < head_vectors {
            kc[head + new_slot * head_vectors + e] = k_new[new_row + e];
            vc[head + new_slot * head_vectors + e] = v_new[new_row + e];
            e += threads;
        }
    }
    // A slot a row does not see keeps the vectors it held (zeros at
    // first): `fold_keys` reads none of them, and they are never undefined.
    let mut kv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
    let mut vv = Array::<Vector<f32, N>>::new(comptime!(per_step * per_lane));
    let mut valid = Array::<u32>::new(per_step);
    for j in 0..comptime!(per_step * per_lane) {
        kv[j] = Vector::new(0.0f32);
        vv[j] = Vector::new(0.0f32);
    }
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
                let base = head + slot * head_vectors;
                let at = k * per_lane;
                // The new slot from the new row: its cube may be writing
                // it. The loops over a lane's vectors are not unrolled: the
                // body is already repeated per sequence and per key (on
                // CubeCL's CPU runtime one lane takes every vector of a
                // head).
                if slot == new_slot {
                    for j in 0..per_lane {
                        kv[at + j] = Vector::<f32, N>::cast_from(k_new[new_row + tx + j * lanes]);
                        vv[at + j] = Vector::<f32, N>::cast_from(v_new[new_row + tx + j * lanes]);
                    }
                } else {
                    for j in 0..per_lane {
                        kv[at + j] = Vector::<f32, N>::cast_from(kc[base + tx + j * lanes]);
                        vv[at + j] = Vector::<f32, N>::cast_from(vc[base + tx + j * lanes]);
                    }
                }
            }
        }
        rows.fold_keys(&kv, &vv, &valid, scale, per_step, plane);
        it += 1;
    }
}

/// Defines the batched kernel with one pair of cache arguments per sequence
/// of a launch (`$k`, `$v` for the launch's sequence `$i`: [`GROUP`] pairs)
/// and one branch per pair below `pairs`, taken by the cubes of that
/// sequence (uniform in a cube).
macro_rules! batch_attention_kernel {
    ($($i:literal => $k:ident, $v:ident;)+) => {
        #[cube(launch)]
        #[allow(clippy::too_many_arguments)]
        fn batch_attention_kernel<F: Float, N: Size>(
            q: &cubecl::prelude::Tensor<Vector<F, N>>,
            k_new: &cubecl::prelude::Tensor<Vector<F, N>>,
            v_new: &cubecl::prelude::Tensor<Vector<F, N>>,
            $(
                $k: &mut cubecl::prelude::Tensor<Vector<F, N>>,
                $v: &mut cubecl::prelude::Tensor<Vector<F, N>>,
            )+
            out: &mut cubecl::prelude::Tensor<F>,
            part_o: &mut cubecl::prelude::Tensor<f32>,
            part_ml: &mut cubecl::prelude::Tensor<f32>,
            meta: &cubecl::prelude::Tensor<u32>,
            first_seq: u32,
            chunk: u32,
            scale: f32,
            #[comptime] rep: usize,
            #[comptime] head_dim: usize,
            #[comptime] head_vectors: usize,
            #[comptime] lanes: usize,
            #[comptime] groups: usize,
            #[comptime] per_step: usize,
            #[comptime] plane: bool,
            #[comptime] split: bool,
            #[comptime] pairs: usize,
            #[define(F)] _dtype: ElemType,
        ) {
            let kvh = CUBE_POS_X as usize;
            let kv_heads = CUBE_COUNT_X as usize;
            let part = CUBE_POS_Y as usize;
            // This launch's sequence `local`, the batch's `seq`.
            let local = CUBE_POS_Z as usize;
            let seq = first_seq as usize + local;
            let q_row = seq * kv_heads * rep * head_vectors;
            let mut rows =
                Rows::<N>::start::<F>(q, q_row, kvh, rep, head_dim, head_vectors, lanes, groups);
            // Per sequence: visible slots, the new token's slot, the buffer's slots.
            let len = meta[seq * 3] as usize;
            let new_slot = meta[seq * 3 + 1] as usize;
            let head = kvh * (meta[seq * 3 + 2] as usize) * head_vectors;
            let new_row = (seq * kv_heads + kvh) * head_vectors;
            // This cube's slots: `chunk` of them from `first` (none when this
            // sequence has `first` or fewer).
            let first = select(part * (chunk as usize) < len, part * chunk as usize, len);
            let end = select(first + (chunk as usize) < len, first + chunk as usize, len);
            let n = end - first;
            // The first part of each KV head writes the new row.
            let write = part == 0;
            $(
                if comptime!($i < pairs) {
                    if local == $i {
                        scan_cache::<F, N>(
                            $k, $v, k_new, v_new, &mut rows, new_slot, head, new_row, first,
                            n, write, scale, head_vectors, lanes, groups, per_step, plane,
                        );
                    }
                }
            )+
            // Merge the rows. A part past a short sequence's slots has no key:
            // sum 0, and weight 0 in the merge.
            rows.merge::<F>(out, part_o, part_ml, seq * kv_heads + kvh, split, true);
        }
    };
}

batch_attention_kernel! {
    0 => k0, v0;
    1 => k1, v1;
    2 => k2, v2;
    3 => k3, v3;
    4 => k4, v4;
    5 => k5, v5;
    6 => k6, v6;
    7 => k7, v7;
    8 => k8, v8;
    9 => k9, v9;
    10 => k10, v10;
    11 => k11, v11;
    12 => k12, v12;
    13 => k13, v13;
    14 => k14, v14;
    15 => k15, v15;
    16 => k16, v16;
    17 => k17, v17;
    18 => k18, v18;
    19 => k19, v19;
    20 => k20, v20;
    21 => k21, v21;
    22 => k22, v22;
    23 => k23, v23;
    24 => k24, v24;
    25 => k25, v25;
    26 => k26, v26;
    27 => k27, v27;
    28 => k28, v28;
    29 => k29, v29;
    30 => k30, v30;
    31 => k31, v31;
}

/// The buffer of a cache as a CubeCL tensor the kernel may write in place:
/// itself when no other handle shares it, else a copy (the cache's copy on
/// write, done here instead of by `slice_assign`).
fn writable(t: Tensor<4>) -> Option<CubeTensor> {
    let c = t.try_into_primitive::<burn_cubecl::Cube>().ok()?;
    Some(if c.can_mut() { c } else { c.copy() })
}

/// Contiguous `[1, KV, cap, hd]` in `dtype`: what the kernel indexes.
fn cache_fits(t: &Tensor<4>, kv: usize, hd: usize, dtype: DType) -> Option<usize> {
    let [one, h, cap, d] = t.dims();
    if one != 1 || h != kv || d != hd || t.dtype() != dtype || cap > u32::MAX as usize {
        return None;
    }
    let c = cube(t)?;
    let st = c.meta.strides();
    (st[3] == 1 && st[2] == hd && st[1] == cap * hd).then_some(cap)
}

/// One decode step's attention for B sequences in one launch (two when the
/// slots are split over cubes: the merge): writes row `i` of `k`/`v`
/// (`[B, KV·hd]`, after k-norm and RoPE) into slot `caches[i].slot` of
/// `caches[i]`'s buffers, then attends query row `i` of `q` (`[B, H·hd]`)
/// over that cache's first `caches[i].visible` slots, scores scaled by
/// `scale`. Returns `[B, H·hd]` in `q`'s dtype and the caches written, or
/// the caches untouched (`Err`) off a CubeCL device and for shapes it does
/// not cover.
pub(crate) fn batch_decode_attention(
    q: &Tensor<2>,
    k: &Tensor<2>,
    v: &Tensor<2>,
    caches: Vec<CacheSlot>,
    heads: usize,
    scale: f64,
) -> Result<(Tensor<2>, Vec<CacheSlot>), Vec<CacheSlot>> {
    batch_decode_attention_tuned(q, k, v, caches, heads, scale, DecodeTuning::DEFAULT)
}

/// [`batch_decode_attention`] split and folded as `tuning` says (for the
/// tests and the bench).
pub(crate) fn batch_decode_attention_tuned(
    q: &Tensor<2>,
    k: &Tensor<2>,
    v: &Tensor<2>,
    caches: Vec<CacheSlot>,
    heads: usize,
    scale: f64,
    tuning: DecodeTuning,
) -> Result<(Tensor<2>, Vec<CacheSlot>), Vec<CacheSlot>> {
    let Some(plan) = plan(q, k, v, &caches, heads, tuning) else {
        return Err(caches);
    };
    Ok(launch(q, k, v, caches, heads, scale, plan))
}

/// What [`plan`] decided: the kernel's shape.
struct Plan {
    kv: usize,
    hd: usize,
    caps: Vec<usize>,
    elem: ElemType,
    vec: usize,
    lanes: usize,
    plane: bool,
    /// How the slots are split and folded.
    tuning: DecodeTuning,
}

/// Whether the kernel covers these inputs, and how it runs.
fn plan(
    q: &Tensor<2>,
    k: &Tensor<2>,
    v: &Tensor<2>,
    caches: &[CacheSlot],
    heads: usize,
    tuning: DecodeTuning,
) -> Option<Plan> {
    let b = caches.len();
    let dtype = q.dtype();
    let first = caches.first()?;
    let [_, kv, _, hd] = first.keys.dims();
    let fits = q.dims()[0] == b
        && k.dims() == [b, kv * hd]
        && v.dims() == [b, kv * hd]
        && k.dtype() == dtype
        && v.dtype() == dtype;
    if !fits {
        return None;
    }
    let mut p = plan_for(q, b, heads, kv, hd, tuning)?;
    for c in caches {
        let cap = cache_fits(&c.keys, kv, hd, dtype)?;
        if cache_fits(&c.values, kv, hd, dtype)? != cap
            || c.visible == 0
            || c.visible > cap
            || c.slot >= c.visible
        {
            return None;
        }
        p.caps.push(cap);
    }
    Some(p)
}

/// How the kernel runs for `b` sequences with queries `q: [b, heads·hd]`
/// and `kv` key/value heads of `hd`, split and folded as `tuning` says, if
/// it covers them (`caps` empty).
fn plan_for(
    q: &Tensor<2>,
    b: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    tuning: DecodeTuning,
) -> Option<Plan> {
    let qw = q.dims()[1];
    let dtype = q.dtype();
    let fits = enabled()
        && b > 0
        && b <= MAX_BATCH
        && hd > 0
        && kv > 0
        && heads.is_multiple_of(kv)
        && qw == heads * hd;
    if !fits {
        return None;
    }
    let elem = float_elem(dtype)?;
    let (lanes, plane) = match reduce_units(&cube(q)?, 32) {
        (units, true) => (units as usize, true),
        _ => (1, false),
    };
    let vec = vector_width(hd, dtype, 16);
    if !(hd / vec).is_multiple_of(lanes) {
        return None;
    }
    Some(Plan {
        kv,
        hd,
        caps: Vec::with_capacity(b),
        elem,
        vec,
        lanes,
        plane,
        tuning: DecodeTuning {
            per_step: tuning.per_step.max(1),
            want_cubes: tuning.want_cubes.max(1),
            keys_per_part: tuning.keys_per_part.max(1),
        },
    })
}

fn launch(
    q: &Tensor<2>,
    k: &Tensor<2>,
    v: &Tensor<2>,
    caches: Vec<CacheSlot>,
    heads: usize,
    scale: f64,
    p: Plan,
) -> (Tensor<2>, Vec<CacheSlot>) {
    let b = caches.len();
    let on_device = "planned on a CubeCL device";
    let longest = caches.iter().map(|c| c.visible).max().unwrap_or(1);
    // (visible, slot, cap) per sequence.
    let meta: Vec<u32> = caches
        .iter()
        .zip(&p.caps)
        .flat_map(|(c, &cap)| [c.visible as u32, c.slot as u32, cap as u32])
        .collect();
    let meta = table(&cube(q).expect(on_device), meta);
    let mut slots = Vec::with_capacity(b);
    let mut bufs = Vec::with_capacity(b);
    for c in caches {
        slots.push((c.slot, c.visible));
        bufs.push((
            writable(c.keys).expect(on_device),
            writable(c.values).expect(on_device),
        ));
    }
    let out = run(q, k, v, &bufs, &meta, longest, heads, scale, &p);
    let written = bufs
        .into_iter()
        .zip(slots)
        .map(|((kb, vb), (slot, visible))| CacheSlot {
            keys: tensor(kb),
            values: tensor(vb),
            slot,
            visible,
        })
        .collect();
    (out, written)
}

/// The launches of one step: the kernel per group of [`GROUP`] sequences
/// (compiled with [`pairs_for`] the group's branches)
/// (their buffers `bufs`, their `(visible, slot, cap)` in `meta`), the
/// slots split for caches of up to `longest` visible slots, then the merge.
/// Reads nothing from the host but shapes and `longest`.
#[allow(clippy::too_many_arguments)]
fn run(
    q: &Tensor<2>,
    k: &Tensor<2>,
    v: &Tensor<2>,
    bufs: &[(CubeTensor, CubeTensor)],
    meta: &CubeTensor,
    longest: usize,
    heads: usize,
    scale: f64,
    p: &Plan,
) -> Tensor<2> {
    let b = bufs.len();
    let (kv, hd, vec, lanes) = (p.kv, p.hd, p.vec, p.lanes);
    let dtype = q.dtype();
    let on_device = "planned on a CubeCL device";
    let (qc, kc, vc) = (
        contiguous(cube(q).expect(on_device)),
        contiguous(cube(k).expect(on_device)),
        contiguous(cube(v).expect(on_device)),
    );
    let rep = heads / kv;
    let client = qc.client.clone();
    let max_units = client.properties().hardware.max_units_per_cube.max(1) as usize;
    let groups = partial_groups(max_units, lanes, rep, hd);
    let want = (p.tuning.want_cubes / (kv * b.min(GROUP))).max(1);
    let (chunk, splits) = split_slots(longest, want, p.tuning.keys_per_part);
    let split = splits > 1;
    let out = empty_device_dtype(
        client.clone(),
        qc.device.clone(),
        qc.meta.shape().clone(),
        dtype,
    );
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
            parts(b * kv * splits * rep * hd),
            parts(b * kv * splits * rep * 2),
        )
    } else {
        (parts(1), parts(1))
    };
    for (g, group) in bufs.chunks(GROUP).enumerate() {
        // Pairs past the group's end repeat its first (never read).
        let pair = |i: usize| group.get(i).unwrap_or(&group[0]);
        let arg = |t: &CubeTensor| t.clone().into_tensor_arg();
        // The kernel's GROUP pairs of cache arguments, in order; it reads
        // the first `pairs`.
        let pairs = pairs_for(group.len());
        macro_rules! launch_with_pairs {
            ($($i:literal)+) => {
                batch_attention_kernel::launch(
                    &client,
                    CubeCount::Static(kv as u32, splits as u32, group.len() as u32),
                    CubeDim::new_2d(lanes as u32, groups as u32),
                    vec,
                    qc.clone().into_tensor_arg(),
                    kc.clone().into_tensor_arg(),
                    vc.clone().into_tensor_arg(),
                    $(arg(&pair($i).0), arg(&pair($i).1),)+
                    out.clone().into_tensor_arg(),
                    part_o.clone().into_tensor_arg(),
                    part_ml.clone().into_tensor_arg(),
                    meta.clone().into_tensor_arg(),
                    (g * GROUP) as u32,
                    chunk as u32,
                    scale as f32,
                    rep,
                    hd,
                    hd / vec,
                    lanes,
                    groups,
                    p.tuning.per_step,
                    p.plane,
                    split,
                    pairs,
                    p.elem,
                )
            };
        }
        launch_with_pairs!(
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
            16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        );
    }
    if split {
        let units = client
            .properties()
            .hardware
            .max_units_per_cube
            .clamp(1, 256);
        merge_parts_kernel::launch(
            &client,
            CubeCount::Static(((b * heads * hd) as u32).div_ceil(units), 1, 1),
            CubeDim::new_1d(units),
            part_o.into_tensor_arg(),
            part_ml.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (b * heads * hd) as u32,
            (heads * hd) as u32,
            splits as u32,
            rep,
            hd,
            p.elem,
        );
    }
    tensor(out)
}

/// One decode step's attention over buffers a captured graph holds
/// (`decode_graph.rs`): row `i` of `q: [B, H, 1, hd]`, `k`, `v: [B, KV, 1,
/// hd]` (as `gemma3.rs`'s decode step has them) is written into and
/// attended over `bufs[i]` (`[1, KV, cap, hd]`, written in place: the graph
/// owns them) at the `(visible, slot, cap)` of row `i` of `meta`, which the
/// host refreshes before each step. The slots are split for the largest
/// buffer, so the launches do not change while the caches fill. `None` for
/// what [`batch_attention_covers`] does not cover.
pub(crate) fn batch_attention_in_place(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    bufs: &[(CubeTensor, CubeTensor)],
    meta: &CubeTensor,
    heads: usize,
    scale: f64,
) -> Option<Tensor<2>> {
    let [b, _, _, hd] = q.dims();
    let kv = k.dims()[1];
    let rows = |x: &Tensor<4>, n: usize| x.clone().swap_dims(1, 2).reshape([b, n * hd]);
    let (q, k, v) = (rows(q, heads), rows(k, kv), rows(v, kv));
    let p = plan_for(&q, bufs.len(), heads, kv, hd, DecodeTuning::DEFAULT)?;
    let fits = |t: &CubeTensor| {
        let d = t.meta.shape().dims::<4>();
        let st = t.meta.strides();
        d[0] == 1 && d[1] == kv && d[3] == hd && st[3] == 1 && st[2] == hd && st[1] == d[2] * hd
    };
    if b != bufs.len() || !bufs.iter().all(|(kb, vb)| fits(kb) && fits(vb)) {
        return None;
    }
    let longest = bufs
        .iter()
        .map(|(kb, _)| kb.meta.shape().dims::<4>()[2])
        .max()?;
    Some(run(&q, &k, &v, bufs, meta, longest, heads, scale, &p))
}

/// Whether [`batch_attention_in_place`] covers `b` sequences with queries
/// like `q: [_, heads·hd]` (dtype, device) and `kv` key/value heads.
pub(crate) fn batch_attention_covers(q: &Tensor<2>, b: usize, heads: usize, kv: usize) -> bool {
    let hd = q.dims()[1] / heads.max(1);
    plan_for(q, b, heads, kv, hd, DecodeTuning::DEFAULT).is_some()
}

/// The kernel as a GPU launches it for the 4B's bf16 heads (2 query heads
/// per KV head, 256 wide in 32 vectors of 8 over 32 lanes, 8 rows folding
/// the default slots at a time, plane sums, split over parts)
/// with the branches of `pairs` sequences' caches, compiled to PTX for
/// sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx_with(pairs: usize, arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    macro_rules! with_pairs {
        ($($i:literal)+) => {
            batch_attention_kernel::BatchAttentionKernel::new(
                settings(CubeDim::new_2d(32, 8)),
                props,
                target,
                t(),
                t(),
                t(),
                $({ let _pair = $i; t() }, t(),)+
                t(),
                t(),
                t(),
                t(),
                (),
                (),
                (),
                8,
                2,
                256,
                32,
                32,
                8,
                DecodeTuning::DEFAULT.per_step,
                true,
                true,
                pairs,
                bf16()?,
            )
        };
    }
    let kernel = with_pairs!(
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
        16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    );
    super::ptx::ptx_of(kernel, arch)
}

/// [`ptx_with`] the branches of a small batch's launch.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    ptx_with(SMALL_GROUP, arch)
}

/// [`ptx_with`] the branches of a full launch ([`GROUP`] sequences).
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx_full(arch: u32) -> Result<String, String> {
    ptx_with(GROUP, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::{DType, Device};

    use super::*;
    use crate::config::{Gemma3Config, LayerType};
    use crate::kernels::decode_attention::tests::burn_attend;
    use crate::kernels::test_support::{device, max_abs_diff, random};
    use crate::kv_cache::KvCache;

    /// One sequence of a test batch: a one-layer cache of `kind` (window
    /// `w`) that has seen `len` positions.
    #[derive(Clone, Copy)]
    struct Seq {
        kind: LayerType,
        w: usize,
        len: usize,
    }

    /// The cache of `s`, filled as prefill and decode fill it (a chunk,
    /// then single tokens) with random keys/values from `seed`: the same
    /// seed gives the same cache.
    fn filled(s: Seq, kv: usize, hd: usize, dtype: DType, dev: &Device, seed: u64) -> KvCache {
        let mut cfg = Gemma3Config::medgemma_4b();
        cfg.layer_types = vec![s.kind];
        cfg.sliding_window = s.w;
        let mut cache = KvCache::new(&cfg);
        let first = s.len.saturating_sub(3).max(1);
        let k = random([1, kv, first, hd], dtype, seed, dev);
        let v = random([1, kv, first, hd], dtype, seed + 1, dev);
        let _ = cache.layers[0].append(k, v);
        for p in first..s.len {
            let k = random([1, kv, 1, hd], dtype, seed + 2 + p as u64 * 2, dev);
            let v = random([1, kv, 1, hd], dtype, seed + 3 + p as u64 * 2, dev);
            let _ = cache.layers[0].append(k, v);
        }
        cache
    }

    /// Runs one batched step over `seqs` and checks it against the
    /// per-sequence Burn composition: the outputs, the caches written (every
    /// slot), and that a clone taken before the step still holds what it
    /// held (the kernel copies a shared buffer before writing). The batch
    /// is split and folded as `tuning` says.
    #[allow(clippy::too_many_arguments)]
    fn check(
        seqs: &[Seq],
        h: usize,
        kv: usize,
        hd: usize,
        dtype: DType,
        tol: f32,
        seed: u64,
        tuning: DecodeTuning,
    ) {
        let dev = device();
        let b = seqs.len();
        let scale = 256f64.powf(-0.5);
        let cache = |i: usize| filled(seqs[i], kv, hd, dtype, &dev, seed + 1000 * i as u64);
        let mut ours: Vec<KvCache> = (0..b).map(cache).collect();
        let mut reference: Vec<KvCache> = (0..b).map(cache).collect();
        // Clones of every other sequence's cache share its buffers: those
        // the kernel must copy before writing, the rest it writes in place.
        let before: Vec<Option<KvCache>> = ours
            .iter()
            .enumerate()
            .map(|(i, c)| (i % 2 == 0).then(|| c.clone()))
            .collect();
        let untouched: Vec<KvCache> = (0..b).map(cache).collect();

        // Scaled up so the softmax is far from uniform.
        let q = random([b, h * hd], dtype, seed + 7, &dev).mul_scalar(4.0);
        let k = random([b, kv * hd], dtype, seed + 8, &dev);
        let v = random([b, kv * hd], dtype, seed + 9, &dev);
        let like = random([1, kv, 1, hd], dtype, 0, &dev);
        let taken = ours
            .iter_mut()
            .map(|c| c.layers[0].take_for_token(&like))
            .collect();
        let (got, back) = batch_decode_attention_tuned(&q, &k, &v, taken, h, scale, tuning)
            .unwrap_or_else(|_| panic!("runs on the CubeCL CPU runtime"));
        for (c, t) in ours.iter_mut().zip(back) {
            c.layers[0].put_back(t, true);
        }
        assert_eq!(got.dims(), [b, h * hd]);
        assert_eq!(got.dtype(), dtype);

        let row = |x: &Tensor<2>, i: usize| {
            x.clone()
                .slice([i..i + 1, 0..kv * hd])
                .reshape([1, kv, 1, hd])
        };
        for i in 0..b {
            let vis = reference[i].layers[0].append(row(&k, i), row(&v, i));
            assert!(vis.positions.is_none());
            let qi = q.clone().slice([i..i + 1, 0..h * hd]);
            let want = burn_attend(qi, vis.keys, vis.values, h, scale);
            let d = max_abs_diff(got.clone().slice([i..i + 1, 0..h * hd]), want);
            let s = seqs[i];
            assert!(
                d <= tol,
                "sequence {i} ({:?} w={} len={}) h={h} kv={kv} hd={hd} {dtype:?} {tuning:?}: differs by {d}",
                s.kind,
                s.w,
                s.len
            );
            let buffers = |c: &KvCache| c.layers[0].buffers().expect("a written cache");
            let ((ok, ov), (rk, rv)) = (buffers(&ours[i]), buffers(&reference[i]));
            assert_eq!(max_abs_diff(ok, rk), 0.0, "sequence {i}: keys written");
            assert_eq!(max_abs_diff(ov, rv), 0.0, "sequence {i}: values written");
            if let Some(clone) = &before[i] {
                let ((bk, bv), (uk, uv)) = (buffers(clone), buffers(&untouched[i]));
                assert_eq!(max_abs_diff(bk, uk), 0.0, "sequence {i}: a clone's keys");
                assert_eq!(max_abs_diff(bv, uv), 0.0, "sequence {i}: a clone's values");
            }
        }
    }

    /// The same per-sequence table twice on a thread is one upload; other
    /// numbers are another (the batched tests check what the kernel reads).
    #[test]
    fn a_per_sequence_table_is_uploaded_once_per_numbers() {
        let like = cube(&random([1, 4], DType::F32, 1, &device())).expect("a CubeCL tensor");
        let numbers = vec![0, 7, 9, 0, 3, 9];
        let first = table(&like, numbers.clone());
        let again = table(&like, numbers);
        let id = |t: &CubeTensor| t.handle.memory.descriptor().id;
        assert_eq!(id(&first), id(&again), "kept, not uploaded again");
        let other = table(&like, vec![0, 7, 9, 0, 4, 9]);
        assert_ne!(id(&first), id(&other), "other numbers, another upload");
    }

    /// A ring wrapped past its window, a short global cache, and a global
    /// cache of more than 256 keys (the slots split over cubes; the shorter
    /// sequences' later parts have no key).
    const MIXED: [Seq; 3] = [
        Seq {
            kind: LayerType::Local,
            w: 16,
            len: 45,
        },
        Seq {
            kind: LayerType::Global,
            w: 16,
            len: 3,
        },
        Seq {
            kind: LayerType::Global,
            w: 16,
            len: 300,
        },
    ];

    #[test]
    fn batched_attention_equals_the_per_sequence_burn_composition() {
        // The 4B's heads (8 over 4) and the 270M's (4 over 1), f32 and bf16;
        // the slots folded as launched, one at a time, and three at a time
        // (a step's last slots past a part's end).
        let each = DecodeTuning::DEFAULT;
        let stepping = DecodeTuning::stepping;
        check(&MIXED, 8, 4, 256, DType::F32, 2e-5, 10, each);
        check(&MIXED, 4, 1, 256, DType::F32, 2e-5, 20, stepping(1));
        check(&MIXED, 8, 4, 256, DType::BF16, 2e-2, 30, each);
        check(&MIXED, 4, 1, 256, DType::BF16, 2e-2, 40, stepping(3));
    }

    /// Parts of 8 slots over as many cubes as that takes: the longest cache
    /// (301 visible slots) in 38 parts, the ring (16) in 2, the 4-slot
    /// cache in 1 (its other 37 parts have no key), all merged.
    #[test]
    fn batched_attention_split_in_many_small_parts() {
        let tuning = DecodeTuning {
            want_cubes: 1 << 12,
            keys_per_part: 8,
            ..DecodeTuning::DEFAULT
        };
        check(&MIXED, 8, 4, 256, DType::F32, 2e-5, 15, tuning);
    }

    /// No split (every cache under 256 keys): rings not yet full and just
    /// full, a cache of one position, the 4B's heads and a small shape.
    #[test]
    fn batched_attention_without_a_split_over_rings_not_yet_wrapped() {
        let seqs = [
            Seq {
                kind: LayerType::Local,
                w: 64,
                len: 20,
            },
            Seq {
                kind: LayerType::Local,
                w: 8,
                len: 8,
            },
            Seq {
                kind: LayerType::Global,
                w: 8,
                len: 1,
            },
            Seq {
                kind: LayerType::Global,
                w: 8,
                len: 200,
            },
        ];
        check(
            &seqs,
            8,
            4,
            256,
            DType::F32,
            2e-5,
            50,
            DecodeTuning::DEFAULT,
        );
        check(
            &seqs,
            2,
            2,
            64,
            DType::F32,
            2e-5,
            60,
            DecodeTuning::stepping(3),
        );
    }

    /// `n` sequences of different lengths and both layer types, the one
    /// at `long` split past 256 keys.
    fn many(n: usize, long: usize) -> Vec<Seq> {
        (0..n)
            .map(|i| Seq {
                kind: if i % 3 == 0 {
                    LayerType::Local
                } else {
                    LayerType::Global
                },
                w: 12,
                len: if i == long { 290 } else { 1 + 7 * (i % 13) },
            })
            .collect()
    }

    /// More sequences than the small kernel's branches: one launch of the
    /// kernel with [`GROUP`] branches, of which it reads the first 11.
    #[test]
    fn batched_attention_over_more_sequences_than_the_small_kernel_takes() {
        let seqs = many(SMALL_GROUP + 3, SMALL_GROUP + 1);
        check(
            &seqs,
            4,
            1,
            256,
            DType::F32,
            2e-5,
            70,
            DecodeTuning::DEFAULT,
        );
        check(
            &seqs,
            4,
            2,
            64,
            DType::BF16,
            2e-2,
            80,
            DecodeTuning::stepping(1),
        );
    }

    /// More sequences than one launch takes: a launch of [`GROUP`] (the
    /// large kernel), then one of 3 (the small kernel, from sequence 32).
    #[test]
    fn batched_attention_over_more_sequences_than_one_launch_takes() {
        let seqs = many(GROUP + 3, GROUP + 1);
        check(&seqs, 2, 1, 64, DType::F32, 2e-5, 90, DecodeTuning::DEFAULT);
    }
}
