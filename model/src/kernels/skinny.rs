//! `y = x · Wᵀ` for a few rows of `x` (decode: one token per sequence, 1 to
//! [`SKINNY_MAX_ROWS`]) with `W: [out, in]` in the checkpoint's layout: the
//! product is bound by reading `W` once, so every weight row is streamed
//! with 16-byte loads by the units of one plane, each unit keeping one f32
//! accumulator per row of `x`, and the partial sums are reduced across the
//! plane (or through shared memory where planes have one unit).
//!
//! Owns: the kernel and its launch. Must never: read `W` more than once per
//! call, or accumulate in less than f32.

use burn::tensor::Tensor;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{contiguous, cube, enabled, float_elem, reduce_units, tensor, vector_width};

/// The most rows of `x` the kernel takes (one accumulator per row and unit).
pub(crate) const SKINNY_MAX_ROWS: usize = 32;

/// Output columns (weight rows) per cube on a GPU: one plane each.
const COLUMNS_PER_CUBE: u32 = 4;

/// One cube computes `CUBE_DIM_Y` output columns; the `CUBE_DIM_X` units of
/// each split the reduced axis and meet in a reduction.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn skinny_matmul_kernel<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    w: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<F>,
    k_vectors: u32,
    columns: u32,
    #[comptime] rows: usize,
    #[comptime] units: usize,
    #[comptime] plane: bool,
    #[define(F)] _dtype: ElemType,
) {
    skinny_columns::<F, N>(
        x,
        w,
        out,
        CUBE_POS_X as usize,
        k_vectors as usize,
        columns as usize,
        rows,
        units,
        plane,
    );
}

/// The skinny kernel over up to three weights that share `x` (q, k and v;
/// gate and up) in one launch: cubes `0 .. c0` take `w0`'s columns, then
/// `c0 .. c1` `w1`'s, then the rest `w2`'s, each
/// computing exactly what [`skinny_matmul_kernel`] computes for that weight.
/// With two weights `c1` is the cube count, so no cube takes `w2`. A cube's
/// branch is the same for all its units.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn skinny_many_kernel<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    w0: &cubecl::prelude::Tensor<Vector<F, N>>,
    w1: &cubecl::prelude::Tensor<Vector<F, N>>,
    w2: &cubecl::prelude::Tensor<Vector<F, N>>,
    out0: &mut cubecl::prelude::Tensor<F>,
    out1: &mut cubecl::prelude::Tensor<F>,
    out2: &mut cubecl::prelude::Tensor<F>,
    k_vectors: u32,
    n0: u32,
    n1: u32,
    n2: u32,
    c0: u32,
    c1: u32,
    #[comptime] rows: usize,
    #[comptime] units: usize,
    #[comptime] plane: bool,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X;
    let kv = k_vectors as usize;
    if c < c0 {
        skinny_columns::<F, N>(x, w0, out0, c as usize, kv, n0 as usize, rows, units, plane);
    } else if c < c1 {
        let at = (c - c0) as usize;
        skinny_columns::<F, N>(x, w1, out1, at, kv, n1 as usize, rows, units, plane);
    } else {
        let at = (c - c1) as usize;
        skinny_columns::<F, N>(x, w2, out2, at, kv, n2 as usize, rows, units, plane);
    }
}

/// Cube `cube`'s `CUBE_DIM_Y` output columns of `x · Wᵀ` (`n` columns in
/// all, `kv` vectors per row), through [`column_totals`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn skinny_columns<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    w: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<F>,
    cube: usize,
    kv: usize,
    n: usize,
    #[comptime] rows: usize,
    #[comptime] units: usize,
    #[comptime] plane: bool,
) {
    let col = cube * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    let in_range = col < n;
    let mut totals = Array::<f32>::new(rows);
    column_totals::<F, N>(x, w, &mut totals, col, in_range, kv, rows, units, plane);
    if UNIT_POS_X == 0 && in_range {
        #[unroll]
        for m in 0..rows {
            out[m * n + col] = F::cast_from(totals[m]);
        }
    }
}

