//! Greedy choice on the device: the index of the largest logit of each row
//! of `[B, V]` in one launch, so a greedy decode step reads back B `u32`s
//! instead of B × V floats.
//!
//! The rule is the host's (`sampling::argmax`): ties go to the lowest index,
//! and a NaN never wins (it is never greater than anything); a row with
//! nothing but NaNs gives 0.
//!
//! Owns: the kernel and its launch. Must never: pick by anything but the
//! values (no suppression here: the caller checks the sampler allows the
//! id, and decides on the host when it does not).

use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::Cube;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, reduce_units, vector_width};

/// No candidate yet (a unit whose values were all NaN).
const NONE: u32 = u32::MAX;

/// One cube per row: each unit scans a strided share of the row's vectors
/// (indices rising, so a strict `>` keeps the lowest index of a tie), then
/// the units' candidates meet in a tree in shared memory that breaks ties
/// by index.
#[cube(launch)]
fn argmax_kernel<F: Float, N: Size>(
    logits: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<u32>,
    row_vectors: u32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let row = CUBE_POS_X as usize;
    let rv = row_vectors as usize;
    let mut best = f32::NEG_INFINITY.runtime();
    let mut best_i = NONE.runtime();
    let mut k = tx;
    while k < rv {
        let v = Vector::<f32, N>::cast_from(logits[row * rv + k]);
        let width = v.vector_size();
        #[unroll]
        for j in 0..width {
            let x = v.extract(j);
            // `x >= -inf` is false only for NaN: the first non-NaN value
            // becomes the candidate even when it is -inf.
            if x > best || (best_i == NONE && x >= best) {
                best = x;
                best_i = (k * width + j) as u32;
            }
        }
        k += units;
    }
    let mut sv = Shared::<[f32]>::new_slice(units);
    let mut si = Shared::<[u32]>::new_slice(units);
    sv[tx] = best;
    si[tx] = best_i;
    sync_cube();
    // A runtime variable (a comptime one cannot be mutated): CUBE_DIM_X = units.
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if tx < stride {
            let a = sv[tx];
            let ai = si[tx];
            let b = sv[tx + stride];
            let bi = si[tx + stride];
            if bi != NONE && (ai == NONE || b > a || (b == a && bi < ai)) {
                sv[tx] = b;
                si[tx] = bi;
            }
        }
        sync_cube();
        stride /= 2;
    }
    if tx == 0 {
        let i = si[0];
        out[row] = select(i == NONE, 0u32, i);
    }
}

/// The argmax of each row of `logits: [B, V]` (any float dtype) as `B` ids
/// (`u32`) on the same CubeCL device; `None` off one.
pub(crate) fn argmax_rows(logits: &Tensor<2>) -> Option<Tensor<1, Int>> {
    let [rows, v] = logits.dims();
    if !enabled() || rows == 0 || v == 0 || v > u32::MAX as usize {
        return None;
    }
    let dtype = logits.dtype();
    let elem = float_elem(dtype)?;
    let lc = contiguous(cube(logits)?);
    let vec = vector_width(v, dtype, 16);
    let (units, _) = reduce_units(&lc, 1024);
    let client = lc.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        lc.device.clone(),
        burn::tensor::Shape::new([rows]),
        DType::U32,
    );
    argmax_kernel::launch(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units),
        vec,
        lc.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        (v / vec) as u32,
        units as usize,
        elem,
    );
    Some(Tensor::<1, Int>::from_primitive::<Cube>(out))
}

/// The kernel as a GPU launches it over bf16 logits (vectors of 8, 256
/// units), compiled to PTX for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = argmax_kernel::ArgmaxKernel::new(
        settings(CubeDim::new_1d(256)),
        props,
        target,
        t(),
        t(),
        (),
        8,
        256,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::TensorData;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::kernels::test_support::device;
    use crate::sampling::argmax;

    /// Rows of random logits with planted ties (the maximum repeated at a
    /// later index, and a tie inside one vector), NaNs, -inf, a row of
    /// -inf only and a row of NaN after a first -inf.
    fn rows(v: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out: Vec<Vec<f32>> = Vec::new();
        for r in 0..6 {
            let mut row: Vec<f32> = (0..v).map(|_| rng.random_range(-8.0f32..8.0)).collect();
            match r {
                1 => {
                    // The maximum three times; the lowest must win.
                    let (a, b, c) = (v / 3, v / 2, v - 1);
                    row[a] = 20.0;
                    row[b] = 20.0;
                    row[c] = 20.0;
                }
                2 => {
                    // NaNs everywhere a quarter apart (index 0 included), one
                    // above the maximum's place.
                    for i in (0..v).step_by(4) {
                        row[i] = f32::NAN;
                    }
                    row[v / 2 + 1] = f32::NAN;
                }
                3 => {
                    // Ties inside one vector and across units.
                    row.iter_mut().for_each(|x| *x = x.round().clamp(-2.0, 2.0));
                }
                4 => {
                    row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                    row[v - 2] = f32::NEG_INFINITY;
                }
                5 => {
                    row.iter_mut().skip(1).for_each(|x| *x = f32::NAN);
                    row[0] = f32::NEG_INFINITY;
                }
                _ => {}
            }
            out.push(row);
        }
        out
    }

    #[test]
    fn argmax_rows_equals_the_host_greedy_choice() {
        let dev = device();
        // The real vocabulary (vectors of 4), and widths of 2 and 1.
        for (i, &(v, dtype)) in [
            (262_208, DType::F32),
            (1026, DType::F32),
            (333, DType::F32),
            (4096, DType::BF16),
        ]
        .iter()
        .enumerate()
        {
            let rows = rows(v, 40 + i as u64);
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let t =
                Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), v]), (&dev, DType::F32))
                    .cast(dtype);
            // The host sees what the device holds (bf16 rounding makes new ties).
            let held: Vec<f32> = t
                .clone()
                .cast(DType::F32)
                .into_data()
                .iter::<f32>()
                .collect();
            let want: Vec<u32> = held.chunks(v).map(argmax).collect();
            let got = argmax_rows(&t).expect("runs on the CubeCL CPU runtime");
            let got: Vec<u32> = got.into_data().iter::<u32>().collect();
            assert_eq!(got, want, "v={v} {dtype:?}");
        }
    }

    #[test]
    fn argmax_rows_declines_off_a_cubecl_device() {
        let flex = burn::tensor::Device::flex();
        let t = Tensor::<2>::zeros([2, 8], (&flex, DType::F32));
        assert!(argmax_rows(&t).is_none());
    }
}
