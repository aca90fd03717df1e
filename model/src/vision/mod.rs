//! The image path of MedGemma in Burn: the SigLIP encoder and the
//! multimodal projector (spec model.md §5.2, §5.3), on the CPU (f32) and
//! CUDA (bf16) with the same code as the text decoder.
//!
//! Mirrors Hugging Face `transformers`: `models/siglip/modeling_siglip.py`
//! (`SiglipVisionEmbeddings`, `SiglipEncoderLayer`, `SiglipAttention`,
//! `SiglipMLP`, `post_layernorm`) and `models/gemma3/modeling_gemma3.py`
//! (`Gemma3MultiModalProjector`); tensor names are the checkpoint's
//! (`weights.rs`). [`VisionTower::encode`] turns preprocessed images
//! ([`crate::image::PixelValues`]) into one row of text-width embeddings per
//! image token; [`prefill`] runs a prompt whose `<image_soft_token>`s those
//! rows replace, with attention bidirectional inside each image.
//!
//! Owns: vision weights on the device and the encoder/projector forward
//! pass. Must never: read files other than the model's, see text, or keep
//! an image or its embeddings after returning them.

pub mod config;
pub mod prefill;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::tensor::activation::{gelu_approximate, softmax};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};

pub use config::VisionConfig;
pub use prefill::{ImagePrefill, image_blocks};

use crate::config::ConfigError;
use crate::image::PixelValues;
use weights::VisionWeights;

/// Why the vision tower could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration has no `vision_config`.
    #[error(
        "model configuration {path} has no vision_config: this checkpoint is text-only and cannot read images"
    )]
    NoVision {
        /// The config file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read model file {path}: {source}; check that it exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A weights file or index is invalid.
    #[error("model file {path} is invalid ({why}); copy it again from the original release")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A vision tensor is absent.
    #[error(
        "model {path} lacks vision tensor `{tensor}`; the checkpoint is incomplete or text-only"
    )]
    Missing {
        /// The model directory.
        path: PathBuf,
        /// Canonical name (`vision.` or `projector.` + the checkpoint's name).
        tensor: String,
    },
    /// A tensor does not have the shape the configuration implies.
    #[error(
        "tensor `{tensor}` in {path} has shape {found:?} but the configuration needs {expected:?}; config.json and weights do not belong together"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// On disk.
        found: Vec<usize>,
        /// Expected.
        expected: Vec<usize>,
    },
    /// Vision tensors nobody asked for.
    #[error(
        "model {path} holds unexpected vision tensors (first: `{first}`, {count} in all); it is not a Gemma 3 vision tower this engine understands"
    )]
    Unexpected {
        /// The model directory.
        path: PathBuf,
        /// First unexpected name.
        first: String,
        /// How many.
        count: usize,
    },
    /// An image of the wrong size was given to the encoder.
    #[error(
        "an image was preprocessed to {got} × {got} but the encoder reads {want} × {want}; preprocess with the model's image size"
    )]
    ImageSize {
        /// Side given.
        got: usize,
        /// Side the configuration needs.
        want: usize,
    },
    /// Image rows and image tokens do not match.
    #[error(
        "the prompt has {tokens} image tokens but {rows} image embedding rows were given; each image needs exactly its block of tokens"
    )]
    TokenCount {
        /// Image tokens in the prompt.
        tokens: usize,
        /// Rows of embeddings.
        rows: usize,
    },
}

/// Where [`VisionTower::build`] takes its tensors: a checkpoint, a checker
/// (validation without reading) or a random initialiser.
trait VisionSource {
    /// A tensor stored with `disk` shape, returned as `[rows, cols]` in `dtype`.
    fn matrix(
        &mut self,
        name: &str,
        disk: &[usize],
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Tensor<2>, VisionError>;
    /// A vector of width `n` in `dtype`.
    fn vector(&mut self, name: &str, n: usize, dtype: DType) -> Result<Tensor<1>, VisionError>;
}

struct Checkpoint<'a> {
    src: &'a mut VisionWeights,
    device: &'a Device,
}

