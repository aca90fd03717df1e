//! Prefill and decode with a KV cache, stopping, cancellation, streaming.
//!
//! Owns: the token loop. Must never: see text (callers detokenize), log, or
//! hold tokens after it returns them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::gemma3::{Gemma3, Logits};
use crate::kv_cache::KvCache;
use crate::sampling::{Sampler, SamplingParams};

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt does not leave room for one generated token.
    #[error(
        "the prompt has {prompt_tokens} tokens but the context holds {context} (with {cached} already used); shorten it or start a new conversation"
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens already in the cache.
        cached: usize,
        /// Context limit.
        context: usize,
    },
    /// The prompt is empty.
    #[error("the prompt is empty; a Gemma prompt starts with at least <bos>")]
    EmptyPrompt,
    /// The backend returned logits in a form we cannot read.
    #[error(
        "the compute backend returned unreadable logits ({why}); this is a bug, please report it"
    )]
    Readback {
        /// What failed.
        why: String,
    },
    /// A token id outside the embedding.
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Embedding rows.
        vocab: usize,
    },
}

/// What a generation run should do.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Ids that end generation (returned in `tokens` but not counted as text).
    pub stop_ids: Vec<u32>,
    /// Keep generating through stop ids.
    pub ignore_eos: bool,
    /// Context limit (≤ the model's maximum).
    pub context_limit: usize,
    /// Ids the model may emit (the tokenizer's size; embedding padding rows excluded).
    pub valid_vocab: usize,
    /// Ids never produced (image tokens).
    pub suppressed: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller cancelled.
    Cancelled,
}

/// What the callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Stop now (counts as cancelled).
    Stop,
}

/// Result of one run.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New ids, including a final stop id if one ended the run.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Time spent in prefill (until the first new token is chosen).
    pub prefill: Duration,
    /// Time spent producing the remaining tokens.
    pub decode: Duration,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill)
    }

    /// Decoded tokens per second (tokens after the first).
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.decode)
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

/// Runs `prompt` (continuing `cache`) and generates; `on_token` sees every new id.
pub fn generate(
    model: &Gemma3,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<Generation, GenerateError> {
    let vocab = model.config().vocab_size;
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(GenerateError::BadToken { id, vocab });
    }
    let context = opts
        .context_limit
        .min(model.config().max_position_embeddings);
    if cache.len() + prompt.len() >= context {
        return Err(GenerateError::PromptTooLong {
            prompt_tokens: prompt.len(),
            cached: cache.len(),
            context,
        });
    }
    let mut sampler = Sampler::new(
        opts.sampling.clone(),
        opts.valid_vocab.min(vocab),
        opts.suppressed.clone(),
    );
    let t0 = Instant::now();
    let mut tokens = Vec::new();
    let mut prefill = Duration::ZERO;
    let mut input: Vec<u32> = prompt.to_vec();
    let finish = loop {
        if cancel.load(Ordering::Relaxed) {
            break FinishReason::Cancelled;
        }
        if tokens.len() >= opts.max_new_tokens {
            break FinishReason::Length;
        }
        if cache.len() + input.len() > context {
            break FinishReason::ContextFull;
        }
        let logits = model.forward(&input, cache, Logits::Last);
        let mut row =
            logits
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| GenerateError::Readback {
                    why: format!("{e:?}"),
                })?;
        let next = sampler.sample(&mut row);
        if tokens.is_empty() {
            prefill = t0.elapsed();
        }
        tokens.push(next);
        if on_token(next) == Flow::Stop {
            break FinishReason::Cancelled;
        }
        if !opts.ignore_eos && opts.stop_ids.contains(&next) {
            break FinishReason::Stop;
        }
        input.clear();
        input.push(next);
    };
    let decode = t0.elapsed().saturating_sub(prefill);
    Ok(Generation {
        tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill,
        decode,
    })
}
