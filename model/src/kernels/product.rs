//! The Burn route of a decode-sized product `x · Wᵀ` (Burn's own matmul:
//! tensor cores for bf16 on a GPU) and the timing, on the card itself, of
//! it, our tiled kernel and our skinny kernel for one weight shape and row
//! count (`Gemma3::tune_products`, at warm-up; `linear::choose` picks).
//!
//! Why measure rather than decide: the skinny kernel reads each weight once
//! but re-reads `x` for every weight row, so past a few rows its cost grows
//! with the rows; the tiled kernel reuses each load of `x` for four weight
//! rows and keeps more loads in flight, at the price of a reduction per
//! (row, column); a tensor-core tile reuses `x` for many weight rows and
//! takes the FMAs off the CUDA cores. Where they cross depends on the card,
//! the shape and Burn's tile choice, none of which this machine has.
//!
//! The same for a prompt chunk's product (hundreds of rows: tensor-core
//! work), where Burn's matmul is timed against a few of cubek's other
//! routines (`Gemma3::tune_chunk_products`; `routines.rs` picks).
//!
//! Owns: the Burn route and the timings (the choices are `linear.rs`'s and
//! `routines.rs`'s). Must never: call a result that differs from the
//! reference (the skinny kernel's; Burn's for a chunk) beyond the dtype's
//! rounding one that agrees.

use std::time::Instant;

use burn::tensor::{DType, Tensor};

use crate::routines::MatmulRoutine;

/// Launches per timed sample: a sample's device sync is then shared by
/// many products, as the products of a step (or its captured graph) run
/// back to back.
const LAUNCHES_PER_SAMPLE: usize = 8;

/// `x · Wᵀ` through Burn's matmul on a CubeCL device (bf16 and f16: Burn's
/// routine, tensor cores on a GPU; f32: `kernels::matmul`, without TF32);
/// `None` off one, or with the kernels turned off.
pub(crate) fn burn_product(w: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    if !super::enabled() || super::cube(x).is_none() || super::cube(w).is_none() {
        return None;
    }
    let wt = w.clone().transpose();
    Some(if x.dtype() == DType::F32 {
        super::matmul(x.clone(), wt)
    } else {
        x.clone().matmul(wt)
    })
}

/// The routes timed at one shape.
#[derive(Debug, Clone)]
pub(crate) struct RouteTimes {
    /// Our skinny kernel, median microseconds per product.
    pub(crate) skinny_us: f64,
    /// Our tiled kernel, median microseconds per product.
    pub(crate) tiled_us: f64,
    /// Burn's matmul, median microseconds per product.
    pub(crate) burn_us: f64,
    /// Whether the tiled kernel's result equals the skinny kernel's within
    /// the dtype's rounding.
    pub(crate) tiled_agrees: bool,
    /// Whether Burn's does.
    pub(crate) burn_agrees: bool,
    /// cubek's other routines ([`MatmulRoutine::decode_candidates`], from
    /// [`crate::routines::DECODE_ROUTINE_ROWS`] rows on): each one's
    /// median microseconds (`None`: declined, failed or disagreed) and
    /// whether it agrees with the skinny kernel.
    pub(crate) routines: Vec<(MatmulRoutine, Option<f64>, bool)>,
}

