//! The MLP's first half in one launch for a few rows (decode, short
//! chunks): `gelu_tanh(x · W_gateᵀ) · (x · W_upᵀ)`, where two launches ran
//! before (the gate and up products together, `skinny_many`, then GeGLU).
//!
//! A cube takes [`PAIRS_PER_CUBE`] output columns (one on CubeCL's CPU
//! runtime). Each column is a pair of planes, the gate's weight row and the
//! up's, each computed exactly as the skinny kernel computes a column
//! ([`super::skinny::column_totals`]: same accumulators, same reduction).
//! The up plane hands its sums to the gate plane through shared memory,
//! and the gate plane writes `gelu_tanh(g) · u` from the sums rounded to
//! the activations' dtype first, as the two launches stored them. So the
//! output equals skinny, skinny, GeGLU wherever the skinny kernel reduces
//! a column over the same units (always on a GPU: one plane a column).
//!
//! Owns: the kernel and its launch. Must never: read a weight more than
//! once per call, accumulate in less than f32, or change the GELU form.

use burn::tensor::Tensor;
use cubecl::prelude::*;

use super::geglu::gelu_tanh_times;
use super::skinny::{Operands, column_totals};
use super::{contiguous, cube, reduce_units, tensor};

/// Output columns per cube on a GPU: a plane for the gate's weight row and
/// one for the up's, each.
const PAIRS_PER_CUBE: u32 = 2;

/// Most rows of `x`: the skinny kernel's.
const MAX_ROWS: usize = super::SKINNY_MAX_ROWS;

/// Unit rows `2p` (the gate's column) and `2p + 1` (the up's) of a cube
/// compute its pair `p`: output column `CUBE_POS_X · pairs + p`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn skinny_geglu_kernel<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    gate: &cubecl::prelude::Tensor<Vector<F, N>>,
    up: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<F>,
    k_vectors: u32,
    columns: u32,
    #[comptime] rows: usize,
    #[comptime] units: usize,
    #[comptime] plane: bool,
    #[define(F)] _dtype: ElemType,
) {
    let ty = UNIT_POS_Y as usize;
    let pairs = CUBE_DIM_Y as usize / 2;
    let pair = ty / 2;
    let is_up = ty % 2 == 1;
    let n = columns as usize;
    let kv = k_vectors as usize;
    let col = CUBE_POS_X as usize * pairs + pair;
    let in_range = col < n;
    let mut g = Array::<f32>::new(rows);
    let mut u = Array::<f32>::new(rows);
    if comptime!(plane) {
        // A plane takes one weight's row (its branch is uniform: plane
        // sums only, no cube sync).
        if is_up {
            column_totals::<F, N>(x, up, &mut u, col, in_range, kv, rows, units, plane);
        } else {
            column_totals::<F, N>(x, gate, &mut g, col, in_range, kv, rows, units, plane);
        }
    } else {
        // Every unit runs both (the tree syncs the whole cube); each loads
        // only its own weight's row, and the other sums to 0.
        let (only_gate, only_up) = (in_range && !is_up, in_range && is_up);
        column_totals::<F, N>(x, gate, &mut g, col, only_gate, kv, rows, units, plane);
        column_totals::<F, N>(x, up, &mut u, col, only_up, kv, rows, units, plane);
    }
    // The up plane's sums, rounded as a stored product is, for its gate plane.
    let mut handed = Shared::<[f32]>::new_slice(comptime!(MAX_ROWS * PAIRS_PER_CUBE as usize));
    if UNIT_POS_X == 0 && is_up {
        #[unroll]
        for m in 0..rows {
            handed[pair * rows + m] = f32::cast_from(F::cast_from(u[m]));
        }
    }
    sync_cube();
    if UNIT_POS_X == 0 && !is_up && in_range {
        #[unroll]
        for m in 0..rows {
            let gv = Vector::<f32, Const<1>>::new(f32::cast_from(F::cast_from(g[m])));
            let uv = Vector::<f32, Const<1>>::new(handed[pair * rows + m]);
            let y = gelu_tanh_times::<Const<1>>(gv, uv);
            out[m * n + col] = F::cast_from(y.extract(0usize));
        }
    }
}

