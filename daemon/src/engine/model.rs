//! [`ModelEngine`]: the real engine over a loaded Gemma 3 model: messages
//! in, reasoning and answer deltas out.
//!
//! Owns: the loaded model and tokenizer, the chat template, thinking-trace
//! parsing, and the turns being generated: one at a time ([`Engine::chat`])
//! or several sharing each decode step ([`Engine::begin`], [`Engine::step`]:
//! continuous batching, a turn joins or leaves the batch between two steps).
//! Must never: log or put message text into an error; keep anything of a
//! request after it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use medgemma_model::budget;
use medgemma_model::chat::{self, Message, MultimodalMessage, Part};
use medgemma_model::gemma3::Gemma3;
use medgemma_model::generate::{self, Flow, PREFILL_CHUNK, Sequence, StepGraph};
use medgemma_model::image::{self as image_prep, PixelValues};
use medgemma_model::load::LoadedModel;
use medgemma_model::sampling::SamplingParams;
use medgemma_model::thinking::{Channel, ThinkingParser};
use medgemma_model::tokenizer::{DecodeState, GemmaTokenizer};
use medgemma_model::vision::{ImagePrefill, VisionTower};

use medgemma_protocol::status::GpuStatus;

use super::health::{EngineHealth, panic_text};
use super::kept::{KeptContext, KeptLedger};
use super::{
    ChatEvent, ChatRequest, ChatSummary, Engine, EngineError, EngineInfo, TurnId, TurnOutcome,
};
use crate::log;

/// Tokens a decode graph's capture makes room for in each sequence's cache
/// (on global layers the buffers grow by 256 positions anyway, so a batch
/// that stays the same recaptures about once per 256 tokens).
const GRAPH_RESERVE: usize = 64;

/// The real engine over a loaded Gemma 3 model.
#[derive(Debug)]
pub struct ModelEngine {
    loaded: LoadedModel,
    context_limit: usize,
    backend: String,
    backend_reason: String,
    /// On the GPU: its record (a panic while generating is a GPU failure
    /// of the turns it hit, counted here) and its facts for the status.
    gpu: Option<(Arc<EngineHealth>, GpuStatus)>,
    /// The check of the model's files ([`Engine::set_weights`]).
    weights: Option<super::verify::WeightsCheck>,
    max_batch: usize,
    /// Prompt tokens per prefill pass ([`PREFILL_CHUNK`]).
    prefill_chunk: usize,
    /// The turns in the batch, in the order they joined.
    turns: Vec<Turn>,
    next_id: u64,
    /// The kept conversation caches (weak handles) and their cap.
    kept: KeptLedger,
    /// The vision tower, when the model has one (images are refused otherwise).
    vision: Option<VisionTower>,
    /// The last warm-up's timing of each decode product's routes (empty
    /// off a CubeCL device).
    products: Vec<medgemma_model::ProductTiming>,
    /// The last warm-up's timing of each prompt-chunk product's routines
    /// (empty off a CubeCL device).
    chunk_products: Vec<medgemma_model::ChunkTiming>,
    /// Decode steps as one captured graph (CUDA): on only after the
    /// warm-up saw it answer as the launched steps do.
    graph: StepGraph,
    /// Whether the warm-up may turn the graph on (`engine.decode_graph`).
    graph_allowed: bool,
}

/// One turn in the batch: its generation and the text state of its stream.
/// Holds patient context (the KV cache) until it ends.
#[derive(Debug)]
struct Turn {
    id: TurnId,
    seq: Sequence,
    text: DecodeState,
    parser: ThinkingParser,
    cancel: Arc<AtomicBool>,
    /// The error that ended the turn, if one did.
    failed: Option<EngineError>,
    /// Where the conversation keeps its cache for its next turn.
    kept: Option<KeptContext>,
    /// Prompt tokens run before the sequence began (an image prompt's
    /// prefill) and the time that took with the images' encoding.
    before: (usize, std::time::Duration),
}

impl ModelEngine {
    /// Wraps a loaded model; `context_limit` is capped at the model's maximum.
    pub fn new(
        loaded: LoadedModel,
        context_limit: usize,
        backend: String,
        backend_reason: String,
    ) -> Result<Self, EngineError> {
        if loaded.tokenizer.is_none() {
            return Err(EngineError::NoTokenizer);
        }
        let context_limit = context_limit.min(loaded.model.config().max_position_embeddings);
        Ok(Self {
            loaded,
            context_limit,
            backend,
            backend_reason,
            gpu: None,
            weights: None,
            max_batch: 1,
            prefill_chunk: PREFILL_CHUNK,
            turns: Vec::new(),
            next_id: 0,
            kept: KeptLedger::new(0),
            vision: None,
            products: Vec::new(),
            chunk_products: Vec::new(),
            graph: StepGraph::default(),
            graph_allowed: true,
        })
    }

    /// Reads images with `tower` (the model's vision tower).
    pub fn with_vision(mut self, tower: VisionTower) -> Self {
        self.vision = Some(tower);
        self
    }

