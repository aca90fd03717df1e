//! The chat engine the server talks to: messages in, reasoning and answer
//! deltas out.
//!
//! Owns: the loaded model and tokenizer, the chat template, thinking-trace
//! parsing and the token loop for one request at a time. Must never: log or
//! put message text into an error; keep anything of a request after it ends.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use medgemma_model::chat::{self, ChatError, Message};
use medgemma_model::generate::{self, FinishReason, Flow, GenerateError};
use medgemma_model::load::{LoadedModel, ModelDescription};
use medgemma_model::sampling::SamplingParams;
use medgemma_model::thinking::{Channel, ThinkingParser};
use medgemma_model::tokenizer::TokenizerError;

/// One chat turn to answer.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The whole conversation so far, ending with the user's turn (reasoning already removed from model turns).
    pub messages: Vec<Message>,
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Set to stop generation early.
    pub cancel: Arc<AtomicBool>,
}

/// A piece of the streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// Text of the model's thinking trace.
    Reasoning(String),
    /// Text of the answer.
    Answer(String),
}

/// What a finished turn produced (counts and the full texts for the caller's history).
#[derive(Debug, Clone)]
pub struct ChatSummary {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including the end token).
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Time to the first token.
    pub time_to_first_token: Duration,
    /// Decode speed.
    pub decode_tokens_per_s: f64,
    /// Context used after this turn (prompt + completion).
    pub context_used: usize,
    /// Context limit.
    pub context_limit: usize,
    /// The thinking trace, if any.
    pub reasoning: Option<String>,
    /// The answer.
    pub answer: String,
    /// The trace was still open when generation ended.
    pub thinking_unterminated: bool,
}

/// Static facts about the engine for status displays.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineInfo {
    /// What was loaded.
    pub model: ModelDescription,
    /// Context limit in tokens.
    pub context_limit: usize,
    /// "cpu" or a CUDA device description.
    pub backend: String,
    /// Why this backend was chosen.
    pub backend_reason: String,
}

/// Why a turn failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The conversation is malformed.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The conversation would not fit.
    #[error(
        "this conversation needs {needed} tokens but the context holds {limit}; start a new conversation"
    )]
    ContextFull {
        /// Prompt tokens plus at least one answer token.
        needed: usize,
        /// The limit.
        limit: usize,
    },
    /// The model failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The model has no tokenizer.
    #[error("the model was loaded without a tokenizer; configure tokenizer_path")]
    NoTokenizer,
    /// The GPU failed during this request (a CUDA error surfaces as a panic
    /// in Burn); the request stops, the daemon keeps serving.
    #[error(
        "the GPU failed while answering; this request was stopped and the service continues. Try again; if it repeats, an administrator should run `medgemmactl gpu` and check the kernel log for NVIDIA Xid errors"
    )]
    Gpu,
}

/// Anything that answers chat turns (the real engine; test doubles in tests only).
pub trait Engine: Send {
    /// Static facts.
    fn info(&self) -> EngineInfo;
    /// Prompt tokens the conversation would take (for context meters).
    fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError>;
    /// Answers one turn, streaming events through `on_event`.
    fn chat(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError>;
    /// Whether the engine can still answer. `false` ends the engine thread;
    /// the daemon then exits (code 8) so that systemd restarts it.
    fn usable(&self) -> bool {
        true
    }
}

/// The real engine over a loaded Gemma 3 model.
#[derive(Debug)]
pub struct ModelEngine {
    loaded: LoadedModel,
    context_limit: usize,
    backend: String,
    backend_reason: String,
    on_gpu: bool,
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
            on_gpu: false,
        })
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// Marks the model as running on the GPU: a panic while generating is
    /// then a GPU failure of that request ([`EngineError::Gpu`]), counted
    /// for the status page, instead of unwinding into the engine thread.
    pub fn on_gpu(mut self) -> Self {
        self.on_gpu = true;
        self
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
    /// One short prefill and a few decode steps on a fixed, non-clinical
    /// prompt, so that kernel compilation and autotuning happen before the
    /// daemon reports ready rather than in the first clinician's request.
    pub fn warm_up(&mut self) -> Result<std::time::Duration, EngineError> {
        let t0 = std::time::Instant::now();
        let req = ChatRequest {
            messages: vec![Message::user(
                "Warm-up: list three vital signs measured at triage.",
            )],
            max_new_tokens: 8,
            sampling: SamplingParams::default(),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        self.chat(&req, &mut |_| Flow::Continue)?;
        Ok(t0.elapsed())
    }
}

impl Engine for ModelEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model: self.loaded.description.clone(),
            context_limit: self.context_limit,
            backend: self.backend.clone(),
            backend_reason: self.backend_reason.clone(),
        }
    }

    fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
        let tok = self
            .loaded
            .tokenizer
            .as_ref()
            .ok_or(EngineError::NoTokenizer)?;
        Ok(chat::encode_chat(tok, messages, true)?.len())
    }

    fn usable(&self) -> bool {
        !(self.on_gpu && crate::gpu::consecutive_failures() >= crate::gpu::FAILURES_RESTART)
    }

    fn chat(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
        let tok = self
            .loaded
            .tokenizer
            .as_ref()
            .ok_or(EngineError::NoTokenizer)?;
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
        let mut parser = ThinkingParser::new(special.think_start, special.think_end);
        let mut decoder = tok.stream_decoder();
        let stop_ids = opts.stop_ids.clone();
        let mut cache = self.loaded.model.new_cache();
        let emit = |pieces: Vec<(Channel, String)>, on_event: &mut dyn FnMut(ChatEvent) -> Flow| {
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
        };
        let mut run = || {
            generate::generate(
                &self.loaded.model,
                &mut cache,
                &prompt,
                &opts,
                &req.cancel,
                |id| {
                    if stop_ids.contains(&id) {
                        return Flow::Continue;
                    }
                    let delta = decoder.push(id).unwrap_or_default();
                    emit(parser.push(id, &delta), on_event)
                },
            )
        };
        let g = if self.on_gpu {
            // Burn reports CUDA errors (out of memory, launch failures) as
            // panics: this request fails, the engine thread goes on.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                Ok(result) => {
                    crate::gpu::record_success();
                    result?
                }
                Err(payload) => {
                    crate::gpu::record_failure();
                    eprintln!(
                        "medgemmad: GPU failure during a request ({} in a row): {}",
                        crate::gpu::consecutive_failures(),
                        crate::gpu::panic_text(payload.as_ref())
                    );
                    return Err(EngineError::Gpu);
                }
            }
        } else {
            run()?
        };
        let tail = decoder.flush();
        if !tail.is_empty() {
            let _ = emit(parser.push_text(&tail), on_event);
        }
        let parsed = parser.finish();
        Ok(ChatSummary {
            prompt_tokens: prompt.len(),
            completion_tokens: g.tokens.len(),
            finish: g.finish,
            time_to_first_token: g.prefill,
            decode_tokens_per_s: g.decode_tokens_per_s(),
            context_used: prompt.len() + g.tokens.len(),
            context_limit: self.context_limit,
            reasoning: parsed.reasoning,
            answer: parsed.answer,
            thinking_unterminated: parsed.thinking_unterminated,
        })
    }
}
