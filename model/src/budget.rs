//! How much GPU memory a model needs, before anything is loaded: weights in
//! the compute dtype, the KV cache for the configured context and number of
//! sequences, and work space for one forward pass, plus a stated margin.
//!
//! Pure arithmetic over [`Gemma3Config`]: the daemon compares
//! [`MemoryBudget::total`] with the free memory NVML reports and falls back
//! to the CPU, saying why, when it does not fit.
//!
//! What is counted (matching `gemma3.rs` and `kv_cache.rs` as of this
//! writing; keep in step when they change):
//! - weights: every matrix in the compute dtype, the embedding once (the LM
//!   head is tied to it), RMSNorm weights in f32;
//! - KV cache: keys and values in the compute dtype; a sliding-window layer
//!   holds at most `sliding_window` positions, a global layer the whole
//!   context (spec model.md §4: 289.4 MB for the 4B at 8192 tokens);
//! - activations of the largest forward pass: a prefill chunk of
//!   `prefill_tokens` tokens against the whole context (the attention scores
//!   are materialized in f32; the daemon prefills in chunks of
//!   [`PREFILL_CHUNK`] so they stay small), or a decode step of `sequences`
//!   tokens, whichever is larger;
//! - logits: f32 over the vocabulary, one row per sequence, twice (logits and
//!   the sampler's copy);
//! - margin: [`FIXED_MARGIN`] (CUDA context, kernels, the allocator's pools)
//!   plus [`MARGIN_PERCENT`] of the rest.
//!
//! On the CPU ([`estimate_cpu`]) the same parts are counted against
//! `MemAvailable` of `/proc/meminfo` ([`mem_available`]): the weights as
//! the CPU holds them ([`gguf_weight_bytes`], [`safetensors_weight_bytes`]:
//! GGUF blocks as stored, bf16, or Q8_0), the KV cache, activations and
//! logits in f32 (the CPU's compute dtype), and [`CPU_FIXED_MARGIN`] plus
//! [`MARGIN_PERCENT`].
//!
//! Owns: the estimate. Must never: touch a device (reading `/proc/meminfo`
//! is the one thing it reads, and only when asked).

pub use burn::tensor::DType;

use crate::config::{Gemma3Config, LayerType};
use crate::generate::PREFILL_CHUNK;
use crate::gguf::GgufFile;
use crate::weights::CpuWeights;

/// Fixed margin: the CUDA context and loaded kernels (~0.5 GiB on Hopper)
/// and the slack of the memory pools.
pub const FIXED_MARGIN: u64 = 1 << 30;

/// Proportional margin on top of the counted bytes (fragmentation,
/// temporaries the count misses).
pub const MARGIN_PERCENT: u64 = 10;

/// Fixed margin on the CPU: the tokenizer (Gemma's 262 144 pieces take
/// about 150 MB in the `tokenizers` crate), thread stacks, the allocator's
/// slack and the kernels' per-thread panels. The 270M Q4_K_M peaks at
/// 437 MiB for a 512-token prompt (`cargo run --release --example
/// cpu_bench`), of which 241 MiB are its weights.
pub const CPU_FIXED_MARGIN: u64 = 384 << 20;

/// What to size the budget for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRequest {
    /// Context length in tokens (prompt + answer) of each sequence.
    pub context_length: usize,
    /// Sequences generating at once (each holds its own KV cache).
    pub sequences: usize,
    /// Tokens in the largest single prefill pass: the daemon's engine
    /// prefills in chunks of [`PREFILL_CHUNK`].
    pub prefill_tokens: usize,
    /// The compute dtype of weights, activations and the KV cache.
    pub dtype: DType,
}

impl BudgetRequest {
    /// The daemon's case: prompts up to the whole context, prefilled in
    /// chunks of [`PREFILL_CHUNK`] tokens.
    pub fn new(context_length: usize, sequences: usize, dtype: DType) -> Self {
        Self {
            context_length,
            sequences,
            prefill_tokens: context_length.min(PREFILL_CHUNK),
            dtype,
        }
    }
}

/// The estimate, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Decoder weights.
    pub weights: u64,
    /// KV cache of every sequence at full context.
    pub kv_cache: u64,
    /// Activations of the largest forward pass.
    pub activations: u64,
    /// Logits (and the sampler's copy) for every sequence.
    pub logits: u64,
    /// [`FIXED_MARGIN`] + [`MARGIN_PERCENT`] of the parts above.
    pub margin: u64,
}

