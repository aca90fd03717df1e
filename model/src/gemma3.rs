//! The Gemma 3 text decoder in Burn (`../shared/spec/model.md` §2).
//!
//! Mirrors Hugging Face `transformers` `models/gemma3/modeling_gemma3.py`
//! (`Gemma3TextModel`): every block below names the reference module it
//! follows. Owns: the forward pass over a token chunk with a [`KvCache`].
//! Must never: read files (weights arrive through [`WeightSource`]) or see
//! text (it works on token ids only).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::activation::{gelu_approximate, softmax};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use crate::config::{Gemma3Config, LayerType, Rope};
use crate::kv_cache::{KvCache, LayerCache, Visible};
use crate::linear::Linear;
use crate::weights::{WeightSource, WeightsError};

/// `Gemma3RMSNorm`: `x / sqrt(mean(x²) + eps) · (1 + w)`, computed in f32 (spec §2.2).
#[derive(Debug, Clone)]
struct RmsNorm {
    /// `1 + w`, precomputed in f32.
    scale: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    /// From the stored weight `w` (f32, the offset from 1).
    fn new(w: Tensor<1>, eps: f64) -> Self {
        Self {
            scale: w + 1.0,
            eps,
        }
    }

    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // One fused kernel on a CubeCL device (the GPU).
        #[cfg(feature = "kernels")]
        if let Some(y) = crate::kernels::rms_norm(&x, &self.scale, self.eps) {
            return y;
        }
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let y = x * (ms + self.eps).sqrt().recip();
        let y = y * self.scale.clone().unsqueeze::<D>();
        y.cast(dtype)
    }
}

/// The seam between two halves of a layer, which Gemma 3 runs back to back:
/// `x = residual + post(a)` (the half's post-norm and residual add) and
/// `next(x)` (the next half's pre-norm, or the final norm after the last
/// layer). One kernel on a CubeCL device (`kernels::add_rms_norm`: the
/// same rounding), the three plain ops otherwise.
fn seam<const D: usize>(
    residual: Tensor<D>,
    a: Tensor<D>,
    post: &RmsNorm,
    next: &RmsNorm,
) -> (Tensor<D>, Tensor<D>) {
    #[cfg(feature = "kernels")]
    if let Some(pair) = crate::kernels::add_rms_norm(
        &residual,
        &a,
        (&post.scale, post.eps),
        (&next.scale, next.eps),
    ) {
        return pair;
    }
    let x = residual + post.forward(a);
    let m = next.forward(x.clone());
    (x, m)
}

/// Precomputed cos/sin over positions for one RoPE variant (spec §2.5).
#[derive(Debug, Clone)]
struct RotaryTable {
    /// `inv_freq_i / factor` for i in 0..head_dim/2, f64 on the host.
    inv_freq: Vec<f64>,
}

impl RotaryTable {
    fn new(rope: Rope, head_dim: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f64 / head_dim as f64;
                // transformers computes inv_freq in f32: match its rounding.
                let f = (1.0 / rope.theta.powf(exponent)) as f32;
                f as f64 / rope.linear_factor
            })
            .collect();
        Self { inv_freq }
    }

    /// cos and sin tables `[T, head_dim]` for positions `start..start+t`, in `dtype`.
    fn tables(
        &self,
        start: usize,
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        self.tables_at(start..start + t, dtype, device)
    }

    /// cos and sin tables `[N, head_dim]`, one row per position, in `dtype`.
    fn tables_at(
        &self,
        positions: impl ExactSizeIterator<Item = usize>,
        dtype: DType,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let t = positions.len();
        let dim = self.inv_freq.len() * 2;
        let (cos, sin) = self.rows(positions);
        let mk = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [t, dim]), (device, DType::F32)).cast(dtype)
        };
        (mk(cos), mk(sin))
    }

    /// cos and sin rows `[N · head_dim]` on the host, one row per position.
    fn rows(&self, positions: impl ExactSizeIterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
        let dim = self.inv_freq.len() * 2;
        let t = positions.len();
        let mut cos = Vec::with_capacity(t * dim);
        let mut sin = Vec::with_capacity(t * dim);
        for p in positions {
            // Angles in f32 as the reference does (position · inv_freq in f32).
            let row: Vec<f32> = self
                .inv_freq
                .iter()
                .map(|f| (p as f32) * (*f as f32))
                .collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos()));
                sin.extend(row.iter().map(|a| a.sin()));
            }
        }
        (cos, sin)
    }
}

/// `gelu_tanh(gate) · up` (`Gemma3MLP`); one fused kernel on a CubeCL
/// device, one pass on the CPU (`cpu::geglu`, f32).
fn geglu(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    if let Some(y) = crate::kernels::geglu(&gate, &up) {
        return y;
    }
    if gate.device() == Device::flex() && gate.dtype() == DType::F32 && up.dtype() == DType::F32 {
        let dims = gate.dims();
        let device = gate.device();
        let (g, u) = (gate.into_data(), up.into_data());
        if let (Ok(gs), Ok(us)) = (g.as_slice::<f32>(), u.as_slice::<f32>()) {
            let mut out = vec![0.0f32; gs.len()];
            crate::cpu::geglu(gs, us, &mut out);
            return Tensor::<2>::from_data(TensorData::new(out, dims), (&device, DType::F32));
        }
        let t = |d: TensorData| Tensor::<2>::from_data(d, (&device, DType::F32));
        return gelu_approximate(t(g)) * t(u);
    }
    gelu_approximate(gate) * up
}

/// Half-split rotation: `[x1, x2] → [x1·cos − x2·sin, x2·cos + x1·sin]` on `[B, H, T, D]`.
///
/// `cos`/`sin` broadcast against `x`: `[1, 1, T, D]` for one sequence,
/// `[B, 1, 1, D]` for a batched decode step (one position per sequence).
fn apply_rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// `Gemma3Attention`.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
}

/// `Gemma3MLP` (GeGLU with tanh GELU).
#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// `gelu_tanh(m · gateᵀ) · (m · upᵀ)`, what the down projection takes:
    /// one launch where both products take the skinny kernel
    /// (`Linear::skinny_geglu`), else the two products by `products`
    /// (prompt or decode rows) and then GeGLU.
    fn gated(
        &self,
        m: Tensor<2>,
        products: fn([&Linear; 2], Tensor<2>) -> [Tensor<2>; 2],
    ) -> Tensor<2> {
        #[cfg(feature = "kernels")]
        if let Some(h) = Linear::skinny_geglu(&self.gate_proj, &self.up_proj, &m) {
            return h;
        }
        let [gate, up] = products([&self.gate_proj, &self.up_proj], m);
        geglu(gate, up)
    }
}

/// `Gemma3DecoderLayer`: pre- and post-norm around both sub-blocks.
#[derive(Debug, Clone)]
struct DecoderLayer {
    kind: LayerType,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: Mlp,
    post_feedforward_layernorm: RmsNorm,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation: skips the LM head for the prompt).
    Last,
    /// Every position (tests).
    All,
}

/// Samples per route when [`Gemma3::tune_products`] times a product.
#[cfg(feature = "kernels")]
const TUNE_REPS: usize = 5;

/// The Gemma 3 text decoder with tied LM head.
#[derive(Debug, Clone)]
pub struct Gemma3 {
    cfg: Gemma3Config,
    device: Device,
    dtype: DType,
    /// `[V, d]`, also the LM head (kept as stored on the CPU).
    embed_tokens: Linear,
    /// √d rounded to the compute dtype (spec §2.1).
    embed_scale: f32,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rope_global: RotaryTable,
    rope_local: RotaryTable,
}

