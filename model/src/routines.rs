//! cubek's matmul routines that a product may take on a CubeCL device
//! instead of Burn's default, and which one a prompt chunk's products take.
//!
//! A prompt chunk (up to [`crate::generate::PREFILL_CHUNK`] tokens) multiplies
//! hundreds of rows by each weight: work for the tensor cores, and the bulk
//! of the time to first token. Burn's matmul (without its autotune, which
//! is off: see `spec/burn.md`) always takes cubek's simple cyclic routine,
//! one stage, no double buffering. cubek has faster routines for large
//! products (double buffering, ordered rows, warp-specialised loading with
//! the Hopper tensor-memory accelerator), but which one wins depends on the
//! card and the weight's shape. So the warm-up times a few of them on the
//! card, per weight shape, at a full chunk (`Gemma3::tune_chunk_products`),
//! and a shape takes the fastest that computes the same product as Burn's
//! ([`choose_chunk`]).
//!
//! A decode batch of 16 or 32 rows is timed against a few of them too
//! ([`MatmulRoutine::decode_candidates`]; `linear::choose` picks among
//! them, our kernels and Burn's).
//!
//! Owns: the candidates, the chunk choice and its report. Must never: take
//! a routine whose result was not compared on the card, or one that
//! declined the problem.

/// A cubek matmul routine for a product `x · Wᵀ` (launched by
/// `kernels::routine_product`). Serialised as its [`MatmulRoutine::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulRoutine {
    /// CUDA-core routine, largest tiles (f32, no TF32).
    UnitMaxTile,
    /// CUDA-core routine, smallest tiles (f32, no TF32).
    UnitMinTile,
    /// CUDA-core routine with double-buffered stages, largest tiles.
    DoubleUnitMaxTile,
    /// Tensor cores (`wmma`), cyclic loading, several rows per plane.
    CyclicCmmaRows,
    /// Tensor cores (`mma.sync`), cyclic loading.
    CyclicMma,
    /// Tensor cores (`wmma`), double-buffered stages.
    DoubleCmma,
    /// Tensor cores (`mma.sync`), double-buffered stages.
    DoubleMma,
    /// Tensor cores (`wmma`), double-buffered with ordered rows (8 rows
    /// of planes, 2 per plane, k split in 2: Burn's autotune's setting).
    OrderedCmma,
    /// [`MatmulRoutine::OrderedCmma`] on `mma.sync`.
    OrderedMma,
    /// Tensor cores (`mma.sync`), warp-specialised loading through the
    /// tensor-memory accelerator (sm_90).
    SpecializedTmaMma,
}

impl MatmulRoutine {
    /// The routines timed for a product in `dtype`. f32 never leaves the
    /// CUDA cores: cubek's tensor-core routines would promote it to TF32
    /// (`kernels/matmul.rs`).
    pub fn candidates(dtype: burn::tensor::DType) -> &'static [MatmulRoutine] {
        use MatmulRoutine::*;
        match dtype {
            burn::tensor::DType::F32 => &[UnitMaxTile, UnitMinTile, DoubleUnitMaxTile],
            _ => &[
                CyclicCmmaRows,
                CyclicMma,
                DoubleCmma,
                DoubleMma,
                OrderedCmma,
                OrderedMma,
                SpecializedTmaMma,
            ],
        }
    }

    /// The routines timed for a decode batch of at least
    /// `DECODE_ROUTINE_ROWS` (16) rows in `dtype`, beside our kernels and
    /// Burn's matmul: `mma.sync` tiles, cyclic, double-buffered and
    /// ordered. None in f32 (the fidelity tests' mode: no tensor cores).
    pub fn decode_candidates(dtype: burn::tensor::DType) -> &'static [MatmulRoutine] {
        use MatmulRoutine::*;
        match dtype {
            burn::tensor::DType::F32 => &[],
            _ => &[CyclicMma, DoubleMma, OrderedMma],
        }
    }

    /// Its name in logs and the bench's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnitMaxTile => "unit_max_tile",
            Self::UnitMinTile => "unit_min_tile",
            Self::DoubleUnitMaxTile => "double_unit_max_tile",
            Self::CyclicCmmaRows => "cyclic_cmma_rows",
            Self::CyclicMma => "cyclic_mma",
            Self::DoubleCmma => "double_cmma",
            Self::DoubleMma => "double_mma",
            Self::OrderedCmma => "ordered_cmma",
            Self::OrderedMma => "ordered_mma",
            Self::SpecializedTmaMma => "specialized_tma_mma",
        }
    }
}

