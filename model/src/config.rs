//! Gemma 3 text-decoder configuration.
//!
//! Owns: turning a Hugging Face `config.json` (nested multimodal form with
//! `text_config`, or the flat text form; transformers 4.5x and 5.x key
//! spellings) or GGUF metadata into one [`Gemma3Config`]. Nothing about the 4B
//! model is hard-coded except the documented defaults for absent keys
//! (`../shared/spec/model.md` §1). Must never: read any file but the one it is
//! given.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::gguf::GgufFile;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read model configuration {path}: {source}; check that the file exists and is readable"
    )]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error(
        "model configuration {path} is not valid JSON ({source}); copy the checkpoint's config.json again"
    )]
    Json {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A required key is absent.
    #[error(
        "model configuration {origin} lacks the required key `{key}`; is this a Gemma 3 checkpoint?"
    )]
    Missing {
        /// File (or GGUF) the key was looked up in.
        origin: String,
        /// The key.
        key: &'static str,
    },
    /// A key has a value of the wrong type or an impossible value.
    #[error("model configuration {origin} has an invalid `{key}`: {why}")]
    Invalid {
        /// File (or GGUF) the key came from.
        origin: String,
        /// The key.
        key: String,
        /// What is wrong, as a sentence fragment.
        why: String,
    },
    /// The checkpoint is not a Gemma 3 model.
    #[error(
        "model configuration {origin} describes a `{model_type}` model; only Gemma 3 (MedGemma) checkpoints are supported"
    )]
    NotGemma3 {
        /// File (or GGUF) the key came from.
        origin: String,
        /// The model type found.
        model_type: String,
    },
}

/// Whether a decoder layer attends globally or through the sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LayerType {
    /// Full causal attention, RoPE with the global base and scaling.
    Global,
    /// Sliding-window attention, RoPE with the local base, unscaled.
    Local,
}

/// Rotary-embedding parameters of one layer type (spec §2.5).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rope {
    /// Base frequency θ.
    pub theta: f64,
    /// Linear scaling factor: positions are divided by it (1.0 = unscaled).
    pub linear_factor: f64,
}

/// The Gemma 3 text decoder's shape and numerics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gemma3Config {
    /// Embedding rows (may exceed the tokenizer's size; extra rows are padding).
    pub vocab_size: usize,
    /// Residual width d.
    pub hidden_size: usize,
    /// GeGLU inner width.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: f64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// One entry per decoder layer.
    pub layer_types: Vec<LayerType>,
    /// Keys visible to a local layer: the current token and `sliding_window - 1` before it.
    pub sliding_window: usize,
    /// RoPE of global layers.
    pub rope_global: Rope,
    /// RoPE of local layers.
    pub rope_local: Rope,
    /// Longest supported context.
    pub max_position_embeddings: usize,
    /// Token that starts every prompt.
    pub bos_token_id: u32,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: u32,
    /// Final soft-cap if the file names one. Gemma 3 ignores it (spec §10); kept for the warning.
    pub final_logit_softcapping: Option<f64>,
}

