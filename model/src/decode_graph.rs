//! A decode step captured once and replayed per token (CubeCL's stream
//! capture: one CUDA graph, so the host launches once per step instead of
//! once per kernel, about 600 launches for the 4B).
//!
//! A replayed graph runs the launches it recorded against the buffers it
//! recorded, with the scalars it recorded. So everything that changes from
//! one step to the next lives in device buffers the step reads
//! (`Inputs`: the token ids, the RoPE rows of each layer type, and per
//! sequence and layer type the cache slot to write, the slots to read and
//! the buffer's size), and the host refreshes them in place before each
//! replay. At a capture each cache's buffers are grown by the graph's
//! `reserve` tokens and made its own (a buffer still shared with a clone,
//! a kept conversation, is copied first); the cache and the graph then hold
//! handles to the same buffers, which the batched attention kernel writes
//! in place, so the cache sees every token the graph writes and counts it.
//!
//! The graph is not tied to the caches' owners: [`DecodeGraph::step`] takes
//! the batch's caches each step and finds each one's row of the capture by
//! its buffers (a cache written by anything else has copied its buffer
//! away) and the length the graph left it at; the logits come back in the
//! batch's order. A server's batch changes as turns end and join, and a
//! capture per batch would cost a launched step and a recording each time.
//! So a row whose sequence has gone, its buffers held by the graph alone
//! (the turn's cache was dropped), runs on as a ghost: token 0 written into
//! slot 0 of its own buffers, its logits dropped. A sequence that joins
//! takes a ghost row over where its cache fits the row's buffers: its
//! slots are copied in (in place: nothing else holds them) and the row's
//! buffers become its own, so the graph replays as captured. It captures
//! anew only where a row's sequence is neither here nor gone (a clone
//! still holds its buffers: nothing may write them), where no ghost row
//! fits a newcomer, or where a buffer is full. A ghost's memory is counted
//! ([`DecodeGraph::ghost_bytes`]) and the capture let go where it would
//! pass what the memory budget reserved for the caches
//! ([`DecodeGraph::keep_ghosts_within`], the engine's check before a
//! prefill allocates). Dropping a capture frees the ghosts' buffers and
//! takes nothing from a running sequence: its cache holds its buffers
//! throughout. On a runtime
//! without graphs (CubeCL's CPU runtime, where the tests run) nothing is
//! recorded and a replay runs the step again over the same buffers: the
//! same arithmetic, which is what the tests compare with
//! [`Gemma3::forward_batch`].
//!
//! A capture is `Recorded::record`, not Burn's `capture`: a recorded run
//! only records (CUDA runs nothing while a stream captures), so its output
//! holds no logits until a replay, and Burn's helper warms up three times
//! for its fusion, which this crate does not build. Here the one warm-up
//! is the step itself, whose logits are the capture step's answer: a
//! capture costs the launched step, the recording and the instantiation
//! (and one more launched step and recording where the first recording
//! is refused).
//!
//! Owns: the step's input buffers, a handle to the model's weights, and
//! second handles to the captured caches' buffers.
//! Must never: read an input from the host inside the step (a replay would
//! not see it change), write a row for a cache that does not hold its
//! buffers, or a ghost row whose buffers anything but the graph can see (a
//! row is a ghost only once its handles are the graph's alone; a clone made
//! while a cache is in the graph shares them: only the engine's finished
//! turns are cloned, and they are never stepped again), or count a token
//! it did not write.

use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::{Bytes, Int, Tensor, TensorData};
use burn_cubecl::tensor::CubeTensor;

use crate::config::LayerType;
use crate::gemma3::{Gemma3, RopeRows};
use crate::kernels;
use crate::kv_cache::KvCache;

/// The step as the graph holds it.
type Step = Box<dyn FnMut() -> Tensor<2> + Send>;

/// Fewest steps a batch must be known to last for a capture to be made
/// ([`DecodeGraph::step_lasting`]). A batch that runs `h` steps costs
/// `h·ℓ` launched. Through a graph it costs the capture (the step itself,
/// launched; the recording `R`, the same launches made on the host again;
/// the instantiation `I`) and `h − 1` replays `r` (at least the device's
/// part of a step). The graph wins only if `(h − 1)(ℓ − r) > R + I`. A
/// launched step costs about the larger of its host and device parts, so
/// `ℓ − r` is at most about the host part, which `R` already is: at
/// `h = 2` the graph gains nothing on any card, at `h = 1` it loses the
/// recording. From 3 on it depends on the card, and the graph is tried.
pub const MIN_RUN: usize = 3;

