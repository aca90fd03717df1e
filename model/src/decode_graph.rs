//! A decode step captured once and replayed per token (Burn's
//! `capture`/`replay`: one CUDA graph, so the host launches once per step
//! instead of once per kernel, about 600 launches for the 4B).
//!
//! A replayed graph runs the launches it recorded against the buffers it
//! recorded, with the scalars it recorded. So everything that changes from
//! one step to the next lives in device buffers the step reads
//! ([`Inputs`]: the token ids, the RoPE rows of each layer type, and per
//! sequence and layer type the cache slot to write, the slots to read and
//! the buffer's size), and the host refreshes them in place before each
//! replay. The caches' buffers are taken out of the [`KvCache`]s for the
//! graph's life, grown in advance by [`DecodeGraph::new`]'s `reserve`
//! tokens, and written in place by the batched attention kernel; when a
//! buffer is full the graph is dropped, the buffers go back, and the next
//! step captures anew with room for `reserve` more. On a runtime without
//! graphs (CubeCL's CPU runtime, where the tests run) `capture` records
//! nothing and a replay runs the step again over the same buffers: the
//! same arithmetic, which is what the tests compare with
//! [`Gemma3::forward_batch`].
//!
//! Owns: the step's input buffers and the caches' buffers while captured.
//! Must never: read an input from the host inside the step (a replay would
//! not see it change), let another holder see a cache buffer it writes, or
//! hand a cache back with a count that differs from what was written.

use burn::tensor::{Bytes, Int, Tensor, TensorData};
use burn_cubecl::tensor::CubeTensor;

use crate::config::LayerType;
use crate::gemma3::{Gemma3, RopeRows};
use crate::kernels;
use crate::kv_cache::KvCache;

/// The step as the graph holds it.
type Step<'m> = Box<dyn FnMut() -> Tensor<2> + 'm>;

/// What a step reads that changes between steps, in device buffers
/// (handles to the same buffers the captured step reads).
#[derive(Clone)]
struct Inputs {
    /// Token ids `[B]`.
    ids: Tensor<1, Int>,
    /// RoPE rows `[B, hd]` of each layer type.
    global: RopeRows,
    local: RopeRows,
    /// Per sequence `(visible, slot, cap)` of each layer type, `u32`s `[3·B]`.
    meta_global: CubeTensor,
    meta_local: CubeTensor,
}

/// One capture and what it was built over.
struct Live<'m> {
    graph: burn::tensor::Graph<Tensor<2>, Step<'m>>,
    inputs: Inputs,
    /// Per sequence, the slots of its buffers on global and local layers.
    caps: Caps,
    /// Steps left before a buffer is full.
    room: usize,
}

/// Per sequence, the slots of its taken buffers: `(global, local)`.
type Caps = Vec<(usize, usize)>;

/// A decode batch whose step is captured as one graph (see the module
/// documentation). Built by [`DecodeGraph::new`] over the batch's caches,
/// which it holds until dropped; [`DecodeGraph::step`] then decodes one
/// token per sequence, as [`Gemma3::forward_batch`] does.
pub struct DecodeGraph<'m, 'c> {
    model: &'m Gemma3,
    caches: Vec<&'c mut KvCache>,
    reserve: usize,
    /// The caches' buffers while taken: `[layer][sequence]` (second handles
    /// of those the step writes), handed back by [`DecodeGraph::release`]
    /// (also when a capture panics: `Drop` releases).
    lent: Vec<Vec<(Tensor<4>, Tensor<4>)>>,
    live: Option<Live<'m>>,
}

impl<'m, 'c> DecodeGraph<'m, 'c> {
    /// A graph over `caches` (one sequence each), capturing with room for
    /// `reserve` tokens at a time. `None`, with the caches untouched, off a
    /// CubeCL device or where the batched attention kernel does not cover
    /// the model's shapes or the batch: [`Gemma3::forward_batch`] serves
    /// them.
    pub fn new(model: &'m Gemma3, caches: Vec<&'c mut KvCache>, reserve: usize) -> Option<Self> {
        let cfg = model.config();
        let heads = cfg.num_attention_heads;
        let like = Tensor::<2>::zeros([1, heads * cfg.head_dim], (model.device(), model.dtype()));
        let covered = !caches.is_empty()
            && kernels::batch_attention_covers(&like, caches.len(), heads, cfg.num_key_value_heads);
        covered.then_some(Self {
            model,
            caches,
            reserve: reserve.max(1),
            lent: Vec::new(),
            live: None,
        })
    }