/// Where [`Gemma3::build`] takes its tensors from: a checkpoint or a random
/// initialiser (`random.rs`). Tensors are created on the model's device.
pub(crate) trait TensorSource {
    /// A linear weight `[out, in]` in the compute dtype (`name` without the model prefix).
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError>;
    /// An RMSNorm weight (the offset from 1) of width `n`, in f32.
    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<1>, WeightsError>;
    /// A linear weight `[out, in]` as a [`Linear`]: by default the
    /// [`TensorSource::matrix`] tensor.
    fn linear(
        &mut self,
        name: &str,
        shape: [usize; 2],
        device: &Device,
    ) -> Result<Linear, WeightsError> {
        Ok(Linear::new(self.matrix(name, shape)?, device))
    }
}

/// Checkpoint tensors through a [`WeightSource`].
struct Checkpoint<'a> {
    src: &'a mut WeightSource,
    device: &'a Device,
    dtype: DType,
}

impl TensorSource for Checkpoint<'_> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        Ok(Tensor::<2>::from_data(
            self.src.load(name, &shape, self.dtype, false)?,
            (self.device, self.dtype),
        ))
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        Ok(Tensor::<1>::from_data(
            self.src.load(name, &[n], DType::F32, true)?,
            (self.device, DType::F32),
        ))
    }

    /// Kept as stored when the model runs on the CPU (`linear.rs`).
    fn linear(
        &mut self,
        name: &str,
        shape: [usize; 2],
        device: &Device,
    ) -> Result<Linear, WeightsError> {
        Linear::load(self.src, name, shape, device, self.dtype)
    }
}

impl Gemma3 {
    /// Loads every decoder tensor from `src` onto `device` in `dtype` (F32 or BF16).
    pub fn load(
        cfg: &Gemma3Config,
        src: &mut WeightSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, WeightsError> {
        let model = Self::build(
            cfg,
            &mut Checkpoint {
                src: &mut *src,
                device,
                dtype,
            },
            device,
            dtype,
        )?;
        src.finish()?;
        Ok(model)
    }

    /// Builds the decoder from `tensors` (names as in the checkpoint, without prefix).
    pub(crate) fn build(
        cfg: &Gemma3Config,
        tensors: &mut impl TensorSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, WeightsError> {
        let d = cfg.hidden_size;
        let (h, kv, hd, f) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        let embed_tokens = tensors.linear("embed_tokens.weight", [cfg.vocab_size, d], device)?;
        let mut layers = Vec::with_capacity(cfg.num_layers());
        for (i, kind) in cfg.layer_types.iter().enumerate() {
            let p = |n: &str| format!("layers.{i}.{n}.weight");
            let mut norm = |n: &str, width: usize| -> Result<RmsNorm, WeightsError> {
                Ok(RmsNorm::new(tensors.norm(&p(n), width)?, eps))
            };
            let input_layernorm = norm("input_layernorm", d)?;
            let mut lin = |n: &str, o: usize, i: usize| -> Result<Linear, WeightsError> {
                tensors.linear(&p(n), [o, i], device)
            };
            let q_proj = lin("self_attn.q_proj", h * hd, d)?;
            let k_proj = lin("self_attn.k_proj", kv * hd, d)?;
            let v_proj = lin("self_attn.v_proj", kv * hd, d)?;
            let o_proj = lin("self_attn.o_proj", d, h * hd)?;
            let mut norm = |n: &str, width: usize| -> Result<RmsNorm, WeightsError> {
                Ok(RmsNorm::new(tensors.norm(&p(n), width)?, eps))
            };
            let q_norm = norm("self_attn.q_norm", hd)?;
            let k_norm = norm("self_attn.k_norm", hd)?;
            let post_attention_layernorm = norm("post_attention_layernorm", d)?;
            let pre_feedforward_layernorm = norm("pre_feedforward_layernorm", d)?;
            let mut lin = |n: &str, o: usize, i: usize| -> Result<Linear, WeightsError> {
                tensors.linear(&p(n), [o, i], device)
            };
            let mlp = Mlp {
                gate_proj: lin("mlp.gate_proj", f, d)?,
                up_proj: lin("mlp.up_proj", f, d)?,
                down_proj: lin("mlp.down_proj", d, f)?,
            };
            let post_feedforward_layernorm =
                RmsNorm::new(tensors.norm(&p("post_feedforward_layernorm"), d)?, eps);
            layers.push(DecoderLayer {
                kind: *kind,
                input_layernorm,
                self_attn: Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    q_norm,
                    k_norm,
                },
                post_attention_layernorm,
                pre_feedforward_layernorm,
                mlp,
                post_feedforward_layernorm,
            });
        }
        let norm = RmsNorm::new(tensors.norm("norm.weight", d)?, eps);
        let scale = (d as f32).sqrt();
        let embed_scale = match dtype {
            DType::BF16 => half::bf16::from_f32(scale).to_f32(),
            _ => scale,
        };
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            dtype,
            embed_tokens,
            embed_scale,
            layers,
            norm,
            rope_global: RotaryTable::new(cfg.rope_global, hd),
            rope_local: RotaryTable::new(cfg.rope_local, hd),
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Times, on this model's device, each route a decode-sized product may
    /// take (our skinny and tiled kernels, Burn's matmul) for every distinct
    /// weight shape at 1, 2, 4, … 32 rows, and routes every linear layer of that
    /// shape accordingly (see `kernels/product.rs`). Run it once after the
    /// load and before any decode graph is captured (a capture records the
    /// routes it finds). Empty, and nothing changed, on the CPU or without
    /// our kernels: the skinny kernel stays the route where none is tuned.
    pub fn tune_products(&mut self) -> Vec<crate::linear::ProductTiming> {
        #[cfg(feature = "kernels")]
        return self.tune_products_with(
            TUNE_REPS,
            &crate::linear::tuned_rows().collect::<Vec<_>>(),
            crate::linear::choose,
        );
        #[cfg(not(feature = "kernels"))]
        Vec::new()
    }

    /// [`Gemma3::tune_products`] with `reps` samples per route, at `rows`
    /// (each sets its bucket), and the choice made by `choose`.
    #[cfg(feature = "kernels")]
    pub(crate) fn tune_products_with(
        &mut self,
        reps: usize,
        rows: &[usize],
        choose: impl Fn(&crate::kernels::RouteTimes) -> crate::linear::ProductRoute,
    ) -> Vec<crate::linear::ProductTiming> {
        let (mut linears, shapes) = self.linears_by_shape(true);
        let mut out = Vec::new();
        for (w, of) in &shapes {
            let [n, k] = w.dims();
            for &rows in rows {
                let Some(t) = crate::kernels::time_routes(w, rows, reps) else {
                    continue;
                };
                let route = choose(&t);
                for &i in of {
                    linears[i].set_route(rows, route);
                }
                out.push(crate::linear::ProductTiming {
                    shape: format!("{n}x{k}"),
                    layers: of.len(),
                    rows,
                    skinny_us: t.skinny_us,
                    tiled_us: t.tiled_us,
                    burn_us: t.burn_us,
                    tiled_agrees: t.tiled_agrees,
                    burn_agrees: t.burn_agrees,
                    routines: crate::routines::timings(&t.routines),
                    route,
                });
            }
        }
        out
    }

    /// The dense linear layers (the tied embedding first when `embedding`,
    /// then each layer's seven), and one weight per distinct shape with the
    /// indices of every layer of that shape.
    #[cfg(feature = "kernels")]
    #[allow(clippy::type_complexity)]
    fn linears_by_shape(
        &mut self,
        embedding: bool,
    ) -> (Vec<&mut Linear>, Vec<(Tensor<2>, Vec<usize>)>) {
        let mut linears: Vec<&mut Linear> = Vec::new();
        if embedding {
            linears.push(&mut self.embed_tokens);
        }
        for layer in &mut self.layers {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            linears.extend([
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ]);
        }
        let mut shapes: Vec<(Tensor<2>, Vec<usize>)> = Vec::new();
        for (i, l) in linears.iter().enumerate() {
            let Some(w) = l.dense() else { continue };
            match shapes.iter_mut().find(|(s, _)| s.dims() == w.dims()) {
                Some((_, of)) => of.push(i),
                None => shapes.push((w.clone(), vec![i])),
            }
        }
        (linears, shapes)
    }

    /// Times, on this model's device, Burn's matmul and a few of cubek's
    /// faster routines for a full prompt chunk
    /// ([`crate::generate::PREFILL_CHUNK`] rows) against every distinct
    /// weight shape of the decoder's layers, and routes every chunk
    /// product of that shape through the fastest that computes the same
    /// product (`routines.rs`). The tied embedding is left out: a
    /// prompt's LM head runs on its last row only, a decode-sized product.
    /// Empty, and nothing changed, on the CPU or without our kernels.
    pub fn tune_chunk_products(&mut self) -> Vec<crate::routines::ChunkTiming> {
        #[cfg(feature = "kernels")]
        return self.tune_chunk_products_with(
            TUNE_REPS,
            crate::generate::PREFILL_CHUNK.min(self.cfg.max_position_embeddings),
            crate::routines::choose_chunk,
        );
        #[cfg(not(feature = "kernels"))]
        Vec::new()
    }

    /// [`Gemma3::tune_chunk_products`] with `reps` samples per routine at
    /// `rows` rows, and the choice made by `choose` (Burn's time, then each
    /// routine's).
    #[cfg(feature = "kernels")]
    pub(crate) fn tune_chunk_products_with(
        &mut self,
        reps: usize,
        rows: usize,
        choose: impl Fn(
            f64,
            &[(crate::routines::MatmulRoutine, Option<f64>, bool)],
        ) -> Option<crate::routines::MatmulRoutine>,
    ) -> Vec<crate::routines::ChunkTiming> {
        use crate::routines::ChunkTiming;
        let rows = rows.max(crate::linear::ROUTED_ROWS + 1);
        let (mut linears, shapes) = self.linears_by_shape(false);
        let mut out = Vec::new();
        for (w, of) in &shapes {
            let Some(t) = crate::kernels::time_chunk_routines(w, rows, reps) else {
                continue;
            };
            let chosen = choose(t.burn_us, &t.routines);
            for &i in of {
                linears[i].set_chunk_route(chosen);
            }
            let [n, k] = w.dims();
            out.push(ChunkTiming {
                shape: format!("{n}x{k}"),
                layers: of.len(),
                rows,
                burn_us: t.burn_us,
                routines: crate::routines::timings(&t.routines),
                route: chosen.map_or("burn", |r| r.name()),
            });
        }
        out
    }

    /// The routine of a prompt chunk's product through each of the layers'
    /// linear layers (seven a layer), for tests of the chunk tuning.
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn chunk_routes(&self) -> Vec<(String, Option<crate::routines::MatmulRoutine>)> {
        self.each_linear(false, Linear::chunk_route)
    }

    /// `f` of each dense linear layer with its shape `out×in` (the tied
    /// embedding first when `embedding`, then each layer's seven).
    #[cfg(all(test, feature = "cube-cpu"))]
    fn each_linear<T>(&self, embedding: bool, f: impl Fn(&Linear) -> T) -> Vec<(String, T)> {
        let mut all = Vec::new();
        if embedding {
            all.push(&self.embed_tokens);
        }
        for l in &self.layers {
            let (a, m) = (&l.self_attn, &l.mlp);
            all.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            all.extend([&m.gate_proj, &m.up_proj, &m.down_proj]);
        }
        all.into_iter()
            .filter_map(|l| {
                let [n, k] = l.dense()?.dims();
                Some((format!("{n}x{k}"), f(l)))
            })
            .collect()
    }

    /// The route of a `rows`-row product through each linear layer (the
    /// embedding first, then each layer's seven), for tests of the tuning.
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn product_routes(&self, rows: usize) -> Vec<(String, crate::linear::ProductRoute)> {
        self.each_linear(true, |l| l.route(rows))
    }

    /// A fresh, empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.cfg)
    }

    /// Runs `ids` (continuing at `cache.len()`) and returns logits `[T or 1, V]` in f32.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, which: Logits) -> Tensor<2> {
        on_cpu_pool(&self.device, || {
            self.forward_embedded(ids, None, cache, which)
        })
    }