/// Captures whose replays are remembered to tell a churning batch.
const RECENT: usize = 4;

/// Replays from which a capture about pays for itself (the same reckoning
/// as [`MIN_RUN`]: a batch of `h` steps replays `h − 1` times).
const PAYING_REPLAYS: usize = MIN_RUN - 1;

/// Launched steps a new batch runs before it is captured while batches
/// churn: a batch that outlives them is likelier to pay for a capture.
const CHURN_WAIT: usize = 2;

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
struct Live {
    graph: Recorded,
    inputs: Inputs,
    /// The step's rows: at capture one per sequence, in the batch's order.
    rows: Vec<Row>,
    /// The rows' cache buffers, `[layer][row]` (keys, values): the graph's
    /// one handle to each, shared by the recorded step and this record (so
    /// a row nothing else holds is told by its handle count, and a
    /// takeover writes it in place).
    buffers: Buffers,
    /// Steps replayed so far.
    replays: usize,
}

/// Steps a ghost row runs waiting for a newcomer before the capture is let
/// go (and, with it, the ended turn's buffers, which only the graph holds):
/// a server's next turn joins within a step or two of one ending, and a
/// batch that shrinks for longer has no use for the row's memory.
const GHOST_STEPS: usize = 16;

/// See [`Live::buffers`].
type Buffers = Arc<Mutex<Vec<Vec<(CubeTensor, CubeTensor)>>>>;

/// One row of a captured step.
struct Row {
    /// Slots of its buffers on global and local layers.
    caps: (usize, usize),
    /// Its sequence's length where the graph left it.
    len: usize,
    /// Steps left before one of its buffers is full.
    room: usize,
    /// Steps since its sequence went (nothing but the graph holds its
    /// buffers), `None` while one runs on it: the step feeds a ghost row
    /// token 0 into slot 0 and drops its logits, until a new sequence takes
    /// the row over or [`GHOST_STEPS`] pass.
    ghost: Option<usize>,
}

/// How a batch runs on a live capture: each sequence's row, and the
/// sequences that take over a gone one's row (sequence, row).
struct Plan {
    order: Vec<usize>,
    moves: Vec<(usize, usize)>,
}

/// A cache as a waiting batch last saw it: its length and where its first
/// layer's keys live.
type Seen = (usize, Option<(usize, Option<u64>)>);

/// A decode step that is captured as one graph and replayed while the batch
/// stays the same (see the module documentation). [`DecodeGraph::step`]
/// decodes one token per sequence, as [`Gemma3::forward_batch`] does.
pub struct DecodeGraph {
    model: Gemma3,
    reserve: usize,
    live: Option<Live>,
    captures: usize,
    /// Whether the runtime records graphs: unknown until the first capture
    /// asks, then no warm-up is spent for a recording that cannot happen.
    records: Option<bool>,
    /// Why the last recording was refused, where the runtime records graphs.
    refused: Option<String>,
    /// Captures let go for their ghost rows' memory
    /// ([`DecodeGraph::keep_ghosts_within`]).
    ghosts_let_go: usize,
    /// Replays of the last [`RECENT`] captures, newest last.
    recent: std::collections::VecDeque<usize>,
    /// While batches churn: a batch not yet captured, as each sequence's
    /// length after its launched step and where its first layer's keys
    /// live (no handle: the launched step writes them in place), and how
    /// many such steps it has run.
    waiting: Option<(Vec<Seen>, usize)>,
}

impl DecodeGraph {
    /// A graph for `model`'s decode steps, capturing with room for
    /// `reserve` tokens per sequence at a time. `None` off a CubeCL device:
    /// [`Gemma3::forward_batch`] serves there.
    pub fn new(model: &Gemma3, reserve: usize) -> Option<Self> {
        let cfg = model.config();
        let like = Tensor::<2>::zeros([1, cfg.head_dim], (model.device(), model.dtype()));
        kernels::cube(&like)?;
        Some(Self {
            // The weights' handles, not a copy of them.
            model: model.clone(),
            reserve: reserve.max(1),
            live: None,
            captures: 0,
            records: None,
            refused: None,
            ghosts_let_go: 0,
            recent: std::collections::VecDeque::with_capacity(RECENT),
            waiting: None,
        })
    }

