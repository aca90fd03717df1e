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

use medgemma_model::chat::{self, Message};
use medgemma_model::generate::{self, Flow, PREFILL_CHUNK, Sequence};
use medgemma_model::load::LoadedModel;
use medgemma_model::sampling::SamplingParams;
use medgemma_model::thinking::{Channel, ThinkingParser};
use medgemma_model::tokenizer::{DecodeState, GemmaTokenizer};

use medgemma_protocol::status::GpuStatus;

use super::health::{EngineHealth, panic_text};
use super::{
    ChatEvent, ChatRequest, ChatSummary, Engine, EngineError, EngineInfo, TurnId, TurnOutcome,
};
use crate::log;

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
        })
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

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// Replaces the GPU facts shown in the status (after the warm-up).
    pub fn set_gpu_status(&mut self, status: GpuStatus) {
        if let Some((_, g)) = &mut self.gpu {
            *g = status;
        }
    }

    /// The GPU's record, when on the GPU.
    fn gpu_health(&self) -> Option<&EngineHealth> {
        self.gpu.as_ref().map(|(h, _)| h.as_ref())
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// One short prefill and a few decode steps on a fixed, non-clinical
    /// prompt, so that kernel compilation and autotuning happen before the
    /// daemon reports ready rather than in the first clinician's request.
    /// The prompt runs past one prefill chunk (when the context allows), so
    /// the shapes of a full chunk and of a remainder are both compiled; with
    /// batching, a second turn joins so the batched kernels warm too.
    pub fn warm_up(&mut self) -> Result<std::time::Duration, EngineError> {
        let t0 = std::time::Instant::now();
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
        };
        if self.max_batch > 1 {
            let mut ids = Vec::new();
            for _ in 0..2 {
                ids.push(self.begin(&req, &mut |_| Flow::Continue)?);
            }
            while !ids.is_empty() {
                for (id, result) in self.step(&mut |_, _| Flow::Continue) {
                    ids.retain(|&t| t != id);
                    result?;
                }
            }
        } else {
            self.chat(&req, &mut |_| Flow::Continue)?;
        }
        Ok(t0.elapsed())
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

    /// The summary of an ended turn; streams the text its decoder still held.
    fn finish_turn(
        tok: &GemmaTokenizer,
        context_limit: usize,
        mut turn: Turn,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
        if let Some(e) = turn.failed.take() {
            return Err(e);
        }
        let tail = turn.text.flush(tok);
        if !tail.is_empty() {
            let _ = emit(turn.parser.push_text(&tail), on_event);
        }
        let parsed = turn.parser.finish();
        let (g, _cache) = turn.seq.into_parts();
        Ok(ChatSummary {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.tokens.len(),
            finish: g.finish,
            time_to_first_token: g.prefill,
            decode_tokens_per_s: g.decode_tokens_per_s(),
            context_used: g.prompt_tokens + g.tokens.len(),
            context_limit,
            reasoning: parsed.reasoning,
            answer: parsed.answer,
            thinking_unterminated: parsed.thinking_unterminated,
        })
    }
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

    /// The same path as a batch of one: [`Engine::begin`], then
    /// [`Engine::step`] until the turn ends.
    fn chat(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
        debug_assert!(self.turns.is_empty(), "chat while a batch runs");
        let id = self.begin(req, on_event)?;
        loop {
            if let Some((_, result)) = self
                .step(&mut |_, ev| on_event(ev))
                .into_iter()
                .find(|(t, _)| *t == id)
            {
                return result;
            }
        }
    }

    fn begin(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<TurnId, EngineError> {
        let tok = self.tokenizer()?;
        let prompt = chat::encode_chat(tok, &req.messages, true)?;
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
        let mut seq = Sequence::new(model, model.new_cache(), &prompt, opts)?;
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
        let id = TurnId(self.next_id);
        self.next_id += 1;
        self.turns.push(Turn {
            id,
            seq,
            text,
            parser,
            cancel: Arc::clone(&req.cancel),
            failed: None,
        });
        Ok(id)
    }

    fn step(&mut self, on_event: &mut dyn FnMut(TurnId, ChatEvent) -> Flow) -> Vec<TurnOutcome> {
        let Self {
            loaded,
            turns,
            gpu,
            prefill_chunk,
            context_limit,
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
        if let Some(t) = turns
            .iter_mut()
            .find(|t| !t.seq.is_finished() && !t.seq.is_prefilled())
        {
            let Turn {
                id,
                seq,
                text,
                parser,
                failed,
                ..
            } = t;
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
        }
        let stepped = {
            let mut seqs = Vec::with_capacity(turns.len());
            let mut streams = Vec::with_capacity(turns.len());
            for t in turns.iter_mut() {
                seqs.push(&mut t.seq);
                streams.push((t.id, &mut t.text, &mut t.parser));
            }
            guarded(gpu.as_ref().map(|(h, _)| h.as_ref()), || {
                generate::decode_step(model, &mut seqs, |i, id| {
                    let (turn, text, parser) = &mut streams[i];
                    stream_token(tok, stop_ids, text, parser, id, &mut |ev| {
                        on_event(*turn, ev)
                    })
                })
            })
        };
        match stepped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => Self::fail_unfinished(turns, &EngineError::Generate(e)),
            Err(e) => Self::fail_unfinished(turns, &e),
        }
        let (ended, running): (Vec<Turn>, Vec<Turn>) = std::mem::take(turns)
            .into_iter()
            .partition(|t| t.seq.is_finished());
        *turns = running;
        ended
            .into_iter()
            .map(|t| {
                let id = t.id;
                let result = Self::finish_turn(tok, *context_limit, t, &mut |ev| on_event(id, ev));
                (id, result)
            })
            .collect()
    }

    fn cancel(&mut self, turn: TurnId) {
        if let Some(t) = self.turns.iter_mut().find(|t| t.id == turn) {
            t.seq.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use medgemma_model::backend::{cpu_device, cpu_dtype};
    use medgemma_model::load::load_model;

    use super::*;

    /// The real Gemma 3 270M GGUF and tokenizer (`scripts/fetch-assets.sh`);
    /// `None` (a skip) when absent and `MEDGEMMA_ASSETS` is not set.
    fn real_270m() -> Option<LoadedModel> {
        let explicit = std::env::var_os("MEDGEMMA_ASSETS").map(PathBuf::from);
        let dir = explicit.clone().or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medgemma-assets"))
        })?;
        let gguf = dir.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
        let tok = dir.join("tokenizer/tokenizer.json");
        if !gguf.is_file() || !tok.is_file() {
            assert!(explicit.is_none(), "MEDGEMMA_ASSETS lacks the 270M GGUF");
            eprintln!("SKIP: real test assets not found; run scripts/fetch-assets.sh");
            return None;
        }
        Some(load_model(&gguf, Some(&tok), &cpu_device(), cpu_dtype()).expect("the 270M loads"))
    }

    fn request(text: &str, tokens: usize) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user(text)],
            max_new_tokens: tokens,
            sampling: SamplingParams::default(),
            cancel: Arc::new(AtomicBool::new(false)),
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