impl VisionSource for Checkpoint<'_> {
    fn matrix(
        &mut self,
        name: &str,
        disk: &[usize],
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Tensor<2>, VisionError> {
        let data = self.src.load(name, disk, &shape, dtype)?;
        Ok(Tensor::<2>::from_data(data, (self.device, dtype)))
    }

    fn vector(&mut self, name: &str, n: usize, dtype: DType) -> Result<Tensor<1>, VisionError> {
        let data = self.src.load(name, &[n], &[n], dtype)?;
        Ok(Tensor::<1>::from_data(data, (self.device, dtype)))
    }
}

/// Checks each tensor and returns empty placeholders (nothing read).
struct Checker<'a> {
    src: &'a mut VisionWeights,
    device: &'a Device,
    seen: usize,
}

impl VisionSource for Checker<'_> {
    fn matrix(
        &mut self,
        name: &str,
        disk: &[usize],
        shape: [usize; 2],
        _dtype: DType,
    ) -> Result<Tensor<2>, VisionError> {
        self.src.check(name, disk)?;
        self.seen += 1;
        Ok(Tensor::<2>::empty([shape[0], 0], (self.device, DType::F32)))
    }

    fn vector(&mut self, name: &str, n: usize, _dtype: DType) -> Result<Tensor<1>, VisionError> {
        self.src.check(name, &[n])?;
        self.seen += 1;
        Ok(Tensor::<1>::empty([0], (self.device, DType::F32)))
    }
}

/// Random weights on the device (benchmarks): normal(0, 0.02) matrices,
/// LayerNorm weights 1, every bias and the RMSNorm offset 0.
struct Random<'a> {
    device: &'a Device,
}

impl VisionSource for Random<'_> {
    fn matrix(
        &mut self,
        _name: &str,
        _disk: &[usize],
        shape: [usize; 2],
        dtype: DType,
    ) -> Result<Tensor<2>, VisionError> {
        Ok(Tensor::<2>::random(
            shape,
            Distribution::Normal(0.0, crate::random::RANDOM_STD),
            (self.device, dtype),
        ))
    }

    fn vector(&mut self, name: &str, n: usize, dtype: DType) -> Result<Tensor<1>, VisionError> {
        let layer_norm_weight = (name.contains("layer_norm") || name.contains("post_layernorm"))
            && name.ends_with(".weight");
        Ok(if layer_norm_weight {
            Tensor::<1>::ones([n], (self.device, dtype))
        } else {
            Tensor::<1>::zeros([n], (self.device, dtype))
        })
    }
}

/// `nn.Linear` with bias, weight kept `[out, in]` as stored.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Linear {
    fn load(
        src: &mut dyn VisionSource,
        name: &str,
        out: usize,
        inp: usize,
        dtype: DType,
    ) -> Result<Self, VisionError> {
        Ok(Self {
            weight: src.matrix(&format!("{name}.weight"), &[out, inp], [out, inp], dtype)?,
            bias: src.vector(&format!("{name}.bias"), out, dtype)?,
        })
    }

    /// `x · Wᵀ + b` for `x: [N, in]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // f32 without TF32 on a GPU (`linear::matmul`).
        crate::linear::matmul(x, self.weight.clone().transpose())
            + self.bias.clone().unsqueeze::<2>()
    }
}

/// `nn.LayerNorm` (weight and bias), computed in f32.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    fn load(
        src: &mut dyn VisionSource,
        name: &str,
        n: usize,
        eps: f64,
    ) -> Result<Self, VisionError> {
        Ok(Self {
            weight: src.vector(&format!("{name}.weight"), n, DType::F32)?,
            bias: src.vector(&format!("{name}.bias"), n, DType::F32)?,
            eps,
        })
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(1);
        let y = centered * (var + self.eps).sqrt().recip();
        let y = y * self.weight.clone().unsqueeze::<2>() + self.bias.clone().unsqueeze::<2>();
        y.cast(dtype)
    }
}

