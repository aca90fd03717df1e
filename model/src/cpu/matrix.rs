//! [`CpuMatrix`]: a weight matrix in its storage format, its products with
//! f32 activations, and row lookups (the embedding).
//!
//! Owns: splitting a product across rayon's pool and choosing the kernel
//! path. Must never: copy the weights (they stay in the model file's map or
//! in the one buffer they were quantized into), or write outside the output
//! it is given.

use std::fmt;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use super::q8::{self, Activations};
use super::{CpuError, GEMV_MAX_ROWS, Isa, OutPtr, kernels};
use crate::quant::{self, GgmlType};

/// Bytes of weights the fused kernel streams per task at least: below this
/// the pool's hand-off costs more than the work (a 640 × 640 Q4_K matrix
/// is 230 KB: about seven tasks).
const MIN_TASK_BYTES: usize = 32 << 10;

/// f32 values of one dequantized panel on the prompt path (at most 256
/// rows): 2 MiB, a core's L2 on current x86 server parts, so the panel
/// stays in cache while the activations stream past it. Measured on one
/// AVX-512 core for a 512-token prompt (`cargo run --release --example
/// cpu_kernels -- --rows 512`): 5 to 8 % faster than 512 KiB panels.
const PANEL_VALUES: usize = 512 << 10;

/// Where a matrix's bytes live.
#[derive(Clone)]
pub enum WeightBytes {
    /// A range of a read-only map of the model file (shared by every
    /// matrix of that file; the pages are the page cache's).
    Mapped {
        /// The map.
        map: Arc<Mmap>,
        /// First byte.
        start: usize,
        /// Length.
        len: usize,
    },
    /// Bytes made at load time (quantized from bf16, or random weights).
    /// A `Vec` behind the `Arc`: moving a large buffer in costs nothing,
    /// where `Arc<[u8]>` would copy it (twice the memory while loading).
    Owned(Arc<Vec<u8>>),
}

impl WeightBytes {
    /// The bytes (empty if a mapped range were ever out of bounds, which
    /// [`WeightBytes::mapped`] rules out).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped { map, start, len } => start
                .checked_add(*len)
                .and_then(|end| map.get(*start..end))
                .unwrap_or(&[]),
            Self::Owned(b) => b.as_slice(),
        }
    }

    /// `len` bytes of `map` from `start`, or `None` past its end.
    pub fn mapped(map: &Arc<Mmap>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= map.len()).then(|| Self::Mapped {
            map: Arc::clone(map),
            start,
            len,
        })
    }

    /// Whether the bytes are the model file's pages rather than a copy.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped { .. })
    }
}

impl fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mapped { start, len, .. } => write!(f, "Mapped({start}..+{len})"),
            Self::Owned(b) => write!(f, "Owned({} bytes)", b.len()),
        }
    }
}

/// A `[rows, cols]` weight matrix (`[out, in]`, the checkpoint's layout) in
/// its storage format. Cloning shares the bytes.
#[derive(Debug, Clone)]
pub struct CpuMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: WeightBytes,
}

impl CpuMatrix {
    /// Wraps `bytes` as a `[rows, cols]` matrix of `ty` (`tensor` names it
    /// in errors); checks that the format has a kernel and that the length
    /// is exactly what the shape needs.
    pub fn new(
        tensor: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: WeightBytes,
    ) -> Result<Self, CpuError> {
        if !kernels::supported(ty) {
            return Err(CpuError::Unsupported {
                tensor: tensor.to_owned(),
                ty,
            });
        }
        let row_bytes = ty.byte_size(cols);
        let expected = row_bytes.and_then(|r| r.checked_mul(rows));
        let actual = bytes.as_slice().len();
        match (row_bytes, expected) {
            (Some(row_bytes), Some(expected)) if expected == actual => Ok(Self {
                ty,
                rows,
                cols,
                row_bytes,
                bytes,
            }),
            _ => Err(CpuError::Length {
                tensor: tensor.to_owned(),
                rows,
                cols,
                ty,
                expected: expected.unwrap_or(usize::MAX),
                actual,
            }),
        }
    }

    /// The storage format.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (as stored).
    pub fn byte_len(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// Where the bytes live.
    pub fn bytes(&self) -> &WeightBytes {
        &self.bytes
    }

    /// `out = x · Wᵀ` for `x: [n, cols]`, `out: [n, rows]` (row-major
    /// f32), with the widest instruction set this CPU runs.
    ///
    /// # Panics
    ///
    /// If `x` is not whole rows of `cols` values or `out` has not `rows`
    /// values per row of `x`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        self.matmul_with(Isa::best(), x, out);
    }

    /// [`CpuMatrix::matmul`] through the kernels of `isa` (tests and
    /// benchmarks force each path); an instruction set this CPU lacks runs
    /// the portable kernels instead.
    ///
    /// # Panics
    ///
    /// As [`CpuMatrix::matmul`].
    pub fn matmul_with(&self, isa: Isa, x: &[f32], out: &mut [f32]) {
        self.matmul_mode(isa, q8::activations(), x, out);
    }