    /// One decode step: `tokens[i]` continues `caches[i]`; logits `[B, V]`
    /// in f32, as [`Gemma3::forward_batch`] gives them (a copy: the next
    /// step overwrites the graph's own output). Replays the last capture
    /// where the caches run on its rows, newcomers taking over the rows of
    /// gone sequences (see the module documentation), else captures anew.
    /// `None`, with the caches untouched, where the
    /// batched attention kernel does not cover the batch (the caller runs
    /// [`Gemma3::forward_batch`]).
    ///
    /// # Panics
    ///
    /// If `tokens` does not have one token per cache.
    pub fn step(&mut self, caches: &mut [&mut KvCache], tokens: &[u32]) -> Option<Tensor<2>> {
        self.step_lasting(caches, tokens, usize::MAX)
    }

    /// [`DecodeGraph::step`] for a batch known to change after at most
    /// `lasts` steps, this one included (a sequence reaches its length or
    /// the context): it replays as `step` does, but a batch that would
    /// need a capture and lasts fewer than [`MIN_RUN`] steps is not
    /// captured: `None`, the caches untouched and the graph's handles to
    /// them dropped, and the caller launches the step.
    ///
    /// Batches also change where nobody knows ahead (a stop token, a
    /// cancel, a turn joining). When the last 4 captures replayed fewer
    /// than `MIN_RUN` − 1 times each on average, batches churn faster than
    /// captures pay: a new batch then runs 2 launched steps (`None`) before
    /// it is captured, and churn that never settles runs launched, as
    /// without a graph (`RECENT`, `PAYING_REPLAYS`, `CHURN_WAIT`).
    ///
    /// # Panics
    ///
    /// If `tokens` does not have one token per cache.
    pub fn step_lasting(
        &mut self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        lasts: usize,
    ) -> Option<Tensor<2>> {
        assert_eq!(tokens.len(), caches.len(), "one token per sequence");
        let order = self.live.as_mut().and_then(|live| {
            let plan = live.assign(caches)?;
            live.apply(caches, &plan).then_some(plan.order)
        });
        if order.is_none() {
            // Its handles go first, so the caches' buffers are theirs alone
            // again and a new capture need not copy them (nor a launched
            // step copy them to write).
            if let Some(old) = self.live.take() {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(old.replays);
            }
            if lasts < MIN_RUN {
                self.waiting = None;
                return None;
            }
            if self.churning() {
                let seen = |c: &&mut KvCache| (c.len(), c.layers.first().and_then(|l| l.keys_at()));
                let now: Vec<Seen> = caches.iter().map(seen).collect();
                let age = match &self.waiting {
                    Some((after, age)) if *after == now => *age,
                    _ => 0,
                };
                if age < CHURN_WAIT {
                    // The caller launches this step: each length grows by
                    // one, in the same buffers (a grown one starts anew).
                    let after = now.into_iter().map(|(n, at)| (n + 1, at)).collect();
                    self.waiting = Some((after, age + 1));
                    return None;
                }
            }
            self.waiting = None;
        }
        let logits = match (self.live.as_mut(), order) {
            (Some(live), Some(order)) => {
                let mut feed: Vec<Option<(&KvCache, u32)>> = vec![None; live.rows.len()];
                for ((c, &t), &r) in caches.iter().zip(tokens).zip(&order) {
                    feed[r] = Some((&**c, t));
                }
                write_inputs(&self.model, &live.inputs, &live.rows, &feed);
                // SAFETY: every buffer the step reads or writes is held by
                // the recorded step (the model's weights, the inputs and the
                // cache buffers, all by value) or by `live`, so all outlive
                // the replay; the inputs were written just now on this
                // thread's stream, the one the graph was recorded on, and
                // the output is copied on it; the caches holding the other
                // handles to the buffers it writes are the ones captured
                // (checked above) and are borrowed here, and no other handle
                // to them exists (made unshared at capture).
                let out = unsafe { live.graph.replay() };
                live.replays += 1;
                for (&r, c) in order.iter().zip(caches.iter()) {
                    live.rows[r].len = c.len() + 1;
                    live.rows[r].room -= 1;
                }
                rows_in_order(out, &order)
            }
            _ => {
                let (live, out) = self.capture(caches, tokens)?;
                let hardware = live.graph.is_hardware();
                // Asked once: a runtime that recorded nothing never will.
                self.records
                    .get_or_insert(hardware || live.graph.refused.is_some());
                self.refused.clone_from(&live.graph.refused);
                let mut live = live;
                for r in &mut live.rows {
                    r.len += 1;
                    r.room -= 1;
                }
                self.live = Some(live);
                self.captures += 1;
                out
            }
        };
        for c in caches.iter_mut() {
            for l in c.layers.iter_mut() {
                l.count_token();
            }
            c.advance(1);
        }
        Some(logits)
    }

