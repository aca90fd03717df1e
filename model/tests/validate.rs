//! `validate_weights`: the loader's checks without loading. The real 270M
//! GGUF and the sharded tiny safetensors fixture validate; a configuration
//! that disagrees with a tensor, a missing shard, and a truncated GGUF are
//! each refused with a message that names the file and the tensor.

mod support;

use std::path::Path;

use medgemma_model::load::LoadError;
use medgemma_model::validate::validate_weights;
use support::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn real_270m_gguf_validates_every_tensor() {
    let v = validate_weights(&gguf_270m()).unwrap();
    assert_eq!(v.format, "gguf");
    // embed + 18 layers × 13 tensors + final norm.
    assert_eq!(v.config.num_layers(), 18);
    assert_eq!(v.tensors, 1 + 18 * 13 + 1);
    assert_eq!(v.parameters, 268_098_176);
}

#[test]
fn sharded_safetensors_fixture_validates() {
    let v = validate_weights(&fixture("tiny_a")).unwrap();
    assert_eq!(v.format, "safetensors");
    assert_eq!(v.tensors, 1 + v.config.num_layers() * 13 + 1);
}

#[test]
fn a_config_that_disagrees_with_a_tensor_names_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny_a"), dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let text = if cfg.get("text_config").is_some() {
        &mut cfg["text_config"]
    } else {
        &mut cfg
    };
    let f = text["intermediate_size"].as_u64().unwrap();
    text["intermediate_size"] = (f + 8).into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = validate_weights(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Weights(_)), "{msg}");
    assert!(msg.contains("layers.0.mlp.gate_proj"), "{msg}");
}

#[test]
fn a_missing_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny_a"), dir.path());
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".safetensors"))
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let msg = validate_weights(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains(shard.file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn a_truncated_gguf_names_the_cut_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf_270m()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    let msg = validate_weights(&cut).unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("cut.gguf"), "{msg}");
}

#[test]
fn something_else_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "hello").unwrap();
    assert!(matches!(
        validate_weights(&f),
        Err(LoadError::Probe(
            medgemma_model::probe::ProbeError::NotAModel { .. }
        ))
    ));
}
