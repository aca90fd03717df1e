//! The online softmax the attention kernels share (`decode_attention.rs`,
//! one sequence; `batch_attention.rs`, a batch; `prefill_attention.rs`, a
//! prompt chunk, whose rows are query tokens and are not merged):
//! a cube's rows of lanes each fold keys into a running maximum `m`, sum
//! `l` and weighted values `acc` per query head, and the rows' partial
//! results are then merged through shared memory into the cube's output
//! (or its part of a split cache, for the merge kernel).
//!
//! [`Rows`] is a `#[cube]` type whose methods are inlined into each kernel:
//! what a kernel computes is what it wrote out itself before, in the same
//! order.
//!
//! Owns: the per-key update and the rows' merge. Must never: choose which
//! keys a cube sees or where its results go (the kernels say), or round
//! scores or probabilities below f32.

use cubecl::prelude::*;

/// Below every score; `exp(LOW − finite)` is 0 without a NaN from `−∞ − −∞`.
pub(super) const LOW: f32 = -3.0e38;

/// One unit's running state for the `rep` query heads of its cube's KV
/// head: its lanes' share of each query (`qv`: vectors `tx`, `tx + lanes`,
/// … of a head), the weighted values `acc`, maxima `m` and sums `l`; and
/// the cube's shape (`groups` rows of `lanes` units, heads of `head_dim`
/// values in `head_vectors` vectors).
#[derive(CubeType)]
pub(super) struct Rows<N: Size> {
    qv: Array<Vector<f32, N>>,
    acc: Array<Vector<f32, N>>,
    m: Array<f32>,
    l: Array<f32>,
    #[cube(comptime)]
    rep: usize,
    #[cube(comptime)]
    head_dim: usize,
    #[cube(comptime)]
    head_vectors: usize,
    #[cube(comptime)]
    lanes: usize,
    #[cube(comptime)]
    groups: usize,
}