    /// As [`Gemma3::forward`] for a chunk holding image blocks (spec §5.4,
    /// `Gemma3Model.forward` with `token_type_ids`): the `images.token`
    /// positions take the rows of `images.rows` in order (projector outputs,
    /// not scaled by √d), and each run of them attends bidirectionally
    /// within itself, in global and local layers alike; all else is causal.
    /// A run must not continue into the next chunk (`vision::ImagePrefill`
    /// cuts chunks at block ends).
    ///
    /// # Panics
    /// If `images.rows` has not one row per image token of `ids`.
    pub fn forward_with_images(
        &self,
        ids: &[u32],
        images: &ImageRows,
        cache: &mut KvCache,
        which: Logits,
    ) -> Tensor<2> {
        on_cpu_pool(&self.device, || {
            self.forward_embedded(ids, Some(images), cache, which)
        })
    }

    fn forward_embedded(
        &self,
        ids: &[u32],
        images: Option<&ImageRows>,
        cache: &mut KvCache,
        which: Logits,
    ) -> Tensor<2> {
        let t = ids.len();
        let start = cache.len();
        let d = self.cfg.hidden_size;
        let runs = images.map_or_else(Vec::new, |img| crate::vision::image_blocks(ids, img.token));
        // Image tokens may lie past the embedding (HF looks them up as id 0).
        let ids_i: Vec<i64> = ids
            .iter()
            .map(|&i| match images {
                Some(img) if i == img.token => 0,
                _ => i64::from(i),
            })
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids_i, [t]), &self.device);
        // Gemma3TextScaledWordEmbedding: lookup, then × √d in the compute dtype.
        let mut x = self.embed_tokens.select(idx).mul_scalar(self.embed_scale);
        if let (Some(img), false) = (images, runs.is_empty()) {
            // masked_scatter of the image features over the soft tokens.
            let n: usize = runs.iter().map(|r| r.len()).sum();
            assert_eq!(img.rows.dims(), [n, d], "one image row per image token");
            let (mut parts, mut prev, mut row) = (Vec::new(), 0, 0);
            for r in &runs {
                if r.start > prev {
                    parts.push(x.clone().slice([prev..r.start, 0..d]));
                }
                let rows = img.rows.clone().slice([row..row + r.len(), 0..d]);
                parts.push(rows.cast(self.dtype));
                row += r.len();
                prev = r.end;
            }
            if prev < t {
                parts.push(x.slice([prev..t, 0..d]));
            }
            x = Tensor::cat(parts, 0);
        }
        let mut x = x.reshape([1, t, d]);
        let blocks: Vec<Range<usize>> = runs
            .iter()
            .map(|r| start + r.start..start + r.end)
            .collect();
        let masks = ChunkMasks::default();
        let span = Span {
            start,
            blocks: &blocks,
            masks: Some(&masks),
        };

        let (cos_g, sin_g) = self.rope_global.tables(start, t, self.dtype, &self.device);
        let (cos_l, sin_l) = self.rope_local.tables(start, t, self.dtype, &self.device);
        // Each layer takes its input normed by the seam before it (the
        // first by its own input norm) and hands the next its input normed;
        // the last hands over the final norm.
        let mut normed = self.input_norm(0).forward(x.clone());
        for (li, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let (cos, sin) = match layer.kind {
                LayerType::Global => (&cos_g, &sin_g),
                LayerType::Local => (&cos_l, &sin_l),
            };
            (x, normed) = self.layer_forward(
                layer,
                x,
                normed,
                self.input_norm(li + 1),
                cos,
                sin,
                lc,
                span,
            );
        }
        cache.advance(t);

        let h = match which {
            Logits::Last => normed.slice([0..1, t - 1..t, 0..d]).reshape([1, d]),
            Logits::All => normed.reshape([t, d]),
        };
        // Tied LM head: logits = h · Eᵀ; no soft-cap (spec §2.8).
        self.embed_tokens.forward(h).cast(DType::F32)
    }

    /// The norm that takes layer `li`'s input: its input norm, or the final
    /// norm past the last layer.
    fn input_norm(&self, li: usize) -> &RmsNorm {
        self.layers
            .get(li)
            .map_or(&self.norm, |l| &l.input_layernorm)
    }

    /// One layer over `x` (`normed`: `x` through its input norm); returns
    /// the layer's output and that output through `next`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: Tensor<3>,
        normed: Tensor<3>,
        next: &RmsNorm,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut LayerCache,
        span: Span<'_>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [b, t, d] = x.dims();
        let a = self.attention(
            layer,
            normed.reshape([b * t, d]),
            b,
            t,
            cos,
            sin,
            cache,
            span,
        );
        let (x, m) = seam(
            x,
            a.reshape([b, t, d]),
            &layer.post_attention_layernorm,
            &layer.pre_feedforward_layernorm,
        );
        let h = layer.mlp.gated(m.reshape([b * t, d]), Linear::forward_many);
        let m = layer.mlp.down_proj.forward(h);
        seam(
            x,
            m.reshape([b, t, d]),
            &layer.post_feedforward_layernorm,
            next,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &DecoderLayer,
        a: Tensor<2>,
        b: usize,
        t: usize,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut LayerCache,
        span: Span<'_>,
    ) -> Tensor<2> {
        let (kv, hd) = (self.cfg.num_key_value_heads, self.cfg.head_dim);
        let attn = &layer.self_attn;
        let [q, k, v] = Linear::forward_many([&attn.q_proj, &attn.k_proj, &attn.v_proj], a);
        let v = v.reshape([b, t, kv, hd]).swap_dims(1, 2);
        // q/k norms per head, before RoPE; no norm on v. Rows are (b, t):
        // row r takes table row r mod t.
        let rope = RopeRows {
            cos: cos.clone(),
            sin: sin.clone(),
            cos4: cos.clone().unsqueeze::<4>(),
            sin4: sin.clone().unsqueeze::<4>(),
        };
        let (q, k) = self.qk_norm_rope(attn, q, k, b, t, &rope);
        let out = self.attend(layer.kind, q, k, v, cache, span);
        attn.o_proj.forward(out)
    }

    /// Per-head q/k RMSNorm then RoPE of the projections `q: [b·t, H·hd]`,
    /// `k: [b·t, KV·hd]`, returned as `[b, H, t, hd]` and `[b, KV, t, hd]`:
    /// one fused kernel on a CubeCL device (`kernels::qk_norm_rope`), the
    /// plain Burn ops otherwise.
    fn qk_norm_rope(
        &self,
        attn: &Attention,
        q: Tensor<2>,
        k: Tensor<2>,
        b: usize,
        t: usize,
        rope: &RopeRows,
    ) -> (Tensor<4>, Tensor<4>) {
        let cfg = &self.cfg;
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let heads = |x: Tensor<2>, n: usize| x.reshape([b, t, n, hd]).swap_dims(1, 2);
        #[cfg(feature = "kernels")]
        if let Some((q, k)) = crate::kernels::qk_norm_rope(
            &q,
            &k,
            &crate::kernels::QkNormRope {
                q_scale: &attn.q_norm.scale,
                k_scale: &attn.k_norm.scale,
                eps: attn.q_norm.eps,
                cos: &rope.cos,
                sin: &rope.sin,
                q_heads: h,
                kv_heads: kv,
            },
        ) {
            return (heads(q, h), heads(k, kv));
        }
        let q = apply_rope(
            attn.q_norm.forward(heads(q, h)),
            rope.cos4.clone(),
            rope.sin4.clone(),
        );
        let k = apply_rope(
            attn.k_norm.forward(heads(k, kv)),
            rope.cos4.clone(),
            rope.sin4.clone(),
        );
        (q, k)
    }

    /// Scaled dot-product attention of one sequence's queries `[b, H, T, hd]`
    /// over its cache plus the new keys/values `[b, KV, T, hd]` (appended to
    /// `cache`); returns `[b·T, H·hd]`. `span.start` is the first query's position.
    fn attend(
        &self,
        kind: LayerType,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        cache: &mut LayerCache,
        span: Span<'_>,
    ) -> Tensor<2> {
        let start = span.start;
        let cfg = &self.cfg;
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let rep = h / kv;
        let [b, _, t, _] = q.dims();
        // Keys visible to this chunk (the new ones written into the cache in
        // place), each with its absolute position when a mask may be needed.
        let Visible {
            keys,
            values,
            positions,
        } = cache.append(k, v);
        // Decode (one token): one kernel over the visible slots, read in
        // place; every slot the cache hands out is visible (`positions` is
        // `None`), so there is no mask.
        #[cfg(feature = "kernels")]
        if t == 1 && b == 1 && positions.is_none() {
            let scale = cfg.query_pre_attn_scalar.powf(-0.5);
            let q1 = q.clone().reshape([1, h * hd]);
            if let Some(out) = crate::kernels::decode_attention(&q1, &keys, &values, h, scale) {
                return out;
            }
        }
        // On the CPU: one pass over the cache's own buffers for all query
        // heads (`cpu::decode_attention_flex`; `None` on other devices).
        if t == 1 && b == 1 && positions.is_none() {
            let scale = cfg.query_pre_attn_scalar.powf(-0.5) as f32;
            if let Some(out) = crate::cpu::decode_attention_flex(&q, &keys, &values, scale) {
                return out;
            }
        }
        // Prefill on a CubeCL device: one kernel, no score matrix, the mask
        // decided from the keys' positions on the device.
        #[cfg(feature = "kernels")]
        if let (true, Some(p)) = (t > 1 && b == 1 && crate::kernels::enabled(), &positions) {
            let build = || {
                let w = (kind == LayerType::Local).then_some(cfg.sliding_window);
                crate::kernels::key_table(&q, start, t, p, w, span.blocks)
            };
            let table = match span.masks {
                Some(memo) => memo.key_table(kind, start, p, build),
                None => build(),
            };
            let scale = cfg.query_pre_attn_scalar.powf(-0.5);
            if let Some(out) = table.and_then(|table| {
                crate::kernels::prefill_attention(&q, &keys, &values, &table, scale)
            }) {
                return out;
            }
        }
        let s = keys.dims()[2];

        // GQA without copying K/V: query heads 2j, 2j+1 share KV head j, so fold
        // the `rep` query heads of each KV head into the row axis.
        let q = q.reshape([b, kv, rep * t, hd]);
        let scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let scores = crate::linear::matmul(q, keys.swap_dims(2, 3))
            .mul_scalar(scale)
            .cast(DType::F32);
        let m = positions.and_then(|p| {
            if t > 1 {
                // Prefill: built on the device from the key positions, once
                // per chunk and layer type (every layer of a type sees the
                // same positions within a chunk).
                let build = || {
                    let w = (kind == LayerType::Local).then_some(cfg.sliding_window);
                    device_mask(w, start, t, &p, rep, span.blocks, &self.device)
                };
                Some(match span.masks {
                    Some(memo) => memo.get_or_build(kind, start, &p, build),
                    None => build(),
                })
            } else {
                mask(kind, cfg.sliding_window, start, t, &p, rep, span.blocks).map(|m| {
                    Tensor::<4>::from_data(
                        TensorData::new(m, [1, 1, rep * t, s]),
                        (&self.device, DType::F32),
                    )
                })
            }
        });
        let scores = match m {
            Some(m) => scores + m,
            None => scores,
        };
        let probs = softmax(scores, 3).cast(self.dtype);
        let out = crate::linear::matmul(probs, values); // [b, kv, rep*t, hd]
        out.reshape([b, h, t, hd])
            .swap_dims(1, 2)
            .reshape([b * t, h * hd])
    }

    /// One decode step for several independent sequences: `tokens[i]`
    /// continues `caches[i]` (each at its own length, so each token has its
    /// own RoPE position and sliding window). Returns logits `[B, V]` in f32.
    ///
    /// The B tokens are stacked into one `[B, d]` activation so every linear
    /// layer and the LM head read their weights once per step for the whole
    /// batch; attention runs per sequence over its own cache. Row `i` equals
    /// `forward(&[tokens[i]], caches[i], Logits::Last)` up to the summation
    /// order of the batched products (`tests/batched_decode.rs`).
    ///
    /// # Panics
    ///
    /// If `tokens` is empty or its length differs from `caches`'.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Tensor<2> {
        on_cpu_pool(&self.device, || self.forward_batch_here(tokens, caches))
    }

    /// [`Gemma3::forward_batch`] on the calling thread.
    fn forward_batch_here(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Tensor<2> {
        let n = tokens.len();
        assert!(n > 0, "forward_batch needs at least one sequence");
        assert_eq!(n, caches.len(), "one cache per token");
        let ids_i: Vec<i64> = tokens.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids_i, [n]), &self.device);
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let global = self.rope_rows(LayerType::Global, &positions);
        let local = self.rope_rows(LayerType::Local, &positions);
        let logits = self.decode_step(&ids, &global, &local, &mut |li, kind, q, k, v| {
            self.attend_batch(li, q, k, v, caches)
                .unwrap_or_else(|| self.attend_each(kind, li, q, k, v, caches, &positions))
        });
        for c in caches.iter_mut() {
            c.advance(1);
        }
        logits
    }

    /// RoPE cos and sin rows of `kind`'s table at `positions`, on the host
    /// (`[N · hd]` each).
    #[cfg(feature = "kernels")]
    pub(crate) fn rope_host(&self, kind: LayerType, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        match kind {
            LayerType::Global => &self.rope_global,
            LayerType::Local => &self.rope_local,
        }
        .rows(positions.iter().copied())
    }

    /// RoPE rows of `kind`'s table for one token per sequence at `positions`,
    /// uploaded (`[n, hd]`, and views as `[n, 1, 1, hd]`).
    fn rope_rows(&self, kind: LayerType, positions: &[usize]) -> RopeRows {
        let (n, hd) = (positions.len(), self.cfg.head_dim);
        let table = match kind {
            LayerType::Global => &self.rope_global,
            LayerType::Local => &self.rope_local,
        };
        let (cos, sin) = table.tables_at(positions.iter().copied(), self.dtype, &self.device);
        RopeRows::decode(cos, sin, n, hd)
    }

    /// The decoder for one token per sequence (`ids: [B]`, RoPE rows per
    /// layer type), `attend(layer index, kind, q, k, v)` giving each layer's
    /// attention `[B, H·hd]` (it also writes the caches); logits `[B, V]` in
    /// f32. Reads nothing from the host: a captured decode graph
    /// (`decode_graph.rs`) replays it over the same buffers.
    pub(crate) fn decode_step(
        &self,
        ids: &Tensor<1, Int>,
        global: &RopeRows,
        local: &RopeRows,
        attend: &mut dyn FnMut(usize, LayerType, &Tensor<4>, &Tensor<4>, &Tensor<4>) -> Tensor<2>,
    ) -> Tensor<2> {
        let mut x = self
            .embed_tokens
            .select(ids.clone())
            .mul_scalar(self.embed_scale);
        // As the prefill: each seam hands the next layer its input normed,
        // the last the final norm.
        let mut normed = self.input_norm(0).forward(x.clone());
        for (li, layer) in self.layers.iter().enumerate() {
            let rope = match layer.kind {
                LayerType::Global => global,
                LayerType::Local => local,
            };
            let next = self.input_norm(li + 1);
            (x, normed) = self.layer_forward_batch(layer, li, x, normed, next, rope, attend);
        }
        self.embed_tokens.forward_batch(normed).cast(DType::F32)
    }

    /// Each sequence's attention over its own cache, one after the other
    /// (where the batched kernel does not run).
    #[allow(clippy::too_many_arguments)]
    fn attend_each(
        &self,
        kind: LayerType,
        li: usize,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        caches: &mut [&mut KvCache],
        positions: &[usize],
    ) -> Tensor<2> {
        let cfg = &self.cfg;
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let outs: Vec<Tensor<2>> = caches
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let one = |x: &Tensor<4>, heads: usize| {
                    x.clone().slice([i..i + 1, 0..heads, 0..1, 0..hd])
                };
                self.attend(
                    kind,
                    one(q, h),
                    one(k, kv),
                    one(v, kv),
                    &mut c.layers[li],
                    Span {
                        start: positions[i],
                        blocks: &[],
                        masks: None,
                    },
                )
            })
            .collect();
        Tensor::cat(outs, 0)
    }

    /// One layer of a decode step over `x` (`normed`: `x` through its input
    /// norm); returns the layer's output and that output through `next`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward_batch(
        &self,
        layer: &DecoderLayer,
        li: usize,
        x: Tensor<2>,
        normed: Tensor<2>,
        next: &RmsNorm,
        rope: &RopeRows,
        attend: &mut dyn FnMut(usize, LayerType, &Tensor<4>, &Tensor<4>, &Tensor<4>) -> Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let (kv, hd) = (self.cfg.num_key_value_heads, self.cfg.head_dim);
        let n = x.dims()[0];
        let attn = &layer.self_attn;
        let [q, k, v] =
            Linear::forward_batch_many([&attn.q_proj, &attn.k_proj, &attn.v_proj], normed);
        let v = v.reshape([n, 1, kv, hd]).swap_dims(1, 2);
        // One token per sequence: rows are (sequence, t = 1).
        let (q, k) = self.qk_norm_rope(attn, q, k, n, 1, rope);
        let out = attend(li, layer.kind, &q, &k, &v);
        let a = attn.o_proj.forward_batch(out);
        let (x, m) = seam(
            x,
            a,
            &layer.post_attention_layernorm,
            &layer.pre_feedforward_layernorm,
        );
        let h = layer.mlp.gated(m, Linear::forward_batch_many);
        let m = layer.mlp.down_proj.forward_batch(h);
        seam(x, m, &layer.post_feedforward_layernorm, next)
    }

    /// Layer `li`'s attention for a decode batch in one kernel launch
    /// (`kernels::batch_decode_attention`): row `i` of `q: [B, H, 1, hd]`,
    /// `k`, `v: [B, KV, 1, hd]` is sequence `i`'s token, its key and value
    /// written into `caches[i]` and attended over it. `None`, with every
    /// cache as it was, where the kernel does not apply (not a CubeCL
    /// device, a shape it does not cover): the caller runs the loop.
    #[cfg(feature = "kernels")]
    fn attend_batch(
        &self,
        li: usize,
        q: &Tensor<4>,
        k: &Tensor<4>,
        v: &Tensor<4>,
        caches: &mut [&mut KvCache],
    ) -> Option<Tensor<2>> {
        let cfg = &self.cfg;
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let n = caches.len();
        if !crate::kernels::enabled() || crate::kernels::cube(q).is_none() {
            return None;
        }
        // Back to the projections' row layout (a view: no copy).
        let rows = |x: &Tensor<4>, heads: usize| x.clone().swap_dims(1, 2).reshape([n, heads * hd]);
        let like = k.clone().slice([0..1, 0..kv, 0..1, 0..hd]);
        let taken = caches
            .iter_mut()
            .map(|c| c.layers[li].take_for_token(&like))
            .collect();
        let scale = cfg.query_pre_attn_scalar.powf(-0.5);
        let (out, back, written) = match crate::kernels::batch_decode_attention(
            &rows(q, h),
            &rows(k, kv),
            &rows(v, kv),
            taken,
            h,
            scale,
        ) {
            Ok((out, back)) => (Some(out), back, true),
            Err(back) => (None, back, false),
        };
        for (c, t) in caches.iter_mut().zip(back) {
            c.layers[li].put_back(t, written);
        }
        out
    }

    /// Without our kernels there is no batched attention: the loop runs.
    #[cfg(not(feature = "kernels"))]
    fn attend_batch(
        &self,
        _li: usize,
        _q: &Tensor<4>,
        _k: &Tensor<4>,
        _v: &Tensor<4>,
        _caches: &mut [&mut KvCache],
    ) -> Option<Tensor<2>> {
        None
    }
}

