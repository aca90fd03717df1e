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

/// A committed fixture directory under `tests/fixtures/`.
#[allow(dead_code)]
pub fn fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
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
