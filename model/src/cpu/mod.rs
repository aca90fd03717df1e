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
//! then multiply" up to the order of the sums. Activations are not
//! quantized unless the configuration asks (`engine.cpu_activations`,
//! [`Activations`], `q8.rs`): llama.cpp quantizes them to 8 bits, and on the 270M its
//! last-position logits differ from the f32 reference by 0.09 to 0.29 and
//! its greedy answers leave the reference after 11 to 25 tokens on four of
//! five prompts (`tests/fixtures/gemma3_270m_reference.json`), where these
//! products stay within 2e-3 and match all 32 tokens (`tests/real_270m.rs`).
//!
//! Two shapes of product: up to [`GEMV_MAX_ROWS`] activation rows (decode,
//! decode batches, the LM head) stream every weight row once through a
//! fused dequantize-and-dot kernel, prefetching ahead; more rows (prompts)
//! dequantize a panel of weight rows into an f32 buffer that stays in cache
//! and multiply it with the `gemm` crate's f32 kernels (Burn's CPU matmul,
//! with its AVX-512 kernels enabled). Rows are split across rayon's global
//! pool, the one Burn uses.
//!
//! SIMD is chosen at run time ([`Isa::best`]). On x86-64 the formats GGUF
//! files mostly use (`Q8_0`, `Q4_0`, `Q5_0`, `Q4_K`, `Q6_K`, `BF16`) have
//! hand-written kernels (`x86.rs`), written once over sixteen lanes and
//! built for AVX-512 and for AVX2 with FMA; every format also has a generic
//! kernel in plain Rust that the compiler vectorizes, built for AVX-512,
//! AVX2 and the SSE2 baseline, and on aarch64 for NEON (always present
//! there). Tests force each path ([`CpuMatrix::matmul_with`],
//! [`CpuMatrix::matmul_mode`]). With 8-bit activations (`q8_prompt`, `q8`)
//! the block formats multiply through `vpdpbusd` (AVX-512 VNNI, AVX-VNNI;
//! a portable integer kernel elsewhere on x86-64, the f32 path on NEON);
//! AMX is not used.
//!
//! Why not a library: candle's `k_quants` chooses SIMD at compile time
//! (`cfg(target_feature)`), so a portable build runs its scalar code, and it
//! too quantizes activations to 8 bits; ggml (llama.cpp) needs a C/C++ build
//! and brings its own thread pool and graph; Burn 0.22's own quantized
//! tensors hold symmetric 8/4/2-bit blocks only (no Q4_K/Q6_K minima or
//! super-block scales) and dequantize before multiplying.
//!
//! Owns: the storage of CPU weight matrices and their products. Must never:
//! open files (bytes arrive from `weights.rs`, mapped or owned), touch a GPU,
//! or see text.

mod activation;
mod attention;
mod kernels;
mod matrix;
mod q8;
mod random;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activation::geglu;
pub(crate) use attention::decode_attention_flex;
pub use attention::{BLOCK_ROWS, KvRows, decode_attention, decode_attention_with};
pub use matrix::{CpuMatrix, WeightBytes};
pub use q8::{Activations, activations, set_activations};

/// Activation rows up to which a product streams the weights through the
/// fused kernel; above it the weights are dequantized panel by panel and
/// multiplied as f32. Measured on one AVX-512 core (`cargo run --release
/// --example cpu_kernels -- --rows 8,9,16,32`, 270M shapes): the two cost
/// about the same at 16 rows (Q5_0 2048 × 640: 0.98 ms fused, 0.97 ms in
/// panels); at 32 panels win by a third.
pub const GEMV_MAX_ROWS: usize = 16;

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

/// The output pointer shared by a product's tasks (the prompt path's
/// `matrix::panels` and `q8::product`): every user writes disjoint elements
/// from its tasks, in bounds of the output it was made from.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks that share it write disjoint elements (see `matrix::panels`
// and `q8::product`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; it is only read (copied) across threads.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `offset` elements on (in bounds: see the users above).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
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

    /// [`Isa::available`], detected once: for the kernels' dispatch, which
    /// runs per product and per attention block.
    pub fn detected() -> &'static [Isa] {
        static DETECTED: std::sync::OnceLock<Vec<Isa>> = std::sync::OnceLock::new();
        DETECTED.get_or_init(Self::available)
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
