//! Per-layer key/value cache (spec §4), written in place.
//!
//! Each layer keeps its post-RoPE keys and values in one preallocated buffer
//! `[B, KV heads, slots, head_dim]` and writes each new position into its
//! slot with `slice_assign`; attention reads a prefix view of the buffer.
//! Global layers give position `p` slot `p` and grow the buffer in chunks of
//! [`GROWTH`] positions. Sliding-window layers keep a ring of `W` slots
//! (position `p` in slot `p mod W`): after a step the ring holds the last `W`
//! positions, exactly what the next query may see once its own key has
//! overwritten the oldest one. Because keys carry their RoPE rotation,
//! attention does not care about slot order; only the mask, computed from
//! each slot's absolute position, does.
//!
//! Why: the previous cache concatenated the new key onto the cached ones
//! (`Tensor::cat`) and sliced local layers back to `W − 1` every step, so each
//! decode step copied every layer's whole cache. On Burn 0.22's `flex` CPU
//! backend `slice_assign` writes in place when the buffer is uniquely owned
//! (burn-flex 0.22.1 `src/ops/slice.rs`, `slice_write_impl`) and `slice` is a
//! zero-copy view (same file, `slice`); the strided f32 matmul reads the view
//! without copying (`src/ops/matmul.rs`). Cloning a [`KvCache`] shares the
//! buffers; the first write to a shared buffer copies it once (copy on write).
//!
//! Owns: cached post-RoPE keys and values of one conversation. Must never:
//! outlive the conversation it belongs to (it holds patient context), or hand
//! out a view that is still alive at the next write (the write would copy).

use burn::tensor::Tensor;

use crate::config::{Gemma3Config, LayerType};

/// Positions a global layer's buffer grows by when full. Growing copies the
/// cached prefix once, so per token it costs `1/GROWTH` of a full copy.
pub const GROWTH: usize = 256;

/// Cached keys and values of one layer in a buffer `[B, KV heads, slots, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
    /// Positions this layer has seen: the absolute position of the next key.
    len: usize,
    /// `Some(W)` on sliding-window layers (a ring of `W` slots), `None` on global ones.
    window: Option<usize>,
    /// Most slots the buffer grows to on a global layer (the model's context).
    limit: usize,
}

/// What one chunk's queries attend over, from [`LayerCache::append`].
pub(crate) struct Visible {
    /// Keys `[B, KV heads, S, head_dim]`.
    pub keys: Tensor<4>,
    /// Values, same shape.
    pub values: Tensor<4>,
    /// Absolute position of each of the `S` keys, or `None` when every key
    /// is visible to every query (a one-token step needs no mask).
    pub positions: Option<Vec<usize>>,
}

/// A layer's buffers taken out for a one-token write done by a kernel
/// ([`LayerCache::take_for_token`], then [`LayerCache::put_back`]).
#[cfg(feature = "kernels")]
pub(crate) struct CacheSlot {
    /// Keys `[1, KV heads, cap, head_dim]`, at least `visible` slots.
    pub keys: Tensor<4>,
    /// Values, same shape.
    pub values: Tensor<4>,
    /// The slot the new token's key and value go to.
    pub slot: usize,
    /// Slots its query sees once written: the first `visible` (as
    /// [`LayerCache::append`] hands out after a one-token write).
    pub visible: usize,
}

impl LayerCache {
    /// Takes the buffers out (grown as a write of one token `like`
    /// `[1, KV, 1, head_dim]` needs) with the slot that token goes to; the
    /// cache holds no buffer until [`LayerCache::put_back`].
    #[cfg(feature = "kernels")]
    pub(crate) fn take_for_token(&mut self, like: &Tensor<4>) -> CacheSlot {
        let (slot, visible) = match self.window {
            Some(w) => (self.len % w, (self.len + 1).min(w)),
            None => (self.len, self.len + 1),
        };
        let (keys, values) = self.take_reserved(visible, like);
        CacheSlot {
            keys,
            values,
            slot,
            visible,
        }
    }

    /// Puts back what [`LayerCache::take_for_token`] took: `written` when
    /// the token's key and value are in their slot (the cache then counts
    /// it), else the buffers as they were (only grown).
    #[cfg(feature = "kernels")]
    pub(crate) fn put_back(&mut self, taken: CacheSlot, written: bool) {
        self.keys = Some(taken.keys);
        self.values = Some(taken.values);
        if written {
            self.len += 1;
        }
    }

