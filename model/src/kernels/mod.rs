//! Our own CubeCL kernels for the decode step, and the f32 matmul without
//! TF32, on whichever CubeCL runtime a tensor lives on (CUDA in production,
//! CubeCL's CPU runtime in the tests: `cube-cpu` feature).
//!
//! Each entry point takes Burn tensors and returns `Some(result)` when it ran
//! its kernel, `None` when the tensor is not on a CubeCL device (the CPU's
//! `flex` backend), or the shape or dtype is one the kernel does not cover:
//! the caller then runs the plain Burn ops, which stay the reference every
//! kernel is tested against (`tests` in each file, random inputs).
//!
//! burn-tensor's extension API hands a tensor's CubeCL primitive over:
//! `Tensor::try_into_primitive::<Cube>()` gives the `CubeTensor` (client,
//! buffer handle, shape and strides) a `#[cube(launch)]` kernel takes, and
//! `Tensor::from_primitive::<Cube>` wraps the output back.
//!
//! `MEDGEMMA_PLAIN_BURN=1` in the environment turns every kernel off (the
//! plain Burn ops run), for measuring what the kernels gain.
//!
//! Owns: the kernels and when they apply. Must never: change what a model
//! computes beyond rounding (each kernel equals its Burn composition within
//! the tolerances its tests state), or read anything but tensors.

mod argmax;
mod batch_attention;
pub mod bench;
mod decode_attention;
mod geglu;
mod matmul;
#[cfg(all(test, feature = "cube-cpu"))]
mod model_check;
mod norm;
mod online_softmax;
mod prefill_attention;
pub(crate) mod product;
#[cfg(feature = "cuda")]
pub(crate) mod ptx;
mod qk_rope;
mod skinny;
mod skinny_geglu;

use std::sync::OnceLock;

use burn::tensor::{DType, Tensor};
use burn_cubecl::Cube;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::{ElemType, FloatKind};

pub(crate) use argmax::argmax_rows;
pub(crate) use batch_attention::{
    batch_attention_covers, batch_attention_in_place, batch_decode_attention,
    batch_decode_attention_tuned,
};
pub(crate) use decode_attention::{DecodeTuning, decode_attention};
pub(crate) use geglu::geglu;
pub(crate) use matmul::{matmul, routine_product};
pub(crate) use norm::{add_rms_norm, rms_norm};
pub(crate) use prefill_attention::{
    KEYS_PER_STEP, KeyTable, key_table, prefill_attention, prefill_attention_stepping,
};
pub(crate) use product::{RouteTimes, burn_product, time_chunk_routines, time_routes};
pub(crate) use qk_rope::{QkNormRope, qk_norm_rope};
pub(crate) use skinny::{SKINNY_MAX_ROWS, skinny_many, skinny_matmul, skinny_tiled};
pub(crate) use skinny_geglu::skinny_geglu;

/// Whether our kernels may run (`MEDGEMMA_PLAIN_BURN` unset or `0`).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("MEDGEMMA_PLAIN_BURN").is_none_or(|v| v.is_empty() || v == "0")
    })
}

/// The tensor's CubeCL primitive, or `None` when it lives elsewhere (the
/// tensor is cloned first: a handle, not its data).
pub(crate) fn cube<const D: usize>(t: &Tensor<D>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// Whether `t` is a handle to `c`'s buffer: the same memory at the same
/// offset (a copy, even of equal content, is not).
pub(crate) fn same_buffer<const D: usize>(t: &Tensor<D>, c: &CubeTensor) -> bool {
    cube(t).is_some_and(|t| {
        std::ptr::eq(t.handle.memory.descriptor(), c.handle.memory.descriptor())
            && t.handle.offset_start == c.handle.offset_start
    })
}

/// Where `t`'s buffer lives (its memory's descriptor and the offset), to
/// tell buffers apart without holding one (a freed buffer's place may be
/// reused); `None` off a CubeCL device.
pub(crate) fn buffer_at<const D: usize>(t: &Tensor<D>) -> Option<(usize, Option<u64>)> {
    cube(t).map(|c| {
        let at = std::ptr::from_ref(c.handle.memory.descriptor()) as usize;
        (at, c.handle.offset_start)
    })
}

/// Wraps a kernel's output back into a Burn tensor.
pub(crate) fn tensor<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::<D>::from_primitive::<Cube>(t)
}