impl MemoryBudget {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.work_space()
    }

    /// Activations, logits and margin: what is not weights or cache.
    pub fn work_space(&self) -> u64 {
        self.activations + self.logits + self.margin
    }

    /// Whether it fits in `free` bytes.
    pub fn fits(&self, free: u64) -> bool {
        self.total() <= free
    }

    /// One line for logs and the status page, e.g. "9.1 GiB (weights 7.2
    /// GiB bf16, KV cache 0.3 GiB for 8192 tokens × 1 sequence, work space
    /// 1.6 GiB)".
    pub fn describe(&self, req: &BudgetRequest) -> String {
        format!(
            "{} (weights {} {}, KV cache {} for {} tokens × {} sequence{}, work space {})",
            gib(self.total()),
            gib(self.weights),
            dtype_name(req.dtype),
            gib(self.kv_cache),
            req.context_length,
            req.sequences,
            if req.sequences == 1 { "" } else { "s" },
            gib(self.work_space()),
        )
    }
}

/// Bytes as GiB with one decimal ("9.1 GiB").
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

/// Bytes per element of a float dtype (f32 for anything unexpected, the
/// larger guess).
pub fn dtype_bytes(dtype: DType) -> u64 {
    match dtype {
        DType::BF16 | DType::F16 => 2,
        _ => 4,
    }
}

