//! Per-layer key/value cache (spec §4).
//!
//! Global layers keep every position; sliding-window layers keep only the
//! `W − 1` most recent keys after each step, which is all a later query can
//! see. Owns: cached post-RoPE keys and values of one conversation. Must
//! never: outlive the conversation it belongs to (it holds patient context).

use burn::tensor::Tensor;

use crate::config::Gemma3Config;

/// Cached keys and values of one layer, `[B, KV heads, S, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    keys: Option<Tensor<4>>,
    values: Option<Tensor<4>>,
    /// Absolute position of the first cached key.
    start: usize,
}

impl LayerCache {
    /// Appends new keys/values; returns all visible ones and the absolute position of the first.
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>, usize) {
        let (keys, values) = match (self.keys.take(), self.values.take()) {
            (Some(ck), Some(cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            _ => (k, v),
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values, self.start)
    }

    /// Drops keys no future query can see: keeps the last `window − 1`.
    pub(crate) fn trim_to_window(&mut self, window: usize) {
        let (Some(k), Some(v)) = (&self.keys, &self.values) else {
            return;
        };
        let [b, h, s, d] = k.dims();
        let keep = window.saturating_sub(1);
        if s <= keep {
            return;
        }
        let drop = s - keep;
        self.start += drop;
        if keep == 0 {
            self.keys = None;
            self.values = None;
        } else {
            self.keys = Some(k.clone().slice([0..b, 0..h, drop..s, 0..d]));
            self.values = Some(v.clone().slice([0..b, 0..h, drop..s, 0..d]));
        }
    }

    /// Number of cached positions.
    pub fn cached(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }
}

/// The cache of a whole conversation.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `cfg`'s layers.
    pub fn new(cfg: &Gemma3Config) -> Self {
        Self {
            layers: vec![LayerCache::default(); cfg.num_layers()],
            len: 0,
        }
    }

    /// Positions processed so far (the next token's absolute position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Per-layer cached positions (for tests and memory accounting).
    pub fn cached_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::cached).collect()
    }
}