#[cube]
impl<N: Size> Rows<N> {
    /// Starts the rows of KV head `kvh`, its queries read from `q` at
    /// `q_row` on: no weighted values, maxima [`LOW`], sums 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start<F: Float>(
        q: &cubecl::prelude::Tensor<Vector<F, N>>,
        q_row: usize,
        kvh: usize,
        #[comptime] rep: usize,
        #[comptime] head_dim: usize,
        #[comptime] head_vectors: usize,
        #[comptime] lanes: usize,
        #[comptime] groups: usize,
    ) -> Rows<N> {
        let tx = UNIT_POS_X as usize;
        let per_lane = comptime!(head_vectors / lanes);
        let mut qv = Array::<Vector<f32, N>>::new(comptime!(rep * per_lane));
        let mut acc = Array::<Vector<f32, N>>::new(comptime!(rep * per_lane));
        let mut m = Array::<f32>::new(rep);
        let mut l = Array::<f32>::new(rep);
        #[unroll]
        for r in 0..rep {
            m[r] = LOW;
            l[r] = 0.0f32;
            #[unroll]
            for j in 0..per_lane {
                let h = kvh * rep + r;
                qv[r * per_lane + j] =
                    Vector::<f32, N>::cast_from(q[q_row + h * head_vectors + tx + j * lanes]);
                acc[r * per_lane + j] = Vector::new(0.0f32);
            }
        }
        Rows::<N> {
            qv,
            acc,
            m,
            l,
            rep,
            head_dim,
            head_vectors,
            lanes,
            groups,
        }
    }

    /// Folds `keys` keys into every query head's running maximum, sum and
    /// weighted values: key `k`'s vectors (this lane's share of it) at
    /// `kv[k·per_lane ..]`, its value's at `vv[k·per_lane ..]`, and
    /// `valid[k]` 1 where it counts (0: skipped, whatever its vectors
    /// hold). Each score is `q·k · scale` (the lanes' partial dots met in a
    /// plane sum when `plane`); then `m ← max(m, scores)`,
    /// `l ← l·corr + Σ p`, `acc ← acc·corr + Σ v·p` with
    /// `corr = exp(m_old − m)`, `p = exp(score − m)`. The keys' dots and
    /// plane sums do not wait on one another, so a GPU overlaps them where
    /// one key at a time waits for each plane sum before the next; and one
    /// correction serves them all. Every unit calls it (the plane sums need
    /// whole planes), and `valid` must be the same in every lane of a row.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fold_keys(
        &mut self,
        kv: &Array<Vector<f32, N>>,
        vv: &Array<Vector<f32, N>>,
        valid: &Array<u32>,
        scale: f32,
        #[comptime] keys: usize,
        #[comptime] plane: bool,
    ) {
        let rep = comptime!(self.rep);
        let per_lane = comptime!(self.head_vectors / self.lanes);
        let width = comptime!(self.head_dim / self.head_vectors);
        let mut scores = Array::<f32>::new(keys);
        #[unroll]
        for r in 0..rep {
            #[unroll]
            for k in 0..keys {
                let mut dot = Vector::<f32, N>::new(0.0f32);
                #[unroll]
                for j in 0..per_lane {
                    dot += self.qv[r * per_lane + j] * kv[k * per_lane + j];
                }
                let mut partial = 0.0f32;
                #[unroll]
                for i in 0..width {
                    partial += dot.extract(i);
                }
                let mut total = partial;
                if comptime!(plane) {
                    total = plane_sum(partial);
                }
                scores[k] = total * scale;
            }
            let old = self.m[r];
            let mut top = old;
            #[unroll]
            for k in 0..keys {
                let s = scores[k];
                top = select(valid[k] == 1 && s > top, s, top);
            }
            let corr = (old - top).exp();
            let mut sum = self.l[r] * corr;
            #[unroll]
            for j in 0..per_lane {
                self.acc[r * per_lane + j] *= Vector::new(corr);
            }
            #[unroll]
            for k in 0..keys {
                if valid[k] == 1 {
                    let p = (scores[k] - top).exp();
                    sum += p;
                    #[unroll]
                    for j in 0..per_lane {
                        self.acc[r * per_lane + j] += vv[k * per_lane + j] * Vector::new(p);
                    }
                }
            }
            self.l[r] = sum;
            self.m[r] = top;
        }
    }

    /// Writes this unit's share of its row's normalised output (`acc / l`
    /// per query head, heads side by side from vector `base` of `out`),
    /// where each row has seen every key it may see and nothing is merged
    /// (`prefill_attention.rs`: a row per query token).
    pub(super) fn store<F: Float>(
        &self,
        out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
        base: usize,
        kvh: usize,
    ) {
        let tx = UNIT_POS_X as usize;
        let rep = comptime!(self.rep);
        let lanes = comptime!(self.lanes);
        let head_vectors = comptime!(self.head_vectors);
        let per_lane = comptime!(self.head_vectors / self.lanes);
        #[unroll]
        for r in 0..rep {
            let inv = Vector::<f32, N>::new(1.0f32 / self.l[r]);
            let h = kvh * rep + r;
            for j in 0..per_lane {
                out[base + h * head_vectors + tx + j * lanes] =
                    Vector::<F, N>::cast_from(self.acc[r * per_lane + j] * inv);
            }
        }
    }

    /// Merges the cube's rows through shared memory: per query head, the
    /// rows' weighted values and sums weighted by `exp(row max − overall
    /// max)`. `row` is the cube's KV head among all the outputs' (`seq · KV
    /// + kvh` in a batch). Not `split`: the normalised output goes to
    /// `out`, `[…, rows · rep · head_dim]`. `split`: it goes to `part_o`,
    /// and the maximum and sum to `part_ml`, at the cube's part
    /// (`CUBE_POS_Y` of `CUBE_COUNT_Y`), for the merge kernel.
    /// `may_be_empty`: a cube may have no key (a part past a short
    /// sequence's slots), its output then 0 (and weight 0 in the merge, its
    /// sum being 0) instead of `0 / 0`.
    pub(super) fn merge<F: Float>(
        &self,
        out: &mut cubecl::prelude::Tensor<F>,
        part_o: &mut cubecl::prelude::Tensor<f32>,
        part_ml: &mut cubecl::prelude::Tensor<f32>,
        row: usize,
        #[comptime] split: bool,
        #[comptime] may_be_empty: bool,
    ) {
        let tx = UNIT_POS_X as usize;
        let ty = UNIT_POS_Y as usize;
        let part = CUBE_POS_Y as usize;
        let splits = CUBE_COUNT_Y as usize;
        let rep = comptime!(self.rep);
        let head_dim = comptime!(self.head_dim);
        let lanes = comptime!(self.lanes);
        let groups = comptime!(self.groups);
        let per_lane = comptime!(self.head_vectors / self.lanes);
        let width = comptime!(self.head_dim / self.head_vectors);
        // Maxima and sums per (row, head), partial outputs per element.
        let mut sm = Shared::<[f32]>::new_slice(comptime!(groups * rep));
        let mut sl = Shared::<[f32]>::new_slice(comptime!(groups * rep));
        let mut sa = Shared::<[f32]>::new_slice(comptime!(groups * rep * head_dim));
        #[unroll]
        for r in 0..rep {
            if tx == 0 {
                sm[ty * rep + r] = self.m[r];
                sl[ty * rep + r] = self.l[r];
            }
            #[unroll]
            for j in 0..per_lane {
                let a = self.acc[r * per_lane + j];
                let e0 = (tx + j * lanes) * width;
                #[unroll]
                for i in 0..width {
                    sa[(ty * rep + r) * head_dim + e0 + i] = a.extract(i);
                }
            }
        }
        sync_cube();
        let threads = comptime!(lanes * groups);
        let mut e = ty * lanes + tx;
        while e < comptime!(rep * head_dim) {
            let r = e / head_dim;
            let d = e % head_dim;
            let mut top = LOW.runtime();
            #[unroll]
            for g in 0..groups {
                let x = sm[g * rep + r];
                top = select(x > top, x, top);
            }
            let mut sum = 0.0f32;
            let mut o = 0.0f32;
            #[unroll]
            for g in 0..groups {
                let w = (sm[g * rep + r] - top).exp();
                sum += sl[g * rep + r] * w;
                o += sa[(g * rep + r) * head_dim + d] * w;
            }
            let mut value = o / sum;
            if comptime!(may_be_empty) {
                value = select(sum > 0.0f32, value, 0.0f32);
            }
            if comptime!(split) {
                let pr = (row * splits + part) * rep + r;
                part_o[pr * head_dim + d] = value;
                if d == 0 {
                    part_ml[pr * 2] = top;
                    part_ml[pr * 2 + 1] = sum;
                }
            } else {
                out[(row * rep + r) * head_dim + d] = F::cast_from(value);
            }
            e += threads;
        }
    }
}