/// `SiglipEncoderLayer`: pre-LN attention and MLP, both residual.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Largest temporary the CPU path makes, in bytes. glibc's allocator serves
/// blocks above 32 MiB (`DEFAULT_MMAP_THRESHOLD_MAX`) with a fresh `mmap`
/// each time, so every such temporary costs page faults and zeroing: run
/// whole, the encoder's 70 MB MLP activations and 1 GiB attention scores
/// spent a quarter of its CPU time in the kernel (`vision_speed`, 42 s of
/// 166 s). Row chunks below the threshold are recycled by the allocator.
const CPU_CHUNK_BYTES: usize = 16 << 20;

/// Largest f32 attention score buffer on an accelerator (`B × heads × rows × patches × 4 B`):
/// one 896 image's whole 16 × 4096 × 4096 scores, in one product per layer.
const DEVICE_SCORE_BYTES: usize = 1 << 30;

/// Rows per chunk so that `rows × row_bytes` stays within `budget` (at least 1, at most `n`).
fn chunk_rows(n: usize, row_bytes: usize, budget: usize) -> usize {
    (budget / row_bytes.max(1)).clamp(1, n.max(1))
}

/// SigLIP encoder + Gemma 3 projector.
#[derive(Debug, Clone)]
pub struct VisionTower {
    cfg: VisionConfig,
    device: Device,
    dtype: DType,
    /// Patch convolution as a matrix `[D, 3·p·p]` (input channel, row, column order).
    patch_weight: Tensor<2>,
    patch_bias: Tensor<1>,
    /// `[patches, D]`.
    position_embedding: Tensor<2>,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    /// Gemma RMSNorm scale `1 + w`, f32.
    soft_emb_scale: Tensor<1>,
    /// `[D, text hidden]`, stored `[in, out]` (spec §3.2: no transpose).
    projection: Tensor<2>,
    /// Row-chunk budgets in bytes: (attention scores, MLP activations); see
    /// [`CPU_CHUNK_BYTES`] and [`DEVICE_SCORE_BYTES`].
    chunk_bytes: (usize, usize),
}