    /// One decode step: `tokens[i]` continues sequence `i`; logits `[B, V]`
    /// in f32, as [`Gemma3::forward_batch`] gives them (a copy: the next
    /// step overwrites the graph's own output).
    ///
    /// # Panics
    ///
    /// If `tokens` does not have one token per sequence.
    pub fn step(&mut self, tokens: &[u32]) -> Tensor<2> {
        assert_eq!(tokens.len(), self.caches.len(), "one token per sequence");
        if self.live.as_ref().is_some_and(|l| l.room == 0) {
            self.release();
        }
        let logits = match self.live.as_mut() {
            Some(live) => {
                write_inputs(self.model, &self.caches, &live.inputs, &live.caps, tokens);
                // SAFETY: every buffer the step reads or writes is held by
                // the graph's closure (the model's weights through `'m`,
                // the inputs and cache buffers by value), `live` or `lent`, so
                // all outlive the replay; the inputs were written just now
                // on this thread's stream, the one the graph was captured
                // on, and the output is copied on it below; nothing else
                // holds the cache buffers while they are out of the caches.
                let out = unsafe { live.graph.replay() };
                copy(out)
            }
            None => {
                let live = self.capture(tokens);
                let out = copy(live.graph.output());
                self.live = Some(live);
                out
            }
        };
        for c in self.caches.iter_mut() {
            for l in c.layers.iter_mut() {
                l.count_token();
            }
            c.advance(1);
        }
        if let Some(live) = self.live.as_mut() {
            live.room -= 1;
        }
        logits
    }

    /// Whether steps replay as one hardware graph (CUDA) rather than run
    /// launch by launch (a runtime without graphs, or before the first step).
    pub fn is_hardware(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.graph.is_hardware())
    }

    /// Takes the caches' buffers, writes the first step's inputs and
    /// captures the step (which runs it).
    fn capture(&mut self, tokens: &[u32]) -> Live<'m> {
        let model = self.model;
        let cfg = model.config();
        let (b, hd, kv) = (tokens.len(), cfg.head_dim, cfg.num_key_value_heads);
        let (device, dtype) = (model.device().clone(), model.dtype());
        let like = Tensor::<4>::zeros([1, kv, 1, hd], (&device, dtype));
        let mut room = usize::MAX;
        self.lent = Vec::with_capacity(cfg.num_layers());
        let mut caps: Vec<[Option<usize>; 2]> = vec![[None, None]; b];
        for (li, kind) in cfg.layer_types.iter().enumerate() {
            let mut row = Vec::with_capacity(b);
            for (c, cap) in self.caches.iter_mut().zip(caps.iter_mut()) {
                let l = &mut c.layers[li];
                let (k, v) = l.take_for_graph(self.reserve, &like);
                let slots = k.dims()[2];
                room = room.min(l.room(slots));
                // Layers of a type share one row of slots in the inputs.
                let kept = cap[usize::from(*kind == LayerType::Local)].get_or_insert(slots);
                assert_eq!(*kept, slots, "layers of one type grow alike");
                row.push((k, v));
            }
            self.lent.push(row);
        }
        let caps: Caps = caps
            .into_iter()
            .map(|[g, l]| (g.unwrap_or(1), l.unwrap_or(1)))
            .collect();
        let zeros = |shape: [usize; 2]| Tensor::<2>::zeros(shape, (&device, dtype));
        let meta = || kernels::u32_buffer(&like, &vec![0; 3 * b]);
        let inputs = Inputs {
            ids: Tensor::<1, Int>::zeros([b], &device),
            global: RopeRows::decode(zeros([b, hd]), zeros([b, hd]), b, hd),
            local: RopeRows::decode(zeros([b, hd]), zeros([b, hd]), b, hd),
            meta_global: meta(),
            meta_local: meta(),
        };
        write_inputs(model, &self.caches, &inputs, &caps, tokens);
        let (heads, scale) = (
            cfg.num_attention_heads,
            cfg.query_pre_attn_scalar.powf(-0.5),
        );
        let step_inputs = inputs.clone();
        let step_buffers: Vec<Vec<(CubeTensor, CubeTensor)>> = self
            .lent
            .iter()
            .map(|row| {
                row.iter()
                    .map(|(k, v)| {
                        let on = "taken on a CubeCL device";
                        (kernels::cube(k).expect(on), kernels::cube(v).expect(on))
                    })
                    .collect()
            })
            .collect();
        let step: Step<'m> = Box::new(move || {
            let i = &step_inputs;
            model.decode_step(&i.ids, &i.global, &i.local, &mut |li, kind, q, k, v| {
                let meta = match kind {
                    LayerType::Global => &i.meta_global,
                    LayerType::Local => &i.meta_local,
                };
                kernels::batch_attention_in_place(q, k, v, &step_buffers[li], meta, heads, scale)
                    .expect("the graph was built where the batched kernel covers the batch")
            })
        });
        Live {
            graph: burn::tensor::capture(&device, step),
            inputs,
            caps,
            room,
        }
    }

    /// Drops the graph and gives the caches their buffers back.
    fn release(&mut self) {
        // The step's handles go with the graph: the caches' are the last ones.
        drop(self.live.take());
        for (li, row) in std::mem::take(&mut self.lent).into_iter().enumerate() {
            for (c, (k, v)) in self.caches.iter_mut().zip(row) {
                c.layers[li].put_back_buffers(k, v);
            }
        }
    }
}