/// Looks for work a spinner of [`on_cpu_pool`] makes after its last piece
/// of work before it starts yielding its core: longer than the usual gap
/// between two hand-offs of a decode step (a norm, a RoPE), short of a
/// millisecond.
const SPIN_ROUNDS: u32 = 2000;

/// Runs `f` on a thread of rayon's pool when the model is on the CPU (and
/// this thread is not one already), with the pool's other threads kept
/// awake until it returns; elsewhere `f()` here.
///
/// A forward pass on the CPU hands each product and each layer's attention
/// to the pool (`crate::cpu`): 91 hand-offs per decode step of the 270M.
/// From a thread outside the pool each one injects the work, wakes the
/// pool's threads and puts the caller to sleep until they finish; a pool
/// thread that runs out of work spins briefly, then sleeps, and waking it
/// again costs tens of microseconds in a VM. So `f` runs on a pool thread
/// (it splits work onto its own queue and does part of it), and every
/// other pool thread runs a spinner that takes work the moment it appears
/// (`rayon::yield_now`) until `f` is done, spinning briefly
/// after each piece of work, then yielding the core between looks. The
/// spinners spend idle CPU time during the pass, as llama.cpp's threads
/// do; yielding keeps them from starving other work on a busy machine. A
/// spinner that lands on `f`'s own thread (which then has nothing else to
/// run) returns at once: it must not wait there for `f`, which is beneath
/// it on that stack.
fn on_cpu_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if *device != Device::flex() || rayon::current_thread_index().is_some() {
        return f();
    }
    let done = AtomicBool::new(false);
    let mut out = None;
    rayon::scope(|s| {
        let home = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let done = &done;
            s.spawn(move |_| {
                if rayon::current_thread_index() == home {
                    return;
                }
                let mut idle = 0u32;
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                    } else if idle < SPIN_ROUNDS {
                        idle += 1;
                        std::hint::spin_loop();
                    } else {
                        // Past a short spin, give the core to whoever else
                        // wants it (another process on a busy machine, or
                        // the forward pass itself when they share a core).
                        std::thread::yield_now();
                    }
                }
            });
        }
        out = Some(f());
        done.store(true, Ordering::Release);
    });
    out.expect("rayon::scope runs its closure before returning")
}

