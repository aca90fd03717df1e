//! f32 matmul in f32 on CubeCL devices: no TF32.
//!
//! Burn's CubeCL matmul (cubek `Strategy::Auto`) runs the tensor-core
//! routine first, and cubek promotes f32 operands to TF32 (10-bit mantissa)
//! whenever the tile matmul needs an accelerator and the device has TF32
//! (`cubek_matmul::multi_level::definition::adjust_dtypes`; CUDA registers
//! TF32 from sm_80). That moved the tiny fixtures' f32 logits by up to
//! 1.1e-2 on an H200. Here f32 products run cubek's `SimpleUnit` routine
//! instead, plain f32 FMAs on the CUDA cores: its tile matmul is
//! `TileMatmulKind::Register` and it never calls `adjust_dtypes` (cubek-matmul
//! 0.3.1, `multi_level/routines/batch/simple_unit.rs`). bf16 and f16 keep
//! Burn's tensor-core path (their accumulation is f32 either way). On a GPU,
//! `medgemmad bench --kernels` compares both f32 products with an f64 one
//! (`bench.rs`), and the f32 fidelity tests hold logits to 1e-3.
//!
//! It also launches the cubek routines a tuned product may take instead of
//! Burn's default (`routines.rs`: prompt chunks, and decode batches of 16
//! rows and more).
//!
//! Owns: which routine an f32 product takes, and launching a named cubek
//! routine. Must never: change the product's shape or dtype.

use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::ElemType;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::launch_ref;
use cubek::matmul::multi_level::Strategy as Routine;
use cubek::matmul::multi_level::components::tile::TileMatmulKind;
use cubek::matmul::multi_level::routines::TileSizeSelection;
use cubek::matmul::multi_level::routines::batch::{
    double_buffering::DoubleBufferingArgs, double_unit::DoubleUnitSelectionArgs,
    ordered_double_buffering::OrderedSelectionArgs, simple::SimpleArgs,
    simple_unit::SimpleUnitSelectionArgs,
};
use cubek::matmul::routine::BlueprintStrategy;
use cubek::matmul::strategy::Strategy;
use cubek::std::InputBinding;

use super::{contiguous, cube, float_elem, tensor};
use crate::routines::MatmulRoutine;

/// `lhs · rhs` (Burn's `matmul`), computed without TF32 when both are f32 on
/// a CubeCL device with the same batch dimensions; Burn's own matmul
/// otherwise.
pub(crate) fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        return lhs.matmul(rhs);
    }
    match f32_unit_matmul(&lhs, &rhs) {
        Some(out) => out,
        None => lhs.matmul(rhs),
    }
}

fn f32_unit_matmul<const D: usize>(lhs: &Tensor<D>, rhs: &Tensor<D>) -> Option<Tensor<D>> {
    let (l, r) = (lhs.dims(), rhs.dims());
    if D < 2 || l[..D - 2] != r[..D - 2] || l[D - 1] != r[D - 2] {
        return None;
    }
    let elem = float_elem(DType::F32)?;
    // Copies a transposed operand (a weight used as `Wᵀ`): f32 on a GPU is
    // the fidelity tests' mode, not the serving one (bf16).
    let (lc, rc) = (contiguous(cube(lhs)?), contiguous(cube(rhs)?));
    launch(lc, rc, elem, Routine::SimpleUnit(Default::default()))
}

/// cubek's routine for `r`, with the settings Burn's autotune gives it.
fn routine(r: MatmulRoutine) -> Routine {
    use BlueprintStrategy::Inferred;
    let simple = |tile_matmul, multi_rows| {
        Inferred(SimpleArgs {
            tile_matmul,
            multi_rows,
        })
    };
    let double = |tile_matmul| {
        Inferred(DoubleBufferingArgs {
            tile_matmul,
            specialized: false,
        })
    };
    let ordered = |tile_matmul| {
        Inferred(OrderedSelectionArgs {
            tile_matmul,
            partition_k: Some(2),
            row_count: Some(8),
            rows_per_plane: Some(2),
        })
    };
    match r {
        MatmulRoutine::UnitMaxTile => Routine::SimpleUnit(Inferred(SimpleUnitSelectionArgs {
            tile_size: TileSizeSelection::MaxTileSize,
        })),
        MatmulRoutine::UnitMinTile => Routine::SimpleUnit(Inferred(SimpleUnitSelectionArgs {
            tile_size: TileSizeSelection::MinTileSize,
        })),
        MatmulRoutine::DoubleUnitMaxTile => {
            Routine::DoubleUnit(Inferred(DoubleUnitSelectionArgs {
                tile_size: TileSizeSelection::MaxTileSize,
            }))
        }
        MatmulRoutine::CyclicCmmaRows => {
            Routine::SimpleCyclicCmma(simple(TileMatmulKind::Cmma, true))
        }
        MatmulRoutine::CyclicMma => Routine::SimpleCyclicMma(simple(TileMatmulKind::Mma, false)),
        MatmulRoutine::DoubleCmma => Routine::DoubleCyclicCmma(double(TileMatmulKind::Cmma)),
        MatmulRoutine::DoubleMma => Routine::DoubleCyclicMma(double(TileMatmulKind::Mma)),
        MatmulRoutine::OrderedCmma => Routine::OrderedDoubleCmma(ordered(TileMatmulKind::Cmma)),
        MatmulRoutine::OrderedMma => Routine::OrderedDoubleMma(ordered(TileMatmulKind::Mma)),
        MatmulRoutine::SpecializedTmaMma => Routine::SpecializedTmaMma(Inferred(().into())),
    }
}

