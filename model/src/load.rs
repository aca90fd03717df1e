//! Loading a probed model ([`crate::probe::ModelProbe`]) onto a device: its
//! weights as Burn tensors and its tokenizer (the one given, else
//! `tokenizer.json` beside a directory's weights, else the GGUF's own).
//!
//! Owns: turning a probe into a ready model. Must never: decide what a path
//! holds (the probe does), or open anything the probe did not name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::{DType, Device};

use crate::config::{ConfigError, Gemma3Config};
use crate::gemma3::Gemma3;
use crate::generate::GenerateOptions;
use crate::gguf::GgufError;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::probe::{ModelFormat, ModelProbe, ProbeError};
use crate::sampling::SamplingParams;
use crate::tokenizer::{GemmaTokenizer, TokenizerError};
use crate::weights::{CpuWeights, WeightSource, WeightsError};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not hold a model (see [`ProbeError`]).
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Weights problem.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// GGUF problem.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Tokenizer problem.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A loaded model with its tokenizer (absent for a directory without one).
#[derive(Debug)]
pub struct LoadedModel {
    /// The decoder.
    pub model: Gemma3,
    /// The tokenizer, when the model came with one or one was given.
    pub tokenizer: Option<GemmaTokenizer>,
    /// What was loaded, for status displays.
    pub description: ModelDescription,
    /// Wall time of the whole load.
    pub load_time: Duration,
}

/// Facts about a loaded model that are safe to show and log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelDescription {
    /// The path given.
    pub path: PathBuf,
    /// "safetensors" or "gguf".
    pub format: &'static str,
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Parameters of the text decoder.
    pub parameters: u64,
}

impl LoadedModel {
    /// Generation options with the model's stop ids and the tokenizer's vocabulary.
    pub fn default_options(
        &self,
        max_new_tokens: usize,
        sampling: SamplingParams,
    ) -> GenerateOptions {
        let cfg = self.model.config();
        let mut suppressed = Vec::new();
        let mut valid_vocab = cfg.vocab_size;
        if let Some(tok) = &self.tokenizer {
            valid_vocab = tok.vocab_size().min(cfg.vocab_size);
            let s = tok.special();
            // Google's sampler forbids image tokens (spec §2.8).
            suppressed.extend(
                [s.start_of_image, s.end_of_image, s.image_soft]
                    .into_iter()
                    .flatten(),
            );
        }
        GenerateOptions {
            max_new_tokens,
            sampling,
            stop_ids: cfg.eos_token_ids.clone(),
            ignore_eos: false,
            context_limit: cfg.max_position_embeddings,
            valid_vocab,
            suppressed,
        }
    }
}

/// Loads the model at `path` onto `device` in `dtype`; `tokenizer` overrides
/// the tokenizer found with the model. On the CPU the weight matrices stay
/// as stored ([`CpuWeights::AsStored`]).
pub fn load_model(
    path: &Path,
    tokenizer: Option<&Path>,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel, LoadError> {
    load_model_with(path, tokenizer, device, dtype, CpuWeights::default())
}

/// [`load_model`], keeping the weight matrices as `cpu_weights` says when
/// `device` is the CPU (the daemon's `engine.cpu_weights`; the GPU ignores it).
pub fn load_model_with(
    path: &Path,
    tokenizer: Option<&Path>,
    device: &Device,
    dtype: DType,
    cpu_weights: CpuWeights,
) -> Result<LoadedModel, LoadError> {
    load_probed(
        ModelProbe::open(path)?,
        tokenizer,
        device,
        dtype,
        cpu_weights,
    )
}

/// Loads a probed model (its configuration and GGUF header are not read
/// again); `tokenizer` overrides the tokenizer found with the model.
pub fn load_probed(
    probe: ModelProbe,
    tokenizer: Option<&Path>,
    device: &Device,
    dtype: DType,
    cpu_weights: CpuWeights,
) -> Result<LoadedModel, LoadError> {
    let t0 = Instant::now();
    let explicit_tok = tokenizer.map(GemmaTokenizer::from_file).transpose()?;
    let ModelProbe {
        path,
        format,
        config: cfg,
        tokenizer: beside,
        gguf,
        ..
    } = probe;
    let (model, found_tok) = match (format, gguf) {
        (ModelFormat::Gguf, Some(file)) => {
            let tok = if explicit_tok.is_none() {
                let (t, info) = tokenizer_from_gguf(&file)?;
                Some(GemmaTokenizer::from_tokenizers(t, info.add_bos)?)
            } else {
                None
            };
            let mut src = WeightSource::from_gguf(&path, file);
            src.set_cpu_weights(cpu_weights);
            (Gemma3::load(&cfg, &mut src, device, dtype)?, tok)
        }
        _ => {
            let mut src = WeightSource::open_safetensors_dir(&path)?;
            src.set_cpu_weights(cpu_weights);
            let model = Gemma3::load(&cfg, &mut src, device, dtype)?;
            let tok = match (&explicit_tok, beside) {
                (None, Some(t)) => Some(GemmaTokenizer::from_file(&t)?),
                _ => None,
            };
            (model, tok)
        }
    };
    let cfg = model.config();
    let description = ModelDescription {
        format: format.as_str(),
        layers: cfg.num_layers(),
        hidden_size: cfg.hidden_size,
        parameters: parameter_count(cfg),
        path,
    };
    Ok(LoadedModel {
        model,
        tokenizer: explicit_tok.or(found_tok),
        description,
        load_time: t0.elapsed(),
    })
}

/// Text-decoder parameters implied by the configuration (spec §1: 3 880 263 168 for the 4B).
pub fn parameter_count(cfg: &Gemma3Config) -> u64 {
    let (d, f) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (h, kv, hd) = (
        cfg.num_attention_heads as u64,
        cfg.num_key_value_heads as u64,
        cfg.head_dim as u64,
    );
    let attn = d * h * hd * 2 + d * kv * hd * 2 + 2 * hd;
    let per_layer = attn + 3 * d * f + 4 * d;
    cfg.vocab_size as u64 * d + cfg.num_layers() as u64 * per_layer + d
}
