//! Gemma's per-head q/k RMSNorm and RoPE in one launch for both the query
//! and the key heads of a chunk: each head row `x` becomes
//! `rope(x / sqrt(mean(x²) + eps) · (1 + w))` with the half rotation
//! `[x1, x2] → [x1·cos − x2·sin, x2·cos + x1·sin]` and the cos/sin row of
//! its token's position (transformers' `Gemma3Attention`: `q_norm`/`k_norm`,
//! then `apply_rotary_pos_emb`; the plain Burn form is about 30 kernels per
//! layer).
//!
//! The normalised value is rounded to the activations' dtype before the
//! rotation, as the Burn composition hands it on; the rotation runs in f32
//! and is rounded once.
//!
//! Owns: the kernel and its launch. Must never: rotate anything but the
//! query and key heads (values take no norm and no rotation).

use burn::tensor::{DType, Tensor};
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor};

/// What the norm and the rotation need besides the projections.
pub(crate) struct QkNormRope<'a> {
    /// `1 + w` of `q_norm`, f32, length `head_dim`.
    pub q_scale: &'a Tensor<1>,
    /// `1 + w` of `k_norm`, f32, length `head_dim`.
    pub k_scale: &'a Tensor<1>,
    /// RMSNorm's epsilon.
    pub eps: f64,
    /// cos table `[P, head_dim]` (both halves), in the activations' dtype:
    /// row `r` of the projections takes row `r mod P`.
    pub cos: &'a Tensor<2>,
    /// sin table, as `cos`.
    pub sin: &'a Tensor<2>,
    /// Query heads per row.
    pub q_heads: usize,
    /// Key heads per row.
    pub kv_heads: usize,
}

/// Norm and rotation of head `head` of `x` (rows of `heads · head_dim`)
/// into `out`, by the `units` units of this cube.
#[cube]
// The shared-memory trees write `a = a + b` out in full, in every kernel here.
#[allow(clippy::too_many_arguments, clippy::assign_op_pattern)]
fn norm_rope_head<F: Float>(
    x: &cubecl::prelude::Tensor<F>,
    scale: &cubecl::prelude::Tensor<f32>,
    cos: &cubecl::prelude::Tensor<F>,
    sin: &cubecl::prelude::Tensor<F>,
    out: &mut cubecl::prelude::Tensor<F>,
    head: usize,
    cos_row: usize,
    head_dim: usize,
    inv_d: f32,
    eps: f32,
    #[comptime] units: usize,
) {
    let tx = UNIT_POS_X as usize;
    let base = head * head_dim;
    let mut s = 0.0f32;
    let mut i = tx;
    while i < head_dim {
        let v = f32::cast_from(x[base + i]);
        s += v * v;
        i += units;
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
    let half = head_dim / 2;
    let c = cos_row * head_dim;
    let mut i = tx;
    while i < half {
        // Rounded to F as the norm's output is.
        let x1 = f32::cast_from(F::cast_from(f32::cast_from(x[base + i]) * inv * scale[i]));
        let x2 = f32::cast_from(F::cast_from(
            f32::cast_from(x[base + half + i]) * inv * scale[half + i],
        ));
        let (c1, s1) = (f32::cast_from(cos[c + i]), f32::cast_from(sin[c + i]));
        let (c2, s2) = (
            f32::cast_from(cos[c + half + i]),
            f32::cast_from(sin[c + half + i]),
        );
        out[base + i] = F::cast_from(x1 * c1 - x2 * s1);
        out[base + half + i] = F::cast_from(x2 * c2 + x1 * s2);
        i += units;
    }
}

/// Cubes `0..R·Hq` take the query heads (row-major: row, then head), the
/// next `R·Hkv` the key heads.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qk_norm_rope_kernel<F: Float>(
    q: &cubecl::prelude::Tensor<F>,
    k: &cubecl::prelude::Tensor<F>,
    q_scale: &cubecl::prelude::Tensor<f32>,
    k_scale: &cubecl::prelude::Tensor<f32>,
    cos: &cubecl::prelude::Tensor<F>,
    sin: &cubecl::prelude::Tensor<F>,
    q_out: &mut cubecl::prelude::Tensor<F>,
    k_out: &mut cubecl::prelude::Tensor<F>,
    rows: u32,
    q_heads: u32,
    kv_heads: u32,
    cos_rows: u32,
    head_dim: u32,
    inv_d: f32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X as usize;
    let q_cubes = (rows * q_heads) as usize;
    let hd = head_dim as usize;
    if c < q_cubes {
        let row = c / q_heads as usize;
        norm_rope_head::<F>(
            q,
            q_scale,
            cos,
            sin,
            q_out,
            c,
            row % cos_rows as usize,
            hd,
            inv_d,
            eps,
            units,
        );
    } else {
        let h = c - q_cubes;
        let row = h / kv_heads as usize;
        norm_rope_head::<F>(
            k,
            k_scale,
            cos,
            sin,
            k_out,
            h,
            row % cos_rows as usize,
            hd,
            inv_d,
            eps,
            units,
        );
    }
}

