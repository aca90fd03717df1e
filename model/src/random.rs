//! The MedGemma 4B text shapes with random weights, for benchmarks on a
//! machine without the checkpoint (`medgemmad bench --random-4b`).
//!
//! Owns: `Gemma3Config::medgemma_4b()` (the numbers of spec model.md §1) and
//! random initialisation directly on the device (no host copy of the
//! 8–16 GB of weights). Must never: be used to answer a user (the outputs
//! are noise).

use burn::tensor::{DType, Device, Distribution, Tensor};

use crate::config::{Gemma3Config, LayerType, Rope};
use crate::gemma3::{Gemma3, TensorSource};
use crate::weights::WeightsError;

/// Standard deviation of every random linear weight and embedding entry:
/// with `(1 + 0)` norms, each product's output has about unit variance
/// (`√2560 · 0.02 ≈ 1`), so activations and logits stay finite in bf16.
pub const RANDOM_STD: f64 = 0.02;

impl Gemma3Config {
    /// Gemma 3 4B / MedGemma 1.5 4B text decoder (spec model.md §1): 34
    /// layers (global 5, 11, 17, 23, 29), d 2560, GeGLU 10240, 8 query and 4
    /// KV heads of 256, vocabulary 262 208, window 1024, RoPE 1e6 ÷ 8 global
    /// and 1e4 local, 128K context.
    pub fn medgemma_4b() -> Self {
        let layers = 34;
        Self {
            vocab_size: 262_208,
            hidden_size: 2560,
            intermediate_size: 10_240,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            query_pre_attn_scalar: 256.0,
            rms_norm_eps: 1e-6,
            layer_types: (0..layers)
                .map(|i| {
                    if (i + 1) % 6 == 0 {
                        LayerType::Global
                    } else {
                        LayerType::Local
                    }
                })
                .collect(),
            sliding_window: 1024,
            rope_global: Rope {
                theta: 1_000_000.0,
                linear_factor: 8.0,
            },
            rope_local: Rope {
                theta: 10_000.0,
                linear_factor: 1.0,
            },
            max_position_embeddings: 131_072,
            bos_token_id: 2,
            eos_token_ids: vec![1, 106],
            pad_token_id: 0,
            final_logit_softcapping: None,
        }
    }
}

/// Random tensors made on the device: normal(0, [`RANDOM_STD`]) matrices and
/// zero norm offsets (identity norms).
struct RandomTensors<'a> {
    device: &'a Device,
    dtype: DType,
}

impl TensorSource for RandomTensors<'_> {
    fn matrix(&mut self, _name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        Ok(Tensor::<2>::random(
            shape,
            Distribution::Normal(0.0, RANDOM_STD),
            (self.device, self.dtype),
        ))
    }

    fn norm(&mut self, _name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        Ok(Tensor::<1>::zeros([n], (self.device, DType::F32)))
    }
}

impl Gemma3 {
    /// A decoder of `cfg`'s shapes with random weights created on `device` in
    /// `dtype`; `seed` seeds the device's generator (some backends seed
    /// globally, see `Device::seed`).
    pub fn random(cfg: &Gemma3Config, device: &Device, dtype: DType, seed: u64) -> Self {
        device.seed(seed);
        match Self::build(cfg, &mut RandomTensors { device, dtype }, device, dtype) {
            Ok(m) => m,
            // RandomTensors never fails.
            Err(e) => unreachable!("random weights cannot fail: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parameter_count;

    /// The constructor is what the real config.json gives (absent keys take
    /// the spec's defaults), so tests may use either.
    #[test]
    fn medgemma_4b_is_what_its_config_json_gives() {
        let v = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "eos_token_id": [1, 106],
            "text_config": {
                "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024
            }
        });
        let parsed = Gemma3Config::from_json(&v, "medgemma-4b").unwrap();
        assert_eq!(parsed, Gemma3Config::medgemma_4b());
    }

    #[test]
    fn medgemma_4b_matches_the_spec_numbers() {
        let cfg = Gemma3Config::medgemma_4b();
        // spec model.md §1: text decoder 3 880 263 168 parameters.
        assert_eq!(parameter_count(&cfg), 3_880_263_168);
        let (d, v) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
        assert_eq!(v * d, 671_252_480, "embedding");
        let per_layer = (parameter_count(&cfg) - v * d - d) / cfg.num_layers() as u64;
        assert_eq!(per_layer, 94_382_592);
        let globals: Vec<usize> = cfg
            .layer_types
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == LayerType::Global)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(globals, vec![5, 11, 17, 23, 29]);
        assert_eq!(cfg.num_layers(), 34);
        assert_eq!(cfg.num_attention_heads * cfg.head_dim, 2048);
        assert_eq!(cfg.sliding_window, 1024);
        assert_eq!(cfg.rope_global.linear_factor, 8.0);
        assert_eq!(cfg.rope_local.theta, 10_000.0);
        assert_eq!(cfg.query_pre_attn_scalar, 256.0);
        assert_eq!(cfg.eos_token_ids, vec![1, 106]);
    }
}