    /// Whether steps replay as one hardware graph (CUDA) rather than run
    /// launch by launch (a runtime without graphs, or before the first step).
    pub fn is_hardware(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.graph.is_hardware())
    }

    /// Captures made so far (each a new batch, or a full buffer).
    pub fn captures(&self) -> usize {
        self.captures
    }

    /// Why the runtime refused the last recording, where it records graphs
    /// (the steps then run launch by launch: slower, the same answers).
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Whether the last [`RECENT`] captures replayed too little to pay.
    fn churning(&self) -> bool {
        self.recent.len() == RECENT && self.recent.iter().sum::<usize>() < PAYING_REPLAYS * RECENT
    }

    /// Lets go of the capture and its handles to the caches' buffers (the
    /// caches keep theirs); the next step captures anew.
    pub fn release(&mut self) {
        self.live = None;
    }

    /// Bytes of the cache buffers only the capture holds: the rows of turns
    /// that ended (ghosts, and rows whose cache went since the last step).
    /// Memory no turn counts: the budget sizes each turn's cache, and
    /// these outlive their turns until a newcomer takes the row over or the
    /// capture goes.
    pub fn ghost_bytes(&self) -> u64 {
        self.live.as_ref().map_or(0, Live::ghost_bytes)
    }

    /// Lets the capture go (and the ghost rows' buffers with it) where
    /// [`DecodeGraph::ghost_bytes`] on top of `held`, the bytes the batch's
    /// own caches take and may still grow to, would pass `allowance`, what
    /// the memory budget reserved for the caches. Whether the capture (and
    /// any ghost) stays. A capture with no ghost row always stays: letting
    /// it go would free nothing.
    pub fn keep_ghosts_within(&mut self, held: u64, allowance: u64) -> bool {
        let ghosts = self.ghost_bytes();
        if ghosts == 0 || held.saturating_add(ghosts) <= allowance {
            return true;
        }
        self.release();
        self.ghosts_let_go += 1;
        false
    }

    /// Captures let go so far because their ghost rows' memory would have
    /// passed the allowance ([`DecodeGraph::keep_ghosts_within`]).
    pub fn ghosts_let_go(&self) -> usize {
        self.ghosts_let_go
    }

    /// Grows and unshares the caches' buffers, writes the first step's
    /// inputs and captures the step, which runs it: its logits come back
    /// with the capture. `None`, touching no cache, where the batched
    /// kernel does not cover the batch.
    fn capture(&self, caches: &mut [&mut KvCache], tokens: &[u32]) -> Option<(Live, Tensor<2>)> {
        let model = &self.model;
        let cfg = model.config();
        let (b, hd, kv) = (tokens.len(), cfg.head_dim, cfg.num_key_value_heads);
        let heads = cfg.num_attention_heads;
        let (device, dtype) = (model.device().clone(), model.dtype());
        let q_like = Tensor::<2>::zeros([1, heads * hd], (&device, dtype));
        if b == 0 || !kernels::batch_attention_covers(&q_like, b, heads, kv) {
            return None;
        }
        let like = Tensor::<4>::zeros([1, kv, 1, hd], (&device, dtype));
        let mut rooms = vec![usize::MAX; b];
        let mut buffers = Vec::with_capacity(cfg.num_layers());
        let mut caps: Vec<[Option<usize>; 2]> = vec![[None, None]; b];
        for (li, kind) in cfg.layer_types.iter().enumerate() {
            let mut row = Vec::with_capacity(b);
            for ((c, cap), room) in caches.iter_mut().zip(caps.iter_mut()).zip(rooms.iter_mut()) {
                let l = &mut c.layers[li];
                let (k, v) = l.take_for_graph(self.reserve, &like);
                let slots = k.dims()[2];
                *room = (*room).min(l.room(slots));
                // Layers of a type share one row of slots in the inputs.
                let kept = cap[usize::from(*kind == LayerType::Local)].get_or_insert(slots);
                assert_eq!(*kept, slots, "layers of one type grow alike");
                let on = "taken on a CubeCL device";
                row.push((kernels::cube(&k).expect(on), kernels::cube(&v).expect(on)));
                l.put_back_buffers(k, v);
            }
            buffers.push(row);
        }
        let rows: Vec<Row> = caps
            .into_iter()
            .zip(rooms)
            .zip(caches.iter())
            .map(|(([g, l], room), c)| Row {
                caps: (g.unwrap_or(1), l.unwrap_or(1)),
                len: c.len(),
                room,
                ghost: None,
            })
            .collect();
        let buffers: Buffers = Arc::new(Mutex::new(buffers));
        let zeros = |shape: [usize; 2]| Tensor::<2>::zeros(shape, (&device, dtype));
        let meta = || kernels::u32_buffer(&like, &vec![0; 3 * b]);
        let inputs = Inputs {
            ids: Tensor::<1, Int>::zeros([b], &device),
            global: RopeRows::decode(zeros([b, hd]), zeros([b, hd]), b, hd),
            local: RopeRows::decode(zeros([b, hd]), zeros([b, hd]), b, hd),
            meta_global: meta(),
            meta_local: meta(),
        };
        let feed: Vec<Option<(&KvCache, u32)>> = caches
            .iter()
            .zip(tokens)
            .map(|(c, &t)| Some((&**c, t)))
            .collect();
        write_inputs(model, &inputs, &rows, &feed);
        let scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let step_inputs = inputs.clone();
        let step_buffers = Arc::clone(&buffers);
        let step_model = model.clone();
        let step: Step = Box::new(move || {
            let i = &step_inputs;
            let bufs = step_buffers.lock().unwrap_or_else(PoisonError::into_inner);
            step_model.decode_step(&i.ids, &i.global, &i.local, &mut |li, kind, q, k, v| {
                let meta = match kind {
                    LayerType::Global => &i.meta_global,
                    LayerType::Local => &i.meta_local,
                };
                kernels::batch_attention_in_place(q, k, v, &bufs[li], meta, heads, scale)
                    .expect("the graph was built where the batched kernel covers the batch")
            })
        });
        let client = inputs.meta_global.client.clone();
        let (graph, out) = Recorded::record(step, &client, &device, self.records);
        let live = Live {
            graph,
            inputs,
            rows,
            buffers,
            replays: 0,
        };
        Some((live, out))
    }
}

