//! Gemma's RMSNorm in one pass: `y = x / sqrt(mean(x²) + eps) · (1 + w)`,
//! computed in f32 whatever the activations' dtype (transformers'
//! `Gemma3RMSNorm`; the plain Burn form is 9 kernels).
//!
//! Owns: the kernel and its launch. Must never: round the sum of squares or
//! the scale below f32.

use burn::tensor::{DType, Tensor};
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor, vector_width};

/// One cube per row: the units stride over the row's vectors, the sum of
/// squares meets in shared memory, then each unit scales its vectors.
#[cube(launch)]
// The shared-memory trees write `a = a + b` out in full, in every kernel here.
#[allow(clippy::assign_op_pattern)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    scale: &cubecl::prelude::Tensor<Vector<f32, N>>,
    out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    d_vectors: u32,
    inv_d: f32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let row = CUBE_POS_X as usize;
    let dv = d_vectors as usize;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut k = tx;
    while k < dv {
        let v = Vector::<f32, N>::cast_from(x[row * dv + k]);
        acc += v * v;
        k += units;
    }
    let mut s = 0.0f32;
    #[unroll]
    for i in 0..acc.vector_size() {
        s += acc.extract(i);
    }
    let mut shared = Shared::<[f32]>::new_slice(units);
    shared[tx] = s;
    sync_cube();
    // A runtime variable (a comptime one cannot be mutated): CUBE_DIM_X = units.
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if tx < stride {
            shared[tx] = shared[tx] + shared[tx + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let inv = Vector::<f32, N>::new(1.0f32 / (shared[0] * inv_d + eps).sqrt());
    let mut k = tx;
    while k < dv {
        let v = Vector::<f32, N>::cast_from(x[row * dv + k]);
        out[row * dv + k] = Vector::<F, N>::cast_from(v * inv * scale[k]);
        k += units;
    }
}

/// RMSNorm over the last axis of `x` with `scale = 1 + w` (f32, length =
/// the last axis), in `x`'s dtype; `None` off a CubeCL device.
pub(crate) fn rms_norm<const D: usize>(
    x: &Tensor<D>,
    scale: &Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let d = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let dtype = x.dtype();
    if !enabled() || d == 0 || rows == 0 || scale.dims() != [d] || scale.dtype() != DType::F32 {
        return None;
    }
    let elem = float_elem(dtype)?;
    let (xc, sc) = (contiguous(cube(x)?), contiguous(cube(scale)?));
    // The vector width must suit both dtypes: f32's 16-byte limit decides.
    let vec = vector_width(d, DType::F32, 16);
    let (units, _) = reduce_units(&xc, 128);
    let client = xc.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        xc.device.clone(),
        xc.meta.shape().clone(),
        dtype,
    );
    rms_norm_kernel::launch(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units),
        vec,
        xc.into_tensor_arg(),
        sc.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        (d / vec) as u32,
        1.0 / d as f32,
        eps as f32,
        units as usize,
        elem,
    );
    Some(tensor(out))
}

/// The kernel as a GPU launches it on bf16 (vectors of 8, 256 units),
/// compiled to PTX for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = rms_norm_kernel::RmsNormKernel::new(
        settings(CubeDim::new_1d(256)),
        props,
        target,
        t(),
        t(),
        t(),
        (),
        (),
        (),
        8,
        256,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// The plain Burn composition `gemma3.rs` runs without the kernel.
    fn burn_rms_norm<const D: usize>(x: Tensor<D>, scale: Tensor<1>, eps: f64) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let y = x * (ms + eps).sqrt().recip();
        (y * scale.unsqueeze::<D>()).cast(dtype)
    }

    #[test]
    fn rms_norm_equals_the_burn_composition() {
        let dev = device();
        for (i, &(rows, d, dtype, tol)) in [
            (1, 64, DType::F32, 1e-5),
            (3, 48, DType::F32, 1e-5),
            (4, 30, DType::F32, 1e-5),
            (2, 256, DType::BF16, 1e-2),
            (7, 16, DType::BF16, 1e-2),
        ]
        .iter()
        .enumerate()
        {
            let x = random([rows, 2, d], dtype, 7 + i as u64, &dev).mul_scalar(3.0);
            let scale = random([d], DType::F32, 70 + i as u64, &dev).add_scalar(1.0);
            let want = burn_rms_norm(x.clone(), scale.clone(), 1e-6);
            let got = rms_norm(&x, &scale, 1e-6).expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.dtype(), dtype);
            // Relative to the outputs' size (up to ~6 here).
            let d = max_abs_diff(got, want);
            assert!(
                d <= tol * 6.0,
                "rows={rows} d={d} {dtype:?}: differs by {d}"
            );
        }
    }
}