impl VisionTower {
    /// Loads the tower of the model directory `dir` (its `config.json` and
    /// safetensors) onto `device` in `dtype` (F32 or BF16).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, VisionError> {
        let cfg = read_config(dir)?;
        let mut src = VisionWeights::open(dir)?;
        let tower = Self::build(
            &cfg,
            &mut Checkpoint {
                src: &mut src,
                device,
            },
            device,
            dtype,
        )?;
        src.finish()?;
        Ok(tower)
    }

    /// A tower of `cfg`'s shapes with random weights (benchmarks only: its
    /// outputs are noise).
    pub fn random(cfg: &VisionConfig, device: &Device, dtype: DType, seed: u64) -> Self {
        device.seed(seed);
        match Self::build(cfg, &mut Random { device }, device, dtype) {
            Ok(t) => t,
            Err(e) => unreachable!("random weights cannot fail: {e}"),
        }
    }

    fn build(
        cfg: &VisionConfig,
        src: &mut dyn VisionSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, VisionError> {
        let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let p = cfg.patch_size;
        let emb = "vision.embeddings";
        let patch_weight = src.matrix(
            &format!("{emb}.patch_embedding.weight"),
            &[d, 3, p, p],
            [d, 3 * p * p],
            dtype,
        )?;
        let patch_bias = src.vector(&format!("{emb}.patch_embedding.bias"), d, dtype)?;
        let n = cfg.num_patches();
        let position_embedding = src.matrix(
            &format!("{emb}.position_embedding.weight"),
            &[n, d],
            [n, d],
            dtype,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = format!("vision.encoder.layers.{i}");
            layers.push(EncoderLayer {
                layer_norm1: LayerNorm::load(src, &format!("{l}.layer_norm1"), d, eps)?,
                q_proj: Linear::load(src, &format!("{l}.self_attn.q_proj"), d, d, dtype)?,
                k_proj: Linear::load(src, &format!("{l}.self_attn.k_proj"), d, d, dtype)?,
                v_proj: Linear::load(src, &format!("{l}.self_attn.v_proj"), d, d, dtype)?,
                out_proj: Linear::load(src, &format!("{l}.self_attn.out_proj"), d, d, dtype)?,
                layer_norm2: LayerNorm::load(src, &format!("{l}.layer_norm2"), d, eps)?,
                fc1: Linear::load(src, &format!("{l}.mlp.fc1"), f, d, dtype)?,
                fc2: Linear::load(src, &format!("{l}.mlp.fc2"), d, f, dtype)?,
            });
        }
        let post_layernorm = LayerNorm::load(src, "vision.post_layernorm", d, eps)?;
        let soft_emb_scale = src.vector("projector.mm_soft_emb_norm.weight", d, DType::F32)? + 1.0;
        let t = cfg.text_hidden_size;
        let projection = src.matrix(
            "projector.mm_input_projection_weight",
            &[d, t],
            [d, t],
            dtype,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            dtype,
            patch_weight,
            patch_bias,
            position_embedding,
            layers,
            post_layernorm,
            soft_emb_scale,
            projection,
            chunk_bytes: if *device == Device::flex() {
                (CPU_CHUNK_BYTES, CPU_CHUNK_BYTES)
            } else {
                (DEVICE_SCORE_BYTES, usize::MAX)
            },
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Embeddings of `images`, in order: `[images × mm_tokens_per_image,
    /// text hidden]` in the compute dtype, the rows that replace the
    /// prompt's image soft tokens (they are not scaled by √d, spec §2.1).
    ///
    /// # Errors
    /// [`VisionError::ImageSize`] when an image was not preprocessed to the
    /// encoder's size.
    pub fn encode(&self, images: &[PixelValues]) -> Result<Tensor<2>, VisionError> {
        let size = self.cfg.image_size;
        if let Some(bad) = images
            .iter()
            .find(|i| i.size != size || i.data.len() != 3 * size * size)
        {
            return Err(VisionError::ImageSize {
                got: bad.size,
                want: size,
            });
        }
        let b = images.len();
        if b == 0 {
            return Ok(Tensor::<2>::empty(
                [0, self.cfg.text_hidden_size],
                (&self.device, self.dtype),
            ));
        }
        let hidden = self.encoder(images);
        Ok(self.project(hidden, b))
    }

    /// `SiglipVisionTransformer` without head: `[B·patches, D]` after `post_layernorm`.
    fn encoder(&self, images: &[PixelValues]) -> Tensor<2> {
        let cfg = &self.cfg;
        let (b, n, d) = (images.len(), cfg.num_patches(), cfg.hidden_size);
        // SiglipVisionEmbeddings: the 14 × 14 stride-14 convolution is a
        // product of each patch (flattened channel, row, column, as the
        // conv weight) with the weight matrix.
        let patches = patchify(images, cfg.patch_size);
        let k = 3 * cfg.patch_size * cfg.patch_size;
        let x = Tensor::<2>::from_data(
            TensorData::new(patches, [b * n, k]),
            (&self.device, DType::F32),
        )
        .cast(self.dtype);
        let x = crate::linear::matmul(x, self.patch_weight.clone().transpose())
            + self.patch_bias.clone().unsqueeze::<2>();
        let mut x = (x.reshape([b, n, d]) + self.position_embedding.clone().unsqueeze::<3>())
            .reshape([b * n, d]);
        for layer in &self.layers {
            x = self.layer_forward(layer, x, b);
        }
        self.post_layernorm.forward(x)
    }

    fn layer_forward(&self, layer: &EncoderLayer, x: Tensor<2>, b: usize) -> Tensor<2> {
        let cfg = &self.cfg;
        let (n, d, h) = (cfg.num_patches(), cfg.hidden_size, cfg.num_heads);
        let hd = cfg.head_dim();
        let residual = x.clone();
        let a = layer.layer_norm1.forward(x);
        let heads = |t: Tensor<2>| t.reshape([b, n, h, hd]).swap_dims(1, 2);
        let q = heads(layer.q_proj.forward(a.clone()));
        let k = heads(layer.k_proj.forward(a.clone()));
        let v = heads(layer.v_proj.forward(a));
        // SiglipAttention: no mask (every patch sees every patch), no RoPE,
        // scale head_dim^-1/2; softmax in f32.
        let scale = (hd as f64).powf(-0.5);
        let kt = k.swap_dims(2, 3);
        let rows = chunk_rows(n, b * h * n * 4, self.chunk_bytes.0);
        let mut outs = Vec::with_capacity(n.div_ceil(rows));
        let mut r = 0;
        while r < n {
            let e = (r + rows).min(n);
            let qc = q.clone().slice([0..b, 0..h, r..e, 0..hd]);
            let scores = crate::linear::matmul(qc, kt.clone())
                .mul_scalar(scale)
                .cast(DType::F32);
            let probs = softmax(scores, 3).cast(self.dtype);
            outs.push(crate::linear::matmul(probs, v.clone()));
            r = e;
        }
        let o = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(outs, 2)
        };
        let o = o.swap_dims(1, 2).reshape([b * n, d]);
        let x = residual + layer.out_proj.forward(o);

        let residual = x.clone();
        let m = layer.layer_norm2.forward(x);
        let total = b * n;
        let rows = chunk_rows(total, cfg.intermediate_size * 4, self.chunk_bytes.1);
        let mlp = |m: Tensor<2>| layer.fc2.forward(gelu_approximate(layer.fc1.forward(m)));
        let m = if rows >= total {
            mlp(m)
        } else {
            let parts: Vec<Tensor<2>> = (0..total)
                .step_by(rows)
                .map(|r| mlp(m.clone().slice([r..(r + rows).min(total), 0..d])))
                .collect();
            Tensor::cat(parts, 0)
        };
        residual + m
    }

    /// `Gemma3MultiModalProjector`: average-pool `k × k` patches (row-major
    /// pooled tokens), Gemma RMSNorm `(1 + w)`, `· P` → `[B·tokens, text hidden]`.
    fn project(&self, hidden: Tensor<2>, b: usize) -> Tensor<2> {
        let cfg = &self.cfg;
        let (d, side, kernel) = (cfg.hidden_size, cfg.tokens_per_side(), cfg.pool_kernel());
        // Patch index = row · side·kernel + col with row = ty·k + ky, col = tx·k + kx.
        let x = hidden
            .cast(DType::F32)
            .reshape([b, side, kernel, side, kernel, d])
            .mean_dim(4)
            .mean_dim(2)
            .reshape([b * side * side, d]);
        let ms = x.clone().powi_scalar(2).mean_dim(1);
        let x = x * (ms + cfg.layer_norm_eps).sqrt().recip();
        let x = x * self.soft_emb_scale.clone().unsqueeze::<2>();
        crate::linear::matmul(x.cast(self.dtype), self.projection.clone())
    }
}

/// Pixel values `[3, S, S]` of each image → patches `[B·(S/p)², 3·p·p]`,
/// patches row-major, each flattened as the conv weight is (channel, row, column).
fn patchify(images: &[PixelValues], p: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.iter().map(|i| i.data.len()).sum());
    for img in images {
        let s = img.size;
        let side = s / p;
        let plane = s * s;
        for py in 0..side {
            for px in 0..side {
                for c in 0..3 {
                    for ky in 0..p {
                        let row = c * plane + (py * p + ky) * s + px * p;
                        out.extend_from_slice(&img.data[row..row + p]);
                    }
                }
            }
        }
    }
    out
}