    /// The prompt of an image request, its images' rows run through the
    /// model: the cache after every prompt token but the last, that token,
    /// the prompt's length and the time it took. The images' blocks attend
    /// to themselves both ways (spec model.md §5).
    fn prefill_images(
        &self,
        req: &ChatRequest,
    ) -> Result<(medgemma_model::kv_cache::KvCache, u32, usize), EngineError> {
        let tower = self.vision.as_ref().ok_or(EngineError::NoVision)?;
        let tok = self.tokenizer()?;
        let cfg = tower.config();
        let mut messages: Vec<MultimodalMessage> =
            req.messages.iter().cloned().map(Into::into).collect();
        let mut pixels: Vec<PixelValues> = Vec::with_capacity(req.images.len());
        // Images go before their message's text, in order.
        for (i, m) in messages.iter_mut().enumerate() {
            let here: Vec<Part> = req
                .images
                .iter()
                .filter(|im| im.message == i)
                .map(|im| {
                    pixels.push(image_prep::to_pixel_values(&im.image, cfg.image_size));
                    Part::Image
                })
                .collect();
            m.parts.splice(0..0, here);
        }
        if pixels.len() != req.images.len() {
            return Err(EngineError::ImageOutsideMessages);
        }
        let prompt = chat::encode_chat_multimodal(tok, &messages, &cfg.image_tokens(), true)?;
        if prompt.len() >= self.context_limit {
            return Err(EngineError::ContextFull {
                needed: prompt.len() + 1,
                limit: self.context_limit,
            });
        }
        let model = &self.loaded.model;
        guarded(self.gpu_health(), || {
            let rows = tower.encode(&pixels)?;
            let mut pre = ImagePrefill::new(prompt.clone(), rows, cfg.image_token_index)?;
            let mut cache = model.new_cache();
            pre.run(model, &mut cache, self.prefill_chunk);
            let last = pre
                .last_token()
                .ok_or(EngineError::Chat(chat::ChatError::Empty))?;
            Ok((cache, last, prompt.len()))
        })?
    }

    /// Keeps conversations' KV caches between their turns, at most
    /// `cap_bytes` of them together (`engine.keep_context`; 0 keeps none).
    pub fn with_kept_context(mut self, cap_bytes: u64) -> Self {
        self.kept = KeptLedger::new(cap_bytes);
        self
    }