/// Times the routes for `rows` rows against `w` on its device (`reps`
/// samples each, of [`LAUNCHES_PER_SAMPLE`] products), on a fixed pattern
/// of inputs (no patient text: the weights and a made-up `x`). `None` when
/// the skinny kernel does not take the shape (not a CubeCL device, or more
/// rows than it covers).
pub(crate) fn time_routes(w: &Tensor<2>, rows: usize, reps: usize) -> Option<RouteTimes> {
    let [_, k] = w.dims();
    let device = w.device();
    let x = super::bench::filled([rows, k], w.dtype(), &device, 7 + rows as u32);
    let ours = super::skinny_matmul(w, &x)?;
    let tiled = super::skinny_tiled(w, &x)?;
    let theirs = burn_product(w, &x)?;
    let tiled_agrees = agrees(&ours, &tiled, w.dtype());
    let burn_agrees = agrees(&ours, &theirs, w.dtype());
    let sample = |f: &dyn Fn()| median_us(&device, reps, f);
    let _ = device.sync();
    let skinny_us = sample(&|| {
        let _ = super::skinny_matmul(w, &x);
    });
    let tiled_us = sample(&|| {
        let _ = super::skinny_tiled(w, &x);
    });
    let burn_us = sample(&|| {
        let _ = burn_product(w, &x);
    });
    let candidates = if rows >= crate::routines::DECODE_ROUTINE_ROWS {
        MatmulRoutine::decode_candidates(w.dtype())
    } else {
        &[]
    };
    let routines = time_candidates(w, &x, &ours, candidates, reps);
    Some(RouteTimes {
        skinny_us,
        tiled_us,
        burn_us,
        tiled_agrees,
        burn_agrees,
        routines,
    })
}

/// Median microseconds per call of `f` over `reps` samples (at least one),
/// each of [`LAUNCHES_PER_SAMPLE`] calls and one device sync.
fn median_us(device: &burn::tensor::Device, reps: usize, f: &dyn Fn()) -> f64 {
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..LAUNCHES_PER_SAMPLE {
                f();
            }
            let _ = device.sync();
            t.elapsed().as_secs_f64() * 1e6 / LAUNCHES_PER_SAMPLE as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Burn's product and each of `dtype`'s cubek routines
/// ([`MatmulRoutine::candidates`]) for a prompt chunk of `rows` rows against
/// `w`, timed on its device.
#[derive(Debug, Clone)]
pub(crate) struct ChunkTimes {
    /// Burn's matmul, median microseconds per product.
    pub(crate) burn_us: f64,
    /// Per routine: its median microseconds (`None`: it declined the
    /// problem, or its result could not be read), and whether its result
    /// equals Burn's within the dtype's rounding.
    pub(crate) routines: Vec<(MatmulRoutine, Option<f64>, bool)>,
}

/// Times a prompt chunk's product `x · Wᵀ` (`rows` rows of a fixed pattern,
/// no patient text) through Burn's matmul and each cubek routine of `w`'s
/// dtype, `reps` samples each. Each routine's result is read and compared
/// with Burn's before it is timed: one that declines, panics, fails or
/// disagrees is reported, never timed. `None` off a CubeCL device or with the
/// kernels turned off.
pub(crate) fn time_chunk_routines(w: &Tensor<2>, rows: usize, reps: usize) -> Option<ChunkTimes> {
    // Off a CubeCL device, before a prompt-sized input is made for nothing.
    super::cube(w).filter(|_| super::enabled())?;
    let [_, k] = w.dims();
    let device = w.device();
    let x = super::bench::filled([rows, k], w.dtype(), &device, 11 + rows as u32);
    let reference = burn_product(w, &x)?;
    let _ = device.sync();
    let burn_us = median_us(&device, reps, &|| {
        let _ = burn_product(w, &x);
    });
    let routines = time_candidates(
        w,
        &x,
        &reference,
        MatmulRoutine::candidates(w.dtype()),
        reps,
    );
    Some(ChunkTimes { burn_us, routines })
}

/// `x · Wᵀ` through each of `candidates`, its result read and compared
/// with `reference` before it is timed (`reps` samples): one that
/// declines, panics, fails or disagrees is reported as `(r, None, false)`
/// and never timed.
fn time_candidates(
    w: &Tensor<2>,
    x: &Tensor<2>,
    reference: &Tensor<2>,
    candidates: &[MatmulRoutine],
    reps: usize,
) -> Vec<(MatmulRoutine, Option<f64>, bool)> {
    let device = w.device();
    candidates
        .iter()
        .map(|&r| {
            // A routine that panics while it sets up (cubek asserts on
            // problems it never meant to take) is one that declined: the
            // daemon's warm-up must not fail for a candidate.
            let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                super::routine_product(w, x, r)
            }));
            let Ok(Some(y)) = tried else {
                return (r, None, false);
            };
            if !agrees(reference, &y, w.dtype()) {
                return (r, None, false);
            }
            let us = median_us(&device, reps, &|| {
                let _ = super::routine_product(w, x, r);
            });
            (r, Some(us), true)
        })
        .collect()
}

