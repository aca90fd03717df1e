//! Gemma's RMSNorm in one pass: `y = x / sqrt(mean(x²) + eps) · (1 + w)`,
//! computed in f32 whatever the activations' dtype (transformers'
//! `Gemma3RMSNorm`; the plain Burn form is 9 kernels).
//!
//! And the seam between two halves of a layer in one launch
//! ([`add_rms_norm`]): a half's post-norm, its residual add, and the next
//! half's pre-norm (or the final norm), which Gemma 3 always runs one after
//! the other: three launches (two norms and an add) become one, and the sum
//! is read back by the unit that wrote it instead of by a second kernel.
//!
//! Owns: the kernels and their launches. Must never: round the sum of
//! squares or the scale below f32, or round the residual stream other than
//! the unfused ops do (the normed branch to the activations' dtype, then
//! the sum).

use burn::tensor::{DType, Tensor};
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor, vector_width};

/// One cube per row: the units stride over the row's vectors, the sum of
/// squares meets in shared memory, then each unit scales its vectors.
#[cube(launch)]
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
    let inv = Vector::<f32, N>::new(inverse_rms(acc, tx, inv_d, eps, units));
    let mut k = tx;
    while k < dv {
        let v = Vector::<f32, N>::cast_from(x[row * dv + k]);
        out[row * dv + k] = Vector::<F, N>::cast_from(v * inv * scale[k]);
        k += units;
    }
}

/// `1 / sqrt(mean + eps)` of a row whose units hold partial sums of
/// squares `acc`: the lanes of each unit's vector, then a tree over the
/// cube's units in shared memory (the same order in every kernel here, so
/// the fused kernel's norms equal [`rms_norm`]'s). Ends with every unit
/// past its read of the total.
#[cube]
// The shared-memory tree writes `a = a + b` out in full.
#[allow(clippy::assign_op_pattern)]
fn inverse_rms<N: Size>(
    acc: Vector<f32, N>,
    tx: usize,
    inv_d: f32,
    eps: f32,
    #[comptime] units: usize,
) -> f32 {
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
    let inv = 1.0f32 / (shared[0] * inv_d + eps).sqrt();
    // No unit may start another sum over this memory before all have read it.
    sync_cube();
    inv
}