/// A step recorded once as one hardware graph (CUDA) and replayed, or run
/// again launch by launch where the runtime records none (CubeCL's CPU
/// runtime) or refused the recording.
struct Recorded {
    /// The graph and the output buffer its replays write. Declared before
    /// the step, so the graph goes first (its destruction waits for a
    /// replay in flight) and the buffers it writes after it.
    hardware: Option<(cubecl::client::Graph, Tensor<2>)>,
    step: Step,
    /// Why the runtime refused the recording, where it records graphs.
    refused: Option<String>,
}

impl Recorded {
    /// Runs `step` and records it: returns the recording and the logits of
    /// this run (a copy of them: a replay overwrites the graph's output).
    ///
    /// Nothing is allocated while a stream records (the pools must serve
    /// every buffer from what is free), and a recorded run executes
    /// nothing. So the step runs first on the prepared stream, as the
    /// warm-up that fills the pools, and its logits (this step's answer)
    /// are copied out before its own buffers are freed; then it is
    /// recorded, asking the pools for what that run freed. A refused
    /// recording (an allocation the pools could not serve, a launch that
    /// failed) is tried once more after a warm-up run with the copy held,
    /// then the step runs launch by launch. `records` is what the graph
    /// learnt of the runtime: `Some(false)`, it records nothing and the
    /// step only runs; `None`, a window that does not open says so.
    fn record(
        mut step: Step,
        client: &cubecl::client::Client,
        device: &burn::tensor::Device,
        records: Option<bool>,
    ) -> (Self, Tensor<2>) {
        if records == Some(false) {
            let answer = copy(&step());
            return (Self::relaunching(step, None), answer);
        }
        let mut answer = None;
        let mut refused = None;
        for _ in 0..2 {
            match record_once(&mut step, client, device, &mut answer) {
                Recording::Made(made) => {
                    let answer = answer.expect("a recording follows a run");
                    let recorded = Self {
                        hardware: Some(*made),
                        step,
                        refused: None,
                    };
                    return (recorded, answer);
                }
                // Not a runtime that records (nothing to retry), or one
                // that did and now would not open a window.
                Recording::NoWindow(why) => {
                    refused = records.is_some().then_some(why);
                    break;
                }
                Recording::Refused(why) => refused = Some(why),
            }
        }
        // The stream did not even prepare: the step has not run yet.
        let answer = answer.unwrap_or_else(|| copy(&step()));
        (Self::relaunching(step, refused), answer)
    }