impl serde::Serialize for MatmulRoutine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Decode batches of at least this many rows also time
/// [`MatmulRoutine::decode_candidates`]: below it the product is a read of
/// the weights, which our kernels stream; from it on the FMAs start to
/// weigh on the CUDA cores, and tensor-core tiles may win.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) const DECODE_ROUTINE_ROWS: usize = 16;

/// One routine as a tuning timed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoutineTiming {
    /// [`MatmulRoutine::name`].
    pub routine: &'static str,
    /// Median microseconds per product; `None` when the routine declined
    /// the problem on this device (no tensor cores, no TMA, a layout it
    /// does not take) or its launch failed.
    pub us: Option<f64>,
    /// Whether its result equalled Burn's within the dtype's rounding.
    pub agrees: bool,
}

/// The report of a tuning's `(routine, µs, agrees)` triples.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) fn timings(timed: &[(MatmulRoutine, Option<f64>, bool)]) -> Vec<RoutineTiming> {
    timed
        .iter()
        .map(|&(r, us, agrees)| RoutineTiming {
            routine: r.name(),
            us,
            agrees,
        })
        .collect()
}

/// One weight shape's prompt-chunk products as a tuning timed them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChunkTiming {
    /// `out×in` of the weight.
    pub shape: String,
    /// How many of the decoder's linear layers have this shape.
    pub layers: usize,
    /// Rows of `x` measured (a full prompt chunk).
    pub rows: usize,
    /// Burn's own matmul, median microseconds per product.
    pub burn_us: f64,
    /// Each candidate.
    pub routines: Vec<RoutineTiming>,
    /// The routine chosen, or `"burn"` for Burn's own.
    pub route: &'static str,
}

/// Another route must take less than this share of the incumbent's time
/// (the skinny kernel's for a decode product, Burn's for a chunk) to
/// replace it: timing noise must not move a product off the route every
/// fidelity test has run.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) const ROUTE_MARGIN: f64 = 0.9;

/// The fastest of `timed` (route, median µs, agrees) that agrees with the
/// incumbent's result and takes less than [`ROUTE_MARGIN`] of
/// `incumbent_us`; `None` keeps the incumbent. An untimed route (`None`
/// µs: declined, failed or disagreed) never wins.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) fn fastest<T>(
    incumbent_us: f64,
    timed: impl IntoIterator<Item = (T, Option<f64>, bool)>,
) -> Option<T> {
    let mut best = (None, incumbent_us * ROUTE_MARGIN);
    for (route, us, agrees) in timed {
        if let Some(us) = us
            && agrees
            && us < best.1
        {
            best = (Some(route), us);
        }
    }
    best.0
}

/// The fastest routine that agreed with Burn's product, where it beats
/// Burn's by [`ROUTE_MARGIN`]; `None` (Burn's) otherwise.
#[cfg_attr(not(feature = "kernels"), allow(dead_code))]
pub(crate) fn choose_chunk(
    burn_us: f64,
    timed: &[(MatmulRoutine, Option<f64>, bool)],
) -> Option<MatmulRoutine> {
    fastest(burn_us, timed.iter().copied())
}