impl std::fmt::Debug for DecodeGraph<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeGraph")
            .field("sequences", &self.caches.len())
            .field("reserve", &self.reserve)
            .field("captured", &self.live.is_some())
            .field("hardware", &self.is_hardware())
            .finish()
    }
}

impl Drop for DecodeGraph<'_, '_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A copy of the graph's output (which the next replay overwrites).
fn copy(t: &Tensor<2>) -> Tensor<2> {
    match kernels::cube(t) {
        Some(c) => kernels::tensor(c.copy()),
        None => t.clone(),
    }
}

/// Writes the next step's inputs into `inputs`' buffers in place: ids,
/// RoPE rows at each sequence's position, and each layer type's slots.
fn write_inputs(
    model: &Gemma3,
    caches: &[&mut KvCache],
    inputs: &Inputs,
    caps: &Caps,
    tokens: &[u32],
) {
    let cfg = model.config();
    let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let on = "graph inputs live on a CubeCL device";
    let ids_buffer = inputs.ids.clone().try_into_primitive::<burn_cubecl::Cube>();
    write(ids_buffer.expect(on), TensorData::new(ids, [tokens.len()]));
    for (kind, rope, meta) in [
        (LayerType::Global, &inputs.global, &inputs.meta_global),
        (LayerType::Local, &inputs.local, &inputs.meta_local),
    ] {
        let (cos, sin) = model.rope_host(kind, &positions);
        let shape = [positions.len(), cfg.head_dim];
        write(
            kernels::cube(&rope.cos).expect(on),
            TensorData::new(cos, shape),
        );
        write(
            kernels::cube(&rope.sin).expect(on),
            TensorData::new(sin, shape),
        );
        // Every layer of a type is at the same length with the same buffer
        // size: the first one's slots stand for all.
        let Some(li) = cfg.layer_types.iter().position(|k| *k == kind) else {
            continue;
        };
        let slots: Vec<u32> = caches
            .iter()
            .zip(caps)
            .flat_map(|(c, &(global, local))| {
                let (slot, visible) = c.layers[li].next_slot();
                let cap = match kind {
                    LayerType::Global => global,
                    LayerType::Local => local,
                };
                [visible, slot, cap].map(|x| x as u32)
            })
            .collect();
        kernels::write_u32(meta, &slots);
    }
}

/// Writes `data`, converted to `c`'s dtype, over `c`'s buffer (the same
/// number of elements).
fn write(c: CubeTensor, data: TensorData) {
    let data = data.convert_dtype(c.dtype);
    c.client
        .write(&c.handle, Bytes::from_bytes_vec(data.as_bytes().to_vec()));
}