impl Gemma3Config {
    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&value, &path.display().to_string())
    }

    /// Parses a `config.json` already in memory; `origin` names it in errors.
    pub fn from_json(value: &Value, origin: &str) -> Result<Self, ConfigError> {
        let top = value
            .as_object()
            .ok_or_else(|| invalid(origin, "(root)", "is not a JSON object"))?;
        // MedGemma ships the multimodal form: the decoder's keys live in `text_config`,
        // while token ids may sit at the top level.
        let text = match top.get("text_config") {
            Some(Value::Object(t)) => t,
            Some(_) => return Err(invalid(origin, "text_config", "is not an object")),
            None => top,
        };
        let keys = Keys { origin, text, top };
        keys.check_model_type()?;

        let num_layers = keys.usize_req("num_hidden_layers")?;
        let layer_types = keys.layer_types(num_layers)?;
        let (rope_global, rope_local) = keys.rope()?;
        let eos_token_ids = keys.eos_ids()?;
        let cfg = Self {
            vocab_size: keys.usize_or("vocab_size", 262_208)?,
            hidden_size: keys.usize_req("hidden_size")?,
            intermediate_size: keys.usize_req("intermediate_size")?,
            num_attention_heads: keys.usize_or("num_attention_heads", 8)?,
            num_key_value_heads: keys.usize_or("num_key_value_heads", 4)?,
            head_dim: keys.usize_or("head_dim", 256)?,
            query_pre_attn_scalar: keys.f64_or("query_pre_attn_scalar", 256.0)?,
            rms_norm_eps: keys.f64_or("rms_norm_eps", 1e-6)?,
            layer_types,
            // transformers' Gemma3TextConfig default.
            sliding_window: keys.usize_or("sliding_window", 4096)?,
            rope_global,
            rope_local,
            max_position_embeddings: keys.usize_or("max_position_embeddings", 131_072)?,
            bos_token_id: keys.u32_or("bos_token_id", 2)?,
            eos_token_ids,
            pad_token_id: keys.u32_or("pad_token_id", 0)?,
            final_logit_softcapping: keys.opt_f64("final_logit_softcapping")?,
        };
        keys.check_activation()?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Builds the configuration from a GGUF file's `gemma3.*` metadata.
    ///
    /// GGUF does not store the layer pattern, the local RoPE base or
    /// `query_pre_attn_scalar`; like llama.cpp we use every 6th layer global,
    /// local base 10 000, and `query_pre_attn_scalar = key_length`
    /// (hidden/heads for the 62-layer 27B).
    pub fn from_gguf(g: &GgufFile, origin: &Path) -> Result<Self, ConfigError> {
        let origin_s = origin.display().to_string();
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or(ConfigError::Missing {
                origin: origin_s.clone(),
                key: "general.architecture",
            })?;
        if arch != "gemma3" {
            return Err(ConfigError::NotGemma3 {
                origin: origin_s,
                model_type: arch.to_owned(),
            });
        }
        let get_u = |key: &'static str| -> Result<usize, ConfigError> {
            let full = format!("gemma3.{key}");
            g.get(&full)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or(ConfigError::Missing {
                    origin: origin_s.clone(),
                    key,
                })
        };
        let get_f = |key: &str| {
            g.get(&format!("gemma3.{key}"))
                .and_then(|v| v.as_f32())
                .map(f64::from)
        };

        let num_layers = get_u("block_count")?;
        let hidden_size = get_u("embedding_length")?;
        let heads = get_u("attention.head_count")?;
        let head_dim = get_u("attention.key_length").unwrap_or(256);
        let kv = get_u("attention.head_count_kv").unwrap_or(heads);
        let vocab_size = match g.tensor("token_embd.weight") {
            Some(t) => t.shape().first().copied().unwrap_or(0),
            None => {
                return Err(ConfigError::Missing {
                    origin: origin_s,
                    key: "token_embd.weight",
                });
            }
        };
        let pattern = 6;
        let layer_types = (0..num_layers)
            .map(|i| {
                if (i + 1) % pattern == 0 {
                    LayerType::Global
                } else {
                    LayerType::Local
                }
            })
            .collect();
        let factor = match g.get("gemma3.rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => 1.0,
            Some("linear") => get_f("rope.scaling.factor").unwrap_or(1.0),
            Some(other) => {
                return Err(invalid(
                    &origin_s,
                    "gemma3.rope.scaling.type",
                    &format!("`{other}` scaling is not supported (only linear)"),
                ));
            }
        };
        let u32_meta = |k: &str, d: u32| {
            g.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
                .unwrap_or(d)
        };
        let eos = u32_meta("tokenizer.ggml.eos_token_id", 1);
        // <end_of_turn> ends a chat turn; GGUF names only one eos, so add the other.
        let mut eos_token_ids = vec![eos];
        for extra in [1, 106] {
            if !eos_token_ids.contains(&extra) && extra < vocab_size as u32 {
                eos_token_ids.push(extra);
            }
        }
        let query_pre_attn_scalar = if num_layers == 62 {
            (hidden_size / heads) as f64
        } else {
            head_dim as f64
        };
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            query_pre_attn_scalar,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            layer_types,
            sliding_window: get_u("attention.sliding_window").unwrap_or(4096),
            rope_global: Rope {
                theta: get_f("rope.freq_base").unwrap_or(1e6),
                linear_factor: factor,
            },
            rope_local: Rope {
                theta: 10_000.0,
                linear_factor: 1.0,
            },
            max_position_embeddings: get_u("context_length").unwrap_or(131_072),
            bos_token_id: u32_meta("tokenizer.ggml.bos_token_id", 2),
            eos_token_ids,
            pad_token_id: u32_meta("tokenizer.ggml.padding_token_id", 0),
            final_logit_softcapping: None,
        };
        cfg.validate(&origin_s)?;
        Ok(cfg)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("sliding_window", self.sliding_window),
            ("num_hidden_layers", self.layer_types.len()),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(origin, key, "must be greater than zero"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(invalid(
                origin,
                "num_key_value_heads",
                "must divide num_attention_heads",
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                origin,
                "head_dim",
                "must be even for rotary embeddings",
            ));
        }
        if self.query_pre_attn_scalar <= 0.0 {
            return Err(invalid(origin, "query_pre_attn_scalar", "must be positive"));
        }
        Ok(())
    }
}