/// The vision configuration of the model directory `dir`.
pub fn read_config(dir: &Path) -> Result<VisionConfig, VisionError> {
    let path = dir.join("config.json");
    VisionConfig::from_file(&path)?.ok_or(VisionError::NoVision { path })
}

/// What a valid vision tower holds.
#[derive(Debug, Clone)]
pub struct VisionValidated {
    /// The configuration read.
    pub config: VisionConfig,
    /// Tensors checked.
    pub tensors: usize,
    /// Encoder + projector parameters.
    pub parameters: u64,
}

/// Checks the vision tensors of the model directory `dir` as
/// [`VisionTower::load`] would (names, shapes, dtypes, byte ranges, nothing
/// left over) without reading their data; `Ok(None)` for a text-only model
/// (no `vision_config`, no vision tensors). `medgemmactl setup` runs it
/// beside `validate::validate_weights`.
pub fn validate(dir: &Path) -> Result<Option<VisionValidated>, VisionError> {
    let path = dir.join("config.json");
    let Some(cfg) = VisionConfig::from_file(&path)? else {
        return Ok(None);
    };
    let mut src = VisionWeights::open(dir)?;
    let device = crate::backend::cpu_device();
    let mut checker = Checker {
        src: &mut src,
        device: &device,
        seen: 0,
    };
    VisionTower::build(&cfg, &mut checker, &device, DType::F32)?;
    let tensors = checker.seen;
    src.finish()?;
    Ok(Some(VisionValidated {
        parameters: cfg.parameter_count(),
        config: cfg,
        tensors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_chunks_give_the_same_embeddings_as_whole_products() {
        let mut cfg = VisionConfig::medgemma_4b();
        (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_layers,
            cfg.num_heads,
        ) = (32, 48, 2, 4);
        (
            cfg.image_size,
            cfg.mm_tokens_per_image,
            cfg.text_hidden_size,
        ) = (112, 16, 24);
        let device = crate::backend::cpu_device();
        let mut tower = VisionTower::random(&cfg, &device, DType::F32, 3);
        let images: Vec<PixelValues> = (0..2)
            .map(|i| PixelValues {
                size: 112,
                data: (0..3 * 112 * 112)
                    .map(|j| ((j * 7 + i * 13) % 255) as f32 / 127.5 - 1.0)
                    .collect(),
            })
            .collect();
        let read = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_into_vec().unwrap() };
        tower.chunk_bytes = (usize::MAX, usize::MAX);
        let whole = read(tower.encode(&images).unwrap());
        // 64 patches: 5-row attention chunks (2 images × 4 heads × 64 × 4 B
        // per row) and 7-row MLP chunks, neither dividing 64 or 128.
        tower.chunk_bytes = (5 * 2 * 4 * 64 * 4, 7 * 48 * 4);
        let chunked = read(tower.encode(&images).unwrap());
        let d = whole
            .iter()
            .zip(&chunked)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "chunked encoding differs by {d}");
    }

    #[test]
    fn patches_follow_the_conv_weight_layout() {
        // 4 × 4 image, patch 2: value = c·100 + row·10 + col.
        let s = 4;
        let data: Vec<f32> = (0..3)
            .flat_map(|c| {
                (0..s).flat_map(move |r| (0..s).map(move |x| (c * 100 + r * 10 + x) as f32))
            })
            .collect();
        let p = patchify(&[PixelValues { size: s, data }], 2);
        assert_eq!(p.len(), 48);
        // Patch (0, 1): channel 0 rows 0-1 cols 2-3, then channel 1, then 2.
        assert_eq!(
            &p[12..24],
            &[
                2., 3., 12., 13., 102., 103., 112., 113., 202., 203., 212., 213.
            ]
        );
    }
}
