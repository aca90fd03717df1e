//! Linear layers of the decoder: `x · Wᵀ` with `W` kept as the checkpoint
//! stores it, `[out, in]`.
//!
//! Two ways to hold `W`: a dense Burn tensor in the compute dtype (the GPU,
//! and the CPU when asked for f32 weights), or, on the CPU, a
//! [`CpuMatrix`] in the file's own format (GGUF blocks, bf16, or Q8_0 made
//! at load) multiplied by the kernels in `crate::cpu`. The tied embedding is
//! a [`Linear`] too: its rows are the token embeddings and its product is
//! the LM head.
//!
//! Owns: how a weight matrix is held on its device and how products with it
//! are laid out for one-token decode, decode batches and prompts. Must never:
//! read files (weights arrive from `gemma3.rs`'s tensor source) or see text.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::cpu::CpuMatrix;
use crate::weights::{WeightSource, WeightsError};

/// A linear layer stored as the checkpoint stores it, `[out, in]`.
// A model holds a few hundred of these; their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    /// A tensor on the model's device, in the compute dtype.
    Dense {
        weight: Tensor<2>,
        /// Row blocks for one-token products (see [`row_blocked_product`]).
        row_blocks: usize,
    },
    /// On the CPU, in its storage format (`crate::cpu`); activations and
    /// results are f32 Burn tensors on `device`.
    Cpu { weight: CpuMatrix, device: Device },
}

impl Linear {
    pub(crate) fn new(weight: Tensor<2>, device: &Device) -> Self {
        let out = weight.dims()[0];
        Self::Dense {
            weight,
            row_blocks: row_blocks(device, out),
        }
    }

    /// Loads `name` (`[out, in]` = `shape`) from `src`: kept as stored
    /// when the model runs on the CPU in f32 (unless the source is set to
    /// [`crate::weights::CpuWeights::F32`]), a dense tensor otherwise.
    pub(crate) fn load(
        src: &mut WeightSource,
        name: &str,
        shape: [usize; 2],
        device: &Device,
        dtype: DType,
    ) -> Result<Self, WeightsError> {
        if *device == Device::flex()
            && dtype == DType::F32
            && let Some(weight) = src.cpu_matrix(name, shape)?
        {
            return Ok(Self::Cpu {
                weight,
                device: device.clone(),
            });
        }
        let data = src.load(name, &shape, dtype, false)?;
        Ok(Self::new(
            Tensor::<2>::from_data(data, (device, dtype)),
            device,
        ))
    }

    /// `x · Wᵀ` for `x: [N, in]` (N prompt tokens of one sequence).
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense { weight, row_blocks } => {
                gpu_product(weight, x, |w, x| row_blocked_product(w, x, *row_blocks))
            }
            Self::Cpu { weight, device } => cpu_product(weight, x, device),
        }
    }

    /// `x · Wᵀ` for `x: [B, in]`, one decode token of each of B sequences.
    pub(crate) fn forward_batch(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense { weight, row_blocks } => {
                gpu_product(weight, x, |w, x| batch_product(w, x, *row_blocks))
            }
            Self::Cpu { weight, device } => cpu_product(weight, x, device),
        }
    }

    /// `x · Wᵢᵀ` for layers that share their input `x: [N, in]` (q/k/v, gate
    /// and up): on the CPU one hand-off to the pool for all of them
    /// ([`CpuMatrix::matmul_many`]), elsewhere [`Linear::forward`] each.
    pub(crate) fn forward_many<const L: usize>(
        layers: [&Linear; L],
        x: Tensor<2>,
    ) -> [Tensor<2>; L] {
        Self::many(layers, x, Self::forward)
    }

    /// [`Linear::forward_many`] for a decode batch ([`Linear::forward_batch`]).
    pub(crate) fn forward_batch_many<const L: usize>(
        layers: [&Linear; L],
        x: Tensor<2>,
    ) -> [Tensor<2>; L] {
        Self::many(layers, x, Self::forward_batch)
    }

    fn many<const L: usize>(
        layers: [&Linear; L],
        x: Tensor<2>,
        one: fn(&Linear, Tensor<2>) -> Tensor<2>,
    ) -> [Tensor<2>; L] {
        let cpu = layers.map(|l| match l {
            Self::Cpu { weight, device } => Some((weight, device)),
            Self::Dense { .. } => None,
        });
        if !cpu.iter().all(Option::is_some) {
            return layers.map(|l| one(l, x.clone()));
        }
        let cpu = cpu.map(|c| c.expect("all on the CPU: checked above"));
        let [n, _] = x.dims();
        let dtype = x.dtype();
        let data = x.cast(DType::F32).into_data();
        let copied: Vec<f32>;
        let xs = match data.as_slice::<f32>() {
            Ok(xs) => xs,
            Err(_) => {
                copied = data.iter::<f32>().collect();
                &copied
            }
        };
        let mats = cpu.map(|(w, _)| w);
        let mut outs = mats.map(|w| vec![0.0f32; n * w.rows()]);
        {
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            CpuMatrix::matmul_many(&mats, xs, &mut views);
        }
        let mut outs = outs.into_iter();
        cpu.map(|(w, device)| {
            let out = outs.next().expect("one output per layer");
            Tensor::<2>::from_data(TensorData::new(out, [n, w.rows()]), (device, DType::F32))
                .cast(dtype)
        })
    }

    /// Rows `idx` of `W`, `[idx.len(), in]` (Burn's `select` on dim 0): the
    /// embedding lookup of a tied table, in the compute dtype.
    ///
    /// # Panics
    ///
    /// If an id is not a row of `W` (as Burn's `select` does).
    pub(crate) fn select(&self, idx: Tensor<1, Int>) -> Tensor<2> {
        match self {
            Self::Dense { weight, .. } => weight.clone().select(0, idx),
            Self::Cpu { weight, device } => {
                let ids: Vec<u32> = idx
                    .into_data()
                    .iter::<i64>()
                    .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                    .collect();
                let mut out = vec![0.0f32; ids.len() * weight.cols()];
                weight.dequantize_rows(&ids, &mut out);
                Tensor::<2>::from_data(
                    TensorData::new(out, [ids.len(), weight.cols()]),
                    (device, DType::F32),
                )
            }
        }
    }
}

