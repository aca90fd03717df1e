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
    let context = check_prompt(model, cache, prompt, opts)?;
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

/// Checks `prompt` against the vocabulary and the context; returns the context limit.
fn check_prompt(
    model: &Gemma3,
    cache: &KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<usize, GenerateError> {
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
    Ok(context)
}

fn logits_rows(logits: burn::tensor::Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    logits
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| GenerateError::Readback {
            why: format!("{e:?}"),
        })
}

/// Generates for several conversations at once: each prompt is prefilled on
/// its own (continuing its cache), then every decode step runs the
/// still-active sequences through one [`Gemma3::forward_batch`], so they share
/// each weight read. Every sequence stops on its own (stop id, length,
/// context, or `on_token(i, id)` returning [`Flow::Stop`]); `cancel` stops
/// them all. With the same options, each result equals what [`generate`]
/// returns for that prompt alone (`tests/batched_decode.rs`).
///
/// Timing: `prefill` is measured from the start of the call (a sequence's
/// first token waits for the prefills before it), `decode` from its first
/// token to its last.
pub fn generate_batch(
    model: &Gemma3,
    caches: &mut [&mut KvCache],
    prompts: &[&[u32]],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<Vec<Generation>, GenerateError> {
    assert_eq!(caches.len(), prompts.len(), "one cache per prompt");
    let vocab = model.config().vocab_size;
    let mut contexts = Vec::with_capacity(prompts.len());
    for (cache, prompt) in caches.iter().zip(prompts) {
        contexts.push(check_prompt(model, cache, prompt, opts)?);
    }
    let t0 = Instant::now();
    struct Seq {
        sampler: Sampler,
        tokens: Vec<u32>,
        finish: Option<FinishReason>,
        prefill: Duration,
        end: Duration,
    }
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|_| Seq {
            sampler: Sampler::new(
                opts.sampling.clone(),
                opts.valid_vocab.min(vocab),
                opts.suppressed.clone(),
            ),
            tokens: Vec::new(),
            finish: None,
            prefill: Duration::ZERO,
            end: Duration::ZERO,
        })
        .collect();
    // What ends sequence `i` before its next step, if anything.
    let pre_step = |s: &Seq, cache_len: usize, context: usize, input: usize| {
        if cancel.load(Ordering::Relaxed) {
            Some(FinishReason::Cancelled)
        } else if s.tokens.len() >= opts.max_new_tokens {
            Some(FinishReason::Length)
        } else if cache_len + input > context {
            Some(FinishReason::ContextFull)
        } else {
            None
        }
    };
    // After choosing `next` for sequence `i`.
    let mut post_token = |i: usize, s: &mut Seq, next: u32| {
        s.tokens.push(next);
        if on_token(i, next) == Flow::Stop {
            s.finish = Some(FinishReason::Cancelled);
        } else if !opts.ignore_eos && opts.stop_ids.contains(&next) {
            s.finish = Some(FinishReason::Stop);
        }
    };

    for i in 0..seqs.len() {
        let s = &mut seqs[i];
        if let Some(f) = pre_step(s, caches[i].len(), contexts[i], prompts[i].len()) {
            s.finish = Some(f);
            s.end = t0.elapsed();
            s.prefill = s.end;
            continue;
        }
        let logits = model.forward(prompts[i], caches[i], Logits::Last);
        let mut row = logits_rows(logits)?;
        let next = s.sampler.sample(&mut row);
        s.prefill = t0.elapsed();
        post_token(i, s, next);
        if s.finish.is_some() {
            s.end = t0.elapsed();
        }
    }

    loop {
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.finish.is_none()
                && let Some(f) = pre_step(s, caches[i].len(), contexts[i], 1)
            {
                s.finish = Some(f);
                s.end = t0.elapsed();
            }
        }
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finish.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let tokens: Vec<u32> = active
            .iter()
            .map(|&i| {
                *seqs[i]
                    .tokens
                    .last()
                    .expect("an active sequence has a token")
            })
            .collect();
        let mut batch: Vec<&mut KvCache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| seqs[*i].finish.is_none())
            .map(|(_, c)| &mut **c)
            .collect();
        let rows = logits_rows(model.forward_batch(&tokens, &mut batch))?;
        let width = rows.len() / active.len();
        for (r, &i) in active.iter().enumerate() {
            let s = &mut seqs[i];
            let mut row = rows[r * width..(r + 1) * width].to_vec();
            let next = s.sampler.sample(&mut row);
            post_token(i, s, next);
            if s.finish.is_some() {
                s.end = t0.elapsed();
            }
        }
    }
    Ok(seqs
        .into_iter()
        .zip(prompts)
        .map(|(s, p)| Generation {
            tokens: s.tokens,
            finish: s.finish.unwrap_or(FinishReason::Length),
            prompt_tokens: p.len(),
            prefill: s.prefill,
            decode: s.end.saturating_sub(s.prefill),
        })
        .collect())
}