/// One line for a log: the routine each shape took, and what a chunk's
/// products cost at the tuned rows with Burn's matmul and with the routes
/// chosen (each shape's time × its layers).
pub fn chunk_tuning_summary(timings: &[ChunkTiming]) -> String {
    let Some(rows) = timings.first().map(|t| t.rows) else {
        return "no prompt-chunk product timed".to_owned();
    };
    let mut burn = 0.0;
    let mut tuned = 0.0;
    let mut moved = Vec::new();
    for t in timings {
        let chosen = t
            .routines
            .iter()
            .find(|r| r.routine == t.route)
            .and_then(|r| r.us)
            .unwrap_or(t.burn_us);
        burn += t.burn_us * t.layers as f64;
        tuned += chosen * t.layers as f64;
        if t.route != "burn" {
            moved.push(format!(
                "{} {} ({chosen:.0} µs against {:.0})",
                t.shape, t.route, t.burn_us
            ));
        }
    }
    let routes = if moved.is_empty() {
        "every shape on Burn's matmul".to_owned()
    } else {
        moved.join(", ")
    };
    format!(
        "{rows}-row chunk products: {:.2} ms with Burn's matmul, {:.2} ms as routed; {routes}",
        burn / 1e3,
        tuned / 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatmulRoutine::*;

    #[test]
    fn a_routine_takes_the_chunk_only_when_it_agrees_and_is_clearly_faster() {
        assert_eq!(
            choose_chunk(
                100.0,
                &[(CyclicMma, Some(60.0), true), (DoubleMma, Some(50.0), true)]
            ),
            Some(DoubleMma)
        );
        assert_eq!(
            choose_chunk(
                100.0,
                &[
                    (CyclicMma, Some(60.0), true),
                    (DoubleMma, Some(50.0), false)
                ]
            ),
            Some(CyclicMma),
            "a faster routine that disagrees is passed over"
        );
        assert_eq!(
            choose_chunk(100.0, &[(CyclicMma, Some(95.0), true)]),
            None,
            "within the margin"
        );
        assert_eq!(
            choose_chunk(100.0, &[(CyclicMma, None, true), (DoubleMma, None, false)]),
            None,
            "declined routines"
        );
        assert_eq!(choose_chunk(100.0, &[]), None);
    }

    #[test]
    fn f32_candidates_never_use_tensor_cores() {
        use burn::tensor::DType;
        let f32s = MatmulRoutine::candidates(DType::F32);
        assert!(f32s.iter().all(|r| r.name().contains("unit")), "{f32s:?}");
        let bf16 = MatmulRoutine::candidates(DType::BF16);
        assert!(bf16.iter().all(|r| r.name().contains("mma")), "{bf16:?}");
        let mut names: Vec<_> = f32s.iter().chain(bf16).map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), f32s.len() + bf16.len(), "names are distinct");
    }

    #[test]
    fn the_summary_adds_each_shape_times_its_layers() {
        let t = |shape: &str, layers, burn_us, route, us| ChunkTiming {
            shape: shape.to_owned(),
            layers,
            rows: 512,
            burn_us,
            routines: vec![
                RoutineTiming {
                    routine: "double_mma",
                    us,
                    agrees: true,
                },
                RoutineTiming {
                    routine: "specialized_tma_mma",
                    us: None,
                    agrees: false,
                },
            ],
            route,
        };
        assert_eq!(chunk_tuning_summary(&[]), "no prompt-chunk product timed");
        assert_eq!(
            chunk_tuning_summary(&[t("8x4", 2, 100.0, "burn", Some(95.0))]),
            "512-row chunk products: 0.20 ms with Burn's matmul, 0.20 ms as routed; every shape on Burn's matmul"
        );
        assert_eq!(
            chunk_tuning_summary(&[
                t("8x4", 2, 100.0, "burn", Some(95.0)),
                t("16x8", 3, 300.0, "double_mma", Some(200.0)),
            ]),
            "512-row chunk products: 1.10 ms with Burn's matmul, 0.80 ms as routed; 16x8 double_mma (200 µs against 300)"
        );
    }
}