/// `gelu_tanh(x · gateᵀ) · (x · upᵀ)` for `x: [M, K]` and `gate`, `up`:
/// `[N, K]` (one float dtype, a CubeCL device, M ≤ the skinny kernel's
/// rows); `None` where the skinny kernel would decline either product, or
/// the two weights differ in shape.
pub(crate) fn skinny_geglu(gate: &Tensor<2>, up: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
        return None;
    }
    // The gate's operands hold the output; `up` only needs to be contiguous
    // (its shape and dtype are the gate's, checked above).
    let g = Operands::of(gate, x)?;
    let uc = contiguous(cube(up)?);
    let client = g.wc.client.clone();
    let max_units = client.properties().hardware.max_units_per_cube;
    if max_units < 2 {
        return None;
    }
    // A column's units: one plane on a GPU; on the CPU runtime at most half
    // the cube, so that the gate's and the up's fit in one.
    let (units, plane) = reduce_units(&g.wc, 32);
    let (units, plane, pairs) = if plane && units * 2 * PAIRS_PER_CUBE <= max_units {
        (units, true, PAIRS_PER_CUBE)
    } else {
        let mut half = 1;
        while half * 2 <= units.min(max_units / 2) {
            half *= 2;
        }
        (half, false, 1)
    };
    skinny_geglu_kernel::launch(
        &client,
        CubeCount::Static((g.n as u32).div_ceil(pairs), 1, 1),
        CubeDim::new_2d(units, 2 * pairs),
        g.vec,
        g.xc.into_tensor_arg(),
        g.wc.into_tensor_arg(),
        uc.into_tensor_arg(),
        g.out.clone().into_tensor_arg(),
        (g.k / g.vec) as u32,
        g.n as u32,
        g.m,
        units as usize,
        plane,
        g.elem,
    );
    Some(tensor(g.out))
}

/// The kernel as a GPU launches it for the 4B's MLP in bf16 (rows of 2 560
/// in vectors of 8, 32-lane planes, two columns a cube) at `rows` rows,
/// compiled to PTX for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx_rows(rows: usize, arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = skinny_geglu_kernel::SkinnyGegluKernel::new(
        settings(CubeDim::new_2d(32, 2 * PAIRS_PER_CUBE)),
        props,
        target,
        t(),
        t(),
        t(),
        t(),
        (),
        (),
        8,
        rows,
        32,
        true,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

/// [`ptx_rows`] at one row (batch 1).
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    ptx_rows(1, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::DType;
    use burn::tensor::activation::gelu_approximate;

    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// The fused launch against the two it replaces (the gate and up
    /// products in one skinny launch, then GeGLU) and against the plain
    /// Burn composition, at rows 1, 3 and 8, widths taking vectors of 4
    /// and 2, and output counts that leave a cube's pair empty.
    #[test]
    fn one_launch_equals_the_gate_and_up_products_then_geglu() {
        let dev = device();
        for (i, &(m, n, k, dtype, tol)) in [
            (1, 96, 64, DType::F32, 1e-5),
            (3, 37, 72, DType::F32, 1e-5),
            (8, 50, 36, DType::F32, 1e-5),
            (2, 33, 64, DType::BF16, 3e-2),
            (5, 24, 40, DType::BF16, 3e-2),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let x = random([m, k], dtype, seed, &dev);
            let gate = random([n, k], dtype, seed + 1, &dev).mul_scalar(0.5);
            let up = random([n, k], dtype, seed + 2, &dev);
            let got = skinny_geglu(&gate, &up, &x).expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.dims(), [m, n]);
            assert_eq!(got.dtype(), dtype);

            let [g, u] = <[Tensor<2>; 2]>::try_from(
                crate::kernels::skinny_many(&[&gate, &up], &x).expect("the skinny launch"),
            )
            .expect("two products");
            let two = crate::kernels::geglu(&g, &u).expect("the GeGLU launch");
            // On the CPU runtime a column here takes half the units the
            // skinny kernel gives it, so the sums may round apart by an ulp.
            let d = max_abs_diff(got.clone(), two);
            assert!(
                d <= tol,
                "m={m} n={n} k={k} {dtype:?}: against the two launches, {d}"
            );

            let f = |t: &Tensor<2>| t.clone().cast(DType::F32);
            let plain = gelu_approximate(f(&x).matmul(f(&gate).transpose()))
                * f(&x).matmul(f(&up).transpose());
            let d = max_abs_diff(got, plain);
            assert!(
                d <= 4.0 * tol,
                "m={m} n={n} k={k} {dtype:?}: against Burn, {d}"
            );
        }
    }

    /// Weights of different shapes or dtypes, or a weight that does not
    /// fit `x`, are declined (the caller then runs the two launches).
    #[test]
    fn mismatched_weights_are_declined() {
        let dev = device();
        let x = random([2, 32], DType::F32, 1, &dev);
        let gate = random([16, 32], DType::F32, 2, &dev);
        assert!(skinny_geglu(&gate, &random([8, 32], DType::F32, 3, &dev), &x).is_none());
        let bf16_up = random([16, 32], DType::BF16, 6, &dev);
        assert!(skinny_geglu(&gate, &bf16_up, &x).is_none(), "dtypes differ");
        let wide = random([16, 48], DType::F32, 4, &dev);
        assert!(skinny_geglu(&wide, &wide, &x).is_none());
        let many = random([SKINNY_ROWS_PAST, 32], DType::F32, 5, &dev);
        assert!(skinny_geglu(&gate, &gate, &many).is_none());
    }

    /// More rows than the kernel takes.
    const SKINNY_ROWS_PAST: usize = MAX_ROWS + 1;
}
