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
use crate::routines::MatmulRoutine;
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
        /// Which routine takes a decode-sized product on a CubeCL device
        /// (our skinny kernel until a tuning on the card says otherwise).
        routes: Routes,
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
            routes: Routes::default(),
        }
    }

    /// The dense weight, when this layer holds one (`[out, in]`).
    #[cfg_attr(not(feature = "kernels"), allow(dead_code))]
    pub(crate) fn dense(&self) -> Option<&Tensor<2>> {
        match self {
            Self::Dense { weight, .. } => Some(weight),
            Self::Cpu { .. } => None,
        }
    }

    /// Routes products of `rows` rows (a bucket: see [`Routes`]) through
    /// `route`; nothing on the CPU, which has one route.
    #[cfg_attr(not(feature = "kernels"), allow(dead_code))]
    pub(crate) fn set_route(&mut self, rows: usize, route: ProductRoute) {
        if let Self::Dense { routes, .. } = self {
            routes.set(rows, route);
        }
    }

    /// Routes products of more than [`ROUTED_ROWS`] rows (prompt chunks)
    /// through `routine`, or Burn's matmul for `None`; nothing on the CPU.
    #[cfg_attr(not(feature = "kernels"), allow(dead_code))]
    pub(crate) fn set_chunk_route(&mut self, routine: Option<MatmulRoutine>) {
        if let Self::Dense { routes, .. } = self {
            routes.chunk = routine;
        }
    }

    /// The routine a prompt chunk's product takes (`None`: Burn's matmul).
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn chunk_route(&self) -> Option<MatmulRoutine> {
        match self {
            Self::Dense { routes, .. } => routes.chunk,
            Self::Cpu { .. } => None,
        }
    }

    /// The route products of `rows` rows take.
    #[cfg(all(test, feature = "cube-cpu"))]
    pub(crate) fn route(&self, rows: usize) -> ProductRoute {
        match self {
            Self::Dense { routes, .. } => routes.of(rows),
            Self::Cpu { .. } => ProductRoute::Skinny,
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
            Self::Dense {
                weight,
                row_blocks,
                routes,
            } => gpu_product(weight, x, *routes, |w, x| {
                row_blocked_product(w, x, *row_blocks)
            }),
            Self::Cpu { weight, device } => cpu_product(weight, x, device),
        }
    }

    /// `x · Wᵀ` for `x: [B, in]`, one decode token of each of B sequences.
    pub(crate) fn forward_batch(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Dense {
                weight,
                row_blocks,
                routes,
            } => gpu_product(weight, x, *routes, |w, x| batch_product(w, x, *row_blocks)),
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

    /// The layers' products in one launch of the skinny kernel
    /// (`kernels::skinny_many`) where each would take the skinny kernel on
    /// its own: all dense, all routed to it for `x`'s rows, and `x` within
    /// its rows. `None` otherwise (each then takes its own route).
    #[cfg(feature = "kernels")]
    fn skinny_together<const L: usize>(
        layers: &[&Linear; L],
        x: &Tensor<2>,
    ) -> Option<[Tensor<2>; L]> {
        let rows = x.dims()[0];
        let ws: Vec<&Tensor<2>> = layers
            .iter()
            .map(|l| l.skinny_weight(rows))
            .collect::<Option<_>>()?;
        crate::kernels::skinny_many(&ws, x)?.try_into().ok()
    }

    /// The dense weight, when products of `rows` rows take the skinny kernel.
    #[cfg(feature = "kernels")]
    fn skinny_weight(&self, rows: usize) -> Option<&Tensor<2>> {
        match self {
            Self::Dense { weight, routes, .. } if routes.of(rows) == ProductRoute::Skinny => {
                Some(weight)
            }
            _ => None,
        }
    }

    /// `gelu_tanh(x · gateᵀ) · (x · upᵀ)` in one launch
    /// (`kernels::skinny_geglu`) where both products would take the skinny
    /// kernel on their own: both dense and routed to it for `x`'s rows, and
    /// `x` within its rows. `None` otherwise (the products then take their
    /// routes, and GeGLU its own launch).
    #[cfg(feature = "kernels")]
    pub(crate) fn skinny_geglu(gate: &Linear, up: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
        let rows = x.dims()[0];
        crate::kernels::skinny_geglu(gate.skinny_weight(rows)?, up.skinny_weight(rows)?, x)
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
            #[cfg(feature = "kernels")]
            if let Some(ys) = Self::skinny_together(&layers, &x) {
                return ys;
            }
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

/// The most rows a product is routed for (decode batches, short prompt
/// chunks): our skinny kernel's limit.
pub(crate) const ROUTED_ROWS: usize = 32;

#[cfg(feature = "kernels")]
const _: () = assert!(ROUTED_ROWS == crate::kernels::SKINNY_MAX_ROWS);

/// Which routine computes `x · Wᵀ` for up to 32 rows (decode batches,
/// short prompt chunks) on a CubeCL device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductRoute {
    /// Our skinny matmul kernel (`kernels/skinny.rs`): the weights streamed
    /// once with CUDA cores. What runs until a tuning chooses otherwise.
    #[default]
    Skinny,
    /// Our tiled kernel (`kernels/skinny.rs`): each load of `x` reused for
    /// four weight rows, the reduced axis split over a cube's planes.
    Tiled,
    /// Burn's own matmul: its tensor-core routine for bf16 on a GPU, the
    /// f32 one without TF32 (`kernels::matmul`) for f32.
    Burn,
    /// One of cubek's other routines (`routines.rs`; serialised as
    /// `{"cubek": name}`).
    Cubek(MatmulRoutine),
}

/// The route of a product per row bucket: 1, 2, 3–4, 5–8, 9–16 and 17–32
/// rows (a count takes the bucket of its next power of two, which is
/// where a tuning measures); past them (prompt chunks), Burn's matmul or
/// the cubek routine a chunk tuning chose (`routines.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Routes {
    decode: [ProductRoute; ROW_BUCKETS],
    chunk: Option<MatmulRoutine>,
}