/// Normalised and rotated `(q, k)` for the projections `q: [R, Hq·hd]` and
/// `k: [R, Hkv·hd]` (same float dtype as the tables, on a CubeCL device),
/// same shapes; `None` otherwise.
pub(crate) fn qk_norm_rope(
    q: &Tensor<2>,
    k: &Tensor<2>,
    p: &QkNormRope<'_>,
) -> Option<(Tensor<2>, Tensor<2>)> {
    let [rows, qw] = q.dims();
    let [krows, kw] = k.dims();
    let [cos_rows, hd] = p.cos.dims();
    let dtype = q.dtype();
    let shapes_fit = rows > 0
        && krows == rows
        && hd > 0
        && hd.is_multiple_of(2)
        && qw == p.q_heads * hd
        && kw == p.kv_heads * hd
        && cos_rows > 0
        && rows.is_multiple_of(cos_rows)
        && p.sin.dims() == [cos_rows, hd]
        && p.q_scale.dims() == [hd]
        && p.k_scale.dims() == [hd];
    let dtypes_fit = k.dtype() == dtype
        && p.cos.dtype() == dtype
        && p.sin.dtype() == dtype
        && p.q_scale.dtype() == DType::F32
        && p.k_scale.dtype() == DType::F32;
    if !enabled() || !shapes_fit || !dtypes_fit {
        return None;
    }
    let elem = float_elem(dtype)?;
    let (qc, kc) = (contiguous(cube(q)?), contiguous(cube(k)?));
    let (qs, ks) = (contiguous(cube(p.q_scale)?), contiguous(cube(p.k_scale)?));
    let (cc, sc) = (contiguous(cube(p.cos)?), contiguous(cube(p.sin)?));
    let (units, _) = reduce_units(&qc, (hd / 2) as u32);
    let client = qc.client.clone();
    let out = |like: &burn_cubecl::tensor::CubeTensor| {
        empty_device_dtype(
            client.clone(),
            like.device.clone(),
            like.meta.shape().clone(),
            dtype,
        )
    };
    let (q_out, k_out) = (out(&qc), out(&kc));
    let cubes = rows * (p.q_heads + p.kv_heads);
    qk_norm_rope_kernel::launch(
        &client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_1d(units),
        qc.into_tensor_arg(),
        kc.into_tensor_arg(),
        qs.into_tensor_arg(),
        ks.into_tensor_arg(),
        cc.into_tensor_arg(),
        sc.into_tensor_arg(),
        q_out.clone().into_tensor_arg(),
        k_out.clone().into_tensor_arg(),
        rows as u32,
        p.q_heads as u32,
        p.kv_heads as u32,
        cos_rows as u32,
        hd as u32,
        1.0 / hd as f32,
        p.eps as f32,
        units as usize,
        elem,
    );
    Some((tensor(q_out), tensor(k_out)))
}