    fn relaunching(step: Step, refused: Option<String>) -> Self {
        Self {
            hardware: None,
            step,
            refused,
        }
    }

    fn is_hardware(&self) -> bool {
        self.hardware.is_some()
    }

    /// Runs the step again (one hardware dispatch where recorded) and
    /// returns a copy of its logits.
    ///
    /// # Safety
    ///
    /// Every buffer the recorded step read or wrote is alive (the step
    /// holds them), the step's inputs were refreshed on this thread's
    /// stream, and no other stream or thread touches those buffers until
    /// the copy of the output is made (see `cubecl::client::Graph::replay`).
    unsafe fn replay(&mut self) -> Tensor<2> {
        match &self.hardware {
            Some((graph, out)) => {
                // SAFETY: forwarded from this method's contract.
                if let Err(e) = unsafe { graph.replay() } {
                    // A refused enqueue ran nothing and leaves the graph's
                    // buffers (the caches among them) marked failed, so no
                    // launched step can take over: the step fails as a GPU
                    // failure does (the engine's guard turns the panic into
                    // failed turns and lets go of the graph).
                    panic!("the decode graph's replay was refused: {e}");
                }
                copy(out)
            }
            None => (self.step)(),
        }
    }
}

/// What one try at recording gave.
enum Recording {
    /// The graph, and the output buffer its replays write.
    Made(Box<(cubecl::client::Graph, Tensor<2>)>),
    /// The window would not open (on a runtime without graphs, always).
    NoWindow(String),
    /// The runtime refused this recording.
    Refused(String),
}

/// Prepares the stream, runs the step (its logits become `answer`, a copy,
/// when there is none yet) and records it.
fn record_once(
    step: &mut Step,
    client: &cubecl::client::Client,
    device: &burn::tensor::Device,
    answer: &mut Option<Tensor<2>>,
) -> Recording {
    if let Err(e) = client.graph_prepare() {
        return Recording::Refused(format!("the stream could not prepare a capture: {e}"));
    }
    // From here the stream is prepared (or recording) until `stop_capture`,
    // which the window's drop calls on every way out, an unwind included.
    let mut window = Window { client, open: true };
    let out = step();
    if answer.is_none() {
        *answer = Some(copy(&out));
    }
    drop(out);
    // The warm-up's launches are enqueued and its drops queued before the
    // window opens (which drains them).
    if let Err(e) = device.sync() {
        return Recording::Refused(format!("the warm-up before the capture failed: {e}"));
    }
    if let Err(e) = client.start_capture() {
        return Recording::NoWindow(format!("the capture window did not open: {e}"));
    }
    let out = step();
    window.open = false;
    match client.stop_capture() {
        Ok(graph) => Recording::Made(Box::new((graph, out))),
        Err(e) => Recording::Refused(format!("the recording was refused: {e}")),
    }
}

/// A prepared or recording stream, closed when dropped unless
/// `stop_capture` was already called.
struct Window<'c> {
    client: &'c cubecl::client::Client,
    open: bool,
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        if self.open {
            // Closing a window that recorded nothing: there is no graph to keep.
            let _ = self.client.stop_capture();
        }
    }
}

impl Live {
    /// See [`DecodeGraph::ghost_bytes`].
    fn ghost_bytes(&self) -> u64 {
        let bufs = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes =
            |t: &CubeTensor| (t.meta.shape().iter().product::<usize>() * t.dtype.size()) as u64;
        (0..self.rows.len())
            .filter(|&r| bufs.iter().all(|l| l[r].0.can_mut() && l[r].1.can_mut()))
            .map(|r| {
                bufs.iter()
                    .map(|l| bytes(&l[r].0) + bytes(&l[r].1))
                    .sum::<u64>()
            })
            .sum()
    }

