//! Where tensors live: the one place that names Burn backends.
//!
//! The CPU path is Burn's pure-Rust `flex` backend in f32 (bf16 is emulated
//! and slow there; spec burn.md). The `cuda` feature adds burn-cuda, which
//! computes in bf16 (norms, softmax and RoPE angles stay f32 in the model
//! code). Whether a GPU is usable, and which, is decided by the caller
//! (the daemon's `gpu` module) before [`cuda_device`] is ever called:
//! touching a CUDA device without a driver panics on a background thread.

use burn::tensor::{DType, Device};

/// The CPU device (Burn `flex`).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// Compute dtype for a device: f32 on the CPU.
pub fn cpu_dtype() -> DType {
    DType::F32
}

/// Whether this build has the CUDA backend (the `cuda` feature).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Compute dtype on CUDA: bf16 (the checkpoint's own dtype; fp16 overflows
/// on Gemma 3, spec model.md §2.9).
pub fn cuda_dtype() -> DType {
    DType::BF16
}

/// The CUDA device with this ordinal. Only call it once the driver is known
/// to load (`medgemma_sandbox::probe_cuda_driver`). Ordinals follow
/// `CUDA_DEVICE_ORDER`; the daemon sets `PCI_BUS_ID` so that they match
/// `nvidia-smi` and NVML.
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> Device {
    Device::cuda(ordinal)
}

/// Points cubecl's cache root (autotune results and, with its `persistence`
/// feature, compiled kernels: `<dir>/<environment>.db`) at `dir` instead of
/// the default search from the working directory, which under the sandbox
/// is not writable. Must run before the first CUDA tensor; returns `false`
/// when cubecl's configuration was already fixed (then nothing changed).
#[cfg(feature = "cuda")]
pub fn set_cubecl_cache_dir(dir: &std::path::Path) -> bool {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.environment.path = CacheConfig::Directory(dir.to_path_buf());
    CubeClRuntimeConfig::try_set(config)
}
