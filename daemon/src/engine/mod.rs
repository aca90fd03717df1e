//! The engine room: everything between the HTTP server and the model.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Engine`] trait and the types a turn is made of |
//! | [`model`] | [`ModelEngine`]: the loaded Gemma 3 model, chat template, thinking parser, the batch of turns |
//! | [`health`] | [`EngineHealth`]: GPU failures in a row and the GPU in use, shared with the status |
//! | [`gpu`] | whether a GPU can run the model: driver, NVML, the memory budget, caches |
//! | [`load`] | building the engine on the engine thread: CPU, or GPU with the CPU as fallback |
//! | [`verify`] | the model's files hashed while loading, against their pins; the weights' fingerprint |
//! | [`worker`] | the engine thread, its bounded queue and continuous batching; [`EngineHandle`] and its [`EngineSnapshot`] |
//! | `scripted` | a test double (debug builds with `test-engine` only) |
//!
//! The server sees only [`EngineHandle`]: it submits turns and reads one
//! typed [`EngineSnapshot`] for the status pages. Arrows point one way:
//! `worker` → `mod.rs` ← `model` ← `load` → `gpu`, `health`.
//!
//! Owns: the turns while they generate. Must never: log or put message text
//! into an error; keep anything of a request after it ends.

pub mod gpu;
pub mod health;
pub mod kept;
pub mod load;
pub mod model;
#[cfg(feature = "test-engine")]
pub mod scripted;
pub mod verify;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use medgemma_model::chat::{ChatError, Message};
use medgemma_model::generate::{FinishReason, Flow, GenerateError};
use medgemma_model::image::RgbImage;
use medgemma_model::load::ModelDescription;
use medgemma_model::sampling::SamplingParams;
use medgemma_model::tokenizer::TokenizerError;
use medgemma_model::vision::VisionError;
use medgemma_protocol::status::GpuStatus;

pub use health::EngineHealth;
pub use kept::KeptContext;
pub use model::ModelEngine;
pub use worker::{EngineHandle, EngineSnapshot};

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
    /// The conversation's kept KV cache (`engine.keep_context`): the turn
    /// continues it when the prompt extends it and leaves its own there.
    /// `None` for a request without a conversation (the OpenAI API).
    pub kept: Option<KeptContext>,
    /// Images, each in a message of `messages` (before its text), in the
    /// order they appear; held in memory for the turn only.
    pub images: Vec<TurnImage>,
}

/// An image of a request, decoded and checked (`medgemma_model::image`).
#[derive(Debug, Clone)]
pub struct TurnImage {
    /// The index in [`ChatRequest::messages`] of the message it belongs to.
    pub message: usize,
    /// The pixels at their own size (the engine resizes for its tower).
    pub image: Arc<RgbImage>,
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
    /// Prompt tokens taken from the conversation's kept cache instead of
    /// being prefilled (0 when nothing was kept or it did not match).
    pub reused_tokens: usize,
}

impl ChatSummary {
    /// The numbers of this turn that may be logged (no text).
    pub fn counts(&self) -> crate::log::TurnCounts {
        crate::log::TurnCounts {
            prompt_tokens: self.prompt_tokens,
            reused_tokens: self.reused_tokens,
            completion_tokens: self.completion_tokens,
            finish: self.finish,
            time_to_first_token: self.time_to_first_token,
            tokens_per_s: self.decode_tokens_per_s,
        }
    }
}

/// Static facts about the engine for status displays.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// What was loaded.
    pub model: ModelDescription,
    /// Context limit in tokens.
    pub context_limit: usize,
    /// "cpu" or "cuda" (the scripted double: "test").
    pub backend: String,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// On CUDA: the GPU, its memory, the budget and the warm-up.
    pub gpu: Option<GpuStatus>,
    /// The model's files checked against their pins while loading (none for
    /// the scripted double).
    pub weights: Option<verify::WeightsCheck>,
    /// The vision tower's input side in pixels, when the model reads
    /// images (`None`: text only).
    pub image_size: Option<usize>,
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
    /// The engine answers one turn at a time ([`Engine::max_batch`] is 1);
    /// the engine thread never asks it to batch.
    #[error("this engine answers one turn at a time; this is a bug, please report it")]
    NotBatched,
    /// Images were sent to a model without a vision tower.
    #[error(
        "this model reads text only: send the question without images, or configure a model directory whose config.json has a vision_config (MedGemma 1.5 4B IT)"
    )]
    NoVision,
    /// An image names a message the request does not have (a caller's bug).
    #[error(
        "an image belongs to a message the request does not have; this is a bug, please report it"
    )]
    ImageOutsideMessages,
    /// The vision tower failed on the request's images.
    #[error(transparent)]
    Vision(#[from] VisionError),
}

/// A turn the engine is generating in its batch ([`Engine::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TurnId(pub u64);

/// How a turn that left the batch ended.
pub type TurnOutcome = (TurnId, Result<ChatSummary, EngineError>);

/// Anything that answers chat turns (the real engine; test doubles in tests only).
pub trait Engine: Send {
    /// Static facts.
    fn info(&self) -> EngineInfo;
    /// Prompt tokens the conversation would take (for context meters).
    fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError>;
    /// Answers one turn, streaming events through `on_event` (only while no
    /// turn is running in the batch). By default the same path as a batch
    /// of one: [`Engine::begin`], then [`Engine::step`] until the turn ends;
    /// engines that answer one turn at a time implement it instead.
    fn chat(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
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
    /// Turns that may generate at once through [`Engine::begin`] and
    /// [`Engine::step`]; 1 (the default) means [`Engine::chat`] only.
    fn max_batch(&self) -> usize {
        1
    }
    /// Adds a turn to the running batch: runs its prompt and streams its
    /// first token. Never called when [`Engine::max_batch`] is 1.
    fn begin(
        &mut self,
        _req: &ChatRequest,
        _on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<TurnId, EngineError> {
        Err(EngineError::NotBatched)
    }
    /// One decode step for every running turn (sharing each weight read),
    /// streaming through `on_event`; then removes and returns every turn that
    /// has ended (stop token, length, context, cancel or failure), including
    /// turns that ended in [`Engine::begin`].
    fn step(&mut self, _on_event: &mut dyn FnMut(TurnId, ChatEvent) -> Flow) -> Vec<TurnOutcome> {
        Vec::new()
    }
    /// Ends a running turn before its next token (its client went away).
    fn cancel(&mut self, _turn: TurnId) {}
    /// Whether the engine can still answer. `false` ends the engine thread;
    /// the daemon then exits (code 8) so that systemd restarts it.
    fn usable(&self) -> bool {
        true
    }
    /// The GPU's record, shared with the status pages (none off the GPU).
    fn health(&self) -> Option<Arc<EngineHealth>> {
        None
    }
    /// Records what the check of the model's files found (shown in
    /// [`Engine::info`]).
    fn set_weights(&mut self, _check: verify::WeightsCheck) {}
}

/// The real Gemma 3 270M GGUF and tokenizer (`scripts/fetch-assets.sh`) for
/// the engine's tests; `None` (a skip, said on stderr) when they are absent
/// and `MEDGEMMA_ASSETS` is not set, a failure when it is.
#[cfg(test)]
pub(crate) fn test_270m_files() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    use std::path::PathBuf;
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
    Some((gguf, tok))
}