    /// How `caches` run on this capture, if they can: each on the row whose
    /// buffers it holds at the length the graph left it (any order), every
    /// other row gone (a ghost, or one whose buffers nothing but the graph
    /// holds any more: its sequence was dropped), and each sequence left
    /// over taking a gone row its cache fits. `None` (a new capture) where
    /// a row's sequence is neither here nor gone, where no gone row fits a
    /// newcomer, or where a row's buffers are full.
    fn assign(&self, caches: &[&mut KvCache]) -> Option<Plan> {
        let bufs = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let n = self.rows.len();
        let holds =
            |c: &KvCache, r: usize, li: usize| c.layers[li].holds(&bufs[li][r].0, &bufs[li][r].1);
        let mut owner = vec![false; n];
        let mut order = vec![usize::MAX; caches.len()];
        let mut newcomers = Vec::new();
        for (i, c) in caches.iter().enumerate() {
            let mine = |r: usize| {
                let row = &self.rows[r];
                row.ghost.is_none() && !owner[r] && row.len == c.len() && holds(c, r, 0)
            };
            // Its own place first, the usual case; the first layer finds the
            // row, and every layer must agree.
            let found = if i < n && mine(i) {
                Some(i)
            } else {
                (0..n).find(|&r| mine(r))
            };
            match found {
                Some(r) if (0..bufs.len()).all(|li| holds(c, r, li)) => {
                    if self.rows[r].room == 0 {
                        return None;
                    }
                    owner[r] = true;
                    order[i] = r;
                }
                _ => newcomers.push(i),
            }
        }
        let gone = |r: usize| {
            self.rows[r].ghost.is_some()
                || bufs.iter().all(|l| l[r].0.can_mut() && l[r].1.can_mut())
        };
        let free: Vec<usize> = (0..n).filter(|&r| !owner[r]).collect();
        if !free.iter().all(|&r| gone(r)) {
            return None;
        }
        let mut moves = Vec::with_capacity(newcomers.len());
        for i in newcomers {
            let c = &caches[i];
            let r = free.iter().copied().find(|&r| {
                !owner[r]
                    && bufs
                        .iter()
                        .enumerate()
                        .all(|(li, l)| c.layers[li].fits(l[r].0.meta.shape()[2]))
            })?;
            owner[r] = true;
            order[i] = r;
            moves.push((i, r));
        }
        // A ghost nobody took over for long: the capture goes, and the
        // ended turns' buffers with it.
        let stale = (0..n).any(|r| !owner[r] && self.rows[r].ghost >= Some(GHOST_STEPS));
        (!stale).then_some(Plan { order, moves })
    }

    /// Moves each newcomer of `plan` into its row (its cache's slots copied
    /// into the row's buffers, in place, which become its buffers) and
    /// makes every row no sequence runs on a ghost. `false` where a write
    /// was not in place after all (the capture must go).
    fn apply(&mut self, caches: &mut [&mut KvCache], plan: &Plan) -> bool {
        let mut bufs = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        for &(i, r) in &plan.moves {
            let c = &mut *caches[i];
            let mut room = usize::MAX;
            for (li, layer) in bufs.iter_mut().enumerate() {
                let l = &mut c.layers[li];
                // The row's one handle moves into the write (a clone would
                // make it shared, and the write would copy).
                let last = layer.len() - 1;
                layer.swap(r, last);
                let (k, v) = layer.pop().expect("a row");
                let (k, v, in_place) = l.move_into(k, v);
                room = room.min(l.room(k.meta.shape()[2]));
                layer.push((k, v));
                layer.swap(r, last);
                if !in_place {
                    return false;
                }
            }
            self.rows[r].len = c.len();
            self.rows[r].room = room;
            self.rows[r].ghost = None;
        }
        let mut running = vec![false; self.rows.len()];
        for &r in &plan.order {
            running[r] = true;
        }
        for (row, running) in self.rows.iter_mut().zip(running) {
            row.ghost = match (running, row.ghost) {
                (true, _) => None,
                // It runs as a ghost this step too.
                (false, ghost) => Some(ghost.map_or(1, |n| n + 1)),
            };
        }
        true
    }
}