/// The kernel as a GPU launches it on bf16 (256 units), compiled to PTX for
/// sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = qk_norm_rope_kernel::QkNormRopeKernel::new(
        settings(CubeDim::new_1d(256)),
        props,
        target,
        t(),
        t(),
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
        (),
        (),
        (),
        256,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// `gemma3.rs`'s composition: `RmsNorm::forward` per head, then `apply_rope`.
    fn burn_norm_rope(
        x: Tensor<2>,
        heads: usize,
        scale: &Tensor<1>,
        eps: f64,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
    ) -> Tensor<2> {
        let [rows, w] = x.dims();
        let hd = w / heads;
        let dtype = x.dtype();
        // One sequence of `t` tokens per cos row block (the tests use one).
        let t = cos.dims()[0];
        // [rows, heads, hd] with rows = (b, t) → [b, heads, t, hd] as gemma3.rs holds it.
        let x4 = x.reshape([rows / t, t, heads, hd]).swap_dims(1, 2);
        let xf = x4.cast(DType::F32);
        let ms = xf.clone().powi_scalar(2).mean_dim(3);
        let n = (xf * (ms + eps).sqrt().recip() * scale.clone().unsqueeze::<4>()).cast(dtype);
        let [b, h, t, d] = n.dims();
        let half = d / 2;
        let x1 = n.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = n.clone().slice([0..b, 0..h, 0..t, half..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let (c, s) = (
            cos.clone().reshape([1, 1, t, d]),
            sin.clone().reshape([1, 1, t, d]),
        );
        let y = n * c + rotated * s;
        y.swap_dims(1, 2).reshape([rows, w])
    }

    /// Tables as `RotaryTable` makes them: both halves the same angles.
    fn tables(
        positions: &[usize],
        hd: usize,
        dtype: DType,
        dev: &burn::tensor::Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let half = hd / 2;
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for &p in positions {
            let row: Vec<f32> = (0..half)
                .map(|i| p as f32 / 10_000f32.powf(2.0 * i as f32 / hd as f32))
                .collect();
            for _ in 0..2 {
                c.extend(row.iter().map(|a| a.cos()));
                s.extend(row.iter().map(|a| a.sin()));
            }
        }
        let mk = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [positions.len(), hd]), (dev, DType::F32))
                .cast(dtype)
        };
        (mk(c), mk(s))
    }

    #[test]
    fn qk_norm_rope_equals_norm_then_apply_rope() {
        let dev = device();
        // (rows, positions, Hq, Hkv, hd): decode rows of a batch (one
        // position each), a prompt chunk of one sequence, the real head
        // shapes of the 4B and the 270M.
        for (i, &(positions, hq, hkv, hd, dtype, tol)) in [
            (&[5usize, 900, 17][..], 8, 4, 256, DType::F32, 1e-5),
            (&[0, 1, 2, 3][..], 4, 1, 256, DType::F32, 1e-5),
            (&[3, 4000][..], 2, 1, 64, DType::F32, 1e-5),
            (&[12, 77, 1023][..], 8, 4, 256, DType::BF16, 4e-2),
            (&[7][..], 4, 1, 256, DType::BF16, 4e-2),
        ]
        .iter()
        .enumerate()
        {
            let rows = positions.len();
            let seed = 500 + 10 * i as u64;
            let q = random([rows, hq * hd], dtype, seed, &dev).mul_scalar(3.0);
            let k = random([rows, hkv * hd], dtype, seed + 1, &dev).mul_scalar(2.0);
            let qs = random([hd], DType::F32, seed + 2, &dev).add_scalar(1.0);
            let ks = random([hd], DType::F32, seed + 3, &dev).add_scalar(1.0);
            let (cos, sin) = tables(positions, hd, dtype, &dev);
            let p = QkNormRope {
                q_scale: &qs,
                k_scale: &ks,
                eps: 1e-6,
                cos: &cos,
                sin: &sin,
                q_heads: hq,
                kv_heads: hkv,
            };
            let (gq, gk) = qk_norm_rope(&q, &k, &p).expect("runs on the CubeCL CPU runtime");
            assert_eq!((gq.dtype(), gk.dtype()), (dtype, dtype));
            let wq = burn_norm_rope(q.clone(), hq, &qs, 1e-6, &cos, &sin);
            let wk = burn_norm_rope(k.clone(), hkv, &ks, 1e-6, &cos, &sin);
            // Outputs reach ~4 (normalised ×2 scale, rotated): relative tolerance.
            let (dq, dk) = (max_abs_diff(gq, wq), max_abs_diff(gk, wk));
            assert!(
                dq <= tol * 4.0 && dk <= tol * 4.0,
                "rows={rows} hq={hq} hkv={hkv} hd={hd} {dtype:?}: q {dq}, k {dk}"
            );
        }
    }
}