    /// Takes the buffers out for a captured decode graph (`decode_graph.rs`),
    /// grown to hold the slots of the next `tokens` tokens (a ring: at most
    /// its `W`) and owned by no other handle (a buffer still shared with a
    /// clone, a kept conversation, is copied first), with their slot count.
    /// The graph writes one token per step in place ([`LayerCache::next_slot`],
    /// [`LayerCache::count_token`]) and hands the buffers back with
    /// [`LayerCache::put_back_buffers`].
    #[cfg(feature = "kernels")]
    pub(crate) fn take_for_graph(
        &mut self,
        tokens: usize,
        like: &Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        // A global layer's buffer stops at the context (but holds the next
        // token, which the caller only asks for where the context allows).
        let needed = match self.window {
            Some(w) => (self.len + tokens).min(w),
            None => (self.len + tokens)
                .min(self.slots_limit())
                .max(self.len + 1),
        };
        let (k, v) = self.take_reserved(needed.max(1), like);
        (crate::kernels::unshared(k), crate::kernels::unshared(v))
    }

    /// The slot the next token's key and value go to, and the slots its
    /// query sees once they are written (the first ones of the buffer).
    #[cfg(feature = "kernels")]
    pub(crate) fn next_slot(&self) -> (usize, usize) {
        match self.window {
            Some(w) => (self.len % w, (self.len + 1).min(w)),
            None => (self.len, self.len + 1),
        }
    }

    /// Tokens a buffer of `cap` slots still takes before it must grow: none
    /// left on a global layer at `cap` positions; a ring that holds its whole
    /// window never grows.
    #[cfg(feature = "kernels")]
    pub(crate) fn room(&self, cap: usize) -> usize {
        match self.window {
            Some(w) if cap >= w => usize::MAX,
            _ => cap.saturating_sub(self.len),
        }
    }

    /// Counts one token a graph wrote into the taken buffers.
    #[cfg(feature = "kernels")]
    pub(crate) fn count_token(&mut self) {
        self.len += 1;
    }

    /// Puts back buffers [`LayerCache::take_for_graph`] took.
    #[cfg(feature = "kernels")]
    pub(crate) fn put_back_buffers(&mut self, keys: Tensor<4>, values: Tensor<4>) {
        self.keys = Some(keys);
        self.values = Some(values);
    }

    /// Whether this layer's buffers are `keys` and `values` (handles to the
    /// same memory), as a captured graph left them.
    #[cfg(feature = "kernels")]
    pub(crate) fn holds(
        &self,
        keys: &burn_cubecl::tensor::CubeTensor,
        values: &burn_cubecl::tensor::CubeTensor,
    ) -> bool {
        match (&self.keys, &self.values) {
            (Some(k), Some(v)) => {
                crate::kernels::same_buffer(k, keys) && crate::kernels::same_buffer(v, values)
            }
            _ => false,
        }
    }

    /// Whether this layer's cached slots and its next token fit a buffer
    /// of `cap` slots, where they keep their places (a ring's position `p`
    /// stays in slot `p mod W`).
    #[cfg(feature = "kernels")]
    pub(crate) fn fits(&self, cap: usize) -> bool {
        let needed = match self.window {
            Some(w) => (self.len + 1).min(w),
            None => self.len + 1,
        };
        self.keys.is_some() && needed <= cap
    }

    /// Copies this layer's cached slots into `keys`/`values` (a captured
    /// graph's row, which nothing else holds, so the writes are in place)
    /// and makes them its buffers: returns them (the graph's handles) and
    /// whether both writes were in place. Where one was not (the buffer was
    /// shared after all), the layer keeps its own buffers and the graph
    /// gets the copies back, to let go of with its capture.
    #[cfg(feature = "kernels")]
    pub(crate) fn move_into(
        &mut self,
        keys: burn_cubecl::tensor::CubeTensor,
        values: burn_cubecl::tensor::CubeTensor,
    ) -> (
        burn_cubecl::tensor::CubeTensor,
        burn_cubecl::tensor::CubeTensor,
        bool,
    ) {
        let filled = self.window.map_or(self.len, |w| self.len.min(w));
        let (k, v): (Tensor<4>, Tensor<4>) =
            (crate::kernels::tensor(keys), crate::kernels::tensor(values));
        let at = (crate::kernels::buffer_at(&k), crate::kernels::buffer_at(&v));
        let (k, v) = match self.view(filled) {
            Some((ok, ov)) if filled > 0 => {
                let [b, h, _, d] = ok.dims();
                let r = [0..b, 0..h, 0..filled, 0..d];
                (k.slice_assign(r.clone(), ok), v.slice_assign(r, ov))
            }
            _ => (k, v),
        };
        let in_place = (crate::kernels::buffer_at(&k), crate::kernels::buffer_at(&v)) == at;
        if in_place {
            self.keys = Some(k.clone());
            self.values = Some(v.clone());
        }
        let on = "a graph's buffers live on a CubeCL device";
        (
            crate::kernels::cube(&k).expect(on),
            crate::kernels::cube(&v).expect(on),
            in_place,
        )
    }