    /// Kept conversation caches now: how many and their bytes, and the cap.
    pub fn kept_usage(&mut self) -> (usize, u64, u64) {
        let (n, bytes) = self.kept.usage();
        (n, bytes, self.kept.cap())
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// Whether the warm-up may run decode steps as one captured graph
    /// (`engine.decode_graph`; on by default).
    pub fn with_decode_graph(mut self, allowed: bool) -> Self {
        self.graph_allowed = allowed;
        self
    }

    /// Lets up to `n` turns generate together (`engine.max_concurrent_generations`).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// Marks the model as running on `gpu`: a panic while generating is
    /// then a GPU failure of the turns it hit ([`EngineError::Gpu`]),
    /// counted in `health`, instead of unwinding into the engine thread.
    pub fn on_gpu(mut self, health: Arc<EngineHealth>, gpu: GpuStatus) -> Self {
        self.gpu = Some((health, gpu));
        self
    }

    /// Whether decode steps go through a captured graph (the warm-up
    /// turned it on).
    pub fn graph_on(&self) -> bool {
        self.graph.is_on()
    }

    /// Graph captures made so far, and whether the last replays were one
    /// hardware graph (see `generate::StepGraph::captures`).
    pub fn graph_captures(&self) -> (usize, bool) {
        self.graph.captures()
    }

    /// How the last warm-up routed each decode product, as it timed them.
    pub fn product_tuning(&self) -> &[medgemma_model::ProductTiming] {
        &self.products
    }

    /// How the last warm-up routed each prompt-chunk product, as it timed
    /// them.
    pub fn chunk_tuning(&self) -> &[medgemma_model::ChunkTiming] {
        &self.chunk_products
    }

    /// Captures the engine let go so far because their ghost rows (ended
    /// turns' caches) would have pushed the caches past the budget.
    pub fn graph_ghosts_let_go(&self) -> usize {
        self.graph.ghosts_let_go()
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// Replaces the GPU facts shown in the status (after the warm-up).
    pub fn set_gpu_status(&mut self, status: GpuStatus) {
        if let Some((_, g)) = &mut self.gpu {
            *g = status;
        }
    }

    /// Keeps the decode graph's ghost rows (caches of ended turns that only
    /// its capture still holds, until a joining turn takes one over) within
    /// the KV memory the budget reserved: `max_batch` caches at the
    /// context. Called before anything allocates a cache or grows one: a
    /// prefill chunk, a turn beginning (`joining`). Past the allowance the
    /// capture goes, and the ghosts' buffers with it: the next decode step
    /// captures anew.
    fn fit_ghosts(&mut self, joining: usize) {
        if !self.graph.is_on() {
            // No graph, no ghost: nothing to count on the CPU path.
            return;
        }
        let model = &self.loaded.model;
        let full = budget::kv_cache_bytes(model.config(), self.context_limit, 1, model.dtype());
        let turns = self.turns.iter().map(|t| {
            (
                t.seq.cache_bytes(model),
                t.seq.is_prefilled() || t.seq.is_finished(),
            )
        });
        let held = turns_may_hold(turns, joining, full);
        self.graph
            .keep_ghosts_within(held, full.saturating_mul(self.max_batch as u64));
    }

    /// The GPU's record, when on the GPU.
    fn gpu_health(&self) -> Option<&EngineHealth> {
        self.gpu.as_ref().map(|(h, _)| h.as_ref())
    }

    /// One short prefill and a few decode steps on a fixed, non-clinical
    /// prompt, so that kernel compilation and autotuning happen before the
    /// daemon reports ready rather than in the first clinician's request.
    /// The prompt runs past one prefill chunk (when the context allows), so
    /// the shapes of a full chunk and of a remainder are both compiled; with
    /// batching, two turns run together so the batched kernels warm too,
    /// and a third begins when the shorter of them ends.
    ///
    /// Before it, on a CubeCL device (CUDA), each decode product's routes
    /// (our skinny and tiled kernels, Burn's matmul) are timed on the card
    /// and the fastest taken (`Gemma3::tune_products`), and so are a full
    /// prompt chunk's matmul routines (`Gemma3::tune_chunk_products`).
    ///
    /// Then, where decode steps can run as one captured graph (a CubeCL
    /// device: CUDA), the same warm-up again through the graph: the graph
    /// stays on only if it streamed exactly what the launched steps did.
    pub fn warm_up(&mut self) -> Result<std::time::Duration, EngineError> {
        let t0 = std::time::Instant::now();
        self.graph = StepGraph::default();
        self.products = self.loaded.model.tune_products();
        if !self.products.is_empty() {
            log::info(format_args!(
                "decode products timed on the device in {:.2} s: {}",
                t0.elapsed().as_secs_f64(),
                medgemma_model::tuning_summary(&self.products)
            ));
        }
        let t_chunk = std::time::Instant::now();
        self.chunk_products = self.loaded.model.tune_chunk_products();
        if !self.chunk_products.is_empty() {
            log::info(format_args!(
                "prompt-chunk products timed on the device in {:.2} s: {}",
                t_chunk.elapsed().as_secs_f64(),
                medgemma_model::chunk_tuning_summary(&self.chunk_products)
            ));
        }
        let launched = self.warm_up_pass()?;
        let launched_s = t0.elapsed().as_secs_f64();
        let graph = StepGraph::on(&self.loaded.model, GRAPH_RESERVE);
        if graph.is_on() && !self.graph_allowed {
            log::info(format_args!(
                "decode graph off (engine.decode_graph = false): decoding launches its kernels one by one"
            ));
        } else if graph.is_on() {
            self.graph = graph;
            let t1 = std::time::Instant::now();
            let graphed = self.warm_up_pass();
            let (captures, hardware) = self.graph.captures();
            let graph_s = t1.elapsed().as_secs_f64();
            match graphed {
                Ok(events) if events == launched => log::info(format_args!(
                    "decode graph on ({}; {captures} captures): the warm-up took {graph_s:.2} s through it and {launched_s:.2} s launched",
                    match (hardware, self.graph.refused()) {
                        (true, _) => "one CUDA graph per step".to_owned(),
                        (false, None) => "replayed launch by launch".to_owned(),
                        (false, Some(why)) => format!(
                            "replayed launch by launch: the runtime refused the graph, {why}"
                        ),
                    },
                )),
                other => {
                    self.graph = StepGraph::default();
                    // A pass that failed part-way may leave its turns behind.
                    self.turns.clear();
                    let failed = other.is_err();
                    let why = match other {
                        Ok(_) => "its warm-up answer differed from the launched steps'".to_owned(),
                        Err(e) => format!("its warm-up failed ({e})"),
                    };
                    log::warn(format_args!(
                        "decode graph off: {why}; decoding launches its kernels one by one (slower, same answers)"
                    ));
                    if failed {
                        // The launched steps must still work after it, or
                        // the GPU is not fit to serve (the load fails, as
                        // any failed warm-up does).
                        self.warm_up_pass()?;
                    }
                }
            }
        }
        Ok(t0.elapsed())
    }

    /// One warm-up (see [`ModelEngine::warm_up`]): what it streamed, turn by turn.
    fn warm_up_pass(&mut self) -> Result<Vec<(usize, ChatEvent)>, EngineError> {
        // About 12 tokens per sentence; leave room for the template and 8 tokens.
        let sentences = (self.prefill_chunk + 100).min(self.context_limit.saturating_sub(48)) / 12;
        let req = ChatRequest {
            messages: vec![Message::user(
                "Warm-up: list three vital signs measured at triage. "
                    .repeat(sentences.max(1))
                    .trim_end(),
            )],
            max_new_tokens: 8,
            sampling: SamplingParams::default(),
            cancel: Arc::new(AtomicBool::new(false)),
            kept: None,
            images: Vec::new(),
        };
        let mut events = Vec::new();
        if self.max_batch > 1 {
            // Two turns of different lengths, and a third that begins when
            // the shorter ends: a captured decode graph then runs the ended
            // turn's row as a ghost and hands it to the third, so the
            // warm-up's comparison covers that too.
            let short = ChatRequest {
                max_new_tokens: 4,
                ..req.clone()
            };
            let mut ids = Vec::new();
            for (i, r) in [&short, &req].into_iter().enumerate() {
                ids.push(self.begin(r, &mut |ev| {
                    events.push((i, ev));
                    Flow::Continue
                })?);
            }
            let mut running = ids.clone();
            while !running.is_empty() {
                let ended = self.step(&mut |id, ev| {
                    if let Some(i) = ids.iter().position(|&t| t == id) {
                        events.push((i, ev));
                    }
                    Flow::Continue
                });
                for (id, result) in ended {
                    running.retain(|&t| t != id);
                    result?;
                }
                if ids.len() == 2 && running.len() == 1 {
                    let third = self.begin(&req, &mut |ev| {
                        events.push((2, ev));
                        Flow::Continue
                    })?;
                    ids.push(third);
                    running.push(third);
                }
            }
        } else {
            self.chat(&req, &mut |ev| {
                events.push((0, ev));
                Flow::Continue
            })?;
        }
        Ok(events)
    }

    fn tokenizer(&self) -> Result<&GemmaTokenizer, EngineError> {
        self.loaded
            .tokenizer
            .as_ref()
            .ok_or(EngineError::NoTokenizer)
    }

    /// Ends every unfinished turn with `error`.
    fn fail_unfinished(turns: &mut [Turn], error: &EngineError) {
        for t in turns.iter_mut().filter(|t| !t.seq.is_finished()) {
            t.seq.stop();
            t.failed = Some(match error {
                EngineError::Generate(e) => EngineError::Generate(e.clone()),
                _ => EngineError::Gpu,
            });
        }
    }

    /// Ends every finished turn of `turns` (taking it out): its outcome.
    fn end_finished(
        loaded: &LoadedModel,
        kept: &mut KeptLedger,
        context_limit: usize,
        turns: &mut Vec<Turn>,
        on_event: &mut dyn FnMut(TurnId, ChatEvent) -> Flow,
    ) -> Vec<TurnOutcome> {
        let (ended, running): (Vec<Turn>, Vec<Turn>) = std::mem::take(turns)
            .into_iter()
            .partition(|t| t.seq.is_finished());
        *turns = running;
        // The running turns' prompt caches keep their room in the ledger.
        let reserved = prompt_caches_bytes(&loaded.model, turns.iter());
        ended
            .into_iter()
            .map(|t| {
                let id = t.id;
                let result =
                    Self::finish_turn(loaded, kept, context_limit, reserved, t, &mut |ev| {
                        on_event(id, ev)
                    });
                (id, result)
            })
            .collect()
    }

    /// The summary of an ended turn; streams the text its decoder still
    /// held, and leaves the conversation's cache in its slot where it fits
    /// the kept caches' cap beside the `reserved` bytes of the running
    /// turns' prompt caches (a failed turn leaves nothing: the next one
    /// prefills in full).
    fn finish_turn(
        loaded: &LoadedModel,
        kept: &mut KeptLedger,
        context_limit: usize,
        reserved: u64,
        mut turn: Turn,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
        if let Some(e) = turn.failed.take() {
            return Err(e);
        }
        let tok = loaded.tokenizer.as_ref().ok_or(EngineError::NoTokenizer)?;
        let tail = turn.text.flush(tok);
        if !tail.is_empty() {
            let _ = emit(turn.parser.push_text(&tail), on_event);
        }
        let parsed = turn.parser.finish();
        let reused = turn.seq.reused_tokens();
        let (g, conversation) = turn.seq.into_conversation();
        if let Some(slot) = &turn.kept {
            let bytes = conversation.bytes(&loaded.model);
            kept.keep(slot, conversation, bytes, reserved);
        }
        let prompt_tokens = turn.before.0 + reused + g.prompt_tokens;
        Ok(ChatSummary {
            prompt_tokens,
            completion_tokens: g.tokens.len(),
            finish: g.finish,
            time_to_first_token: turn.before.1 + g.prefill,
            decode_tokens_per_s: g.decode_tokens_per_s(),
            context_used: prompt_tokens + g.tokens.len(),
            context_limit,
            reasoning: parsed.reasoning,
            answer: parsed.answer,
            thinking_unterminated: parsed.thinking_unterminated,
            reused_tokens: reused,
        })
    }
}

/// Bytes of the caches `turns` keep as they were after their prompts.
fn prompt_caches_bytes<'t>(model: &Gemma3, turns: impl Iterator<Item = &'t Turn>) -> u64 {
    turns.map(|t| t.seq.prompt_cache_bytes(model)).sum()
}

/// Keeps `seq`'s cache as it was after its prompt only where the kept
/// caches' cap has room for it beside the ledger's caches and `others`,
/// the bytes of the running turns' prompt caches (emptying the oldest
/// kept caches to make room): from the first decode step it is a second
/// copy of the cache, and it ends up in the ledger. Otherwise the turn
/// keeps the cache after its answer (the next turn prefills what does not
/// match). Called once the prompt is through, before any decode step.
fn fit_prompt_cache(model: &Gemma3, kept: &mut KeptLedger, seq: &mut Sequence, others: u64) {
    let mine = seq.prompt_cache_bytes(model);
    if mine > 0 && !kept.reserve(mine.saturating_add(others)) {
        seq.drop_prompt_cache();
    }
}

/// The KV bytes the batch's turns may hold before the next check, from
/// each turn's bytes now and whether its prompt is through, with `joining`
/// turns about to begin, where `full` is one cache at the whole context. A
/// turn still prefilling (or joining) may grow to `full` within a step; a
/// decoding turn counts as allocated, for its cache grows only when the
/// graph captures anew, and a new capture lets the ghosts go first.
fn turns_may_hold(turns: impl Iterator<Item = (u64, bool)>, joining: usize, full: u64) -> u64 {
    turns
        .map(|(now, through)| if through { now } else { now.max(full) })
        .fold(full.saturating_mul(joining as u64), u64::saturating_add)
}

/// Streams parsed pieces; `Stop` if the receiver asked to stop.
fn emit(pieces: Vec<(Channel, String)>, on_event: &mut dyn FnMut(ChatEvent) -> Flow) -> Flow {
    let mut flow = Flow::Continue;
    for (ch, text) in pieces {
        if text.is_empty() {
            continue;
        }
        let ev = match ch {
            Channel::Reasoning => ChatEvent::Reasoning(text),
            Channel::Answer => ChatEvent::Answer(text),
        };
        if on_event(ev) == Flow::Stop {
            flow = Flow::Stop;
        }
    }
    flow
}

/// Turns one generated id into reasoning/answer deltas. Stop ids print nothing.
fn stream_token(
    tok: &GemmaTokenizer,
    stop_ids: &[u32],
    text: &mut DecodeState,
    parser: &mut ThinkingParser,
    id: u32,
    on_event: &mut dyn FnMut(ChatEvent) -> Flow,
) -> Flow {
    if stop_ids.contains(&id) {
        return Flow::Continue;
    }
    let delta = text.push(tok, id).unwrap_or_default();
    emit(parser.push(id, &delta), on_event)
}

/// Runs `f`; on the GPU (`health` given), a panic (how Burn reports CUDA
/// errors: out of memory, launch failures) becomes [`EngineError::Gpu`] for
/// the turns it hit, and the engine thread goes on.
fn guarded<T>(health: Option<&EngineHealth>, f: impl FnOnce() -> T) -> Result<T, EngineError> {
    let Some(health) = health else {
        return Ok(f());
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => {
            health.record_success();
            Ok(v)
        }
        Err(payload) => {
            health.record_failure();
            log::error(format_args!(
                "GPU failure during a request ({} in a row): {}",
                health.failures_in_a_row(),
                panic_text(payload.as_ref())
            ));
            Err(EngineError::Gpu)
        }
    }
}

impl Engine for ModelEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model: self.loaded.description.clone(),
            context_limit: self.context_limit,
            backend: self.backend.clone(),
            backend_reason: self.backend_reason.clone(),
            gpu: self.gpu.as_ref().map(|(_, g)| g.clone()),
            weights: self.weights.clone(),
            image_size: self.vision.as_ref().map(|t| t.config().image_size),
        }
    }

    fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
        Ok(chat::encode_chat(self.tokenizer()?, messages, true)?.len())
    }

    fn usable(&self) -> bool {
        !self.gpu_health().is_some_and(EngineHealth::must_restart)
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn health(&self) -> Option<Arc<EngineHealth>> {
        self.gpu.as_ref().map(|(h, _)| Arc::clone(h))
    }

    fn set_weights(&mut self, check: super::verify::WeightsCheck) {
        self.weights = Some(check);
    }

    fn begin(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<TurnId, EngineError> {
        let started = std::time::Instant::now();
        self.fit_ghosts(1);
        // With images: their prompt runs here, all but its last token, and
        // the sequence continues from that token. Not kept between turns
        // (the ids of two different images are the same placeholders, so a
        // kept cache could not tell them apart).
        let image_prompt = if req.images.is_empty() {
            None
        } else {
            Some(self.prefill_images(req)?)
        };
        let tok = self.tokenizer()?;
        let prompt = match &image_prompt {
            Some((_, last, _)) => vec![*last],
            None => chat::encode_chat(tok, &req.messages, true)?,
        };
        if prompt.len() >= self.context_limit {
            return Err(EngineError::ContextFull {
                needed: prompt.len() + 1,
                limit: self.context_limit,
            });
        }
        let mut opts = self
            .loaded
            .default_options(req.max_new_tokens, req.sampling.clone());
        opts.context_limit = self.context_limit;
        let special = *tok.special();
        let stop_ids = opts.stop_ids.clone();
        let model = &self.loaded.model;
        // The conversation's kept cache, when this prompt extends it; the
        // turn keeps the cache as it stood after its prompt (the history
        // drops the reasoning, so the answer's tokens are not the next
        // prompt's), and the next turn prefills the answer and its question.
        let keep = req
            .kept
            .as_ref()
            .filter(|_| self.kept.cap() > 0 && image_prompt.is_none());
        let (mut seq, before) = match image_prompt {
            Some((cache, _, len)) => (
                Sequence::new(model, cache, &prompt, opts)?,
                (len - 1, started.elapsed()),
            ),
            None => {
                let mut seq =
                    Sequence::resume(model, keep.and_then(KeptContext::take), &prompt, opts)?;
                if keep.is_some() {
                    seq.keep_prompt_cache();
                }
                (seq, (0, std::time::Duration::ZERO))
            }
        };
        let mut text = DecodeState::default();
        let mut parser = ThinkingParser::new(special.think_start, special.think_end);
        if req.cancel.load(Ordering::Relaxed) {
            seq.stop();
        }
        // The first chunk now (a short prompt is then prefilled and has its
        // first token); the rest one chunk per step, between decode steps.
        guarded(self.gpu_health(), || {
            seq.prefill_chunk(model, self.prefill_chunk, &mut |id| {
                stream_token(tok, &stop_ids, &mut text, &mut parser, id, on_event)
            })
        })??;
        let others = prompt_caches_bytes(model, self.turns.iter());
        fit_prompt_cache(model, &mut self.kept, &mut seq, others);
        let id = TurnId(self.next_id);
        self.next_id += 1;
        self.turns.push(Turn {
            id,
            seq,
            text,
            parser,
            cancel: Arc::clone(&req.cancel),
            failed: None,
            kept: keep.cloned(),
            before,
        });
        Ok(id)
    }

    fn step(&mut self, on_event: &mut dyn FnMut(TurnId, ChatEvent) -> Flow) -> Vec<TurnOutcome> {
        self.fit_ghosts(0);
        let Self {
            loaded,
            turns,
            gpu,
            prefill_chunk,
            context_limit,
            kept,
            graph,
            ..
        } = self;
        let Some(tok) = loaded.tokenizer.as_ref() else {
            // `ModelEngine::new` refuses a model without one.
            return std::mem::take(turns)
                .into_iter()
                .map(|t| (t.id, Err(EngineError::NoTokenizer)))
                .collect();
        };
        let model = &loaded.model;
        let stop_ids = &model.config().eos_token_ids;
        for t in turns.iter_mut() {
            if t.cancel.load(Ordering::Relaxed) {
                t.seq.stop();
            }
        }
        // One prefill chunk of the longest-waiting turn whose prompt is not
        // yet through; a failure ends that turn only.
        if let Some(i) = turns
            .iter()
            .position(|t| !t.seq.is_finished() && !t.seq.is_prefilled())
        {
            // Before the chunk: this turn keeps no prompt cache until its
            // last chunk is through.
            let others = prompt_caches_bytes(model, turns.iter());
            let Turn {
                id,
                seq,
                text,
                parser,
                failed,
                ..
            } = &mut turns[i];
            let id = *id;
            let health = gpu.as_ref().map(|(h, _)| h.as_ref());
            let chunk = guarded(health, || {
                seq.prefill_chunk(model, *prefill_chunk, &mut |tid| {
                    stream_token(tok, stop_ids, text, parser, tid, &mut |ev| on_event(id, ev))
                })
            });
            let error = match chunk {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(EngineError::Generate(e)),
                Err(e) => Some(e),
            };
            if let Some(e) = error {
                seq.stop();
                *failed = Some(e);
            }
            fit_prompt_cache(model, kept, seq, others);
        }
        // Turns that ended before the decode step (a cancel, a failed
        // prefill chunk, a prompt that filled the context) end now, so
        // their caches go first: a captured decode graph hands their rows
        // to the turns that join.
        let mut outcomes = Self::end_finished(loaded, kept, *context_limit, turns, on_event);
        let stepped = {
            let mut seqs = Vec::with_capacity(turns.len());
            let mut streams = Vec::with_capacity(turns.len());
            for t in turns.iter_mut() {
                seqs.push(&mut t.seq);
                streams.push((t.id, &mut t.text, &mut t.parser));
            }
            guarded(gpu.as_ref().map(|(h, _)| h.as_ref()), || {
                generate::decode_step_with(model, graph, &mut seqs, |i, id| {
                    let (turn, text, parser) = &mut streams[i];
                    stream_token(tok, stop_ids, text, parser, id, &mut |ev| {
                        on_event(*turn, ev)
                    })
                })
            })
        };
        if !matches!(stepped, Ok(Ok(()))) {
            // Nothing of a failed step is replayed.
            graph.release();
        }
        match stepped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => Self::fail_unfinished(turns, &EngineError::Generate(e)),
            Err(e) => Self::fail_unfinished(turns, &e),
        }
        outcomes.extend(Self::end_finished(
            loaded,
            kept,
            *context_limit,
            turns,
            on_event,
        ));
        outcomes
    }

    fn cancel(&mut self, turn: TurnId) {
        if let Some(t) = self.turns.iter_mut().find(|t| t.id == turn) {
            t.seq.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use medgemma_model::backend::{cpu_device, cpu_dtype};
    use medgemma_model::load::load_model;

    use super::*;

    /// The real Gemma 3 270M GGUF and tokenizer (`scripts/fetch-assets.sh`);
    /// `None` (a skip) when absent and `MEDGEMMA_ASSETS` is not set.
    fn real_270m() -> Option<LoadedModel> {
        let (gguf, tok) = super::super::test_270m_files()?;
        Some(load_model(&gguf, Some(&tok), &cpu_device(), cpu_dtype()).expect("the 270M loads"))
    }

    fn request(text: &str, tokens: usize) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user(text)],
            max_new_tokens: tokens,
            sampling: SamplingParams::default(),
            cancel: Arc::new(AtomicBool::new(false)),
            kept: None,
            images: Vec::new(),
        }
    }

    /// What a turn said: every streamed delta, and its summary's counts.
    fn said(events: &[ChatEvent], s: &ChatSummary) -> (String, usize, usize) {
        let text = events
            .iter()
            .map(|e| match e {
                ChatEvent::Reasoning(t) | ChatEvent::Answer(t) => t.as_str(),
            })
            .collect();
        (text, s.prompt_tokens, s.completion_tokens)
    }

    /// The ghost check counts a turn still prefilling, and one joining, at
    /// the whole context (it may grow to it before the next check), a
    /// decoding one as allocated, and never less than a turn holds now.
    #[test]
    fn prefilling_and_joining_turns_count_at_the_whole_context() {
        let full = 1_000;
        let none = std::iter::empty();
        assert_eq!(turns_may_hold(none, 0, full), 0);
        let decoding = [(120, true), (300, true)];
        assert_eq!(turns_may_hold(decoding.into_iter(), 0, full), 420);
        assert_eq!(turns_may_hold(decoding.into_iter(), 1, full), 1_420);
        let mixed = [(120, true), (40, false)];
        assert_eq!(turns_may_hold(mixed.into_iter(), 0, full), 1_120);
        // A prefilling cache past `full` (rounded up to a growth step).
        let over = [(1_024, false)];
        assert_eq!(turns_may_hold(over.into_iter(), 0, full), 1_024);
        assert_eq!(
            turns_may_hold([(u64::MAX, true)].into_iter(), 1, full),
            u64::MAX
        );
    }

    /// A conversation's second turn on the real model continues the cache
    /// its first turn kept: only the answer and the new question are
    /// prefilled, and the tokens are those of an engine that prefills the
    /// whole conversation. A second conversation past the cap empties the
    /// first one's cache; a dropped conversation's cache is gone.
    #[test]
    fn a_follow_up_prefills_only_its_new_tokens_and_answers_as_a_full_prefill() {
        let Some(loaded) = real_270m() else {
            return;
        };
        let mut e = ModelEngine::new(loaded, 512, "cpu".into(), "test".into())
            .unwrap()
            .with_kept_context(u64::MAX);
        let first = "A 67-year-old has crushing chest pain for an hour. What first?";
        let slot = KeptContext::new();
        let turn = |e: &mut ModelEngine, messages: Vec<Message>, kept: Option<&KeptContext>| {
            let mut events = Vec::new();
            let req = ChatRequest {
                messages,
                kept: kept.cloned(),
                ..request("", 12)
            };
            let s = e
                .chat(&req, &mut |ev| {
                    events.push(ev);
                    Flow::Continue
                })
                .unwrap();
            (said(&events, &s), s.reused_tokens)
        };
        let ((answer1, p1, _), reused) = turn(&mut e, vec![Message::user(first)], Some(&slot));
        assert_eq!(reused, 0);
        assert!(slot.bytes() > 0, "the first turn kept nothing");
        let history = vec![
            Message::user(first),
            Message::assistant(answer1.trim()),
            Message::user("And if the ECG shows ST elevation?"),
        ];
        let (kept_turn, reused) = turn(&mut e, history.clone(), Some(&slot));
        assert_eq!(reused, p1, "the whole first prompt comes from the cache");
        assert!(kept_turn.1 > p1);
        let (full_turn, reused) = turn(&mut e, history, None);
        assert_eq!(reused, 0);
        assert_eq!(kept_turn, full_turn, "kept cache and full prefill differ");

        // The cap: room for one conversation's cache only.
        let one = slot.bytes();
        let mut e = e.with_kept_context(one + one / 2);
        let a = KeptContext::new();
        let b = KeptContext::new();
        turn(&mut e, vec![Message::user(first)], Some(&a));
        assert!(a.bytes() > 0);
        turn(&mut e, vec![Message::user(first)], Some(&b));
        assert!(b.bytes() > 0);
        assert_eq!(a.bytes(), 0, "the oldest kept cache was not emptied");
        assert_eq!(e.kept_usage().0, 1);
        drop(b);
        assert_eq!(e.kept_usage(), (0, 0, one + one / 2));
    }

    /// Running turns keep their caches as they were after their prompts
    /// only as far as the kept caches' cap has room: from the first decode
    /// step each is a second copy of a turn's cache. With room for one, the
    /// second turn to begin keeps none, and the ledger and the running
    /// turns' prompt caches stay within the cap at every step.
    #[test]
    fn prompt_caches_of_running_turns_stay_within_the_kept_cap() {
        let Some(loaded) = real_270m() else {
            return;
        };
        let mut e = ModelEngine::new(loaded, 512, "cpu".into(), "test".into())
            .unwrap()
            .with_max_batch(2)
            .with_kept_context(u64::MAX);
        let first = "A 67-year-old has crushing chest pain for an hour. What first?";
        let kept = |k: &KeptContext, tokens: usize| ChatRequest {
            kept: Some(k.clone()),
            ..request(first, tokens)
        };
        let slot = KeptContext::new();
        e.chat(&kept(&slot, 12), &mut |_| Flow::Continue).unwrap();
        let one = slot.bytes();
        assert!(one > 0, "a lone turn keeps its prompt cache");
        drop(slot);

        let mut e = e.with_kept_context(one + one / 2);
        // The second turn ends first: its cache after the answer may not
        // take the room the first one's prompt cache holds.
        let (a, b) = (KeptContext::new(), KeptContext::new());
        for (k, tokens) in [(&a, 24), (&b, 4)] {
            e.begin(&kept(k, tokens), &mut |_| Flow::Continue).unwrap();
        }
        let model = &e.loaded.model;
        let held: Vec<u64> = e
            .turns
            .iter()
            .map(|t| t.seq.prompt_cache_bytes(model))
            .collect();
        assert_eq!(held, vec![one, 0], "room for the first turn's only");
        let mut ended = 0;
        while !e.turns.is_empty() {
            for (_, r) in e.step(&mut |_, _| Flow::Continue) {
                r.unwrap();
                ended += 1;
            }
            let running = prompt_caches_bytes(&e.loaded.model, e.turns.iter());
            let (_, bytes, cap) = e.kept_usage();
            assert!(
                bytes + running <= cap,
                "kept {bytes} and running {running} bytes past the cap {cap}"
            );
        }
        assert_eq!(ended, 2);
        assert_eq!(b.bytes(), 0, "no room beside the first turn's prompt cache");
        assert_eq!(a.bytes(), one, "the first turn's prompt cache is kept");
    }

    /// The engine's own schedule on the real model: a turn is decoding when
    /// one with a long prompt joins; the long prompt is prefilled a chunk
    /// per step while the first keeps getting tokens, and both turns stream
    /// what they stream alone.
    #[test]
    fn a_long_prompt_joins_the_batch_in_chunks_and_both_answer_as_alone() {
        let Some(loaded) = real_270m() else {
            return;
        };
        let mut e = ModelEngine::new(loaded, 256, "cpu".into(), "test".into())
            .unwrap()
            .with_max_batch(2);
        e.prefill_chunk = 16;
        // The GPU loader's warm-up (two turns, a prompt past one chunk)
        // fits this context and leaves nothing behind.
        e.warm_up().unwrap();
        assert!(e.turns.is_empty());
        let short = request("What is a fever?", 12);
        let long = request(
            &"The patient reports chest pain on exertion that eases with rest. ".repeat(4),
            6,
        );
        let mut alone = Vec::new();
        for r in [&short, &long] {
            let mut events = Vec::new();
            let s = e
                .chat(r, &mut |ev| {
                    events.push(ev);
                    Flow::Continue
                })
                .unwrap();
            alone.push(said(&events, &s));
        }
        let long_prompt = alone[1].1;
        assert!(long_prompt > 48, "{long_prompt} tokens: several chunks");

        let mut events: [Vec<ChatEvent>; 2] = [Vec::new(), Vec::new()];
        let a = e
            .begin(&short, &mut |ev| {
                events[0].push(ev);
                Flow::Continue
            })
            .unwrap();
        let b = e
            .begin(&long, &mut |ev| {
                events[1].push(ev);
                Flow::Continue
            })
            .unwrap();
        let mut summaries: [Option<ChatSummary>; 2] = [None, None];
        let mut steps_before_b_spoke = 0;
        let mut a_tokens_meanwhile = 0;
        while summaries.iter().any(Option::is_none) {
            let mut spoke = [false, false];
            let ended = e.step(&mut |id, ev| {
                let i = usize::from(id == b);
                spoke[i] = true;
                events[i].push(ev);
                Flow::Continue
            });
            if summaries[1].is_none() && events[1].is_empty() {
                steps_before_b_spoke += 1;
                a_tokens_meanwhile += usize::from(spoke[0]);
            }
            for (id, result) in ended {
                summaries[usize::from(id == b)] = Some(result.unwrap());
            }
        }
        assert_ne!(a, b);
        // One chunk in `begin`, one per step after it.
        assert!(
            steps_before_b_spoke >= long_prompt.div_ceil(16) - 2,
            "{steps_before_b_spoke} steps for {long_prompt} prompt tokens in chunks of 16"
        );
        assert!(a_tokens_meanwhile > 0, "the running turn stalled");
        for (i, want) in alone.iter().enumerate() {
            let got = said(&events[i], summaries[i].as_ref().unwrap());
            assert_eq!(&got, want, "turn {i}");
        }
        assert!(e.turns.is_empty());
    }
}