/// `x · Wᵀ` on a CubeCL device (the GPU; with the `kernels` feature): up to
/// `SKINNY_MAX_ROWS` rows (decode steps) through our skinny matmul kernel,
/// which streams `W` once at close to the memory bandwidth; more rows in f32
/// through the matmul without TF32 (`kernels::matmul`), in bf16 through
/// Burn's tensor-core matmul. Anywhere else `plain(w, x)`.
fn gpu_product(
    w: &Tensor<2>,
    x: Tensor<2>,
    plain: impl FnOnce(&Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    {
        if let Some(y) = crate::kernels::skinny_matmul(w, &x) {
            return y;
        }
        if x.dtype() == DType::F32 && crate::kernels::cube(&x).is_some() {
            return crate::kernels::matmul(x, w.clone().transpose());
        }
    }
    plain(w, x)
}

/// `a · b` (Burn's `matmul`), in f32 without TF32 on a CubeCL device (the
/// attention products of `gemma3.rs`; `kernels::matmul`).
pub(crate) fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "kernels")]
    return crate::kernels::matmul(a, b);
    #[cfg(not(feature = "kernels"))]
    a.matmul(b)
}

/// `x · Wᵀ` through the CPU kernels: the activations' f32 values are read
/// in place when `x` owns its buffer (a shared or strided `x` is copied
/// once), the result is a new f32 tensor in `x`'s dtype.
fn cpu_product(w: &CpuMatrix, x: Tensor<2>, device: &Device) -> Tensor<2> {
    let [n, _] = x.dims();
    let dtype = x.dtype();
    let data = x.cast(DType::F32).into_data();
    let mut out = vec![0.0f32; n * w.rows()];
    match data.as_slice::<f32>() {
        Ok(xs) => w.matmul(xs, &mut out),
        Err(_) => {
            let xs: Vec<f32> = data.iter::<f32>().collect();
            w.matmul(&xs, &mut out);
        }
    }
    Tensor::<2>::from_data(TensorData::new(out, [n, w.rows()]), (device, DType::F32)).cast(dtype)
}

/// `x · Wᵀ` with `W: [out, in]` kept in the checkpoint's layout.
///
/// One-token decode makes this a matrix-vector product that reads all of `W`
/// once. Burn's CPU backend (the `gemm` crate) runs a single GEMV on one core
/// at about 6 GB/s; viewing `W` as `[blocks, out/blocks, in]` and multiplying
/// by `xᵀ` turns it into a batch of independent GEMVs that run in parallel
/// (about 11 GB/s measured for the 262144 × 640 LM head,
/// `cargo run -p medgemma-model --example matmul_layouts`). The view is free:
/// no weight is copied. Prompts (N > 1) use the plain product.
pub(crate) fn row_blocked_product(w: &Tensor<2>, x: Tensor<2>, blocks: usize) -> Tensor<2> {
    let [n, k] = x.dims();
    let [out, _] = w.dims();
    if n == 1 && blocks > 1 {
        let y = w
            .clone()
            .reshape([blocks, out / blocks, k])
            .matmul(x.reshape([1, k, 1]));
        return y.reshape([1, out]);
    }
    x.matmul(w.clone().transpose())
}

/// `x · Wᵀ` for a decode batch `x: [B, in]` (one token per sequence).
///
/// B = 1 is exactly [`row_blocked_product`]. On the CPU (`blocks > 1`) the
/// row-blocked view `[blocks, out/blocks, in] · xᵀ` is used for every B:
/// measured with `cargo run --example batch_layouts` on the 2-core dev box
/// (270M shapes, B = 2..32), the plain `x · Wᵀ` product was 1.5–6× slower
/// at every B (e.g. LM head 640→262144, B = 8: 835 ms plain, 297 ms
/// row-blocked, 200 ms for B = 1), and `W · xᵀ` without blocks was never
/// better than the blocked view by more than noise. Elsewhere (`blocks = 1`,
/// GPU) the plain product, a GEMM the backend tiles itself. Either way the
/// weights are read once per step for the whole batch.
pub(crate) fn batch_product(w: &Tensor<2>, x: Tensor<2>, blocks: usize) -> Tensor<2> {
    let [n, k] = x.dims();
    if n == 1 {
        return row_blocked_product(w, x, blocks);
    }
    if blocks > 1 {
        let [out, _] = w.dims();
        let y = w
            .clone()
            .reshape([blocks, out / blocks, k])
            .matmul(x.transpose().reshape([1, k, n]));
        return y.reshape([out, n]).transpose();
    }
    x.matmul(w.clone().transpose())
}

/// Row blocks for one-token products on `device`: 8 on the CPU when `out`
/// divides evenly, 1 (the plain product) elsewhere.
pub(crate) fn row_blocks(device: &Device, out: usize) -> usize {
    if *device != Device::flex() {
        return 1;
    }
    [8, 4, 2]
        .into_iter()
        .find(|b| out.is_multiple_of(*b))
        .unwrap_or(1)
}