    /// Whether a product of `n` activation rows with this matrix through
    /// `isa` quantizes the activations under `mode` (a block format, an
    /// instruction set with an integer kernel, and a mode that asks).
    pub fn quantizes(&self, isa: Isa, mode: Activations, n: usize) -> bool {
        mode.quantizes(n)
            && q8::supported(self.ty)
            && self.cols.is_multiple_of(32)
            && Isa::detected().contains(&isa)
            && q8::has_kernel(isa)
    }

    /// [`CpuMatrix::matmul_with`] with the activations treated as `mode`
    /// says rather than as the process is set
    /// ([`super::set_activations`]): tests and benchmarks force each path.
    /// Where `mode` quantizes but `isa` has no integer kernel (no VNNI), the
    /// f32 path runs.
    ///
    /// # Panics
    ///
    /// As [`CpuMatrix::matmul`].
    pub fn matmul_mode(&self, isa: Isa, mode: Activations, x: &[f32], out: &mut [f32]) {
        let isa = if Isa::detected().contains(&isa) {
            isa
        } else {
            Isa::Portable
        };
        let k = self.cols;
        let n = x
            .len()
            .checked_div(k)
            .unwrap_or_else(|| out.len().checked_div(self.rows).unwrap_or(0));
        assert_eq!(x.len(), n * k, "activations are whole rows of {k}");
        assert_eq!(
            out.len(),
            n * self.rows,
            "one output row per activation row"
        );
        if n == 0 || self.rows == 0 {
            return;
        }
        if self.quantizes(isa, mode, n) {
            let w = self.bytes.as_slice();
            q8::product(isa, self.ty, w, self.rows, self.row_bytes, k, x, n, out);
        } else if n <= GEMV_MAX_ROWS {
            self.gemv(isa, x, n, out);
        } else {
            self.panels(isa, x, n, out);
        }
    }

    /// `outs[i] = x · Wᵢᵀ` for matrices that share their input (a layer's
    /// q/k/v projections, its gate and up projections), in one hand-off to
    /// the pool where each alone would be one: a decode step of the 270M
    /// made 127 hand-offs, and waking and parking the pool's threads between
    /// them was an eighth of its time (`perf record` of `cpu_bench`). Each
    /// output equals [`CpuMatrix::matmul`]'s bit for bit (the same kernel
    /// computes every output value, with the same task boundaries).
    ///
    /// # Panics
    ///
    /// If the matrices differ in width, `mats` and `outs` in length, or an
    /// output is not one row of its matrix per activation row.
    pub fn matmul_many(mats: &[&CpuMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
        Self::matmul_many_mode(Isa::best(), q8::activations(), mats, x, outs);
    }

    /// [`CpuMatrix::matmul_many`] through `isa` with the activations as
    /// `mode` says (tests force each path).
    ///
    /// # Panics
    ///
    /// As [`CpuMatrix::matmul_many`].
    pub fn matmul_many_mode(
        isa: Isa,
        mode: Activations,
        mats: &[&CpuMatrix],
        x: &[f32],
        outs: &mut [&mut [f32]],
    ) {
        assert_eq!(mats.len(), outs.len(), "one output per matrix");
        let Some(k) = mats.first().map(|m| m.cols) else {
            return;
        };
        assert!(mats.iter().all(|m| m.cols == k), "matrices of one width");
        let isa = if Isa::detected().contains(&isa) {
            isa
        } else {
            Isa::Portable
        };
        let n = x.len().checked_div(k).unwrap_or(0);
        let fused = (1..=GEMV_MAX_ROWS).contains(&n)
            && x.len() == n * k
            && mats
                .iter()
                .zip(outs.iter())
                .all(|(m, o)| o.len() == n * m.rows && m.rows > 0 && !m.quantizes(isa, mode, n));
        if !fused {
            for (m, o) in mats.iter().zip(outs.iter_mut()) {
                m.matmul_mode(isa, mode, x, o);
            }
            return;
        }
        let mut tasks = Vec::new();
        for (m, o) in mats.iter().zip(outs.iter_mut()) {
            m.gemv_tasks(n, o, &mut tasks);
        }
        run_gemv_tasks(isa, x, k, tasks);
    }

    /// The fused path: tasks of consecutive weight rows, each streaming its
    /// rows once for all `n` activation rows.
    fn gemv(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        let mut tasks = Vec::new();
        self.gemv_tasks(n, out, &mut tasks);
        run_gemv_tasks(isa, x, self.cols, tasks);
    }

    /// Splits `out = x · Wᵀ` (`n` activation rows) into tasks of
    /// consecutive weight rows, appended to `tasks`: about four per thread,
    /// none under [`MIN_TASK_BYTES`] of weights.
    fn gemv_tasks<'a>(&'a self, n: usize, out: &'a mut [f32], tasks: &mut Vec<GemvTask<'a>>) {
        let threads = rayon::current_num_threads().max(1);
        let per_task = self
            .rows
            .div_ceil(4 * threads)
            .max(MIN_TASK_BYTES.div_ceil(self.row_bytes.max(1)))
            .min(self.rows)
            .max(1);
        // Each task gets its column range of every output row.
        let first = tasks.len();
        for w in self.bytes.as_slice().chunks(per_task * self.row_bytes) {
            tasks.push(GemvTask {
                ty: self.ty,
                row_bytes: self.row_bytes,
                w,
                out: Vec::with_capacity(n),
            });
        }
        for row in out.chunks_exact_mut(self.rows) {
            for (t, piece) in row.chunks_mut(per_task).enumerate() {
                tasks[first + t].out.push(piece);
            }
        }
    }