/// Decoder weights in `dtype` (norm weights in f32), tied head counted once.
pub fn weight_bytes(cfg: &Gemma3Config, dtype: DType) -> u64 {
    let b = dtype_bytes(dtype);
    let (d, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (h, kv, hd) = (
        cfg.num_attention_heads as u64,
        cfg.num_key_value_heads as u64,
        cfg.head_dim as u64,
    );
    let layers = cfg.num_layers() as u64;
    let matrices =
        cfg.vocab_size as u64 * d + layers * (d * (h + 2 * kv) * hd + h * hd * d + 3 * d * f);
    let norms = layers * (4 * d + 2 * hd) + d;
    matrices * b + norms * 4
}

/// KV cache bytes for `sequences` sequences of `context` tokens each: local
/// layers hold at most the window, global layers the whole context.
pub fn kv_cache_bytes(cfg: &Gemma3Config, context: usize, sequences: usize, dtype: DType) -> u64 {
    let per_position =
        2 * cfg.num_key_value_heads as u64 * cfg.head_dim as u64 * dtype_bytes(dtype);
    let positions: u64 = cfg
        .layer_types
        .iter()
        .map(|kind| match kind {
            LayerType::Global => context as u64,
            LayerType::Local => context.min(cfg.sliding_window) as u64,
        })
        .sum();
    per_position * positions * sequences as u64
}

/// Activation bytes of one forward pass of `tokens` new tokens (all in one
/// sequence, or one per sequence when decoding) against `keys` visible keys.
fn forward_bytes(cfg: &Gemma3Config, tokens: u64, keys: u64, dtype: DType) -> u64 {
    let b = dtype_bytes(dtype);
    let (d, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (h, kv, hd) = (
        cfg.num_attention_heads as u64,
        cfg.num_key_value_heads as u64,
        cfg.head_dim as u64,
    );
    // Residual stream and its normed copies (4 live in the compute dtype,
    // 2 upcast to f32 inside the norms).
    let hidden = tokens * d * (4 * b + 2 * 4);
    // q, k, v, and the attention output.
    let qkv = tokens * (2 * h + 2 * kv) * hd * b;
    // Scores and probabilities in f32, and the additive mask.
    let scores = h * tokens * keys * 4 * 2 + tokens * keys * 4;
    // gate, up and their product.
    let mlp = tokens * f * 3 * b;
    // cos and sin tables, f32 and cast.
    let rope = tokens * hd * 2 * (4 + b);
    hidden + qkv + scores + mlp + rope
}

/// The whole estimate.
pub fn estimate(cfg: &Gemma3Config, req: &BudgetRequest) -> MemoryBudget {
    let context = req.context_length as u64;
    let sequences = req.sequences.max(1) as u64;
    let weights = weight_bytes(cfg, req.dtype);
    let kv_cache = kv_cache_bytes(cfg, req.context_length, req.sequences.max(1), req.dtype);
    let prefill = forward_bytes(cfg, req.prefill_tokens as u64, context, req.dtype);
    let decode = forward_bytes(cfg, sequences, context, req.dtype);
    let activations = prefill.max(decode);
    let logits = sequences * cfg.vocab_size as u64 * 4 * 2;
    let counted = weights + kv_cache + activations + logits;
    MemoryBudget {
        weights,
        kv_cache,
        activations,
        logits,
        margin: FIXED_MARGIN + counted * MARGIN_PERCENT / 100,
    }
}

/// The most sequences, up to `req.sequences`, whose estimate fits in `free`
/// bytes; 0 when not even one does. The estimate grows with the sequences
/// (each adds a KV cache and a row of activations and logits), so the first
/// that does not fit ends the search.
pub fn sequences_that_fit(cfg: &Gemma3Config, req: &BudgetRequest, free: u64) -> usize {
    (1..=req.sequences.max(1))
        .take_while(|&n| {
            estimate(
                cfg,
                &BudgetRequest {
                    sequences: n,
                    ..*req
                },
            )
            .fits(free)
        })
        .last()
        .unwrap_or(0)
}

/// What to size a CPU budget for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBudgetRequest {
    /// Context length in tokens (prompt + answer) of each sequence.
    pub context_length: usize,
    /// Sequences generating at once (each holds its own KV cache).
    pub sequences: usize,
    /// Tokens in the largest single prefill pass.
    pub prefill_tokens: usize,
    /// Decoder weights as the CPU holds them ([`gguf_weight_bytes`],
    /// [`safetensors_weight_bytes`]).
    pub weight_bytes: u64,
    /// How they are held, for the sentence ("GGUF as stored", "bf16", "q8_0").
    pub weights: String,
}

impl CpuBudgetRequest {
    /// The daemon's case: prompts up to the whole context, prefilled in
    /// chunks of [`PREFILL_CHUNK`] tokens.
    pub fn new(
        context_length: usize,
        sequences: usize,
        weight_bytes: u64,
        weights: impl Into<String>,
    ) -> Self {
        Self {
            context_length,
            sequences,
            prefill_tokens: context_length.min(PREFILL_CHUNK),
            weight_bytes,
            weights: weights.into(),
        }
    }
}

/// Bytes of a GGUF model's tensors as stored: what the CPU keeps (it reads
/// them in place from the file's map, which counts in the process's memory
/// once its pages are touched).
pub fn gguf_weight_bytes(file: &GgufFile) -> u64 {
    file.tensors()
        .iter()
        .filter_map(|t| t.byte_size())
        .map(|b| b as u64)
        .sum()
}

/// Bytes of a safetensors model's decoder weights on the CPU: matrices as
/// `mode` keeps them (`stored` is the checkpoint's dtype: bf16, f16 or
/// f32; Q8_0 is 34 bytes per 32 weights), norm weights in f32.
pub fn safetensors_weight_bytes(cfg: &Gemma3Config, mode: CpuWeights, stored: DType) -> u64 {
    let norms = norm_count(cfg);
    let matrices = (weight_bytes(cfg, DType::F32) - norms * 4) / 4;
    let matrix_bytes = match mode {
        CpuWeights::AsStored => matrices * dtype_bytes(stored),
        CpuWeights::Q8_0 => matrices.div_ceil(32) * 34,
        CpuWeights::F32 => matrices * 4,
    };
    matrix_bytes + norms * 4
}

/// RMSNorm weights of the decoder.
fn norm_count(cfg: &Gemma3Config) -> u64 {
    let (d, hd) = (cfg.hidden_size as u64, cfg.head_dim as u64);
    cfg.num_layers() as u64 * (4 * d + 2 * hd) + d
}

/// The CPU estimate: weights as held, everything else in f32.
pub fn estimate_cpu(cfg: &Gemma3Config, req: &CpuBudgetRequest) -> MemoryBudget {
    let context = req.context_length as u64;
    let sequences = req.sequences.max(1) as u64;
    let weights = req.weight_bytes;
    let kv_cache = kv_cache_bytes(cfg, req.context_length, req.sequences.max(1), DType::F32);
    let prefill = forward_bytes(cfg, req.prefill_tokens as u64, context, DType::F32);
    let decode = forward_bytes(cfg, sequences, context, DType::F32);
    let activations = prefill.max(decode);
    let logits = sequences * cfg.vocab_size as u64 * 4 * 2;
    let counted = weights + kv_cache + activations + logits;
    MemoryBudget {
        weights,
        kv_cache,
        activations,
        logits,
        margin: CPU_FIXED_MARGIN + counted * MARGIN_PERCENT / 100,
    }
}

/// The most sequences, up to `req.sequences`, whose CPU estimate fits in
/// `available` bytes; 0 when not even one does.
pub fn cpu_sequences_that_fit(cfg: &Gemma3Config, req: &CpuBudgetRequest, available: u64) -> usize {
    (1..=req.sequences.max(1))
        .take_while(|&n| {
            estimate_cpu(
                cfg,
                &CpuBudgetRequest {
                    sequences: n,
                    ..req.clone()
                },
            )
            .fits(available)
        })
        .last()
        .unwrap_or(0)
}

impl MemoryBudget {
    /// One line for logs and the status page, e.g. "0.7 GiB (weights 0.2
    /// GiB GGUF as stored, KV cache 0.1 GiB for 8192 tokens × 1 sequence,
    /// work space 0.4 GiB) of 21.3 GiB available".
    pub fn describe_cpu(&self, req: &CpuBudgetRequest, available: u64) -> String {
        format!(
            "{} (weights {} {}, KV cache {} for {} tokens × {} sequence{}, work space {}) of {} available",
            gib(self.total()),
            gib(self.weights),
            req.weights,
            gib(self.kv_cache),
            req.context_length,
            req.sequences,
            if req.sequences == 1 { "" } else { "s" },
            gib(self.work_space()),
            gib(available),
        )
    }
}

/// `MemAvailable` from a `/proc/meminfo` text, in bytes (proc(5): the
/// kernel's estimate of memory available for starting new applications
/// without swapping, page cache it can drop included).
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// `MemAvailable` of this machine now (`/proc/meminfo`), or `None` where it
/// cannot be read.
pub fn mem_available() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_cut_to_what_fits() {
        let c = Gemma3Config::medgemma_4b();
        let req = BudgetRequest::new(8192, 32, DType::BF16);
        // An H200 holds 32 conversations of 8192 tokens.
        assert_eq!(sequences_that_fit(&c, &req, 139 << 30), 32);
        // A 16 GB card with 12 GiB free: 9.6 GiB for the first, about
        // 0.3 GiB (+ margin) for each further one.
        let n = sequences_that_fit(&c, &req, 12 << 30);
        assert!((2..32).contains(&n), "{n}");
        let with = |n| {
            estimate(
                &c,
                &BudgetRequest {
                    sequences: n,
                    ..req
                },
            )
        };
        assert!(with(n).fits(12 << 30));
        assert!(!with(n + 1).fits(12 << 30));
        // Too small for one.
        assert_eq!(sequences_that_fit(&c, &req, 9 << 30), 0);
    }

    #[test]
    fn weights_of_the_4b_in_bf16() {
        let c = Gemma3Config::medgemma_4b();
        // 3 880 263 168 parameters (spec §1); 34·(4·2560 + 2·256) + 2560 =
        // 368 128 of them are norm weights, kept in f32.
        let norms = 368_128u64;
        assert_eq!(crate::load::parameter_count(&c), 3_880_263_168);
        assert_eq!(
            weight_bytes(&c, DType::BF16),
            (3_880_263_168 - norms) * 2 + norms * 4
        );
        assert_eq!(weight_bytes(&c, DType::BF16), 7_761_262_592);
    }

    #[test]
    fn kv_cache_of_the_4b_matches_the_spec_table() {
        let c = Gemma3Config::medgemma_4b();
        // spec model.md §4: 20 480 B per token on the 5 global layers plus a
        // fixed 121 634 816 B on the 29 local ones.
        assert_eq!(kv_cache_bytes(&c, 8192, 1, DType::BF16), 289_406_976);
        assert_eq!(kv_cache_bytes(&c, 4096, 1, DType::BF16), 205_520_896);
        assert_eq!(kv_cache_bytes(&c, 131_072, 1, DType::BF16), 2_805_989_376);
        // Below the window every layer holds the whole context.
        assert_eq!(kv_cache_bytes(&c, 512, 1, DType::BF16), 34 * 4096 * 512);
        // Each sequence has its own cache.
        assert_eq!(kv_cache_bytes(&c, 8192, 8, DType::BF16), 8 * 289_406_976);
    }

    #[test]
    fn the_4b_at_8192_tokens_needs_9_6_gib() {
        let c = Gemma3Config::medgemma_4b();
        let req = BudgetRequest::new(8192, 1, DType::BF16);
        let b = estimate(&c, &req);
        assert_eq!(b.weights, 7_761_262_592);
        assert_eq!(b.kv_cache, 289_406_976);
        // A 512-token prefill chunk against 8192 keys: 8 heads × 512 × 8192
        // f32 scores, twice (0.27 GB), dominate. In one 8192-token pass they
        // were 4.3 GB (5.5 GB of activations, 14.9 GiB in all).
        assert_eq!(b.activations, 345_505_792);
        assert_eq!(b.logits, 262_208 * 8);
        assert_eq!(
            b.margin,
            FIXED_MARGIN + (b.weights + b.kv_cache + b.activations + b.logits) / 10
        );
        assert_eq!(b.total(), 10_311_842_150);
        assert_eq!(
            b.describe(&req),
            "9.6 GiB (weights 7.2 GiB bf16, KV cache 0.3 GiB for 8192 tokens × 1 sequence, work space 2.1 GiB)"
        );
        // An H200 (139 GiB) holds it, and so does a 12 GB card with 10 GiB
        // free; 9 GiB free does not.
        assert!(b.fits(139 << 30));
        assert!(b.fits(10 << 30));
        assert!(!b.fits(9 << 30));
    }

    #[test]
    fn decode_batches_are_sized_by_their_caches() {
        let c = Gemma3Config::medgemma_4b();
        let one = estimate(&c, &BudgetRequest::new(8192, 1, DType::BF16));
        let many = estimate(&c, &BudgetRequest::new(8192, 32, DType::BF16));
        assert_eq!(many.kv_cache, 32 * one.kv_cache);
        assert!(many.total() > one.total() + 31 * one.kv_cache);
    }

    #[test]
    fn f32_doubles_the_weights() {
        let c = Gemma3Config::medgemma_4b();
        let norms = 368_128u64;
        assert_eq!(weight_bytes(&c, DType::F32), 3_880_263_168 * 4);
        assert_eq!(
            weight_bytes(&c, DType::F32) - norms * 4,
            2 * (weight_bytes(&c, DType::BF16) - norms * 4)
        );
    }

    #[test]
    fn cpu_budget_counts_weights_as_held_and_the_rest_in_f32() {
        let c = Gemma3Config::medgemma_4b();
        let norms = 368_128u64;
        let matrices = 3_880_263_168 - norms;
        // bf16 as stored is the GPU's weight size; Q8_0 is 34/32 bytes a weight.
        assert_eq!(
            safetensors_weight_bytes(&c, CpuWeights::AsStored, DType::BF16),
            weight_bytes(&c, DType::BF16)
        );
        assert_eq!(
            safetensors_weight_bytes(&c, CpuWeights::Q8_0, DType::BF16),
            matrices / 32 * 34 + norms * 4
        );
        assert_eq!(
            safetensors_weight_bytes(&c, CpuWeights::F32, DType::BF16),
            weight_bytes(&c, DType::F32)
        );
        let w = safetensors_weight_bytes(&c, CpuWeights::Q8_0, DType::BF16);
        let req = CpuBudgetRequest::new(8192, 1, w, "q8_0");
        let b = estimate_cpu(&c, &req);
        assert_eq!(b.weights, w);
        // The KV cache in f32 is twice the GPU's bf16 one.
        assert_eq!(b.kv_cache, 2 * 289_406_976);
        assert_eq!(
            b.margin,
            CPU_FIXED_MARGIN + (b.weights + b.kv_cache + b.activations + b.logits) / 10
        );
        let available = 32u64 << 30;
        assert_eq!(
            b.describe_cpu(&req, available),
            format!(
                "{} (weights {} q8_0, KV cache 0.5 GiB for 8192 tokens × 1 sequence, work space {}) of 32.0 GiB available",
                gib(b.total()),
                gib(w),
                gib(b.work_space())
            )
        );
        // 32 GiB holds several conversations, 4 GiB not one.
        let many = CpuBudgetRequest::new(8192, 8, w, "q8_0");
        let n = cpu_sequences_that_fit(&c, &many, available);
        assert!((2..=8).contains(&n), "{n}");
        assert_eq!(cpu_sequences_that_fit(&c, &many, 4 << 30), 0);
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
        // This machine's, when there is one, is below its total.
        if let (Some(a), Ok(t)) = (mem_available(), std::fs::read_to_string("/proc/meminfo")) {
            assert!(a > 0);
            assert!(t.contains("MemAvailable:"));
        }
    }
}