    /// Where the keys' buffer lives (`kernels::buffer_at`), without a
    /// handle to it; `None` before the first write or off a CubeCL device.
    #[cfg(feature = "kernels")]
    pub(crate) fn keys_at(&self) -> Option<(usize, Option<u64>)> {
        self.keys.as_ref().and_then(crate::kernels::buffer_at)
    }

    /// The whole buffers (every allocated slot), for tests that compare
    /// what two caches hold.
    #[cfg(all(test, feature = "kernels"))]
    pub(crate) fn buffers(&self) -> Option<(Tensor<4>, Tensor<4>)> {
        self.view(self.capacity())
    }

    /// An empty cache for one layer of `kind`.
    fn new(kind: LayerType, cfg: &Gemma3Config) -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
            window: match kind {
                LayerType::Local => Some(cfg.sliding_window.max(1)),
                LayerType::Global => None,
            },
            limit: cfg.max_position_embeddings.max(1),
        }
    }

    /// Writes the new keys/values `[B, KV, T, head_dim]` (positions
    /// `len..len+T`) and returns what their queries see.
    ///
    /// One token, or any chunk on a global layer: written first, then the
    /// valid slots are returned as a view (no copy). A chunk of several
    /// tokens on a sliding-window layer: its first queries still need keys
    /// that its own later keys overwrite in the ring, so it gets the ring's
    /// keys concatenated with the new ones (one copy of at most `W` keys per
    /// chunk), and the ring is written afterwards.
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> Visible {
        let t = k.dims()[2];
        let start = self.len;
        match self.window {
            Some(w) if t > 1 => {
                let filled = start.min(w);
                let positions: Vec<usize> = (0..filled)
                    .map(|slot| ring_position(start, w, slot))
                    .chain(start..start + t)
                    .collect();
                let (keys, values) = match (self.view(filled), filled) {
                    (Some((ck, cv)), 1..) => (
                        Tensor::cat(vec![ck, k.clone()], 2),
                        Tensor::cat(vec![cv, v.clone()], 2),
                    ),
                    _ => (k.clone(), v.clone()),
                };
                self.write(k, v);
                Visible {
                    keys,
                    values,
                    positions: Some(positions),
                }
            }
            _ => {
                let (kb, vb) = self.write(k, v);
                let filled = self.window.map_or(self.len, |w| self.len.min(w));
                let positions = (t > 1).then(|| (0..filled).collect());
                let [b, h, _, d] = kb.dims();
                let r = [0..b, 0..h, 0..filled, 0..d];
                let (keys, values) = (kb.slice(r.clone()), vb.slice(r));
                Visible {
                    keys,
                    values,
                    positions,
                }
            }
        }
    }

    /// Most slots this layer's buffer may have.
    fn slots_limit(&self) -> usize {
        self.window.unwrap_or(self.limit)
    }

    /// Slots allocated now.
    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Views of the first `filled` slots (no copy), if a buffer exists.
    fn view(&self, filled: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        let (k, v) = (self.keys.as_ref()?, self.values.as_ref()?);
        let [b, h, _, d] = k.dims();
        let r = [0..b, 0..h, 0..filled, 0..d];
        Some((k.clone().slice(r.clone()), v.clone().slice(r)))
    }

    /// Writes positions `len..len+T` into their slots, advances `len` and
    /// returns the buffers (a second handle each: drop them before the next
    /// write, or that write copies). On a ring only the last `W` of the
    /// positions survive, so only those are written.
    fn write(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = k.dims();
        let end = self.len + t;
        let (first, needed) = match self.window {
            Some(w) => (self.len + t.saturating_sub(w), end.min(w)),
            None => (self.len, end),
        };
        let (mut kb, mut vb) = self.take_reserved(needed, &k);
        let mut pos = first;
        while pos < end {
            // A ring is written up to its end, then from slot 0.
            let (slot, run) = match self.window {
                Some(w) => (pos % w, (end - pos).min(w - pos % w)),
                None => (pos, end - pos),
            };
            let src = pos - self.len;
            let dst = [0..b, 0..h, slot..slot + run, 0..d];
            let part = |x: &Tensor<4>| x.clone().slice([0..b, 0..h, src..src + run, 0..d]);
            kb = kb.slice_assign(dst.clone(), part(&k));
            vb = vb.slice_assign(dst, part(&v));
            pos += run;
        }
        self.keys = Some(kb.clone());
        self.values = Some(vb.clone());
        self.len = end;
        (kb, vb)
    }

    /// Takes the buffers out, at least `needed` slots long and shaped like
    /// `like` `[B, KV, _, head_dim]`: a new buffer is rounded up to a multiple
    /// of [`GROWTH`], never past the layer's limit unless `needed` is (a
    /// global layer run past the model's context grows one step at a time,
    /// copying, rather than fail). Growth
    /// only happens before a ring first wraps, so the slots kept are in
    /// position order.
    fn take_reserved(&mut self, needed: usize, like: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let cap = self.capacity();
        if needed <= cap
            && let (Some(k), Some(v)) = (self.keys.take(), self.values.take())
        {
            return (k, v);
        }
        let new_cap = needed
            .div_ceil(GROWTH)
            .saturating_mul(GROWTH)
            .min(self.slots_limit())
            .max(needed);
        let [b, h, _, d] = like.dims();
        let opts = (&like.device(), like.dtype());
        let grow = |old: Option<Tensor<4>>| {
            let fresh = Tensor::<4>::zeros([b, h, new_cap, d], opts);
            match old {
                Some(old) if cap > 0 => fresh.slice_assign([0..b, 0..h, 0..cap, 0..d], old),
                _ => fresh,
            }
        };
        (grow(self.keys.take()), grow(self.values.take()))
    }

    /// Cached positions the next query can see besides its own: all of them
    /// on a global layer, at most `W − 1` on a sliding-window one (the ring's
    /// oldest slot is overwritten by that query's key).
    pub fn cached(&self) -> usize {
        match self.window {
            Some(w) => self.len.min(w - 1),
            None => self.len,
        }
    }

    /// Slots allocated for this layer (memory accounting).
    pub fn allocated(&self) -> usize {
        self.capacity()
    }
}