/// Column `col` of `x · Wᵀ` for every row of `x` (`kv` vectors per row),
/// in f32, into `totals` of the column's first unit (`UNIT_POS_X` 0; the
/// other units' `totals` are partial): each unit of the column (the units
/// with this `UNIT_POS_Y`) keeps one f32 accumulator per row of `x` over
/// its share of the reduced axis, then they meet in a plane sum (or a tree
/// in shared memory). A column out of range (`in_range` false) loads
/// nothing and sums to 0. Every unit of the cube calls it (the tree syncs
/// the cube).
#[cube]
// The shared-memory trees write `a = a + b` out in full, in every kernel here.
#[allow(clippy::assign_op_pattern)]
#[allow(clippy::too_many_arguments)]
pub(super) fn column_totals<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    w: &cubecl::prelude::Tensor<Vector<F, N>>,
    totals: &mut Array<f32>,
    col: usize,
    in_range: bool,
    kv: usize,
    #[comptime] rows: usize,
    #[comptime] units: usize,
    #[comptime] plane: bool,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;

    let mut acc = Array::<Vector<f32, N>>::new(rows);
    #[unroll]
    for m in 0..rows {
        acc[m] = Vector::new(0.0f32);
    }
    if in_range {
        let mut k = tx;
        while k < kv {
            let wv = Vector::<f32, N>::cast_from(w[col * kv + k]);
            #[unroll]
            for m in 0..rows {
                acc[m] += Vector::<f32, N>::cast_from(x[m * kv + k]) * wv;
            }
            k += units;
        }
    }

    let mut shared = Shared::<[f32]>::new_slice(comptime!(units * 8));
    #[unroll]
    for m in 0..rows {
        let v = acc[m];
        let mut s = 0.0f32;
        #[unroll]
        for i in 0..v.vector_size() {
            s += v.extract(i);
        }
        if comptime!(plane) {
            totals[m] = plane_sum(s);
        } else {
            // Tree over the units of this column, in shared memory.
            let base = ty * units;
            shared[base + tx] = s;
            sync_cube();
            // A runtime variable (a comptime one cannot be mutated): CUBE_DIM_X = units.
            let mut stride = (CUBE_DIM_X / 2) as usize;
            while stride > 0 {
                if tx < stride {
                    shared[base + tx] = shared[base + tx] + shared[base + tx + stride];
                }
                sync_cube();
                stride /= 2;
            }
            totals[m] = shared[base + tx];
            sync_cube();
        }
    }
}

/// `x · Wᵀ` for `x: [M, K]`, `W: [N, K]` (both in the same float dtype, on a
/// CubeCL device, M ≤ [`SKINNY_MAX_ROWS`]); `None` otherwise.
pub(crate) fn skinny_matmul(w: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    let o = Operands::of(w, x)?;
    // A GPU reduces over one plane per column; the CPU runtime over at most
    // its few units (and one column per cube).
    let (units, plane) = reduce_units(&o.wc, 32);
    let per_cube = if plane { COLUMNS_PER_CUBE } else { 1 };
    let cubes = (o.n as u32).div_ceil(per_cube);
    skinny_matmul_kernel::launch(
        &o.wc.client.clone(),
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_2d(units, per_cube),
        o.vec,
        o.xc.into_tensor_arg(),
        o.wc.into_tensor_arg(),
        o.out.clone().into_tensor_arg(),
        (o.k / o.vec) as u32,
        o.n as u32,
        o.m,
        units as usize,
        plane,
        o.elem,
    );
    Some(tensor(o.out))
}