/// Buckets of 1, 2, 4, 8, 16 and [`ROUTED_ROWS`] rows.
const ROW_BUCKETS: usize = ROUTED_ROWS.trailing_zeros() as usize + 1;

// Without our kernels nothing is routed: one product for every row count.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
impl Routes {
    fn bucket(rows: usize) -> Option<usize> {
        (1..=ROUTED_ROWS)
            .contains(&rows)
            .then(|| rows.next_power_of_two().trailing_zeros() as usize)
    }

    /// The route of `rows` rows: [`ProductRoute::Skinny`] outside the buckets.
    pub(crate) fn of(&self, rows: usize) -> ProductRoute {
        Self::bucket(rows).map_or(ProductRoute::Skinny, |b| self.decode[b])
    }

    /// Sets the route of `rows`' bucket (nothing outside the buckets).
    pub(crate) fn set(&mut self, rows: usize, route: ProductRoute) {
        if let Some(b) = Self::bucket(rows) {
            self.decode[b] = route;
        }
    }

    /// The routine of a product of `rows` rows past the buckets, when a
    /// chunk tuning chose one; `None` inside them and for Burn's matmul.
    pub(crate) fn chunk(&self, rows: usize) -> Option<MatmulRoutine> {
        self.chunk.filter(|_| rows > ROUTED_ROWS)
    }
}

/// The row counts a tuning measures: the top of each bucket of [`Routes`].
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) fn tuned_rows() -> impl Iterator<Item = usize> {
    (0..ROW_BUCKETS).map(|b| 1usize << b)
}

/// The route to take from a timing: the fastest route that agrees with the
/// skinny kernel, where it beats the skinny kernel by
/// [`crate::routines::ROUTE_MARGIN`] (the skinny kernel is the route the
/// bench has always measured); else the skinny kernel.
#[cfg(feature = "kernels")]
pub(crate) fn choose(t: &crate::kernels::RouteTimes) -> ProductRoute {
    let ours = [
        (ProductRoute::Tiled, Some(t.tiled_us), t.tiled_agrees),
        (ProductRoute::Burn, Some(t.burn_us), t.burn_agrees),
    ];
    let routines = t
        .routines
        .iter()
        .map(|&(r, us, agrees)| (ProductRoute::Cubek(r), us, agrees));
    crate::routines::fastest(t.skinny_us, ours.into_iter().chain(routines))
        .unwrap_or(ProductRoute::Skinny)
}

/// One measured (weight shape, rows) pair of a product tuning
/// ([`crate::gemma3::Gemma3::tune_products`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProductTiming {
    /// `out×in` of the weight.
    pub shape: String,
    /// How many of the model's linear layers have this shape.
    pub layers: usize,
    /// Rows of `x` measured (the top of a bucket).
    pub rows: usize,
    /// Our skinny kernel, microseconds per product.
    pub skinny_us: f64,
    /// Our tiled kernel, microseconds per product.
    pub tiled_us: f64,
    /// Burn's matmul, microseconds per product.
    pub burn_us: f64,
    /// Whether the tiled kernel's result equalled the skinny kernel's
    /// within the dtype's rounding (a route that does not is never chosen).
    pub tiled_agrees: bool,
    /// Whether Burn's did.
    pub burn_agrees: bool,
    /// cubek's other routines, at 16 (`routines::DECODE_ROUTINE_ROWS`)
    /// rows and more in bf16 or f16 (empty otherwise).
    pub routines: Vec<crate::routines::RoutineTiming>,
    /// The route chosen.
    pub route: ProductRoute,
}

/// One line for a log: which (shape, rows) pairs a tuning routed away from
/// the skinny kernel, or that every product stays on it.
pub fn tuning_summary(timings: &[ProductTiming]) -> String {
    let moved: Vec<String> = timings
        .iter()
        .filter_map(|t| {
            let (name, us) = match t.route {
                ProductRoute::Skinny => return None,
                ProductRoute::Tiled => ("tiled", t.tiled_us),
                ProductRoute::Burn => ("Burn's", t.burn_us),
                ProductRoute::Cubek(r) => (
                    r.name(),
                    t.routines
                        .iter()
                        .find(|x| x.routine == r.name())
                        .and_then(|x| x.us)
                        .unwrap_or(f64::NAN),
                ),
            };
            Some(format!(
                "{} at {} rows {name} ({us:.0} µs against {:.0})",
                t.shape, t.rows, t.skinny_us
            ))
        })
        .collect();
    if moved.is_empty() {
        format!(
            "every decode product on the skinny kernel ({} shape and row pairs measured)",
            timings.len()
        )
    } else {
        format!(
            "{} of {} shape and row pairs off the skinny kernel: {}",
            moved.len(),
            timings.len(),
            moved.join(", ")
        )
    }
}