/// The kernel element type of a float dtype we launch on (f32, bf16, f16).
pub(crate) fn float_elem(dtype: DType) -> Option<ElemType> {
    match dtype {
        DType::F32 => Some(ElemType::Float(FloatKind::F32)),
        DType::BF16 => Some(ElemType::Float(FloatKind::BF16)),
        DType::F16 => Some(ElemType::Float(FloatKind::F16)),
        _ => None,
    }
}

/// The widest vector (elements) of at most `max_bytes` that divides `len`.
pub(crate) fn vector_width(len: usize, dtype: DType, max_bytes: usize) -> usize {
    let max = (max_bytes / dtype.size()).max(1);
    [8, 4, 2, 1]
        .into_iter()
        .find(|w| *w <= max && len.is_multiple_of(*w))
        .unwrap_or(1)
}

/// How a kernel splits one reduction over a cube: `(units, plane)`, the
/// number of units (a power of two) and whether the runtime's planes can do
/// the reduction (CUDA: 32-unit warps; CubeCL's CPU runtime: planes of one
/// unit and no plane operations, so shared memory does it).
pub(crate) fn reduce_units(t: &CubeTensor, want: u32) -> (u32, bool) {
    let props = t.client.properties();
    let max = props.hardware.max_units_per_cube.max(1);
    let mut units = 1u32;
    while units * 2 <= want.min(max) {
        units *= 2;
    }
    let plane_dim = props.hardware.plane_size_max;
    let plane = plane_dim > 1
        && props
            .features
            .plane
            .contains(cubecl::ir::features::Plane::Ops)
        && units == plane_dim;
    (units, plane)
}

/// `t` itself when no other handle shares its buffer, else a copy of it on
/// its CubeCL device (off one, `t` as it is), so that a kernel may write it
/// in place without another holder seeing the write.
pub(crate) fn unshared<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.can_mut() {
        return t;
    }
    match cube(&t) {
        Some(c) => tensor(c.copy()),
        None => t,
    }
}

/// `values` uploaded as a `u32` tensor on the CubeCL device `like` lives on.
///
/// # Panics
///
/// If `like` is not on a CubeCL device.
pub(crate) fn u32_buffer<const D: usize>(like: &Tensor<D>, values: &[u32]) -> CubeTensor {
    upload_u32(&cube(like).expect("a CubeCL tensor"), values)
}

/// `values` uploaded as a `u32` tensor on `like`'s device (at least one
/// element: a zero when `values` is empty).
pub(crate) fn upload_u32(like: &CubeTensor, values: &[u32]) -> CubeTensor {
    let values = if values.is_empty() { &[0][..] } else { values };
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_ne_bytes()).collect();
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        burn::tensor::Shape::new([values.len()]),
        like.client.create_from_slice(&bytes),
        DType::U32,
    )
}

/// Writes `values` over the `u32` buffer `t` in place (same length).
pub(crate) fn write_u32(t: &CubeTensor, values: &[u32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_ne_bytes()).collect();
    t.client
        .write(&t.handle, burn::tensor::Bytes::from_bytes_vec(bytes));
}

/// Contiguous row-major, or a copy that is.
pub(crate) fn contiguous(t: CubeTensor) -> CubeTensor {
    burn_cubecl::kernel::into_contiguous(t)
}

#[cfg(all(test, feature = "cube-cpu"))]
pub(crate) mod test_support {
    //! Random inputs on CubeCL's CPU runtime and the comparison with Burn.

    use burn::tensor::{DType, Device, Tensor, TensorData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// CubeCL's CPU runtime (LLVM JIT on this machine).
    pub(crate) fn device() -> Device {
        Device::cpu()
    }

    /// Uniform random values in [-1, 1), made on the host from `seed`, in
    /// `dtype` on `device`.
    pub(crate) fn random<const D: usize>(
        shape: [usize; D],
        dtype: DType,
        seed: u64,
        device: &Device,
    ) -> Tensor<D> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::<D>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype)
    }

    /// The largest absolute difference, in f32.
    pub(crate) fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        assert_eq!(a.dims(), b.dims(), "shapes differ");
        let a: Vec<f32> = a.cast(DType::F32).into_data().iter::<f32>().collect();
        let b: Vec<f32> = b.cast(DType::F32).into_data().iter::<f32>().collect();
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
