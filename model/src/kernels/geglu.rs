//! Gemma's GeGLU in one pass: `gelu_tanh(gate) · up`, in f32 whatever the
//! activations' dtype (transformers' `gelu_pytorch_tanh`; the plain Burn
//! form is 8 kernels).
//!
//! Owns: the kernel and its launch. Must never: change the GELU form (tanh
//! approximation, as the checkpoint was trained with).

use burn::tensor::Tensor;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, tensor, vector_width};

/// √(2/π), as torch's tanh GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[cube(launch)]
fn geglu_kernel<F: Float, N: Size>(
    gate: &cubecl::prelude::Tensor<Vector<F, N>>,
    up: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    len: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let g = Vector::<f32, N>::cast_from(gate[i]);
        let u = Vector::<f32, N>::cast_from(up[i]);
        out[i] = Vector::<F, N>::cast_from(gelu_tanh_times::<N>(g, u));
    }
}

/// `gelu_tanh(g) · u` in f32, lane by lane: this kernel's math, and the
/// fused gate/up product's (`skinny_geglu.rs`, one lane at a time).
#[cube]
pub(super) fn gelu_tanh_times<N: Size>(g: Vector<f32, N>, u: Vector<f32, N>) -> Vector<f32, N> {
    let inner = Vector::<f32, N>::new(SQRT_2_OVER_PI)
        * (g + Vector::<f32, N>::new(0.044_715f32) * g * g * g);
    let gelu = Vector::<f32, N>::new(0.5f32) * g * (Vector::<f32, N>::new(1.0f32) + inner.tanh());
    gelu * u
}

/// `gelu_tanh(gate) · up` for two tensors of one shape and dtype on a CubeCL
/// device; `None` otherwise.
pub(crate) fn geglu<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let dtype = gate.dtype();
    if !enabled() || gate.dims() != up.dims() || up.dtype() != dtype {
        return None;
    }
    let elem = float_elem(dtype)?;
    let (gc, uc) = (contiguous(cube(gate)?), contiguous(cube(up)?));
    let n: usize = gate.dims().iter().product();
    let vec = vector_width(n, dtype, 16);
    let vectors = n / vec;
    let client = gc.client.clone();
    let units = client
        .properties()
        .hardware
        .max_units_per_cube
        .clamp(1, 256);
    let out = empty_device_dtype(
        client.clone(),
        gc.device.clone(),
        gc.meta.shape().clone(),
        dtype,
    );
    geglu_kernel::launch(
        &client,
        CubeCount::Static((vectors as u32).div_ceil(units), 1, 1),
        CubeDim::new_1d(units),
        vec,
        gc.into_tensor_arg(),
        uc.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        vectors as u32,
        elem,
    );
    Some(tensor(out))
}

/// The kernel as a GPU launches it on bf16 (vectors of 8), compiled to PTX
/// for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = geglu_kernel::GegluKernel::new(
        settings(CubeDim::new_1d(256)),
        props,
        target,
        t(),
        t(),
        t(),
        (),
        8,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::DType;
    use burn::tensor::activation::gelu_approximate;

    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    #[test]
    fn geglu_equals_burn_gelu_approximate_times_up() {
        let dev = device();
        for (i, &(rows, d, dtype, tol)) in [
            (1, 96, DType::F32, 1e-5),
            (3, 30, DType::F32, 1e-5),
            (2, 64, DType::BF16, 2e-2),
        ]
        .iter()
        .enumerate()
        {
            let gate = random([rows, d], dtype, 3 + i as u64, &dev).mul_scalar(4.0);
            let up = random([rows, d], dtype, 30 + i as u64, &dev);
            let want =
                gelu_approximate(gate.clone().cast(DType::F32)) * up.clone().cast(DType::F32);
            let got = geglu(&gate, &up).expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.dtype(), dtype);
            let diff = max_abs_diff(got, want);
            assert!(
                diff <= tol * 4.0,
                "rows={rows} d={d} {dtype:?}: differs by {diff}"
            );
        }
    }
}
