//! Weight matrices kept as stored, multiplied on the CPU at memory speed.
//!
//! Burn's CPU backend (`flex`) multiplies f32 tensors only, so a GGUF model
//! dequantized to f32 took four to seven times its file size in RAM, and
//! every decode step read all of it. Here a [`CpuMatrix`] keeps a weight
//! matrix in its storage format (ggml blocks `Q4_0`, `Q4_1`, `Q5_0`,
//! `Q5_1`, `Q8_0`, `Q4_K`, `Q5_K`, `Q6_K`, or `BF16`, `F16`, `F32`),
//! usually straight in the model file's memory map, and its products
//! dequantize each block in registers and multiply it with f32 activations:
//! the weights are read once per step, in their small form.
//!
//! The arithmetic is the reference's: a block is dequantized exactly as
//! [`crate::quant::dequantize`] does (the same functions, inlined), and the
//! products are f32 multiply-adds, so the result equals "dequantize to f32,
//! then multiply" up to the order of the sums. Activations are not quantized
//! (llama.cpp quantizes them to 8 bits, which moves the 270M's logits by
//! about 0.1 and changes greedy answers after a few dozen tokens).
//!
//! Two shapes of product: up to [`GEMV_MAX_ROWS`] activation rows (decode,
//! decode batches, the LM head) stream every weight row once through a
//! fused dequantize-and-dot kernel; more rows (prompts) dequantize a panel
//! of weight rows into an f32 buffer that stays in cache and multiply it
//! with the `gemm` crate's f32 kernels (the ones Burn's CPU backend uses).
//! Rows are split across rayon's global pool, the one Burn uses.
//!
//! SIMD is chosen at run time ([`Isa::best`]): the kernels are written once
//! as plain Rust that the compiler vectorizes, and compiled three times on
//! x86-64 (AVX-512, AVX2 with FMA, and the SSE2 baseline) and once on
//! aarch64 (NEON, always present there). Tests force each path
//! ([`CpuMatrix::matmul_with`]).
//!
//! Owns: the storage of CPU weight matrices and their products. Must never:
//! open files (bytes arrive from `weights.rs`, mapped or owned), touch a GPU,
//! or see text.

mod kernels;
mod matrix;
mod random;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use matrix::{CpuMatrix, WeightBytes};

/// Activation rows up to which a product streams the weights through the
/// fused kernel; above it the weights are dequantized panel by panel and
/// multiplied as f32 (`cargo run --release --example cpu_kernels` measures
/// both sides of the switch).
pub const GEMV_MAX_ROWS: usize = 8;

/// Why a CPU matrix could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The storage format has no CPU kernel.
    #[error(
        "tensor `{tensor}` is stored as {ty}, which the CPU kernels cannot multiply; \
         use F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K"
    )]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: crate::quant::GgmlType,
    },
    /// The byte length does not match the shape and format.
    #[error(
        "tensor `{tensor}` ({rows} × {cols} {ty}) needs {expected} bytes but has {actual}; \
         the model file is corrupt"
    )]
    Length {
        /// The tensor.
        tensor: String,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Its type.
        ty: crate::quant::GgmlType,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// A SIMD instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust for the target's baseline (SSE2 on x86-64).
    Portable,
    /// x86-64 AVX2 with FMA (Haswell and later, Zen).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with FMA (Skylake-SP and later, Zen 4).
    Avx512,
    /// aarch64 Advanced SIMD (every arm64 CPU).
    Neon,
}

impl Isa {
    /// The widest instruction set this CPU runs, detected once.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Self::available()
                .into_iter()
                .last()
                .unwrap_or(Isa::Portable)
        })
    }

    /// Every instruction set this CPU runs, narrowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    v.push(Isa::Avx512);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
            }
        }
        v
    }

    /// A short name for logs and benchmarks ("avx512").
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}
