//! Vision configuration: the `vision_config` of a `Gemma3ForConditionalGeneration`
//! `config.json` plus the multimodal keys at its top level (spec model.md §1, §5).
//!
//! Owns: reading those keys with Gemma 3's defaults for absent ones (its
//! published config.json lists only hidden 1152, intermediate 4304, 27
//! layers, 16 heads, image 896, patch 14) and checking that the shapes fit
//! together. Must never: read any file but the one it is given.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::ConfigError;

/// The SigLIP encoder's and the projector's shapes, and the image token ids.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VisionConfig {
    /// Encoder width (1152).
    pub hidden_size: usize,
    /// MLP inner width (4304).
    pub intermediate_size: usize,
    /// Encoder layers (27).
    pub num_layers: usize,
    /// Attention heads (16, of 72 dims).
    pub num_heads: usize,
    /// Side of the square input image (896).
    pub image_size: usize,
    /// Side of a patch (14).
    pub patch_size: usize,
    /// Epsilon of the LayerNorms and of the projector's RMSNorm (1e-6).
    pub layer_norm_eps: f64,
    /// Image tokens per image after pooling (256).
    pub mm_tokens_per_image: usize,
    /// Width of the text decoder the projector maps to (2560).
    pub text_hidden_size: usize,
    /// `<image_soft_token>` (262144).
    pub image_token_index: u32,
    /// `<start_of_image>` (255999).
    pub boi_token_index: u32,
    /// `<end_of_image>` (256000).
    pub eoi_token_index: u32,
}