fn invalid(origin: &str, key: &str, why: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        why: why.to_owned(),
    }
}

/// Key lookup over the text config with the top level as fallback.
struct Keys<'a> {
    origin: &'a str,
    text: &'a Map<String, Value>,
    top: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        match self.text.get(key) {
            Some(Value::Null) | None => match self.top.get(key) {
                Some(Value::Null) | None => None,
                Some(v) => Some(v),
            },
            Some(v) => Some(v),
        }
    }

    fn check_model_type(&self) -> Result<(), ConfigError> {
        let model_type = self
            .text
            .get("model_type")
            .or_else(|| self.top.get("model_type"))
            .and_then(Value::as_str);
        match model_type {
            None | Some("gemma3" | "gemma3_text") => Ok(()),
            Some(other) => Err(ConfigError::NotGemma3 {
                origin: self.origin.to_owned(),
                model_type: other.to_owned(),
            }),
        }
    }

    fn check_activation(&self) -> Result<(), ConfigError> {
        let act = self
            .get("hidden_activation")
            .or_else(|| self.get("hidden_act"));
        match act.and_then(Value::as_str) {
            None | Some("gelu_pytorch_tanh" | "gelu_tanh") => Ok(()),
            Some(other) => Err(invalid(
                self.origin,
                "hidden_activation",
                &format!("`{other}` is not supported (Gemma 3 uses gelu_pytorch_tanh)"),
            )),
        }
    }

    fn usize_req(&self, key: &'static str) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Err(ConfigError::Missing {
                origin: self.origin.to_owned(),
                key,
            }),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| invalid(self.origin, key, "is not a non-negative integer")),
        }
    }

    fn usize_or(&self, key: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize_req(key),
        }
    }

    fn u32_or(&self, key: &'static str, default: u32) -> Result<u32, ConfigError> {
        let v = self.usize_or(key, default as usize)?;
        u32::try_from(v).map_err(|_| invalid(self.origin, key, "is out of range"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(self.origin, key, "is not a number")),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn eos_ids(&self) -> Result<Vec<u32>, ConfigError> {
        let mut ids = match self
            .top
            .get("eos_token_id")
            .or_else(|| self.text.get("eos_token_id"))
        {
            None | Some(Value::Null) => vec![1],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(self.origin, "eos_token_id", "is not a list of token ids")
                })?,
            Some(v) => vec![
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| invalid(self.origin, "eos_token_id", "is not a token id"))?,
            ],
        };
        // Gemma 3 always ends a chat turn with <end_of_turn> (106) and text with <eos> (1).
        for id in [1, 106] {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// `layer_types` wins over the pattern (spec §1).
    fn layer_types(&self, n: usize) -> Result<Vec<LayerType>, ConfigError> {
        if let Some(v) = self.get("layer_types") {
            let list = v
                .as_array()
                .ok_or_else(|| invalid(self.origin, "layer_types", "is not a list"))?;
            if list.len() != n {
                return Err(invalid(
                    self.origin,
                    "layer_types",
                    &format!("has {} entries but num_hidden_layers is {n}", list.len()),
                ));
            }
            return list
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(LayerType::Global),
                    Some("sliding_attention") => Ok(LayerType::Local),
                    _ => Err(invalid(
                        self.origin,
                        "layer_types",
                        "entries must be \"full_attention\" or \"sliding_attention\"",
                    )),
                })
                .collect();
        }
        let pattern = match self
            .get("sliding_window_pattern")
            .or_else(|| self.get("_sliding_window_pattern"))
        {
            None => 6,
            Some(v) => v.as_u64().filter(|&p| p > 0).ok_or_else(|| {
                invalid(
                    self.origin,
                    "sliding_window_pattern",
                    "is not a positive integer",
                )
            })? as usize,
        };
        Ok((0..n)
            .map(|i| {
                if (i + 1) % pattern == 0 {
                    LayerType::Global
                } else {
                    LayerType::Local
                }
            })
            .collect())
    }

    /// Global and local RoPE from either key layout (spec §1).
    fn rope(&self) -> Result<(Rope, Rope), ConfigError> {
        if let Some(params) = self.get("rope_parameters") {
            let obj = params
                .as_object()
                .ok_or_else(|| invalid(self.origin, "rope_parameters", "is not an object"))?;
            if obj.contains_key("full_attention") || obj.contains_key("sliding_attention") {
                let global = match obj.get("full_attention") {
                    Some(p) => self.rope_entry(p, "rope_parameters.full_attention", 1e6)?,
                    None => Rope {
                        theta: 1e6,
                        linear_factor: 1.0,
                    },
                };
                let local = match obj.get("sliding_attention") {
                    Some(p) => self.rope_entry(p, "rope_parameters.sliding_attention", 1e4)?,
                    None => Rope {
                        theta: 1e4,
                        linear_factor: 1.0,
                    },
                };
                return Ok((global, local));
            }
            // A flat rope_parameters applies to the global layers.
            let global = self.rope_entry(params, "rope_parameters", 1e6)?;
            let local_theta = self.f64_or("rope_local_base_freq", 1e4)?;
            return Ok((
                global,
                Rope {
                    theta: local_theta,
                    linear_factor: 1.0,
                },
            ));
        }
        let theta = self.f64_or("rope_theta", 1e6)?;
        let factor = match self.get("rope_scaling") {
            None => 1.0,
            Some(s) => self.rope_entry(s, "rope_scaling", theta)?.linear_factor,
        };
        let local_theta = self.f64_or("rope_local_base_freq", 1e4)?;
        Ok((
            Rope {
                theta,
                linear_factor: factor,
            },
            Rope {
                theta: local_theta,
                linear_factor: 1.0,
            },
        ))
    }

    fn rope_entry(&self, v: &Value, key: &str, default_theta: f64) -> Result<Rope, ConfigError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(self.origin, key, "is not an object"))?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let theta = match obj.get("rope_theta") {
            None => default_theta,
            Some(t) => t
                .as_f64()
                .ok_or_else(|| invalid(self.origin, key, "has a non-numeric rope_theta"))?,
        };
        let linear_factor = match kind {
            "default" => 1.0,
            "linear" => obj
                .get("factor")
                .and_then(Value::as_f64)
                .filter(|f| *f > 0.0)
                .ok_or_else(|| {
                    invalid(self.origin, key, "linear scaling needs a positive `factor`")
                })?,
            other => {
                return Err(invalid(
                    self.origin,
                    key,
                    &format!(
                        "rope type `{other}` is not supported (Gemma 3 uses linear or default)"
                    ),
                ));
            }
        };
        Ok(Rope {
            theta,
            linear_factor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn medgemma_like() -> Value {
        // The original Gemma 3 4B config.json lists only a handful of keys.
        json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "eos_token_id": [1, 106],
            "text_config": {
                "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024
            }
        })
    }

    #[test]
    fn defaults_fill_the_4b_shape() {
        let c = Gemma3Config::from_json(&medgemma_like(), "t").unwrap();
        assert_eq!(c.num_attention_heads, 8);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.vocab_size, 262_208);
        assert_eq!(c.query_pre_attn_scalar, 256.0);
        let globals: Vec<usize> = c
            .layer_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == LayerType::Global)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(globals, vec![5, 11, 17, 23, 29]);
        assert_eq!(
            c.rope_global,
            Rope {
                theta: 1e6,
                linear_factor: 8.0
            }
        );
        assert_eq!(
            c.rope_local,
            Rope {
                theta: 1e4,
                linear_factor: 1.0
            }
        );
        assert_eq!(c.eos_token_ids, vec![1, 106]);
    }

    #[test]
    fn transformers5_layout() {
        let v = json!({
            "model_type": "gemma3_text", "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}
            }
        });
        let c = Gemma3Config::from_json(&v, "t").unwrap();
        assert_eq!(
            c.layer_types,
            vec![LayerType::Local, LayerType::Global, LayerType::Local]
        );
        assert_eq!(c.rope_global.linear_factor, 4.0);
        assert_eq!(c.rope_local.theta, 1e4);
    }

    #[test]
    fn missing_and_bad_keys_name_the_key() {
        let v = json!({"model_type": "gemma3_text", "hidden_size": 48});
        let e = Gemma3Config::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_hidden_layers"), "{e}");
        let v = json!({"model_type": "llama", "hidden_size": 48});
        let e = Gemma3Config::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("llama"), "{e}");
        let mut v = medgemma_like();
        v["text_config"]["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
        let e = Gemma3Config::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("yarn"), "{e}");
        let mut v = medgemma_like();
        v["text_config"]["layer_types"] = json!(["full_attention"]);
        let e = Gemma3Config::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_types"), "{e}");
    }
}
