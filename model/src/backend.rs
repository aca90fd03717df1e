//! Where tensors live: the one place that names Burn backends.
//!
//! The CPU path is Burn's pure-Rust `flex` backend in f32 (bf16 is emulated
//! and slow there; spec burn.md). The `cuda` feature adds burn-cuda.

use burn::tensor::{DType, Device};

/// The CPU device (Burn `flex`).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// Compute dtype for a device: f32 on the CPU.
pub fn cpu_dtype() -> DType {
    DType::F32
}
