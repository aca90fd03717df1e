//! Shared by the model's integration tests: where the real test assets live.
//!
//! `scripts/fetch-assets.sh` fills `$MEDGEMMA_ASSETS` (default
//! `$HOME/.cache/medgemma-assets`); a missing asset fails the test with the
//! command that fetches it, never a silent skip.

use std::path::PathBuf;

/// Path of an asset relative to the assets directory, checked to exist.
pub fn asset(rel: &str) -> PathBuf {
    let dir = std::env::var_os("MEDGEMMA_ASSETS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medgemma-assets"))
        })
        .expect("set MEDGEMMA_ASSETS or HOME");
    let path = dir.join(rel);
    assert!(
        path.is_file(),
        "missing test asset {}: run scripts/fetch-assets.sh (or set MEDGEMMA_ASSETS to the directory it filled)",
        path.display()
    );
    path
}

/// The real Gemma 3 270M GGUF.
#[allow(dead_code)] // not every test file uses every asset
pub fn gguf_270m() -> PathBuf {
    asset("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
}

/// The real Gemma 3 tokenizer.json.
#[allow(dead_code)]
pub fn tokenizer_json() -> PathBuf {
    asset("tokenizer/tokenizer.json")
}

/// The committed `tests/fixtures/` folder, or `$MEDGEMMA_FIXTURES` (test
/// binaries built on one machine and run on another, `scripts/gpu-check.sh`).
#[allow(dead_code)]
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("MEDGEMMA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
        })
}

/// A committed fixture directory under `tests/fixtures/`.
#[allow(dead_code)]
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A fixture's `expected.json` (reference outputs, see tests/fixtures/README.md).
#[allow(dead_code)]
pub fn expected(name: &str) -> serde_json::Value {
    let p = fixture(name).join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
#[allow(dead_code)]
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of floats.
#[allow(dead_code)]
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Where the model tests run. The CPU by default; `MEDGEMMA_TEST_DEVICE=cuda`
/// runs the fidelity tests (reference_tiny, real_270m) on GPU 0, in a build
/// with the `cuda` feature (`cargo test --release --workspace --features
/// medgemmad/cuda`; `scripts/gpu-check.sh` does this). Without a driver the
/// CUDA runtime panics on first use, which is the right outcome for a run
/// that asked for the GPU.
#[allow(dead_code)]
pub fn test_device() -> medgemma_model::burn::tensor::Device {
    if on_cuda() {
        cuda_device()
    } else {
        medgemma_model::backend::cpu_device()
    }
}

/// Whether `MEDGEMMA_TEST_DEVICE` asks for the GPU (anything but `cpu`,
/// `cuda` or unset is a mistake and fails loudly).
#[allow(dead_code)]
pub fn on_cuda() -> bool {
    match std::env::var("MEDGEMMA_TEST_DEVICE").as_deref() {
        Ok("cuda") => true,
        Ok("cpu") | Ok("") | Err(_) => false,
        Ok(other) => panic!("MEDGEMMA_TEST_DEVICE={other:?}: use \"cpu\" or \"cuda\""),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> medgemma_model::burn::tensor::Device {
    medgemma_model::backend::cuda_device(0)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> medgemma_model::burn::tensor::Device {
    panic!(
        "MEDGEMMA_TEST_DEVICE=cuda needs a build with the cuda feature: cargo test --release --workspace --features medgemmad/cuda"
    )
}

/// f32 tolerance on the GPU. f32 products there run in f32 (no TF32: the
/// `kernels` module routes them around cubek's TF32 promotion), but sum in
/// another order than the CPU's and libdevice's exp/tanh differ in the last
/// bits, so f32 logits are held to 1e-3 on CUDA (1e-4 on the CPU). TF32 moved
/// them by 3.3e-3 to 1.1e-2 (an H200), so it would fail here; so does every
/// structural bug: those move the tiny fixtures' logits by 0.4 to 6.7
/// (tests/fixtures/README.md; `scripts/gpu-check.sh` runs a build whose
/// sliding window is one key wider and expects it to fail).
#[allow(dead_code)]
pub const CUDA_F32_TOL: f32 = 1e-3;

/// `cpu_tol` on the CPU, at least [`CUDA_F32_TOL`] on CUDA.
#[allow(dead_code)]
pub fn f32_tol(cpu_tol: f32) -> f32 {
    if on_cuda() {
        cpu_tol.max(CUDA_F32_TOL)
    } else {
        cpu_tol
    }
}

/// The compute dtype of the 270M test: f32 unless `MEDGEMMA_TEST_DTYPE=bf16`
/// (the GPU's serving dtype; greedy tokens may then diverge from the f32
/// reference late in a continuation, which `scripts/gpu-check.sh` reports
/// without failing the check).
#[allow(dead_code)]
pub fn test_dtype() -> medgemma_model::burn::tensor::DType {
    match std::env::var("MEDGEMMA_TEST_DTYPE").as_deref() {
        Ok("bf16") => medgemma_model::burn::tensor::DType::BF16,
        Ok("f32") | Ok("") | Err(_) => medgemma_model::burn::tensor::DType::F32,
        Ok(other) => panic!("MEDGEMMA_TEST_DTYPE={other:?}: use \"f32\" or \"bf16\""),
    }
}
