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
//! Owns: which routine an f32 product takes. Must never: change the
//! product's shape or dtype.

use burn::tensor::{DType, Tensor};
use burn_cubecl::kernel::matmul::init_matmul_output;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::launch_ref;
use cubek::matmul::strategy::Strategy;
use cubek::std::InputBinding;

use super::{contiguous, cube, float_elem, tensor};

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
    let out = init_matmul_output(&lc, &rc, DType::F32);
    let client = lc.client.clone();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: elem,
        rhs: elem,
        out: elem,
    });
    let strategy = Strategy::MultiLevel(cubek::matmul::multi_level::Strategy::SimpleUnit(
        Default::default(),
    ));
    launch_ref(
        &strategy,
        &client,
        InputBinding::new(lc.binding(), elem),
        InputBinding::new(rc.binding(), elem),
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
}
