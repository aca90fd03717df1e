//! Prefill of a prompt that holds images (spec model.md §5.4).
//!
//! Each image is a block of `<image_soft_token>`s whose embeddings are the
//! [`super::VisionTower::encode`] rows; inside a block attention is
//! bidirectional (`Gemma3::forward_with_images`). A block must therefore be
//! run in one forward pass: [`ImagePrefill`] cuts the prompt into chunks of
//! about `max_tokens` that never split a block, so a server can interleave
//! them with other conversations' decode steps as it does for text.
//!
//! The last prompt token (the `\n` after `<start_of_turn>model`, never an
//! image token) is left out: the caller hands it to
//! `generate::Sequence::new` with the filled cache, and generation goes on
//! exactly as for a text prompt (sampling, stop ids, batching).
//!
//! Owns: chunk boundaries and which embedding rows go with which chunk.
//! Must never: keep the prompt or the embeddings beyond the turn (they are
//! patient data, dropped with this value).

use std::ops::Range;

use burn::tensor::Tensor;

use super::VisionError;
use crate::gemma3::{Gemma3, ImageRows, Logits};
use crate::kv_cache::KvCache;

/// Runs of `image_token` in `ids` (positions relative to `ids`).
pub fn image_blocks(ids: &[u32], image_token: u32) -> Vec<Range<usize>> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == image_token {
            let start = i;
            while i < ids.len() && ids[i] == image_token {
                i += 1;
            }
            blocks.push(start..i);
        } else {
            i += 1;
        }
    }
    blocks
}

/// A prompt with images, prefilled chunk by chunk into a [`KvCache`].
pub struct ImagePrefill {
    ids: Vec<u32>,
    /// `[image tokens, text hidden]`, one row per image token in order.
    rows: Tensor<2>,
    image_token: u32,
    blocks: Vec<Range<usize>>,
    /// Prompt tokens already run.
    done: usize,
    /// Embedding rows already used.
    rows_used: usize,
}

impl std::fmt::Debug for ImagePrefill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePrefill")
            .field("tokens", &self.ids.len())
            .field("images", &self.blocks.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ImagePrefill {
    /// `ids`: the whole prompt (from `chat::encode_chat_multimodal`);
    /// `rows`: the encoder's output for its images, in prompt order.
    ///
    /// # Errors
    /// [`VisionError::TokenCount`] when the image tokens and rows differ in number.
    pub fn new(ids: Vec<u32>, rows: Tensor<2>, image_token: u32) -> Result<Self, VisionError> {
        let blocks = image_blocks(&ids, image_token);
        let tokens: usize = blocks.iter().map(|b| b.len()).sum();
        let n = rows.dims()[0];
        if tokens != n || ids.last() == Some(&image_token) {
            return Err(VisionError::TokenCount { tokens, rows: n });
        }
        Ok(Self {
            ids,
            rows,
            image_token,
            blocks,
            done: 0,
            rows_used: 0,
        })
    }

    /// Tokens this value prefills (all but the last of the prompt).
    fn end(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }

    /// Whether every token but the last has been run.
    pub fn is_done(&self) -> bool {
        self.done >= self.end()
    }

    /// The last prompt token, for `generate::Sequence::new(model, cache, &[last], …)`.
    pub fn last_token(&self) -> Option<u32> {
        self.ids.last().copied()
    }

    /// Prompt tokens (for the context check and accounting).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for an empty prompt.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Runs the next chunk: about `max_tokens` (at least 1), extended to the
    /// end of an image block it would otherwise cut. Returns the tokens run.
    pub fn step(&mut self, model: &Gemma3, cache: &mut KvCache, max_tokens: usize) -> usize {
        let end = self.end();
        if self.done >= end {
            return 0;
        }
        let mut stop = (self.done + max_tokens.max(1)).min(end);
        if let Some(b) = self.blocks.iter().find(|b| b.start < stop && stop < b.end) {
            stop = b.end.min(end);
        }
        let chunk = &self.ids[self.done..stop];
        let n_img = chunk.iter().filter(|&&t| t == self.image_token).count();
        if n_img == 0 {
            let _ = model.forward(chunk, cache, Logits::Last);
        } else {
            let d = self.rows.dims()[1];
            let rows = self
                .rows
                .clone()
                .slice([self.rows_used..self.rows_used + n_img, 0..d]);
            let _ = model.forward_with_images(
                chunk,
                &ImageRows {
                    token: self.image_token,
                    rows,
                },
                cache,
                Logits::Last,
            );
        }
        self.rows_used += n_img;
        let ran = stop - self.done;
        self.done = stop;
        ran
    }

    /// Runs every chunk (one conversation alone).
    pub fn run(&mut self, model: &Gemma3, cache: &mut KvCache, max_tokens: usize) {
        while !self.is_done() {
            self.step(model, cache, max_tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_the_runs_of_the_image_token() {
        let ids = [2, 9, 9, 5, 9, 7, 9, 9, 9];
        assert_eq!(image_blocks(&ids, 9), vec![1..3, 4..5, 6..9]);
        assert!(image_blocks(&[1, 2], 9).is_empty());
    }
}