/// Image soft-token embeddings for [`Gemma3::forward_with_images`].
#[derive(Debug, Clone)]
pub struct ImageRows {
    /// The image soft token id (`image_token_index`).
    pub token: u32,
    /// `[image tokens, hidden]`: the projector's rows, in prompt order.
    pub rows: Tensor<2>,
}

/// The RoPE rows of a chunk: `[P, hd]` tables (what the fused kernel
/// reads; row `r` of the projections takes row `r mod P`) and the same
/// tables shaped to broadcast against `[b, H, t, hd]` in `apply_rope`
/// (`[1, 1, t, hd]` for one sequence, `[n, 1, 1, hd]` for a decode batch).
#[derive(Debug, Clone)]
pub(crate) struct RopeRows {
    #[cfg_attr(not(feature = "kernels"), allow(dead_code))]
    pub(crate) cos: Tensor<2>,
    #[cfg_attr(not(feature = "kernels"), allow(dead_code))]
    pub(crate) sin: Tensor<2>,
    cos4: Tensor<4>,
    sin4: Tensor<4>,
}

impl RopeRows {
    /// One row per sequence of a decode batch: `cos`, `sin: [n, hd]`, and
    /// views of them as `[n, 1, 1, hd]` (no copy).
    pub(crate) fn decode(cos: Tensor<2>, sin: Tensor<2>, n: usize, hd: usize) -> Self {
        Self {
            cos4: cos.clone().reshape([n, 1, 1, hd]),
            sin4: sin.clone().reshape([n, 1, 1, hd]),
            cos,
            sin,
        }
    }
}