/// The rows of `out` (`[rows, V]`) in `order` (`[order.len(), V]`): itself
/// where the order is every row in place.
fn rows_in_order(out: Tensor<2>, order: &[usize]) -> Tensor<2> {
    let [rows, _] = out.dims();
    if order.len() == rows && order.iter().enumerate().all(|(i, &r)| i == r) {
        return out;
    }
    let device = out.device();
    let idx: Vec<i64> = order.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [order.len()]), &device);
    out.select(0, idx)
}

impl std::fmt::Debug for DecodeGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeGraph")
            .field("reserve", &self.reserve)
            .field("rows", &self.live.as_ref().map(|l| l.rows.len()))
            .field("captures", &self.captures)
            .field("hardware", &self.is_hardware())
            .finish()
    }
}

/// A copy of the graph's output (which the next replay overwrites).
fn copy(t: &Tensor<2>) -> Tensor<2> {
    match kernels::cube(t) {
        Some(c) => kernels::tensor(c.copy()),
        None => t.clone(),
    }
}

/// Writes the next step's inputs into `inputs`' buffers in place: per row
/// its token, the RoPE rows at its sequence's position and each layer
/// type's slots; `feed[r]` is row `r`'s cache and token, `None` on a ghost
/// row (token 0 at position 0, written into slot 0 and reading it alone).
fn write_inputs(model: &Gemma3, inputs: &Inputs, rows: &[Row], feed: &[Option<(&KvCache, u32)>]) {
    let cfg = model.config();
    let positions: Vec<usize> = feed.iter().map(|f| f.map_or(0, |(c, _)| c.len())).collect();
    let ids: Vec<i64> = feed
        .iter()
        .map(|f| f.map_or(0, |(_, t)| i64::from(t)))
        .collect();
    let on = "graph inputs live on a CubeCL device";
    let ids_buffer = inputs.ids.clone().try_into_primitive::<burn_cubecl::Cube>();
    write(ids_buffer.expect(on), TensorData::new(ids, [feed.len()]));
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
        let slots: Vec<u32> = feed
            .iter()
            .zip(rows)
            .flat_map(|(f, row)| {
                let (slot, visible) = f.map_or((0, 1), |(c, _)| c.layers[li].next_slot());
                let cap = match kind {
                    LayerType::Global => row.caps.0,
                    LayerType::Local => row.caps.1,
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

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use burn::tensor::{DType, Tensor, TensorData};

    use super::{Recorded, Step};
    use crate::kernels::{self, test_support::device};

    /// A step whose output is the number of times it ran.
    fn counting() -> (Step, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = runs.clone();
        let device = device();
        let step: Step = Box::new(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            Tensor::<2>::from_data(
                TensorData::new(vec![n as f32], [1, 1]),
                (&device, DType::F32),
            )
        });
        (step, runs)
    }

    fn value(t: Tensor<2>) -> f32 {
        t.into_data().iter::<f32>().next().expect("one value")
    }

    #[test]
    fn a_capture_answers_with_its_first_run_and_learns_the_runtime_records_nothing() {
        let device = device();
        let like = Tensor::<2>::zeros([1, 1], (&device, DType::F32));
        let client = kernels::cube(&like).expect("a CubeCL device").client;

        // Not yet known whether the runtime records: the step runs once on
        // the prepared stream (its answer, and the warm-up), and the window
        // does not open, which on CubeCL's CPU runtime is no refusal but
        // the runtime's nature.
        let (step, runs) = counting();
        let (mut rec, answer) = Recorded::record(step, &client, &device, None);
        assert_eq!(value(answer), 1.0, "the answer is the first run's");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the step is the warm-up");
        assert!(!rec.is_hardware());
        assert_eq!(rec.refused, None);
        // SAFETY: no hardware graph: a replay runs the step again.
        let again = unsafe { rec.replay() };
        assert_eq!(value(again), 2.0, "a replay runs the step anew");

        // Known to record nothing: no warm-up is spent.
        let (step, runs) = counting();
        let (_, answer) = Recorded::record(step, &client, &device, Some(false));
        assert_eq!(value(answer), 1.0);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the step alone");

        // A runtime that recorded before and now opens no window: the
        // reason is kept for the log, and the step runs launch by launch.
        let (step, runs) = counting();
        let (rec, answer) = Recorded::record(step, &client, &device, Some(true));
        assert_eq!(value(answer), 1.0);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let why = rec.refused.as_deref().expect("a reason");
        assert!(why.starts_with("the capture window did not open"), "{why}");
    }
}