/// Absolute position held by ring slot `slot` (< `min(len, w)`) after
/// positions `0..len` were written: the latest `p < len` with `p mod w == slot`.
fn ring_position(len: usize, w: usize, slot: usize) -> usize {
    len - 1 - (len - 1 - slot) % w
}

/// The cache of a whole conversation.
///
/// Cloning is cheap (the buffers are shared); the first write to a clone
/// copies that layer's buffer once, so clones never see each other's tokens.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `cfg`'s layers.
    pub fn new(cfg: &Gemma3Config) -> Self {
        Self {
            layers: cfg
                .layer_types
                .iter()
                .map(|kind| LayerCache::new(*kind, cfg))
                .collect(),
            len: 0,
        }
    }

    /// Positions processed so far (the next token's absolute position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Per-layer cached positions visible to the next query besides its own
    /// key (for tests and memory accounting): the whole history on global
    /// layers, at most `sliding_window − 1` on local ones.
    pub fn cached_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::cached).collect()
    }

    /// Per-layer slots allocated (buffer length): on local layers at most
    /// the window, on global ones the history rounded up to [`GROWTH`].
    pub fn allocated_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::allocated).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};

    /// A one-layer config of `kind` with window `w`.
    fn cfg(kind: LayerType, w: usize) -> Gemma3Config {
        let mut c = Gemma3Config::medgemma_4b();
        c.layer_types = vec![kind];
        c.sliding_window = w;
        c
    }

    /// Keys `[1, 1, T, 2]` whose two values are the absolute position (the
    /// value tensor holds position + 0.5), so what comes back names itself.
    fn chunk(first: usize, t: usize) -> (Tensor<4>, Tensor<4>) {
        let dev = Device::flex();
        let mk = |off: f32| {
            let v: Vec<f32> = (first..first + t)
                .flat_map(|p| [p as f32 + off, p as f32 + off])
                .collect();
            Tensor::<4>::from_data(TensorData::new(v, [1, 1, t, 2]), (&dev, DType::F32))
        };
        (mk(0.0), mk(0.5))
    }

    /// Positions named by the returned keys, checked against values and `positions`.
    fn seen(v: Visible) -> Vec<usize> {
        let k: Vec<f32> = v.keys.into_data().try_into_vec().unwrap();
        let vals: Vec<f32> = v.values.into_data().try_into_vec().unwrap();
        let got: Vec<usize> = k.chunks(2).map(|c| c[0] as usize).collect();
        for (a, b) in k.iter().zip(&vals) {
            assert_eq!(*a + 0.5, *b, "keys and values stay paired");
        }
        if let Some(p) = v.positions {
            assert_eq!(p, got, "reported positions name the slots");
        }
        got
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn ring_keeps_the_last_window_positions_in_any_chunking() {
        for chunks in [
            vec![1; 20],
            vec![3, 1, 1, 7, 1, 1, 1, 2, 1],
            vec![9, 1, 1, 1],
        ] {
            let w = 4;
            let mut c = LayerCache::new(LayerType::Local, &cfg(LayerType::Local, w));
            let mut pos = 0;
            for t in chunks {
                let (k, v) = chunk(pos, t);
                let got = seen(c.append(k, v));
                let from = pos.saturating_sub(w - 1);
                let want: Vec<usize> = if t == 1 {
                    // The ring after writing: the window of the one query.
                    (pos.saturating_sub(w - 1)..=pos).collect()
                } else {
                    // Ring before writing plus the new keys.
                    (pos.saturating_sub(w)..pos + t).collect()
                };
                assert_eq!(sorted(got), want, "chunk of {t} at {pos} (from {from})");
                pos += t;
                assert_eq!(c.cached(), pos.min(w - 1));
                assert!(c.allocated() <= w);
            }
        }
    }

    #[test]
    fn global_buffer_grows_in_chunks_and_keeps_every_position() {
        let mut c = LayerCache::new(LayerType::Global, &cfg(LayerType::Global, 4));
        let mut pos = 0;
        for t in [5, 1, 300, 1, 1] {
            let (k, v) = chunk(pos, t);
            let got = seen(c.append(k, v));
            pos += t;
            assert_eq!(got, (0..pos).collect::<Vec<_>>());
            assert_eq!(c.allocated(), pos.div_ceil(GROWTH) * GROWTH);
        }
        assert_eq!(c.cached(), pos);
    }

    #[test]
    fn global_buffer_stops_at_the_context_but_never_fails() {
        let mut c = cfg(LayerType::Global, 4);
        c.max_position_embeddings = 300;
        let mut l = LayerCache::new(LayerType::Global, &c);
        let (k, v) = chunk(0, 290);
        let _ = l.append(k, v);
        assert_eq!(
            l.allocated(),
            300,
            "rounded up to 512, capped at the context"
        );
        for pos in 290..302 {
            let (k, v) = chunk(pos, 1);
            assert_eq!(seen(l.append(k, v)), (0..=pos).collect::<Vec<_>>());
        }
        assert_eq!(l.allocated(), 302);
    }

    #[test]
    fn a_clone_does_not_see_the_originals_later_tokens() {
        let mut a = LayerCache::new(LayerType::Global, &cfg(LayerType::Global, 4));
        let (k, v) = chunk(0, 3);
        let _ = a.append(k, v);
        let mut b = a.clone();
        let (k, v) = chunk(3, 1);
        let _ = a.append(k, v);
        let (k, v) = chunk(3, 1);
        let (k, v) = (
            k.mul_scalar(0.0).add_scalar(7.0),
            v.mul_scalar(0.0).add_scalar(7.5),
        );
        assert_eq!(seen(b.append(k, v)), vec![0, 1, 2, 7]);
        assert_eq!(
            seen(a.append(chunk(4, 1).0, chunk(4, 1).1)),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn ring_slot_positions() {
        // W = 4 after positions 0..10: slots hold 8, 9, 6, 7.
        let p: Vec<usize> = (0..4).map(|s| ring_position(10, 4, s)).collect();
        assert_eq!(p, vec![8, 9, 6, 7]);
        // Before wrapping, slot = position.
        let p: Vec<usize> = (0..3).map(|s| ring_position(3, 4, s)).collect();
        assert_eq!(p, vec![0, 1, 2]);
    }
}