/// Where a chunk's queries sit: the first one's absolute position, and the
/// image blocks (absolute positions) whose tokens see each other; `masks`
/// keeps the chunk's device masks for the layers after the first of a type.
#[derive(Debug, Clone, Copy)]
struct Span<'a> {
    start: usize,
    blocks: &'a [Range<usize>],
    masks: Option<&'a ChunkMasks>,
}

/// What one prompt chunk's layers share per layer type, built by the first
/// layer of the type and kept for the rest (34 layers of the 4B would
/// otherwise each build or upload their own): the additive masks on the
/// device, or, where the prefill attention kernel runs, its key tables.
#[derive(Debug, Default)]
struct ChunkMasks {
    built: RefCell<Vec<Built<Tensor<4>>>>,
    #[cfg(feature = "kernels")]
    tables: RefCell<Vec<Built<Option<crate::kernels::KeyTable>>>>,
}

/// A value of [`ChunkMasks`] and what it was built for.
#[derive(Debug)]
struct Built<T> {
    kind: LayerType,
    /// The chunk's first query position.
    start: usize,
    /// The visible keys' positions, in cache order.
    keys: Vec<usize>,
    value: T,
}

/// The value in `list` built for `kind` at `start` over `keys`, else
/// `build()`'s, kept in `list`.
fn memo<T: Clone>(
    list: &RefCell<Vec<Built<T>>>,
    kind: LayerType,
    start: usize,
    keys: &[usize],
    build: impl FnOnce() -> T,
) -> T {
    let mut built = list.borrow_mut();
    if let Some(b) = built
        .iter()
        .find(|b| b.kind == kind && b.start == start && b.keys == keys)
    {
        return b.value.clone();
    }
    let value = build();
    built.push(Built {
        kind,
        start,
        keys: keys.to_vec(),
        value: value.clone(),
    });
    value
}

impl ChunkMasks {
    /// The mask for `kind` at `start` over `keys`: the kept one when a layer
    /// of that type already built it over the same keys, else `build()`'s.
    fn get_or_build(
        &self,
        kind: LayerType,
        start: usize,
        keys: &[usize],
        build: impl FnOnce() -> Tensor<4>,
    ) -> Tensor<4> {
        memo(&self.built, kind, start, keys, build)
    }

    /// The prefill kernel's key table, kept like [`ChunkMasks::get_or_build`]'s masks.
    #[cfg(feature = "kernels")]
    fn key_table(
        &self,
        kind: LayerType,
        start: usize,
        keys: &[usize],
        build: impl FnOnce() -> Option<crate::kernels::KeyTable>,
    ) -> Option<crate::kernels::KeyTable> {
        memo(&self.tables, kind, start, keys, build)
    }
}

/// [`mask`] built on `device` as `[1, 1, rep·T, S]` (always a tensor, zeros
/// where every key is visible), from uploads of `S + 2·T` integers at most
/// (key positions, and image block numbers when there are blocks) instead of
/// `rep·T·S` floats. `window` is `Some(W)` on sliding-window layers.
fn device_mask(
    window: Option<usize>,
    start: usize,
    t: usize,
    keys: &[usize],
    rep: usize,
    blocks: &[Range<usize>],
    device: &Device,
) -> Tensor<4> {
    let s = keys.len();
    let ints = |v: Vec<i64>, device: &Device| {
        let n = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
    };
    let as_i64 = |p: usize| i64::try_from(p).expect("positions fit in i64");
    // Query positions down, key positions across: [T, S] each.
    let q = Tensor::<1, Int>::arange(as_i64(start)..as_i64(start + t), device)
        .reshape([t, 1])
        .expand([t, s]);
    let k = ints(keys.iter().map(|&j| as_i64(j)).collect(), device)
        .reshape([1, s])
        .expand([t, s]);
    let mut visible: Tensor<2, Bool> = k.clone().lower_equal(q.clone());
    if !blocks.is_empty() {
        // Block number (1-based, 0 outside every block) of each query and
        // key; blocks are disjoint, so equal non-zero numbers mean the same block.
        let number = |p: usize| {
            blocks
                .iter()
                .position(|b| b.contains(&p))
                .map_or(0, |i| as_i64(i + 1))
        };
        let qb = ints((start..start + t).map(number).collect(), device)
            .reshape([t, 1])
            .expand([t, s]);
        let kb = ints(keys.iter().map(|&j| number(j)).collect(), device)
            .reshape([1, s])
            .expand([t, s]);
        let same = qb.clone().not_equal_elem(0).bool_and(qb.equal(kb));
        visible = visible.bool_or(same);
    }
    if let Some(w) = window {
        // j > i − W, written j + W > i to stay in non-negative integers.
        visible = visible.bool_and(k.add_scalar(as_i64(w)).greater(q));
    }
    let m = Tensor::<2>::zeros([t, s], (device, DType::F32))
        .mask_fill(visible.bool_not(), f32::NEG_INFINITY);
    m.unsqueeze::<3>()
        .expand([rep, t, s])
        .reshape([1, 1, rep * t, s])
}