/// One cube per row: `x = residual + post(a)` and `m = next(x)`, where
/// `post` and `next` are RMSNorms with scales `post_scale`, `next_scale`.
/// The normed branch is rounded to `F` before the add and the sum rounded
/// to `F`, as the unfused ops round; `next` reads the rounded sum, which
/// each unit reads back from `x_out` where it wrote it.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_rms_norm_kernel<F: Float, N: Size>(
    residual: &cubecl::prelude::Tensor<Vector<F, N>>,
    a: &cubecl::prelude::Tensor<Vector<F, N>>,
    post_scale: &cubecl::prelude::Tensor<Vector<f32, N>>,
    next_scale: &cubecl::prelude::Tensor<Vector<f32, N>>,
    x_out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    m_out: &mut cubecl::prelude::Tensor<Vector<F, N>>,
    d_vectors: u32,
    inv_d: f32,
    post_eps: f32,
    next_eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let row = CUBE_POS_X as usize;
    let dv = d_vectors as usize;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut k = tx;
    while k < dv {
        let v = Vector::<f32, N>::cast_from(a[row * dv + k]);
        acc += v * v;
        k += units;
    }
    let inv = Vector::<f32, N>::new(inverse_rms(acc, tx, inv_d, post_eps, units));
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut k = tx;
    while k < dv {
        let v = Vector::<f32, N>::cast_from(a[row * dv + k]);
        let normed =
            Vector::<f32, N>::cast_from(Vector::<F, N>::cast_from(v * inv * post_scale[k]));
        let sum =
            Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(residual[row * dv + k]) + normed);
        x_out[row * dv + k] = sum;
        let x = Vector::<f32, N>::cast_from(sum);
        acc += x * x;
        k += units;
    }
    let inv = Vector::<f32, N>::new(inverse_rms(acc, tx, inv_d, next_eps, units));
    let mut k = tx;
    while k < dv {
        let x = Vector::<f32, N>::cast_from(x_out[row * dv + k]);
        m_out[row * dv + k] = Vector::<F, N>::cast_from(x * inv * next_scale[k]);
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

/// The seam between two halves of a layer: `x = residual + post(a)` and
/// `m = next(x)`, RMSNorms over the last axis with scales `post_scale`,
/// `next_scale` (`1 + w`, f32, length = the last axis) and their epsilons;
/// `(x, m)` in the activations' dtype, rounded as the unfused ops round.
/// `None` off a CubeCL device, or where the inputs do not match.
pub(crate) fn add_rms_norm<const D: usize>(
    residual: &Tensor<D>,
    a: &Tensor<D>,
    (post_scale, post_eps): (&Tensor<1>, f64),
    (next_scale, next_eps): (&Tensor<1>, f64),
) -> Option<(Tensor<D>, Tensor<D>)> {
    let dims = a.dims();
    let d = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let dtype = a.dtype();
    let scale_ok = |s: &Tensor<1>| s.dims() == [d] && s.dtype() == DType::F32;
    if !enabled()
        || d == 0
        || rows == 0
        || residual.dims() != dims
        || residual.dtype() != dtype
        || !scale_ok(post_scale)
        || !scale_ok(next_scale)
    {
        return None;
    }
    let elem = float_elem(dtype)?;
    let (rc, ac) = (contiguous(cube(residual)?), contiguous(cube(a)?));
    let (ps, ns) = (contiguous(cube(post_scale)?), contiguous(cube(next_scale)?));
    // As `rms_norm`: f32's 16-byte limit decides the vector width.
    let vec = vector_width(d, DType::F32, 16);
    let (units, _) = reduce_units(&ac, 128);
    let client = ac.client.clone();
    let new = || {
        empty_device_dtype(
            client.clone(),
            ac.device.clone(),
            ac.meta.shape().clone(),
            dtype,
        )
    };
    let (x, m) = (new(), new());
    add_rms_norm_kernel::launch(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units),
        vec,
        rc.into_tensor_arg(),
        ac.into_tensor_arg(),
        ps.into_tensor_arg(),
        ns.into_tensor_arg(),
        x.clone().into_tensor_arg(),
        m.clone().into_tensor_arg(),
        (d / vec) as u32,
        1.0 / d as f32,
        post_eps as f32,
        next_eps as f32,
        units as usize,
        elem,
    );
    Some((tensor(x), tensor(m)))
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

/// The seam kernel ([`add_rms_norm`]) as a GPU launches it on bf16
/// (vectors of 4, as f32 scales allow, 128 units), compiled to PTX for
/// sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn add_ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = add_rms_norm_kernel::AddRmsNormKernel::new(
        settings(CubeDim::new_1d(128)),
        props,
        target,
        t(),
        t(),
        t(),
        t(),
        t(),
        t(),
        (),
        (),
        (),
        (),
        4,
        128,
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

    /// The seam of a layer as `gemma3.rs` runs it without the kernel:
    /// `x = residual + post(a)`, then `next(x)`.
    fn burn_seam<const D: usize>(
        residual: Tensor<D>,
        a: Tensor<D>,
        post: (Tensor<1>, f64),
        next: (Tensor<1>, f64),
    ) -> (Tensor<D>, Tensor<D>) {
        let x = residual + burn_rms_norm(a, post.0, post.1);
        let m = burn_rms_norm(x.clone(), next.0, next.1);
        (x, m)
    }

    #[test]
    fn add_rms_norm_equals_the_burn_composition() {
        let dev = device();
        // (rows, width, dtype, tolerance): one row and several, widths
        // taking vectors of 4, 2 and 1, the 4B's 2 560 in bf16.
        for (i, &(rows, d, dtype, tol)) in [
            (1, 64, DType::F32, 1e-5),
            (3, 48, DType::F32, 1e-5),
            (4, 30, DType::F32, 1e-5),
            (5, 7, DType::F32, 1e-5),
            (2, 2560, DType::BF16, 1e-2),
            (7, 16, DType::BF16, 1e-2),
        ]
        .iter()
        .enumerate()
        {
            let seed = 300 + 10 * i as u64;
            let residual = random([rows, 2, d], dtype, seed, &dev).mul_scalar(8.0);
            let a = random([rows, 2, d], dtype, seed + 1, &dev).mul_scalar(3.0);
            let post = random([d], DType::F32, seed + 2, &dev).add_scalar(1.0);
            let next = random([d], DType::F32, seed + 3, &dev).add_scalar(1.0);
            let (x, m) = add_rms_norm(&residual, &a, (&post, 1e-6), (&next, 1e-5))
                .expect("runs on the CubeCL CPU runtime");
            assert_eq!((x.dtype(), m.dtype()), (dtype, dtype));
            let (want_x, want_m) = burn_seam(residual, a, (post, 1e-6), (next, 1e-5));
            // Relative to the outputs' size (the sum up to ~14, the norm ~6).
            let (dx, dm) = (max_abs_diff(x, want_x), max_abs_diff(m, want_m));
            assert!(
                dx <= tol * 14.0 && dm <= tol * 6.0,
                "rows={rows} d={d} {dtype:?}: the sum differs by {dx}, the norm by {dm}"
            );
        }
        // Mismatched inputs are declined, not launched.
        let r = random([2, 8], DType::F32, 1, &dev);
        let s = random([8], DType::F32, 2, &dev);
        let short = random([4], DType::F32, 3, &dev);
        assert!(add_rms_norm(&r, &r.clone().slice([0..1, 0..8]), (&s, 1e-6), (&s, 1e-6)).is_none());
        assert!(add_rms_norm(&r, &r, (&s, 1e-6), (&short, 1e-6)).is_none());
        assert!(add_rms_norm(&r, &r.clone().cast(DType::BF16), (&s, 1e-6), (&s, 1e-6)).is_none());
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