/// [`skinny_matmul`] of two or three weights that share `x` (q, k and v;
/// gate and up) in one launch: the same columns, each computed as
/// [`skinny_matmul`] computes it. `None` where [`skinny_matmul`] would
/// decline any of them, or for another number of weights.
pub(crate) fn skinny_many(ws: &[&Tensor<2>], x: &Tensor<2>) -> Option<Vec<Tensor<2>>> {
    if !(2..=3).contains(&ws.len()) {
        return None;
    }
    let ops: Vec<Operands> = ws
        .iter()
        .map(|w| Operands::of(w, x))
        .collect::<Option<_>>()?;
    let first = &ops[0];
    if ops.iter().any(|o| o.vec != first.vec) {
        return None;
    }
    let (units, plane) = reduce_units(&first.wc, 32);
    let per_cube = if plane { COLUMNS_PER_CUBE } else { 1 };
    let cubes: Vec<u32> = ops
        .iter()
        .map(|o| (o.n as u32).div_ceil(per_cube))
        .collect();
    let (c0, c1) = (cubes[0], cubes[0] + cubes[1]);
    let total = c1 + cubes.get(2).copied().unwrap_or(0);
    let client = first.wc.client.clone();
    // With two weights the third's arguments are never read or written (no
    // cube takes them): the second weight again, and a one-element output.
    let spare = || {
        empty_device_dtype(
            client.clone(),
            first.wc.device.clone(),
            burn::tensor::Shape::new([1]),
            x.dtype(),
        )
    };
    let (w2, out2, n2) = match ops.get(2) {
        Some(o) => (o.wc.clone(), o.out.clone(), o.n),
        None => (ops[1].wc.clone(), spare(), 0),
    };
    skinny_many_kernel::launch(
        &client,
        CubeCount::Static(total, 1, 1),
        CubeDim::new_2d(units, per_cube),
        first.vec,
        first.xc.clone().into_tensor_arg(),
        ops[0].wc.clone().into_tensor_arg(),
        ops[1].wc.clone().into_tensor_arg(),
        w2.into_tensor_arg(),
        ops[0].out.clone().into_tensor_arg(),
        ops[1].out.clone().into_tensor_arg(),
        out2.into_tensor_arg(),
        (first.k / first.vec) as u32,
        ops[0].n as u32,
        ops[1].n as u32,
        n2 as u32,
        c0,
        c1,
        first.m,
        units as usize,
        plane,
        first.elem,
    );
    Some(ops.into_iter().map(|o| tensor(o.out)).collect())
}

/// What the skinny kernels launch with: `x: [m, k]` and `W: [n, k]` as
/// contiguous CubeCL tensors, the load width, and the output `[m, n]`.
pub(super) struct Operands {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) elem: ElemType,
    pub(super) vec: usize,
    pub(super) xc: burn_cubecl::tensor::CubeTensor,
    pub(super) wc: burn_cubecl::tensor::CubeTensor,
    pub(super) out: burn_cubecl::tensor::CubeTensor,
}

impl Operands {
    /// `None` where the kernels decline: kernels off, no rows or more than
    /// [`SKINNY_MAX_ROWS`], shapes or dtypes that differ, or not CubeCL.
    pub(super) fn of(w: &Tensor<2>, x: &Tensor<2>) -> Option<Self> {
        let [m, k] = x.dims();
        let [n, kw] = w.dims();
        if !enabled() || m == 0 || m > SKINNY_MAX_ROWS || k != kw || x.dtype() != w.dtype() {
            return None;
        }
        let dtype = x.dtype();
        let elem = float_elem(dtype)?;
        let (xc, wc) = (contiguous(cube(x)?), contiguous(cube(w)?));
        // 16-byte weight loads; past 8 rows 8-byte ones, so that the per-row
        // sums (and, tiled, the columns' vectors) stay in registers.
        let vec = vector_width(k, dtype, if m <= 8 { 16 } else { 8 });
        let out = empty_device_dtype(
            wc.client.clone(),
            wc.device.clone(),
            burn::tensor::Shape::new([m, n]),
            dtype,
        );
        Some(Self {
            m,
            k,
            n,
            elem,
            vec,
            xc,
            wc,
            out,
        })
    }
}

/// Output columns (weight rows) one cube of the tiled kernel computes.
pub(crate) const TILE_COLUMNS: usize = 4;

/// Planes of the tiled kernel's cube, splitting the reduced axis.
const TILE_PLANES: u32 = 4;

