//! Prefill and decode with a KV cache, stopping, cancellation, streaming,
//! and a conversation's cache kept from one turn to the next
//! ([`ConversationCache`], [`Sequence::resume`]).
//!
//! Owns: the token loop. Must never: see text (callers detokenize), log, or
//! hold tokens after it returns them (a [`ConversationCache`] holds a
//! conversation's ids and cache for its owner, who drops it with the
//! conversation).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

#[cfg(feature = "kernels")]
use crate::decode_graph::DecodeGraph as Graph;
use crate::gemma3::{Gemma3, Logits};
use crate::kv_cache::KvCache;
use crate::sampling::{Sampler, SamplingParams};

/// Why generation could not run.
#[derive(Debug, Clone, thiserror::Error)]
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

/// Prompt tokens per forward pass when a server prefills in chunks
/// ([`Sequence::prefill_chunk`]). A chunk attends over the whole cache, so
/// its attention scores are `heads × chunk × context` rather than
/// `heads × prompt × context`: for the 4B at 8192 tokens, 0.27 GB instead of
/// 4.3 GB of f32 scores (`budget.rs` sizes GPU memory with it). Between two
/// chunks the other conversations of a batch take a decode step, so a long
/// prompt does not stall their answers.
pub const PREFILL_CHUNK: usize = 512;