impl VisionConfig {
    /// MedGemma 1.5 4B / Gemma 3 4B (spec model.md §1, §5): SigLIP So400m at 896.
    pub fn medgemma_4b() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_layers: 27,
            num_heads: 16,
            image_size: 896,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            mm_tokens_per_image: 256,
            text_hidden_size: 2560,
            image_token_index: 262_144,
            boi_token_index: 255_999,
            eoi_token_index: 256_000,
        }
    }

    /// Patches along one side (64).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image (4096).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }

    /// Pooled tokens along one side (16).
    pub fn tokens_per_side(&self) -> usize {
        (self.mm_tokens_per_image as f64).sqrt().round() as usize
    }

    /// Side of the average-pooling window (4).
    pub fn pool_kernel(&self) -> usize {
        self.patches_per_side() / self.tokens_per_side().max(1)
    }

    /// Width of one attention head (72).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// How the chat template writes one image of this model into the prompt ids.
    pub fn image_tokens(&self) -> crate::chat::ImageTokens {
        crate::chat::ImageTokens {
            start: self.boi_token_index,
            soft: self.image_token_index,
            end: self.eoi_token_index,
            per_image: self.mm_tokens_per_image,
        }
    }

    /// Encoder + projector parameters (spec §1: 416 866 032 + 2 950 272).
    pub fn parameter_count(&self) -> u64 {
        let (d, f) = (self.hidden_size as u64, self.intermediate_size as u64);
        let p = (self.patch_size * self.patch_size * 3) as u64;
        let embeddings = d * p + d + self.num_patches() as u64 * d;
        let layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d;
        let projector = d + d * self.text_hidden_size as u64;
        embeddings + self.num_layers as u64 * layer + 2 * d + projector
    }

    /// Reads a multimodal `config.json`; `Ok(None)` when it has no `vision_config`
    /// (a text-only checkpoint).
    pub fn from_file(path: &Path) -> Result<Option<Self>, ConfigError> {
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

    /// Parses a `config.json` in memory; `origin` names it in errors.
    pub fn from_json(value: &Value, origin: &str) -> Result<Option<Self>, ConfigError> {
        let Some(top) = value.as_object() else {
            return Err(invalid(origin, "(root)", "is not a JSON object"));
        };
        let vision = match top.get("vision_config") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(v)) => v,
            Some(_) => return Err(invalid(origin, "vision_config", "is not an object")),
        };
        let empty = Map::new();
        let text = match top.get("text_config") {
            Some(Value::Object(t)) => t,
            _ => &empty,
        };
        let d = Self::medgemma_4b();
        let num =
            |map: &Map<String, Value>, key: &str, default: usize| -> Result<usize, ConfigError> {
                match map.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => v
                        .as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| invalid(origin, key, "is not a non-negative integer")),
                }
            };
        let id = |key: &str, default: u32| -> Result<u32, ConfigError> {
            let v = num(top, key, default as usize)?;
            u32::try_from(v).map_err(|_| invalid(origin, key, "is out of range"))
        };
        if let Some(model_type) = vision.get("model_type").and_then(Value::as_str)
            && model_type != "siglip_vision_model"
        {
            return Err(invalid(
                origin,
                "vision_config.model_type",
                &format!("`{model_type}` is not the SigLIP encoder Gemma 3 uses"),
            ));
        }
        if vision.get("vision_use_head").and_then(Value::as_bool) == Some(true) {
            return Err(invalid(
                origin,
                "vision_config.vision_use_head",
                "must be false (Gemma 3 reads every patch, not a pooled head)",
            ));
        }
        match vision.get("hidden_act").and_then(Value::as_str) {
            None | Some("gelu_pytorch_tanh" | "gelu_tanh") => {}
            Some(other) => {
                return Err(invalid(
                    origin,
                    "vision_config.hidden_act",
                    &format!("`{other}` is not supported (SigLIP uses gelu_pytorch_tanh)"),
                ));
            }
        }
        if let Some(c) = vision.get("num_channels").and_then(Value::as_u64)
            && c != 3
        {
            return Err(invalid(origin, "vision_config.num_channels", "must be 3"));
        }
        let cfg = Self {
            hidden_size: num(vision, "hidden_size", d.hidden_size)?,
            intermediate_size: num(vision, "intermediate_size", d.intermediate_size)?,
            num_layers: num(vision, "num_hidden_layers", d.num_layers)?,
            num_heads: num(vision, "num_attention_heads", d.num_heads)?,
            image_size: num(vision, "image_size", d.image_size)?,
            patch_size: num(vision, "patch_size", d.patch_size)?,
            layer_norm_eps: match vision.get("layer_norm_eps") {
                None | Some(Value::Null) => d.layer_norm_eps,
                Some(v) => v.as_f64().ok_or_else(|| {
                    invalid(origin, "vision_config.layer_norm_eps", "is not a number")
                })?,
            },
            mm_tokens_per_image: num(top, "mm_tokens_per_image", d.mm_tokens_per_image)?,
            text_hidden_size: num(text, "hidden_size", d.text_hidden_size)?,
            image_token_index: id("image_token_index", d.image_token_index)?,
            boi_token_index: id("boi_token_index", d.boi_token_index)?,
            eoi_token_index: id("eoi_token_index", d.eoi_token_index)?,
        };
        cfg.validate(origin)?;
        Ok(Some(cfg))
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        for (key, v) in [
            ("vision_config.hidden_size", self.hidden_size),
            ("vision_config.intermediate_size", self.intermediate_size),
            ("vision_config.num_hidden_layers", self.num_layers),
            ("vision_config.num_attention_heads", self.num_heads),
            ("vision_config.image_size", self.image_size),
            ("vision_config.patch_size", self.patch_size),
            ("mm_tokens_per_image", self.mm_tokens_per_image),
        ] {
            if v == 0 {
                return Err(invalid(origin, key, "must be greater than zero"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(invalid(
                origin,
                "vision_config.num_attention_heads",
                "must divide hidden_size",
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(invalid(
                origin,
                "vision_config.patch_size",
                "must divide image_size",
            ));
        }
        let side = self.tokens_per_side();
        if side * side != self.mm_tokens_per_image || !self.patches_per_side().is_multiple_of(side)
        {
            return Err(invalid(
                origin,
                "mm_tokens_per_image",
                "must be a square whose side divides the patches per side",
            ));
        }
        if self.image_size > 4096 {
            return Err(invalid(
                origin,
                "vision_config.image_size",
                "is larger than 4096",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma3_config_json_gives_the_4b_tower() {
        // The published Gemma 3 4B config.json's multimodal keys.
        let v = serde_json::json!({
            "architectures": ["Gemma3ForConditionalGeneration"],
            "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
            "mm_tokens_per_image": 256, "model_type": "gemma3",
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                            "num_hidden_layers": 34},
            "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                              "model_type": "siglip_vision_model", "num_attention_heads": 16,
                              "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
        });
        let c = VisionConfig::from_json(&v, "t").unwrap().unwrap();
        assert_eq!(c, VisionConfig::medgemma_4b());
        assert_eq!(c.num_patches(), 4096);
        assert_eq!(c.pool_kernel(), 4);
        assert_eq!(c.head_dim(), 72);
        // spec model.md §1: vision tower 416 866 032 + projector 2 950 272.
        assert_eq!(c.parameter_count(), 416_866_032 + 2_950_272);
    }

    #[test]
    fn text_only_config_has_no_tower_and_bad_shapes_are_refused() {
        let v = serde_json::json!({"model_type": "gemma3_text", "hidden_size": 64});
        assert_eq!(VisionConfig::from_json(&v, "t").unwrap(), None);
        let v = serde_json::json!({"mm_tokens_per_image": 200, "vision_config": {}});
        let e = VisionConfig::from_json(&v, "t").unwrap_err().to_string();
        assert!(e.contains("mm_tokens_per_image"), "{e}");
        let v = serde_json::json!({"vision_config": {"vision_use_head": true}});
        assert!(VisionConfig::from_json(&v, "t").is_err());
    }
}