/// `y = x · Wᵀ` with each unit reusing every vector of `x` it loads for
/// `cols` weight rows: the skinny kernel reads `x` once per weight row, so
/// at many rows its loads of `x` (rows × the weights' bytes, from L1)
/// outweigh the weights; here they are rows / `cols` of them. A cube's
/// `cols` columns are split over its planes along the reduced axis (split-K,
/// so that small weights still fill the card), each unit keeps one f32 sum
/// per (row, column), and the sums meet through plane sums and shared
/// memory (or shared memory alone where planes have one unit).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn skinny_tiled_kernel<F: Float, N: Size>(
    x: &cubecl::prelude::Tensor<Vector<F, N>>,
    w: &cubecl::prelude::Tensor<Vector<F, N>>,
    out: &mut cubecl::prelude::Tensor<F>,
    k_vectors: u32,
    columns: u32,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] lanes: usize,
    #[comptime] planes: usize,
    #[comptime] plane: bool,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let kv = k_vectors as usize;
    let n = columns as usize;
    let col0 = CUBE_POS_X as usize * cols;
    let sums = comptime!(rows * cols);

    let mut acc = Array::<f32>::new(sums);
    #[unroll]
    for i in 0..sums {
        acc[i] = 0.0f32;
    }
    // Where each column's weight row starts; a last cube's columns past the
    // end read the last row again and are not written.
    let mut at = Array::<usize>::new(cols);
    #[unroll]
    for c in 0..cols {
        at[c] = clamp_max(col0 + c, n - 1) * kv;
    }
    let mut wv = Array::<Vector<f32, N>>::new(cols);
    let mut k = ty * lanes + tx;
    while k < kv {
        #[unroll]
        for c in 0..cols {
            wv[c] = Vector::<f32, N>::cast_from(w[at[c] + k]);
        }
        #[unroll]
        for m in 0..rows {
            let xv = Vector::<f32, N>::cast_from(x[m * kv + k]);
            #[unroll]
            for c in 0..cols {
                let p = xv * wv[c];
                let mut s = acc[m * cols + c];
                #[unroll]
                for e in 0..p.vector_size() {
                    s += p.extract(e);
                }
                acc[m * cols + c] = s;
            }
        }
        k += comptime!(lanes * planes);
    }

    // One partial per (row, column) from each plane (its lanes' plane sum),
    // or from each unit where planes have one unit.
    let parts = comptime!(if plane { planes } else { lanes * planes });
    let mut shared = Shared::<[f32]>::new_slice(comptime!(parts * rows * cols));
    #[unroll]
    for i in 0..sums {
        if comptime!(plane) {
            let total = plane_sum(acc[i]);
            if tx == 0 {
                shared[ty * sums + i] = total;
            }
        } else {
            shared[(ty * lanes + tx) * sums + i] = acc[i];
        }
    }
    sync_cube();
    let mut i = ty * lanes + tx;
    while i < sums {
        let mut total = 0.0f32;
        for p in 0..parts {
            total += shared[p * sums + i];
        }
        let col = col0 + i % cols;
        if col < n {
            out[(i / cols) * n + col] = F::cast_from(total);
        }
        i += comptime!(lanes * planes);
    }
}

/// [`skinny_matmul`] through the tiled kernel ([`TILE_COLUMNS`] columns per
/// cube, each `x` vector reused for all of them): the same shapes and
/// result, another trade of loads against parallelism; `None` where
/// [`skinny_matmul`] declines. A GPU's cube is [`TILE_PLANES`] planes of 32
/// lanes; a runtime without plane sums (CubeCL's CPU runtime, two units a
/// cube) splits the reduced axis over its units, one lane each.
pub(crate) fn skinny_tiled(w: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    let (lanes, plane) = reduce_units(&cube(w)?, 32);
    if plane {
        return skinny_tiled_as(w, x, lanes, TILE_PLANES, true);
    }
    let units = cube(w)?.client.properties().hardware.max_units_per_cube;
    skinny_tiled_as(w, x, 1, TILE_PLANES.min(units).max(1), false)
}

/// The tiled kernel with cubes of `planes` planes of `lanes` units,
/// reduced by plane sums (`plane`) or through shared memory alone.
fn skinny_tiled_as(
    w: &Tensor<2>,
    x: &Tensor<2>,
    lanes: u32,
    planes: u32,
    plane: bool,
) -> Option<Tensor<2>> {
    let o = Operands::of(w, x)?;
    let cubes = o.n.div_ceil(TILE_COLUMNS) as u32;
    skinny_tiled_kernel::launch(
        &o.wc.client.clone(),
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_2d(lanes, planes),
        o.vec,
        o.xc.into_tensor_arg(),
        o.wc.into_tensor_arg(),
        o.out.clone().into_tensor_arg(),
        (o.k / o.vec) as u32,
        o.n as u32,
        o.m,
        TILE_COLUMNS,
        lanes as usize,
        planes as usize,
        plane,
        o.elem,
    );
    Some(tensor(o.out))
}