/// Runs `prompt` (continuing `cache`) and generates; `on_token` sees every new id.
pub fn generate(
    model: &Gemma3,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<Generation, GenerateError> {
    let taken = std::mem::replace(cache, KvCache::new(model.config()));
    let mut seq = Sequence::new(model, taken, prompt, opts.clone())?;
    let result = (|| {
        while !seq.is_finished() {
            if cancel.load(Ordering::Relaxed) {
                seq.stop();
                break;
            }
            if seq.is_prefilled() {
                decode_step(model, &mut [&mut seq], |_, id| on_token(id))?;
            } else {
                seq.prefill(model, &mut on_token)?;
            }
        }
        Ok(())
    })();
    let (generation, used) = seq.into_parts();
    *cache = used;
    result.map(|()| generation)
}

/// One conversation's generation, advanced step by step by its owner: a
/// [`Sequence::prefill`] of the prompt (which picks the first token), then
/// [`decode_step`]s, each of which may advance many sequences together.
/// This is what lets a server add a conversation to a running batch, or drop
/// one, between two steps (continuous batching): [`generate`] and
/// [`generate_batch`] are loops over it.
///
/// Owns the conversation's [`KvCache`] until [`Sequence::into_parts`] (or
/// [`Sequence::into_conversation`]); like the cache, it holds patient
/// context and must not outlive its request.
#[derive(Debug)]
pub struct Sequence {
    cache: KvCache,
    /// Prompt ids still to prefill (emptied by the prefill).
    pending: Vec<u32>,
    prompt_tokens: usize,
    /// Every id before the generated ones, when known: the ids the cache
    /// held at the start, then the prompt. `None` when the sequence was
    /// started on a cache whose ids nobody gave ([`Sequence::new`]).
    history: Option<Vec<u32>>,
    /// Prompt tokens taken from a kept cache instead of prefilled.
    reused: usize,
    /// Whether the turn ends keeping the cache as it was after the prompt
    /// ([`Sequence::keep_prompt_cache`]), and that cache once prefilled.
    keep_prompt: bool,
    prompt_cache: Option<KvCache>,
    opts: GenerateOptions,
    context: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
    started: Instant,
    prefill: Duration,
    end: Duration,
}

impl Sequence {
    /// Checks `prompt` (continuing `cache`) against the vocabulary and the
    /// context; nothing runs yet. Timing starts here.
    pub fn new(
        model: &Gemma3,
        cache: KvCache,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Self, GenerateError> {
        let context = check_prompt(model, &cache, prompt, &opts)?;
        let sampler = Sampler::new(
            opts.sampling.clone(),
            opts.valid_vocab.min(model.config().vocab_size),
            opts.suppressed.clone(),
        );
        Ok(Self {
            history: cache.is_empty().then(|| prompt.to_vec()),
            cache,
            pending: prompt.to_vec(),
            prompt_tokens: prompt.len(),
            reused: 0,
            keep_prompt: false,
            prompt_cache: None,
            opts,
            context,
            sampler,
            tokens: Vec::new(),
            finish: None,
            started: Instant::now(),
            prefill: Duration::ZERO,
            end: Duration::ZERO,
        })
    }

    /// Starts a conversation's next turn: `prompt` is the whole conversation
    /// rendered for this turn, and `kept` the cache its previous turn left
    /// ([`Sequence::into_conversation`]). When `prompt` begins with exactly
    /// the ids `kept` holds (and adds at least one), only the rest is
    /// prefilled; otherwise `kept` is dropped and the whole prompt is
    /// prefilled on a fresh cache. Either way the tokens generated are those
    /// a full prefill would give, up to the order of the sums
    /// (`tests/conversation_cache.rs`). [`Sequence::reused_tokens`] says
    /// which way it went.
    pub fn resume(
        model: &Gemma3,
        kept: Option<ConversationCache>,
        prompt: &[u32],
        opts: GenerateOptions,
    ) -> Result<Self, GenerateError> {
        if let Some(kept) = kept
            && kept.matches(prompt)
            && let Some(cache) = kept.cache
        {
            let n = kept.ids.len();
            let mut seq = Self::new(model, cache, &prompt[n..], opts)?;
            seq.history = Some(prompt.to_vec());
            seq.reused = n;
            return Ok(seq);
        }
        Self::new(model, KvCache::new(model.config()), prompt, opts)
    }

    /// Prompt tokens taken from the kept cache by [`Sequence::resume`]
    /// instead of being prefilled (0 when it did not match).
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Makes [`Sequence::into_conversation`] keep the cache as it was right
    /// after the prompt, rather than after the answer: for a turn whose
    /// answer will not come back verbatim in the next prompt (a thinking
    /// turn, whose reasoning the history drops). Costs one copy of the cache
    /// during the turn (its first decode write copies the shared buffers).
    /// Call it before the prefill ends.
    pub fn keep_prompt_cache(&mut self) {
        self.keep_prompt = true;
    }

    /// Runs the prompt through the model in one pass and picks the first
    /// token (given to `on_token`). Does nothing once prefilled or finished.
    pub fn prefill(
        &mut self,
        model: &Gemma3,
        on_token: &mut dyn FnMut(u32) -> Flow,
    ) -> Result<(), GenerateError> {
        self.prefill_chunk(model, usize::MAX, on_token)
    }

    /// Runs the next `max_tokens` (at least 1) of the prompt; the chunk that
    /// ends the prompt picks the first token (given to `on_token`). The
    /// result equals a one-pass [`Sequence::prefill`] up to the summation
    /// order (`tests/batched_decode.rs`). Does nothing once prefilled or
    /// finished.
    pub fn prefill_chunk(
        &mut self,
        model: &Gemma3,
        max_tokens: usize,
        on_token: &mut dyn FnMut(u32) -> Flow,
    ) -> Result<(), GenerateError> {
        if self.is_finished() || self.is_prefilled() {
            return Ok(());
        }
        if self.check_room(self.pending.len()) {
            self.prefill = self.end;
            return Ok(());
        }
        let n = self.pending.len().min(max_tokens.max(1));
        if n < self.pending.len() {
            let chunk: Vec<u32> = self.pending.drain(..n).collect();
            // Only the cache matters here; the last position's logits of a
            // middle chunk are not read.
            let _ = model.forward(&chunk, &mut self.cache, Logits::Last);
            return Ok(());
        }
        let logits = model.forward(&self.pending, &mut self.cache, Logits::Last);
        if self.keep_prompt {
            // Shares the buffers; the first decode write copies them.
            self.prompt_cache = Some(self.cache.clone());
        }
        let next = choose(logits, &mut [&mut self.sampler])?[0];
        self.pending.clear();
        self.prefill = self.started.elapsed();
        self.push(next, on_token(next));
        Ok(())
    }

    /// Ends the sequence now as cancelled (the client left or asked to stop).
    pub fn stop(&mut self) {
        self.end_with(FinishReason::Cancelled);
    }

    /// Whether the sequence has ended (see [`Sequence::finish_reason`]).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Whether the prompt has been run.
    pub fn is_prefilled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The result so far and the cache (which holds the prompt and every
    /// token fed back; the last generated token is not in it yet).
    pub fn into_parts(self) -> (Generation, KvCache) {
        let end = if self.finish.is_some() {
            self.end
        } else {
            self.started.elapsed()
        };
        let generation = Generation {
            tokens: self.tokens,
            finish: self.finish.unwrap_or(FinishReason::Length),
            prompt_tokens: self.prompt_tokens,
            prefill: self.prefill,
            decode: end.saturating_sub(self.prefill),
        };
        (generation, self.cache)
    }

    /// The result so far and the conversation's cache for its next turn
    /// ([`Sequence::resume`]): the prompt and the answer's tokens fed back,
    /// or the prompt alone after [`Sequence::keep_prompt_cache`]. A cache
    /// whose ids are not known (a [`Sequence::new`] on a non-empty cache)
    /// or that is partly filled (a prefill stopped midway) comes back as
    /// much as is known; a later [`Sequence::resume`] then simply prefills
    /// whatever does not match.
    pub fn into_conversation(mut self) -> (Generation, ConversationCache) {
        let history = self.history.take();
        let prompt_cache = self.prompt_cache.take();
        let tokens = self.tokens.clone();
        let (generation, cache) = self.into_parts();
        let kept = match (history, prompt_cache) {
            (Some(ids), Some(prompt_cache)) if prompt_cache.len() == ids.len() => {
                ConversationCache {
                    cache: Some(prompt_cache),
                    ids,
                }
            }
            (Some(mut ids), _) if cache.len() <= ids.len() + tokens.len() => {
                ids.extend(tokens);
                ids.truncate(cache.len());
                ConversationCache {
                    cache: Some(cache),
                    ids,
                }
            }
            _ => ConversationCache::default(),
        };
        (generation, kept)
    }

    fn end_with(&mut self, reason: FinishReason) {
        if self.finish.is_none() {
            self.finish = Some(reason);
            self.end = self.started.elapsed();
        }
    }

    /// Ends the sequence if its next step of `input` tokens must not run;
    /// returns whether it ended.
    fn check_room(&mut self, input: usize) -> bool {
        if self.tokens.len() >= self.opts.max_new_tokens {
            self.end_with(FinishReason::Length);
        } else if self.cache.len() + input > self.context {
            self.end_with(FinishReason::ContextFull);
        }
        self.is_finished()
    }

    /// Decode steps it takes at least before its length or the context
    /// ends it, this one included, unless a stop token or a cancel ends it
    /// sooner (for an active sequence: at least 1).
    /// Bytes its cache's buffers take now (keys and values of every layer,
    /// as allocated), for the memory budget.
    pub fn cache_bytes(&self, model: &Gemma3) -> u64 {
        kv_bytes(&self.cache, model)
    }

    /// Bytes the cache kept as it was after the prompt
    /// ([`Sequence::keep_prompt_cache`]) takes once the prompt is through
    /// (it shares the cache's buffers until the first decode write copies
    /// them); 0 when none is kept.
    pub fn prompt_cache_bytes(&self, model: &Gemma3) -> u64 {
        self.prompt_cache.as_ref().map_or(0, |c| kv_bytes(c, model))
    }

    /// Lets go of the cache kept as it was after the prompt, before a
    /// decode write copies it: [`Sequence::into_conversation`] then keeps
    /// the cache after the answer, and the next turn prefills whatever of
    /// it does not match.
    pub fn drop_prompt_cache(&mut self) {
        self.keep_prompt = false;
        self.prompt_cache = None;
    }

    fn steps_left(&self) -> usize {
        let tokens = self.opts.max_new_tokens.saturating_sub(self.tokens.len());
        let room = self.context.saturating_sub(self.cache.len());
        tokens.min(room)
    }

    /// Records the chosen token and what ends the sequence after it: a
    /// cancel, a stop token, or its length or the context, which would end
    /// it before its next step anyway. Ending it with its last token lets
    /// a server close the turn (and let go of its cache) at once, not one
    /// step later.
    fn push(&mut self, next: u32, flow: Flow) {
        self.tokens.push(next);
        if flow == Flow::Stop {
            self.end_with(FinishReason::Cancelled);
        } else if !self.opts.ignore_eos && self.opts.stop_ids.contains(&next) {
            self.end_with(FinishReason::Stop);
        } else {
            self.check_room(1);
        }
    }
}

/// A conversation's KV cache kept between its turns, with the ids it holds
/// (position `i` of the cache is `ids()[i]`), so that the next turn
/// prefills only its new tokens ([`Sequence::resume`]).
///
/// It holds patient context: it belongs to one conversation, is dropped
/// when that conversation is deleted or expires, and never outlives it. Its
/// memory is [`ConversationCache::bytes`].
#[derive(Debug, Clone, Default)]
pub struct ConversationCache {
    /// `None` when nothing is kept.
    cache: Option<KvCache>,
    ids: Vec<u32>,
}

impl ConversationCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `prompt` begins with exactly the ids held and adds at least
    /// one (the cache can then continue it).
    pub fn matches(&self, prompt: &[u32]) -> bool {
        !self.ids.is_empty()
            && prompt.len() > self.ids.len()
            && prompt.starts_with(&self.ids)
            && self
                .cache
                .as_ref()
                .is_some_and(|c| c.len() == self.ids.len())
    }

    /// The cache held, for tests that compare what two conversations keep
    /// (`kernels::model_check`).
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn cache(&self) -> Option<&KvCache> {
        self.cache.as_ref()
    }

    /// Bytes its buffers take (keys and values of every layer, as
    /// allocated), for the memory budget.
    pub fn bytes(&self, model: &Gemma3) -> u64 {
        self.cache.as_ref().map_or(0, |c| kv_bytes(c, model))
    }
}

/// Bytes `cache`'s buffers take (keys and values of every layer, as
/// allocated) in `model`'s dtype.
fn kv_bytes(cache: &KvCache, model: &Gemma3) -> u64 {
    let cfg = model.config();
    let per_slot = 2 * (cfg.num_key_value_heads * cfg.head_dim * model.dtype().size()) as u64;
    cache
        .allocated_per_layer()
        .iter()
        .map(|&n| n as u64 * per_slot)
        .sum()
}

/// Where a batch's decode steps may run as one captured graph
/// (`decode_graph.rs`: on CUDA one launch per token): off by default, every
/// step launched kernel by kernel; on, a step replays the last capture
/// while the active sequences stay the same and captures anew when they
/// change. Its steps equal the launched [`Gemma3::forward_batch`]
/// (`kernels::model_check`); a single active sequence runs through it too.
#[derive(Debug, Default)]
pub struct StepGraph {
    graph: Option<Graph>,
}

/// Without `kernels` there is no graph: none is ever built.
#[cfg(not(feature = "kernels"))]
#[derive(Debug)]
enum Graph {}

#[cfg(not(feature = "kernels"))]
impl Graph {
    fn new(_: &Gemma3, _: usize) -> Option<Self> {
        None
    }
    fn step_lasting(&mut self, _: &mut [&mut KvCache], _: &[u32], _: usize) -> Option<Tensor<2>> {
        match *self {}
    }
    fn captures(&self) -> usize {
        match *self {}
    }
    fn is_hardware(&self) -> bool {
        match *self {}
    }
    fn refused(&self) -> Option<&str> {
        match *self {}
    }
    fn release(&mut self) {
        match *self {}
    }
    fn keep_ghosts_within(&mut self, _: u64, _: u64) -> bool {
        match *self {}
    }
    fn ghosts_let_go(&self) -> usize {
        match *self {}
    }
}

impl StepGraph {
    /// Steps of `model` through a graph, capturing with room for `reserve`
    /// tokens per sequence; off where the model is not on a CubeCL device
    /// (or the crate was built without `kernels`).
    pub fn on(model: &Gemma3, reserve: usize) -> Self {
        Self {
            graph: Graph::new(model, reserve),
        }
    }

    /// Whether steps go through a graph.
    pub fn is_on(&self) -> bool {
        self.graph.is_some()
    }

    /// Captures made so far, and whether the last replays were one hardware
    /// graph (CUDA) rather than launches (a runtime without graphs).
    pub fn captures(&self) -> (usize, bool) {
        self.graph
            .as_ref()
            .map_or((0, false), |g| (g.captures(), g.is_hardware()))
    }

    /// Why the runtime refused the last recording, where it records graphs
    /// (its steps then run launch by launch: slower, the same answers).
    pub fn refused(&self) -> Option<&str> {
        self.graph.as_ref().and_then(|g| g.refused())
    }

    /// Lets go of the last capture (the caches keep their buffers).
    pub fn release(&mut self) {
        if let Some(g) = &mut self.graph {
            g.release();
        }
    }

    /// Lets go of the last capture where the memory of its ghost rows (the
    /// caches of ended turns that only it still holds) on top of `held`
    /// would pass `allowance` (`decode_graph::DecodeGraph::keep_ghosts_within`).
    /// Whether it stays; `true` when off.
    pub fn keep_ghosts_within(&mut self, held: u64, allowance: u64) -> bool {
        self.graph
            .as_mut()
            .is_none_or(|g| g.keep_ghosts_within(held, allowance))
    }

    /// Captures let go so far for their ghost rows' memory; 0 when off.
    pub fn ghosts_let_go(&self) -> usize {
        self.graph.as_ref().map_or(0, Graph::ghosts_let_go)
    }

    /// One step through the graph for a batch that lasts at most `lasts`
    /// steps; `None` when off, where it does not cover the batch, or where
    /// the batch is too short-lived to capture
    /// (`decode_graph::DecodeGraph::step_lasting`).
    fn step(
        &mut self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        lasts: usize,
    ) -> Option<Tensor<2>> {
        self.graph.as_mut()?.step_lasting(caches, tokens, lasts)
    }
}

/// One decode step for every prefilled, unfinished sequence in `seqs`: each
/// feeds back its last token, and they run through one
/// [`Gemma3::forward_batch`] (one [`Gemma3::forward`] when only one is
/// active), so the batch shares every weight read. `on_token(i, id)` sees
/// the token chosen for `seqs[i]`. Sequences that reach their length or
/// context limit end here without running.
pub fn decode_step(
    model: &Gemma3,
    seqs: &mut [&mut Sequence],
    on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<(), GenerateError> {
    decode_step_with(model, &mut StepGraph::default(), seqs, on_token)
}

/// [`decode_step`] through `graph` when it is on and covers the batch.
pub fn decode_step_with(
    model: &Gemma3,
    graph: &mut StepGraph,
    seqs: &mut [&mut Sequence],
    mut on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<(), GenerateError> {
    let mut active = Vec::with_capacity(seqs.len());
    for (i, s) in seqs.iter_mut().enumerate() {
        if !s.is_finished() && s.is_prefilled() && !s.tokens.is_empty() && !s.check_room(1) {
            active.push(i);
        }
    }
    if active.is_empty() {
        return Ok(());
    }
    // The batch changes, at the latest, when its first sequence reaches its
    // length or the context.
    let lasts = active
        .iter()
        .map(|&i| seqs[i].steps_left())
        .min()
        .unwrap_or(0);
    let inputs: Vec<u32> = active
        .iter()
        .map(|&i| {
            *seqs[i]
                .tokens
                .last()
                .expect("an active sequence has a token")
        })
        .collect();
    let (mut caches, mut samplers): (Vec<&mut KvCache>, Vec<&mut Sampler>) = seqs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| active.contains(i))
        .map(|(_, s)| (&mut s.cache, &mut s.sampler))
        .unzip();
    let logits = match graph.step(&mut caches, &inputs, lasts) {
        Some(logits) => logits,
        None => match caches.as_mut_slice() {
            [one] => model.forward(&inputs, one, Logits::Last),
            many => model.forward_batch(&inputs, many),
        },
    };
    let chosen = choose(logits, &mut samplers)?;
    for (&i, next) in active.iter().zip(chosen) {
        let flow = on_token(i, next);
        seqs[i].push(next, flow);
    }
    Ok(())
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

/// The next token of each row of `logits` (`[rows, vocab]`, f32), chosen by
/// that row's sampler.
///
/// A greedy row (the default, as Google's examples decode) takes the argmax
/// computed where the logits are: one index per row comes back instead of
/// the whole row, on the GPU 4 bytes rather than 1 MiB per sequence and step
/// over PCIe, and no 262 208-long scan on the host. Only the rows decided on
/// the host are read back, together: those whose sampler samples, and a
/// greedy row whose argmax its sampler does not allow (a padding row of the
/// embedding, an image token). A batch with one sampling request therefore
/// reads back one row, not all of them.
fn choose(logits: Tensor<2>, samplers: &mut [&mut Sampler]) -> Result<Vec<u32>, GenerateError> {
    let [rows, vocab] = logits.dims();
    debug_assert_eq!(rows, samplers.len(), "one sampler per row");
    let mut out: Vec<Option<u32>> = vec![None; rows];
    if samplers.iter().any(|s| s.is_greedy()) {
        let best = greedy_ids(&logits);
        if best.len() != rows {
            return Err(GenerateError::Readback {
                why: format!("{} argmax indices for {rows} rows", best.len()),
            });
        }
        for ((o, s), &id) in out.iter_mut().zip(samplers.iter()).zip(&best) {
            if let Ok(id) = u32::try_from(id)
                && s.is_greedy()
                && s.allows(id)
            {
                *o = Some(id);
            }
        }
    }
    let host: Vec<usize> = (0..rows).filter(|&r| out[r].is_none()).collect();
    if !host.is_empty() {
        let picked = if host.len() == rows {
            logits
        } else {
            let at: Vec<i64> = host.iter().map(|&r| r as i64).collect();
            let at =
                Tensor::<1, Int>::from_data(TensorData::new(at, [host.len()]), &logits.device());
            logits.select(0, at)
        };
        let mut back = logits_rows(picked)?;
        // Each row on its own core (about 0.2 ms a sampled row of the real
        // vocabulary, `examples/sampling_speed.rs`); each sampler draws
        // from its own seeded generator, so the ids do not depend on the
        // order the rows run in.
        let mut work: Vec<(usize, &mut Sampler, &mut [f32])> = samplers
            .iter_mut()
            .enumerate()
            .filter(|(r, _)| out[*r].is_none())
            .zip(back.chunks_mut(vocab))
            .map(|((r, s), row)| (r, &mut **s, row))
            .collect();
        let picked: Vec<(usize, u32)> = work
            .par_iter_mut()
            .map(|(r, s, row)| (*r, s.sample(row)))
            .collect();
        for (r, id) in picked {
            out[r] = Some(id);
        }
    }
    out.into_iter()
        .map(|id| {
            id.ok_or_else(|| GenerateError::Readback {
                why: "a row read back short".to_owned(),
            })
        })
        .collect()
}

/// The index of each row's largest logit, computed where the logits are:
/// one kernel on a CubeCL device (`kernels::argmax_rows`: ties to the lowest
/// index as `sampling::argmax`, NaN never chosen), Burn's `argmax`
/// otherwise.
fn greedy_ids(logits: &Tensor<2>) -> Vec<i64> {
    #[cfg(feature = "kernels")]
    if let Some(ids) = crate::kernels::argmax_rows(logits) {
        return ids.into_data().iter::<i64>().collect();
    }
    logits.clone().argmax(1).into_data().iter::<i64>().collect()
}

fn logits_rows(logits: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    logits
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| GenerateError::Readback {
            why: format!("{e:?}"),
        })
}

/// Generates for several conversations at once: each prompt is prefilled on
/// its own (continuing its cache), then every decode step runs the
/// still-active sequences through one [`decode_step`], so they share each
/// weight read. Every sequence stops on its own (stop id, length, context, or
/// `on_token(i, id)` returning [`Flow::Stop`]); `cancel` stops them all. With
/// the same options, each result equals what [`generate`] returns for that
/// prompt alone (`tests/batched_decode.rs`).
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
    let mut seqs = Vec::with_capacity(prompts.len());
    for (cache, prompt) in caches.iter().zip(prompts) {
        // Checked against a view of the cache before any is taken, so an
        // error leaves every cache as it was.
        check_prompt(model, cache, prompt, opts)?;
    }
    for (cache, prompt) in caches.iter_mut().zip(prompts) {
        let taken = std::mem::replace(&mut **cache, KvCache::new(model.config()));
        seqs.push(Sequence::new(model, taken, prompt, opts.clone())?);
    }
    let result = (|| {
        for (i, s) in seqs.iter_mut().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                s.stop();
            }
            s.prefill(model, &mut |id| on_token(i, id))?;
        }
        while seqs.iter().any(|s| !s.is_finished()) {
            if cancel.load(Ordering::Relaxed) {
                seqs.iter_mut().for_each(Sequence::stop);
                break;
            }
            let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
            decode_step(model, &mut refs, &mut on_token)?;
        }
        Ok(())
    })();
    let mut out = Vec::with_capacity(seqs.len());
    for (seq, cache) in seqs.into_iter().zip(caches.iter_mut()) {
        let (g, used) = seq.into_parts();
        **cache = used;
        out.push(g);
    }
    result.map(|()| out)
}