/// `x · Wᵀ` (`x: [N, in]`, `W: [out, in]`) through cubek's routine `r`,
/// reading `W` through its transposed view in place (a column-major
/// operand to cubek: no copy), in `x`'s dtype. `None` off a CubeCL device,
/// for a dtype pair we do not launch, or when the routine declines the
/// problem (cubek's setup error: no tensor cores or TMA on the device, a
/// layout or size it does not take). A routine that is set up but fails to
/// compile on the card leaves its output failed: reading it reports that
/// (`kernels::product` reads every candidate's result before timing it).
pub(crate) fn routine_product(w: &Tensor<2>, x: &Tensor<2>, r: MatmulRoutine) -> Option<Tensor<2>> {
    if !super::enabled() || w.dtype() != x.dtype() || w.dims()[1] != x.dims()[1] {
        return None;
    }
    let elem = float_elem(x.dtype())?;
    let lhs = contiguous(cube(x)?);
    let rhs = cube(&w.clone().transpose())?;
    launch(lhs, rhs, elem, routine(r))
}

/// `lhs · rhs` through cubek's `routine`, with `elem` for both operands
/// and the output; `None` when the routine declines the problem.
fn launch<const D: usize>(
    lhs: CubeTensor,
    rhs: CubeTensor,
    elem: ElemType,
    routine: Routine,
) -> Option<Tensor<D>> {
    let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
    let client = lhs.client.clone();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: elem,
        rhs: elem,
        out: elem,
    });
    launch_ref(
        &Strategy::MultiLevel(routine),
        &client,
        InputBinding::new(lhs.binding(), elem),
        InputBinding::new(rhs.binding(), elem),
        out.clone().binding(),
        &mut dtypes,
    )
    .ok()?;
    Some(tensor(out))
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// The unit routine against Burn's matmul on the CPU runtime (which has
    /// no TF32 to lose): attention-shaped 4-D products and a prompt-sized
    /// 2-D one.
    #[test]
    fn f32_unit_matmul_equals_burn_matmul() {
        let dev = device();
        let a = random([1, 2, 6, 32], DType::F32, 1, &dev);
        let b = random([1, 2, 32, 9], DType::F32, 2, &dev);
        let got = f32_unit_matmul(&a, &b).expect("f32 on the CubeCL CPU runtime");
        let d = max_abs_diff(got, a.matmul(b));
        assert!(d <= 1e-5, "4-D product differs by {d}");
        let a = random([40, 64], DType::F32, 3, &dev);
        let b = random([64, 50], DType::F32, 4, &dev);
        let d = max_abs_diff(matmul(a.clone(), b.clone()), a.matmul(b));
        assert!(d <= 1e-5, "2-D product differs by {d}");
    }

    /// Each CUDA-core routine of a prompt chunk equals Burn's product on
    /// the CPU runtime, reading the weight's transposed view in place (40
    /// rows, past the decode kernels' 32); the tensor-core ones decline
    /// there (no `cmma` on the CPU runtime), as they would on a card
    /// without tensor cores, and so does a mismatched shape or dtype.
    #[test]
    fn chunk_routines_equal_burn_or_decline() {
        let dev = device();
        let w = random([48, 64], DType::F32, 5, &dev);
        let x = random([40, 64], DType::F32, 6, &dev);
        let want = x.clone().matmul(w.clone().transpose());
        for &r in MatmulRoutine::candidates(DType::F32) {
            let got = routine_product(&w, &x, r).unwrap_or_else(|| panic!("{r:?} runs here"));
            assert_eq!(got.dims(), [40, 48]);
            let d = max_abs_diff(got, want.clone());
            assert!(d <= 1e-4, "{r:?} differs by {d}");
        }
        let (wb, xb) = (w.clone().cast(DType::BF16), x.clone().cast(DType::BF16));
        for &r in MatmulRoutine::candidates(DType::BF16) {
            assert!(
                routine_product(&wb, &xb, r).is_none(),
                "{r:?} needs tensor cores"
            );
        }
        let r = MatmulRoutine::UnitMaxTile;
        assert!(routine_product(&wb, &x, r).is_none(), "mixed dtypes");
        let narrow = random([40, 32], DType::F32, 7, &dev);
        assert!(routine_product(&w, &narrow, r).is_none(), "shapes differ");
        let flex = burn::tensor::Device::flex();
        let wf = random([4, 8], DType::F32, 2, &flex);
        let xf = random([40, 8], DType::F32, 3, &flex);
        assert!(
            routine_product(&wf, &xf, r).is_none(),
            "not a CubeCL device"
        );
    }
}