/// `|a − b| ≤ tol · max|a|` everywhere, `tol` a few roundings of the dtype
/// (bf16 keeps 8 bits: 2⁻⁸ of the largest output is one rounding), with no
/// NaN on either side and both readable.
fn agrees(a: &Tensor<2>, b: &Tensor<2>, dtype: DType) -> bool {
    let tol = match dtype {
        DType::F32 => 1e-4,
        _ => 2e-2,
    };
    // A result whose launch failed on the card cannot be read: it agrees
    // with nothing.
    let read = |t: &Tensor<2>| {
        t.clone()
            .cast(DType::F32)
            .try_into_data()
            .ok()
            .map(|d| d.iter::<f32>().collect::<Vec<f32>>())
    };
    let (Some(a), Some(b)) = (read(a), read(b)) else {
        return false;
    };
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.len() == b.len()
        && a.iter().chain(&b).all(|v| v.is_finite())
        && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol * scale)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// Burn's route equals the skinny kernel's on the CubeCL CPU runtime,
    /// in f32 and bf16, and the timing reports both routes and agreement.
    #[test]
    fn burn_route_equals_the_skinny_kernel_and_is_timed() {
        let dev = device();
        for (i, (dtype, tol)) in [(DType::F32, 1e-4), (DType::BF16, 0.1)]
            .into_iter()
            .enumerate()
        {
            let w = random([40, 64], dtype, 30 + i as u64, &dev);
            let x = random([5, 64], dtype, 40 + i as u64, &dev);
            let ours = crate::kernels::skinny_matmul(&w, &x).expect("a CubeCL device");
            let theirs = burn_product(&w, &x).expect("a CubeCL device");
            assert_eq!(theirs.dtype(), dtype);
            let d = max_abs_diff(ours, theirs);
            assert!(d <= tol, "{dtype:?}: the routes differ by {d}");
            let t = time_routes(&w, 5, 2).expect("timed on a CubeCL device");
            assert!(t.tiled_agrees && t.burn_agrees, "{dtype:?}: {t:?}");
            assert!(
                t.skinny_us > 0.0 && t.tiled_us > 0.0 && t.burn_us > 0.0,
                "{t:?}"
            );
            assert!(t.routines.is_empty(), "5 rows: no cubek routine timed");
            // From 16 rows cubek's tensor-core routines are tried in bf16
            // (and decline on the CPU runtime); never in f32.
            let t = time_routes(&w, 16, 1).expect("timed on a CubeCL device");
            let tried = MatmulRoutine::decode_candidates(dtype);
            assert_eq!(t.routines.len(), tried.len(), "{dtype:?}: {t:?}");
            assert_eq!(tried.is_empty(), dtype == DType::F32);
            assert!(
                t.routines.iter().all(|(_, us, ok)| us.is_none() && !ok),
                "{t:?}"
            );
        }
        let flex = burn::tensor::Device::flex();
        let w = random([4, 8], DType::F32, 2, &flex);
        assert!(time_routes(&w, 1, 1).is_none(), "not a CubeCL device");
        let w = random([4, 8], DType::F32, 2, &dev);
        assert!(
            time_routes(&w, 33, 1).is_none(),
            "more rows than the kernel takes"
        );
    }

    /// A prompt chunk's timing on the CPU runtime: in f32 each CUDA-core
    /// routine runs, agrees with Burn's product and is timed; in bf16 every
    /// candidate needs tensor cores, which the CPU runtime lacks, so each is
    /// reported as declined and never timed; off a CubeCL device nothing is
    /// timed.
    #[test]
    fn chunk_routines_are_timed_where_they_run_and_agree() {
        let dev = device();
        let w = random([48, 64], DType::F32, 50, &dev);
        let t = time_chunk_routines(&w, 40, 2).expect("a CubeCL device");
        assert!(t.burn_us > 0.0, "{t:?}");
        assert_eq!(
            t.routines.len(),
            MatmulRoutine::candidates(DType::F32).len()
        );
        for (r, us, agrees) in &t.routines {
            assert!(*agrees && us.is_some_and(|us| us > 0.0), "{r:?}: {t:?}");
        }
        let t = time_chunk_routines(&w.cast(DType::BF16), 40, 1).expect("a CubeCL device");
        assert!(t.burn_us > 0.0, "{t:?}");
        assert!(
            t.routines
                .iter()
                .all(|(_, us, agrees)| us.is_none() && !agrees),
            "{t:?}"
        );
        let flex = burn::tensor::Device::flex();
        let w = random([4, 8], DType::F32, 2, &flex);
        assert!(time_chunk_routines(&w, 40, 1).is_none());
    }

    /// The choice (`linear::choose`) from a timing, here beside the
    /// timing so that it runs with the kernels' tests.
    #[test]
    fn a_route_takes_a_product_only_when_it_agrees_and_is_clearly_faster() {
        let t = |tiled_us, burn_us, tiled_agrees, burn_agrees| RouteTimes {
            skinny_us: 100.0,
            tiled_us,
            burn_us,
            tiled_agrees,
            burn_agrees,
            routines: Vec::new(),
        };
        use crate::linear::ProductRoute::{Burn, Skinny, Tiled};
        use crate::linear::choose;
        assert_eq!(choose(&t(80.0, 50.0, true, true)), Burn);
        assert_eq!(choose(&t(40.0, 50.0, true, true)), Tiled);
        assert_eq!(choose(&t(40.0, 50.0, false, true)), Burn);
        assert_eq!(choose(&t(40.0, 50.0, false, false)), Skinny);
        assert_eq!(
            choose(&t(95.0, 96.0, true, true)),
            Skinny,
            "within the margin"
        );
        assert_eq!(choose(&t(120.0, 130.0, true, true)), Skinny);
        use crate::routines::MatmulRoutine::{CyclicMma, DoubleMma, OrderedMma};
        let with = |routines| RouteTimes {
            routines,
            ..t(80.0, 50.0, true, true)
        };
        assert_eq!(
            choose(&with(vec![
                (CyclicMma, Some(45.0), true),
                (DoubleMma, Some(30.0), true),
                (OrderedMma, None, false),
            ])),
            crate::linear::ProductRoute::Cubek(DoubleMma)
        );
        assert_eq!(
            choose(&with(vec![(DoubleMma, Some(30.0), false)])),
            Burn,
            "a faster routine that disagrees is passed over"
        );
    }

    #[test]
    fn agreement_is_relative_to_the_largest_output_and_refuses_nan() {
        let dev = device();
        let mk = |v: Vec<f32>| {
            Tensor::<2>::from_data(burn::tensor::TensorData::new(v, [1, 3]), (&dev, DType::F32))
        };
        let a = mk(vec![100.0, -3.0, 0.5]);
        assert!(agrees(&a, &mk(vec![101.0, -3.0, 0.5]), DType::BF16));
        assert!(!agrees(&a, &mk(vec![103.0, -3.0, 0.5]), DType::BF16));
        assert!(!agrees(&a, &mk(vec![100.0, -3.0, 0.52]), DType::F32));
        assert!(!agrees(&a, &mk(vec![100.0, f32::NAN, 0.5]), DType::BF16));
    }
}