    /// The prompt path: each task dequantizes panels of weight rows into an
    /// f32 buffer and multiplies all `n` activation rows with it (`gemm`).
    fn panels(&self, isa: Isa, x: &[f32], n: usize, out: &mut [f32]) {
        let k = self.cols;
        // At least one panel per thread, so a small matrix still splits.
        let threads = rayon::current_num_threads().max(1);
        let panel_rows = (PANEL_VALUES / k.max(1))
            .clamp(16, 256)
            .min(self.rows.div_ceil(threads))
            .max(1);
        let w = self.bytes.as_slice();
        let (ty, rows, row_bytes) = (self.ty, self.rows, self.row_bytes);
        let dst = OutPtr(out.as_mut_ptr());
        w.par_chunks(panel_rows * row_bytes)
            .enumerate()
            .for_each_init(Vec::new, |panel, (p, w)| {
                let first = p * panel_rows;
                let m = w.len() / row_bytes;
                panel.resize(m * k, 0.0);
                dequant_rows(isa, ty, w, row_bytes, k, panel);
                // SAFETY: `gemm` reads `n × k` activations at `x` (row
                // stride k; `x.len() == n·k` was checked) and `m × k` panel
                // values (`panel.len() == m·k`, read transposed: stride k
                // between its columns), and writes the `n × m` block of
                // `out` at columns `first..first + m` with row stride
                // `rows` (`out.len() == n·rows`, `first + m <= rows`).
                // Panels cover disjoint column ranges, so no two tasks
                // write the same element, and `out` outlives the loop.
                unsafe {
                    gemm::gemm(
                        n,
                        m,
                        k,
                        dst.at(first),
                        1,
                        rows as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        panel.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
    }

    /// Dequantizes rows `ids` into `out` (`ids.len()` rows of `cols`): the
    /// embedding lookup.
    ///
    /// # Panics
    ///
    /// If an id is not below [`CpuMatrix::rows`] (as Burn's `select` does),
    /// or `out` has the wrong length.
    pub fn dequantize_rows(&self, ids: &[u32], out: &mut [f32]) {
        assert_eq!(out.len(), ids.len() * self.cols, "one output row per id");
        let w = self.bytes.as_slice();
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
            let id = id as usize;
            assert!(id < self.rows, "row {id} of a {}-row matrix", self.rows);
            let row = &w[id * self.row_bytes..(id + 1) * self.row_bytes];
            // The length was checked in `new`, and the type has a kernel,
            // so it dequantizes.
            let _ = quant::dequantize_into(self.ty, row, o);
        }
    }
}

/// Consecutive weight rows of one matrix and the output values they make
/// (one piece per activation row).
struct GemvTask<'a> {
    ty: GgmlType,
    row_bytes: usize,
    w: &'a [u8],
    out: Vec<&'a mut [f32]>,
}

/// Runs `tasks` on rayon's pool (on this thread when there is one).
fn run_gemv_tasks(isa: Isa, x: &[f32], k: usize, mut tasks: Vec<GemvTask<'_>>) {
    if let [one] = tasks.as_mut_slice() {
        // Too small to split: no hand-off to the pool at all.
        gemv(isa, one.ty, one.w, one.row_bytes, x, k, &mut one.out);
        return;
    }
    tasks.into_par_iter().for_each(|mut t| {
        gemv(isa, t.ty, t.w, t.row_bytes, x, k, &mut t.out);
    });
}

/// [`kernels`]' `gemv` for `isa` (which this CPU runs: `matmul_with` checked).
fn gemv(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    k: usize,
    out: &mut [&mut [f32]],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is in `Isa::available()`, which found AVX-512
        // F/BW/VL, AVX2, FMA and F16C.
        Isa::Avx512 => unsafe { super::x86::gemv_avx512(ty, w, row_bytes, x, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is in `Isa::available()`, which found AVX2, FMA
        // and F16C.
        Isa::Avx2 => unsafe { super::x86::gemv_avx2(ty, w, row_bytes, x, k, out) },
        _ => kernels::portable::gemv(ty, w, row_bytes, x, k, out),
    };
}

/// [`kernels`]' `dequant_rows` for `isa` (which this CPU runs).
fn dequant_rows(isa: Isa, ty: GgmlType, w: &[u8], row_bytes: usize, k: usize, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gemv`.
        Isa::Avx512 => unsafe { super::x86::dequant_rows_avx512(ty, w, row_bytes, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gemv`.
        Isa::Avx2 => unsafe { super::x86::dequant_rows_avx2(ty, w, row_bytes, k, out) },
        _ => kernels::portable::dequant_rows(ty, w, row_bytes, k, out),
    };
}