/// The kernel as a GPU launches it for 8 bf16 rows (vectors of 8, planes
/// of 32 units, 8 columns per cube), compiled to PTX for sm_`arch` with no
/// GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = skinny_matmul_kernel::SkinnyMatmulKernel::new(
        settings(CubeDim::new_2d(32, 8)),
        props,
        target,
        t(),
        t(),
        t(),
        (),
        (),
        8,
        8,
        32,
        true,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

/// The kernel over q, k and v in one launch as a GPU launches it for 8
/// bf16 rows (as [`ptx`]), compiled to PTX for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn many_ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = skinny_many_kernel::SkinnyManyKernel::new(
        settings(CubeDim::new_2d(32, 8)),
        props,
        target,
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
        8,
        8,
        32,
        true,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

/// The tiled kernel as a GPU launches it for 32 bf16 rows (vectors of 4,
/// planes of 32 units), compiled to PTX for sm_`arch` with no GPU.
#[cfg(all(test, feature = "cuda"))]
pub(super) fn tiled_ptx(arch: u32) -> Result<String, String> {
    use super::ptx::{bf16, offline, settings, tensor_arg as t};
    let (props, target) = offline();
    let kernel = skinny_tiled_kernel::SkinnyTiledKernel::new(
        settings(CubeDim::new_2d(32, TILE_PLANES)),
        props,
        target,
        t(),
        t(),
        t(),
        (),
        (),
        4,
        SKINNY_MAX_ROWS,
        TILE_COLUMNS,
        32,
        TILE_PLANES as usize,
        true,
        bf16()?,
    );
    super::ptx::ptx_of(kernel, arch)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use burn::tensor::DType;

    use super::*;
    use crate::kernels::test_support::{device, max_abs_diff, random};

    /// Against Burn's own `x · Wᵀ` on the same device: decode shapes (rows
    /// 1, 3 and the maximum), reduced axes with 8-, 4-, 2- and 1-wide vectors,
    /// an output count that is not a multiple of the columns per cube.
    #[test]
    fn skinny_matmul_equals_burn_matmul() {
        let dev = device();
        for (i, &(m, k, n, dtype, tol)) in [
            (1, 64, 50, DType::F32, 1e-5),
            (3, 48, 7, DType::F32, 1e-5),
            (SKINNY_MAX_ROWS, 36, 33, DType::F32, 1e-5),
            (2, 30, 5, DType::F32, 1e-5),
            (1, 27, 9, DType::F32, 1e-5),
            (1, 128, 40, DType::BF16, 0.05),
            (5, 64, 17, DType::BF16, 0.05),
        ]
        .iter()
        .enumerate()
        {
            let x = random([m, k], dtype, 10 + i as u64, &dev);
            let w = random([n, k], dtype, 100 + i as u64, &dev);
            let want = x
                .clone()
                .cast(DType::F32)
                .matmul(w.clone().cast(DType::F32).transpose());
            let got = skinny_matmul(&w, &x).expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.dtype(), dtype);
            let d = max_abs_diff(got, want);
            assert!(
                d <= tol,
                "m={m} k={k} n={n} {dtype:?}: differs by {d} > {tol}"
            );
        }
    }

    /// The tiled kernel against Burn's product at the same shapes as the
    /// skinny kernel's test (column counts that leave a last cube part
    /// empty: 50, 7, 33, 5, 9, 17), and an `x` whose rows are not all equal
    /// in size, so that a row or column mix-up shows.
    #[test]
    fn the_tiled_kernel_equals_burn_matmul() {
        let dev = device();
        for (i, &(m, k, n, dtype, tol)) in [
            (1, 64, 50, DType::F32, 1e-5),
            (3, 48, 7, DType::F32, 1e-5),
            (SKINNY_MAX_ROWS, 36, 33, DType::F32, 1e-5),
            (2, 30, 5, DType::F32, 1e-5),
            (1, 27, 9, DType::F32, 1e-5),
            (1, 128, 40, DType::BF16, 0.05),
            (9, 64, 17, DType::BF16, 0.05),
        ]
        .iter()
        .enumerate()
        {
            let scale: Vec<f32> = (0..m).map(|r| 1.0 + r as f32).collect();
            let scale = Tensor::<1>::from_data(
                burn::tensor::TensorData::new(scale, [m]),
                (&dev, DType::F32),
            );
            let x = (random([m, k], DType::F32, 50 + i as u64, &dev) * scale.unsqueeze_dim(1))
                .cast(dtype);
            let w = random([n, k], dtype, 150 + i as u64, &dev);
            let want = x
                .clone()
                .cast(DType::F32)
                .matmul(w.clone().cast(DType::F32).transpose());
            let tol = tol * m as f32;
            // As launched here (the reduced axis split over the cube's two
            // units), and with two lanes in one plane instead.
            for (lanes, planes) in [(0, 0), (2, 1)] {
                let got = if lanes == 0 {
                    skinny_tiled(&w, &x)
                } else {
                    skinny_tiled_as(&w, &x, lanes, planes, false)
                };
                let got = got.expect("runs on the CubeCL CPU runtime");
                assert_eq!(got.dtype(), dtype);
                assert_eq!(got.dims(), [m, n]);
                let d = max_abs_diff(got, want.clone());
                assert!(
                    d <= tol,
                    "m={m} k={k} n={n} {dtype:?} lanes {lanes}: differs by {d} > {tol}"
                );
            }
        }
        let x = random([SKINNY_MAX_ROWS + 1, 8], DType::F32, 1, &dev);
        let w = random([4, 8], DType::F32, 2, &dev);
        assert!(skinny_tiled(&w, &x).is_none(), "too many rows");
    }

    /// Two and three weights in one launch equal each weight's own launch
    /// exactly (the same columns, the same sums), at output counts that
    /// leave a cube part empty and rows 1, 3 and 5.
    #[test]
    fn one_launch_over_several_weights_equals_a_launch_each() {
        let dev = device();
        for (i, &(m, k, ns, dtype)) in [
            (1, 64, &[24, 8, 8][..], DType::F32),
            (3, 48, &[7, 5, 9][..], DType::F32),
            (5, 64, &[17, 33][..], DType::BF16),
        ]
        .iter()
        .enumerate()
        {
            let x = random([m, k], dtype, 70 + i as u64, &dev);
            let ws: Vec<Tensor<2>> = ns
                .iter()
                .enumerate()
                .map(|(j, &n)| random([n, k], dtype, 170 + 10 * i as u64 + j as u64, &dev))
                .collect();
            let refs: Vec<&Tensor<2>> = ws.iter().collect();
            let got = skinny_many(&refs, &x).expect("runs on the CubeCL CPU runtime");
            assert_eq!(got.len(), ns.len());
            for (j, (g, w)) in got.into_iter().zip(&ws).enumerate() {
                let alone = skinny_matmul(w, &x).expect("runs");
                assert_eq!(g.dims(), [m, ns[j]]);
                assert_eq!(
                    max_abs_diff(g, alone),
                    0.0,
                    "m={m} weight {j} of {}",
                    ns.len()
                );
            }
        }
        let x = random([2, 8], DType::F32, 1, &dev);
        let w = random([4, 8], DType::F32, 2, &dev);
        let other = random([4, 6], DType::F32, 3, &dev);
        assert!(skinny_many(&[&w], &x).is_none(), "one weight");
        assert!(skinny_many(&[&w, &w, &w, &w], &x).is_none(), "four weights");
        assert!(skinny_many(&[&w, &other], &x).is_none(), "another width");
    }

    #[test]
    fn skinny_matmul_declines_what_it_does_not_cover() {
        let dev = device();
        let x = random([SKINNY_MAX_ROWS + 1, 8], DType::F32, 1, &dev);
        let w = random([4, 8], DType::F32, 2, &dev);
        assert!(skinny_matmul(&w, &x).is_none(), "too many rows");
        let flex = burn::tensor::Device::flex();
        let x = random([1, 8], DType::F32, 1, &flex);
        let w = random([4, 8], DType::F32, 2, &flex);
        assert!(skinny_matmul(&w, &x).is_none(), "not a CubeCL device");
    }
}