#[cfg(test)]
thread_local! {
    /// Decode-sized products this thread routed to the tiled kernel and to
    /// Burn's matmul, for the tests of the routing (a thread's own count:
    /// tests run side by side).
    pub(crate) static ROUTED: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
    /// Products (decode-sized or prompt chunks) this thread ran through
    /// one of cubek's other routines.
    pub(crate) static CUBEK_ROUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `x · Wᵀ` on a CubeCL device (the GPU; with the `kernels` feature): up to
/// [`ROUTED_ROWS`] rows (decode steps) by `routes` (our skinny matmul
/// kernel, which streams `W` once at close to the memory bandwidth, unless
/// a tuning found our tiled kernel, Burn's matmul or another cubek routine
/// faster for that many rows); more rows (prompt chunks) through the cubek
/// routine a chunk tuning chose for this weight (`routines.rs`), else in
/// f32 through the matmul without TF32 (`kernels::matmul`), in bf16
/// through Burn's tensor-core matmul. Anywhere else `plain(w, x)`.
fn gpu_product(
    w: &Tensor<2>,
    x: Tensor<2>,
    #[cfg_attr(not(feature = "kernels"), allow(unused_variables))] routes: Routes,
    plain: impl FnOnce(&Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    {
        let routed = match routes.of(x.dims()[0]) {
            ProductRoute::Skinny => None,
            ProductRoute::Tiled => crate::kernels::skinny_tiled(w, &x),
            ProductRoute::Burn => crate::kernels::burn_product(w, &x),
            ProductRoute::Cubek(r) => crate::kernels::routine_product(w, &x, r),
        };
        if let Some(y) = routed {
            #[cfg(test)]
            match routes.of(x.dims()[0]) {
                ProductRoute::Cubek(_) => CUBEK_ROUTED.with(|n| n.set(n.get() + 1)),
                route => ROUTED.with(|n| {
                    let (t, b) = n.get();
                    let tiled = route == ProductRoute::Tiled;
                    n.set((t + usize::from(tiled), b + usize::from(!tiled)));
                }),
            }
            return y;
        }
        if let Some(r) = routes.chunk(x.dims()[0])
            && let Some(y) = crate::kernels::routine_product(w, &x, r)
        {
            #[cfg(test)]
            CUBEK_ROUTED.with(|n| n.set(n.get() + 1));
            return y;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_count_takes_the_route_of_its_next_power_of_two() {
        let mut r = Routes::default();
        assert!((0..=40).all(|rows| r.of(rows) == ProductRoute::Skinny));
        r.set(16, ProductRoute::Burn);
        let burn: Vec<usize> = (0..=40)
            .filter(|&rows| r.of(rows) == ProductRoute::Burn)
            .collect();
        assert_eq!(burn, (9..=16).collect::<Vec<_>>());
        r.set(3, ProductRoute::Burn);
        r.set(33, ProductRoute::Burn);
        assert_eq!(r.of(4), ProductRoute::Burn);
        assert_eq!(r.of(2), ProductRoute::Skinny);
        assert_eq!(
            r.of(33),
            ProductRoute::Skinny,
            "past the buckets: skinny's limit"
        );
        assert_eq!(
            tuned_rows().collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32],
            "one measured count per bucket, at its top"
        );
    }

    #[test]
    fn the_summary_names_what_left_the_skinny_kernel() {
        let t = |shape: &str, rows, route| ProductTiming {
            shape: shape.to_owned(),
            layers: 1,
            rows,
            skinny_us: 30.0,
            tiled_us: 25.0,
            burn_us: 20.0,
            tiled_agrees: true,
            burn_agrees: true,
            routines: vec![crate::routines::RoutineTiming {
                routine: "double_mma",
                us: Some(12.0),
                agrees: true,
            }],
            route,
        };
        assert_eq!(
            tuning_summary(&[t("8x4", 1, ProductRoute::Skinny)]),
            "every decode product on the skinny kernel (1 shape and row pairs measured)"
        );
        let s = tuning_summary(&[
            t("8x4", 1, ProductRoute::Skinny),
            t("8x4", 8, ProductRoute::Tiled),
            t("8x4", 32, ProductRoute::Burn),
            t("8x4", 16, ProductRoute::Cubek(MatmulRoutine::DoubleMma)),
        ]);
        assert_eq!(
            s,
            "3 of 4 shape and row pairs off the skinny kernel: 8x4 at 8 rows tiled (25 µs against 30), 8x4 at 32 rows Burn's (20 µs against 30), 8x4 at 16 rows double_mma (12 µs against 30)"
        );
    }
}