/// Additive mask `[rep·T, S]` (0 or −∞), or `None` when every key is visible.
///
/// Query `i` (absolute `start + r`) sees key `j` (absolute `keys[c]`, in
/// whatever order the cache holds them) iff `j ≤ i` or both lie in the same
/// image block, and, on local layers, `j > i − W` (spec §2.6, §5.4;
/// transformers' `create_masks_for_vision_model`: sliding AND (causal OR block)).
fn mask(
    kind: LayerType,
    window: usize,
    start: usize,
    t: usize,
    keys: &[usize],
    rep: usize,
    blocks: &[Range<usize>],
) -> Option<Vec<f32>> {
    let s = keys.len();
    let same_block = |i: usize, j: usize| blocks.iter().any(|b| b.contains(&i) && b.contains(&j));
    let visible = |i: usize, j: usize| {
        (j <= i || same_block(i, j)) && (kind == LayerType::Global || j + window > i)
    };
    let all = (0..t).all(|r| keys.iter().all(|&j| visible(start + r, j)));
    if all {
        return None;
    }
    let mut m = Vec::with_capacity(rep * t * s);
    for _ in 0..rep {
        for r in 0..t {
            m.extend(keys.iter().map(|&j| {
                if visible(start + r, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bound_is_exclusive_of_i_minus_w() {
        // W = 3: query 5 sees keys 3, 4, 5 and not 2.
        let keys: Vec<usize> = (0..6).collect();
        let m = mask(LayerType::Local, 3, 5, 1, &keys, 1, &[]).unwrap();
        let seen: Vec<bool> = m.iter().map(|v| *v == 0.0).collect();
        assert_eq!(seen, vec![false, false, false, true, true, true]);
        // Global layers see everything up to i.
        assert!(mask(LayerType::Global, 3, 5, 1, &keys, 1, &[]).is_none());
    }

    #[test]
    fn mask_follows_ring_order() {
        // A ring of 3 slots after positions 0..5 holds 3, 4, 2; a two-token
        // chunk at 5 appends 5, 6. W = 3: query 5 sees 3, 4, 5; query 6 sees 4, 5, 6.
        let m = mask(LayerType::Local, 3, 5, 2, &[3, 4, 2, 5, 6], 1, &[]).unwrap();
        let seen: Vec<bool> = m.iter().map(|v| *v == 0.0).collect();
        #[rustfmt::skip]
        assert_eq!(seen, vec![
            true, true, false, true, false,
            false, true, false, true, true,
        ]);
    }

    #[test]
    // `&[2..5]` is a list of one image block, not a range to expand.
    #[allow(clippy::single_range_in_vec_init)]
    fn image_blocks_see_themselves_both_ways_within_the_window() {
        // Positions 0..6, block 2..5. Global: query 2 sees 3 and 4 (later,
        // same block) but not 5; query 5 is causal.
        let keys: Vec<usize> = (0..6).collect();
        let block = vec![std::ops::Range { start: 2, end: 5 }];
        let m = mask(LayerType::Global, 100, 0, 6, &keys, 1, block.as_slice()).unwrap();
        let row =
            |r: usize| -> Vec<bool> { m[r * 6..r * 6 + 6].iter().map(|v| *v == 0.0).collect() };
        assert_eq!(row(2), vec![true, true, true, true, true, false]);
        assert_eq!(row(5), vec![true; 6]);
        assert_eq!(row(1), vec![true, true, false, false, false, false]);
        // Local, W = 2: query 4 sees 3 and 4 only (2 is in its block but
        // outside the window); query 2 sees 1, 2, 3, 4 (later block keys
        // are inside the window: j > i − W holds for every j > i).
        let m = mask(LayerType::Local, 2, 0, 6, &keys, 1, block.as_slice()).unwrap();
        let row =
            |r: usize| -> Vec<bool> { m[r * 6..r * 6 + 6].iter().map(|v| *v == 0.0).collect() };
        assert_eq!(row(4), vec![false, false, false, true, true, false]);
        assert_eq!(row(2), vec![false, true, true, true, true, false]);
    }

    /// One prefill chunk's mask inputs.
    #[derive(Debug)]
    pub(super) struct Case {
        kind: LayerType,
        window: usize,
        start: usize,
        t: usize,
        /// The visible keys' positions, in cache order.
        keys: Vec<usize>,
        rep: usize,
        blocks: Vec<Range<usize>>,
    }

    /// The unit tests' cases above as prefill chunks, then random ones:
    /// keys in any order (a ring's), some cached positions missing (past the
    /// window), image blocks inside the chunk, `rep` of 1 to 3.
    pub(super) fn prefill_cases() -> Vec<Case> {
        use rand::rngs::StdRng;
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let case = |kind, window, start, t, keys, rep, blocks| Case {
            kind,
            window,
            start,
            t,
            keys,
            rep,
            blocks,
        };
        let block = || std::iter::once(2..5).collect::<Vec<_>>();
        let mut cases = vec![
            case(LayerType::Local, 3, 5, 2, vec![3, 4, 2, 5, 6], 1, vec![]),
            case(LayerType::Local, 3, 0, 6, (0..6).collect(), 2, vec![]),
            case(LayerType::Global, 100, 0, 6, (0..6).collect(), 1, block()),
            case(LayerType::Local, 2, 0, 6, (0..6).collect(), 1, block()),
        ];
        let mut rng = StdRng::seed_from_u64(15);
        for _ in 0..200 {
            let kind = if rng.random_bool(0.5) {
                LayerType::Local
            } else {
                LayerType::Global
            };
            let (window, start, t) = (
                rng.random_range(1..10),
                rng.random_range(0..30),
                rng.random_range(2..12),
            );
            let mut keys: Vec<usize> = (0..start).filter(|_| rng.random_bool(0.7)).collect();
            keys.shuffle(&mut rng);
            keys.extend(start..start + t);
            let mut blocks = Vec::new();
            let mut p = start;
            while p + 1 < start + t {
                let b = p + rng.random_range(0..3);
                let e = (b + rng.random_range(1..5)).min(start + t);
                if b < e && rng.random_bool(0.6) {
                    blocks.push(b..e);
                }
                p = e.max(b + 1);
            }
            let rep = rng.random_range(1..4);
            cases.push(case(kind, window, start, t, keys, rep, blocks));
        }
        cases
    }

    /// [`device_mask`] on `device` against the host [`mask`], value for value
    /// (`None` from the host means all zeros).
    pub(super) fn device_mask_equals_host_mask_on(device: &Device) {
        for (i, c) in prefill_cases().into_iter().enumerate() {
            let s = c.keys.len();
            let host = mask(c.kind, c.window, c.start, c.t, &c.keys, c.rep, &c.blocks)
                .unwrap_or_else(|| vec![0.0; c.rep * c.t * s]);
            let window = (c.kind == LayerType::Local).then_some(c.window);
            let m = device_mask(window, c.start, c.t, &c.keys, c.rep, &c.blocks, device);
            assert_eq!(m.dims(), [1, 1, c.rep * c.t, s], "case {i}");
            let got: Vec<f32> = m.into_data().iter::<f32>().collect();
            let same = host.len() == got.len() && host.iter().zip(&got).all(|(a, b)| a == b);
            assert!(same, "case {i}: {c:?}\nhost {host:?}\ndevice {got:?}");
        }
    }

    /// The prefill attention kernel on CubeCL's CPU runtime against Burn's
    /// composition (scores, the host [`mask`], softmax, values) for every
    /// prefill case, with one or two KV heads, queries in `attention`'s
    /// layout (`[1, H, T, hd]` over a `[1, T, H, hd]` buffer), keys and values
    /// as views of a larger buffer (read in place, as the cache hands them
    /// out); then the models' own head shapes, f32 and bf16; then folding
    /// one and three keys per step instead of `KEYS_PER_STEP`.
    #[cfg(feature = "cube-cpu")]
    pub(super) fn prefill_kernel_equals_masked_softmax() {
        use crate::kernels::test_support::{device, max_abs_diff, random};
        let device = device();
        let attend_in = |c: &Case, kv: usize, hd: usize, dtype: DType, seed: u64, step: usize| {
            let (h, s, t) = (kv * c.rep, c.keys.len(), c.t);
            let q = random([1, t, h, hd], dtype, seed, &device)
                .mul_scalar(4.0)
                .swap_dims(1, 2);
            let kv_buf = |seed| {
                random([1, kv, s + 3, hd], dtype, seed, &device).slice([
                    0..1,
                    0..kv,
                    1..s + 1,
                    0..hd,
                ])
            };
            let (keys, values) = (kv_buf(seed + 1), kv_buf(seed + 2));
            let scale = (hd as f64).powf(-0.5);
            let window = (c.kind == LayerType::Local).then_some(c.window);
            let table = crate::kernels::key_table(&q, c.start, t, &c.keys, window, &c.blocks)
                .expect("a table on the CubeCL CPU runtime");
            let got =
                crate::kernels::prefill_attention_stepping(&q, &keys, &values, &table, scale, step)
                    .expect("the kernel runs on the CubeCL CPU runtime");
            let scores = q
                .reshape([1, kv, c.rep * t, hd])
                .matmul(keys.swap_dims(2, 3))
                .mul_scalar(scale)
                .cast(DType::F32);
            let scores = match mask(c.kind, c.window, c.start, t, &c.keys, c.rep, &c.blocks) {
                Some(m) => {
                    let m = Tensor::<4>::from_data(
                        TensorData::new(m, [1, 1, c.rep * t, s]),
                        (&device, DType::F32),
                    );
                    scores + m
                }
                None => scores,
            };
            let want = softmax(scores, 3)
                .cast(dtype)
                .matmul(values)
                .reshape([1, h, t, hd])
                .swap_dims(1, 2)
                .reshape([t, h * hd]);
            assert_eq!(got.dtype(), dtype);
            max_abs_diff(got, want)
        };
        let attend = |c: &Case, kv: usize, hd: usize, dtype: DType, seed: u64| {
            attend_in(c, kv, hd, dtype, seed, crate::kernels::KEYS_PER_STEP)
        };
        // The four fixed cases and 56 random ones (each new combination of
        // comptime parameters compiles a kernel; 60 cover them all).
        for (i, c) in prefill_cases().iter().take(60).enumerate() {
            let d = attend(c, 1 + i % 2, 8, DType::F32, 40 + i as u64);
            assert!(d <= 2e-5, "case {i}: {c:?} differs by {d}");
        }
        // The 4B's heads (8 over 4) and the 270M's (4 over 1), head dim 256:
        // a sliding-window ring wrapped around with an image block, and a
        // global chunk after cached tokens.
        let ring: Vec<usize> = (32..40).chain(24..32).collect();
        let shaped = [
            (
                Case {
                    kind: LayerType::Local,
                    window: 16,
                    start: 32,
                    t: 8,
                    keys: ring.clone(),
                    rep: 2,
                    blocks: std::iter::once(33..37).collect(),
                },
                4,
            ),
            (
                Case {
                    kind: LayerType::Global,
                    window: 16,
                    start: 24,
                    t: 16,
                    keys: (0..40).collect(),
                    rep: 4,
                    blocks: vec![],
                },
                1,
            ),
        ];
        for (i, (c, kv)) in shaped.iter().enumerate() {
            for (dtype, tol) in [(DType::F32, 2e-5), (DType::BF16, 2e-2)] {
                let d = attend(c, *kv, 256, dtype, 700 + i as u64);
                assert!(d <= tol, "{c:?} {dtype:?}: differs by {d}");
            }
        }
        // Folding keys one at a time (the micro-benchmark's comparison) and
        // three at a time (a chunk of keys that does not divide by it) on the
        // fixed cases, whose masks skip whole steps and parts of steps.
        for per_step in [1, 3] {
            for (i, c) in prefill_cases().iter().take(4).enumerate() {
                let d = attend_in(c, 1 + i % 2, 8, DType::F32, 40 + i as u64, per_step);
                assert!(
                    d <= 2e-5,
                    "{per_step} per step, case {i}: {c:?} differs by {d}"
                );
            }
        }
        // Positions the kernel's u32 arithmetic cannot hold get no table (the
        // caller then takes the masked softmax): the last query, and on
        // sliding-window layers the last key plus the window.
        let q = random([1, 4, 2, 8], DType::F32, 1, &device).swap_dims(1, 2);
        let top = u32::MAX as usize;
        let table = |start: usize, window| {
            let keys: Vec<usize> = (start..start + 2).collect();
            crate::kernels::key_table(&q, start, 2, &keys, window, &[]).is_some()
        };
        assert!(table(top - 3, None), "a global chunk ending below u32::MAX");
        assert!(!table(top - 1, None), "a chunk ending past u32::MAX");
        assert!(table(top - 10, Some(8)), "last key + window below u32::MAX");
        assert!(!table(top - 6, Some(8)), "last key + window past u32::MAX");
    }

    #[test]
    fn device_mask_equals_host_mask_on_flex() {
        device_mask_equals_host_mask_on(&crate::backend::cpu_device());
    }

    #[test]
    fn a_chunk_builds_one_mask_per_layer_type_and_keys() {
        let device = crate::backend::cpu_device();
        let masks = ChunkMasks::default();
        let keys: Vec<usize> = (0..4).collect();
        let build = |w| {
            let keys = keys.clone();
            let device = device.clone();
            move || device_mask(w, 0, 4, &keys, 1, &[], &device)
        };
        let first = masks.get_or_build(LayerType::Local, 0, &keys, build(Some(2)));
        let again = masks.get_or_build(LayerType::Local, 0, &keys, || {
            panic!("the second local layer must reuse the first one's mask")
        });
        let global = masks.get_or_build(LayerType::Global, 0, &keys, build(None));
        assert_eq!(masks.built.borrow().len(), 2);
        let v = |m: Tensor<4>| m.into_data().iter::<f32>().collect::<Vec<f32>>();
        assert_eq!(v(first.clone()), v(again));
        assert_ne!(v(first), v(global));
        // Other keys (another chunk's) build anew.
        masks.get_or_build(LayerType::Local, 0, &keys[..3], build(Some(2)));
        assert_eq!(masks.built.borrow().len(), 3);
    }
}

/// The device mask on CubeCL's CPU runtime (the CUDA code path without a GPU).
#[cfg(all(test, feature = "cube-cpu"))]
mod cube_cpu_tests {
    #[test]
    fn device_mask_equals_host_mask_on_cubecl_cpu() {
        super::tests::device_mask_equals_host_mask_on(&crate::kernels::test_support::device());
    }

    #[test]
    fn prefill_attention_kernel_equals_masked_softmax() {
        super::tests::prefill_kernel_equals_masked_softmax();
    }
}
