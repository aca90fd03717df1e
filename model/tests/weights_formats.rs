//! Weight formats and weight errors, on real files written to temporary
//! directories from the committed tiny fixtures (`tests/fixtures/tiny_*`):
//! f16 on disk, the three text-name prefixes, vision/projector tensors that
//! must be skipped, a stored `lm_head.weight`, and every way a checkpoint can
//! be broken (each a clear `Err` naming the file and the tensor, never a
//! panic, never a Debug dump).

mod support;

use std::path::Path;

use half::f16;
use medgemma_model::backend::cpu_device;
use medgemma_model::burn::tensor::DType;
use medgemma_model::gemma3::Logits;
use medgemma_model::load::load_model;
use medgemma_model::sampling::argmax;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use support::{expected, fixture, floats, ids};
use tempfile::TempDir;

/// f16 weights upcast to f32 compute, against the f32 reference. Measured:
/// max |Δlogit| = 6.3e-3 at the last position of tiny_b (logits span
/// -3.56..3.35; f16 keeps 11 bits of mantissa, so each weight moves by up to
/// 2^-12 relative and the errors add up over 5 layers). The bound is 4x that;
/// a wrong conversion (bf16 bits read as f16, swapped bytes) moves logits by
/// whole units. The top-1/top-2 margin there is 0.135, so argmax must agree.
const F16_TOL: f32 = 2.5e-2;

/// One tensor as it lies on disk.
#[derive(Clone, Debug)]
struct T {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl T {
    fn f32(name: &str, shape: &[usize], seed: u32) -> Self {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .flat_map(|i| (((i as u32 ^ seed) % 17) as f32 * 0.01).to_le_bytes())
            .collect();
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data,
        }
    }
}

fn read_st(path: &Path) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<T> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| T {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_st(path: &Path, tensors: &[T]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// tiny_b's tensors (`model.*`, F32, one file).
fn tiny_b() -> Vec<T> {
    read_st(&fixture("tiny_b").join("model.safetensors"))
}

/// A model directory holding tiny_b's config.json and `tensors` as model.safetensors.
fn model_dir(tensors: &[T]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny_b").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    write_st(&dir.path().join("model.safetensors"), tensors);
    dir
}

fn renamed(tensors: &[T], from: &str, to: &str) -> Vec<T> {
    tensors
        .iter()
        .map(|t| T {
            name: format!("{to}{}", t.name.strip_prefix(from).unwrap()),
            ..t.clone()
        })
        .collect()
}

/// Last-position logits of tiny_b's prompt through the model at `path` (f32 compute).
fn last_logits(path: &Path) -> Vec<f32> {
    let m = load_model(path, None, &cpu_device(), DType::F32)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let prompt = ids(&expected("tiny_b")["prompt_ids"]);
    let mut cache = m.model.new_cache();
    m.model
        .forward(&prompt, &mut cache, Logits::Last)
        .into_data()
        .try_into_vec()
        .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn original() -> Vec<u32> {
    bits(&last_logits(&fixture("tiny_b")))
}

/// The load error for `path`, as the user sees it (Display), with the
/// checks every weight error must pass: it names `names` (file, tensor),
/// carries a hint, and is not a Debug dump.
fn load_err(path: &Path, names: &[&str], hints: &[&str]) -> String {
    let err = match load_model(path, None, &cpu_device(), DType::F32) {
        Ok(_) => panic!("{} loaded but should have failed", path.display()),
        Err(e) => e.to_string(),
    };
    for n in names {
        assert!(err.contains(n), "error does not name `{n}`: {err}");
    }
    assert!(
        hints.iter().any(|h| err.contains(h)),
        "error has none of the hints {hints:?}: {err}"
    );
    for dump in ["Os {", "kind:", " { path", "PathBuf", "Some(", "\\\""] {
        assert!(!err.contains(dump), "error looks like a Debug dump: {err}");
    }
    eprintln!("{err}");
    err
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// Formats that must load.

#[test]
fn f16_weights_match_the_f32_reference_within_tolerance() {
    let tensors: Vec<T> = tiny_b()
        .into_iter()
        .map(|t| {
            assert_eq!(t.dtype, Dtype::F32);
            let data = t
                .data
                .chunks_exact(4)
                .flat_map(|c| {
                    f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            T {
                dtype: Dtype::F16,
                data,
                ..t
            }
        })
        .collect();
    let dir = model_dir(&tensors);
    let got = last_logits(dir.path());
    let want = floats(&expected("tiny_b")["last_logits"]);
    assert_eq!(got.len(), want.len());
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("tiny_b as f16: last-position max |Δlogit| = {d:.3e} (bound {F16_TOL})");
    assert!(d <= F16_TOL, "f16 logits differ by {d} > {F16_TOL}");
    assert_eq!(argmax(&got), argmax(&want), "f16 argmax differs");
}

#[test]
fn all_text_prefixes_give_bit_identical_logits() {
    let want = original();
    for prefix in ["model.language_model.", "language_model.model."] {
        let dir = model_dir(&renamed(&tiny_b(), "model.", prefix));
        assert_eq!(
            bits(&last_logits(dir.path())),
            want,
            "logits differ with `{prefix}*` names"
        );
    }
}

#[test]
fn vision_and_projector_tensors_are_skipped() {
    let want = original();
    let vision = [
        // transformers 4.5x
        T::f32(
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            &[4, 3, 2, 2],
            1,
        ),
        T::f32(
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias",
            &[8],
            2,
        ),
        T::f32(
            "multi_modal_projector.mm_input_projection_weight",
            &[4, 48],
            3,
        ),
        T::f32("multi_modal_projector.mm_soft_emb_norm.weight", &[4], 4),
        // transformers 5.x: no `vision_model.` segment
        T::f32(
            "vision_tower.embeddings.patch_embedding.weight",
            &[4, 3, 2, 2],
            5,
        ),
        T::f32("vision_tower.post_layernorm.weight", &[4], 6),
    ];
    // With `model.*` text names (tiny_b) and with the multimodal layout.
    for (from, to) in [("model.", "model."), ("model.", "language_model.model.")] {
        let mut tensors = renamed(&tiny_b(), from, to);
        tensors.extend(vision.iter().cloned());
        let dir = model_dir(&tensors);
        assert_eq!(
            bits(&last_logits(dir.path())),
            want,
            "logits differ with vision tensors beside `{to}*`"
        );
    }
    // In-memory 5.x layout: `model.vision_tower.*`, `model.multi_modal_projector.*`.
    let mut tensors = renamed(&tiny_b(), "model.", "model.language_model.");
    for t in &vision {
        tensors.push(T {
            name: format!("model.{}", t.name),
            ..t.clone()
        });
    }
    let dir = model_dir(&tensors);
    assert_eq!(bits(&last_logits(dir.path())), want);
}

#[test]
fn stored_lm_head_is_accepted() {
    let mut tensors = tiny_b();
    let embed = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap()
        .clone();
    tensors.push(T {
        name: "lm_head.weight".into(),
        ..embed
    });
    let dir = model_dir(&tensors);
    assert_eq!(bits(&last_logits(dir.path())), original());
}

// ---------------------------------------------------------------------------
// Broken checkpoints: each a clear error naming file and tensor.

#[test]
fn missing_tensor_is_named() {
    let mut tensors = tiny_b();
    tensors.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight");
    let dir = model_dir(&tensors);
    load_err(
        dir.path(),
        &[&show(dir.path()), "layers.1.mlp.up_proj.weight"],
        &["incomplete", "is not"],
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let mut tensors = tiny_b();
    tensors.push(T::f32("model.layers.0.mlp.extra.weight", &[4, 4], 7));
    let dir = model_dir(&tensors);
    load_err(
        dir.path(),
        &[&show(dir.path()), "layers.0.mlp.extra.weight"],
        &["is not", "unexpected"],
    );
    // A name under no known prefix at all.
    let mut tensors = tiny_b();
    tensors.push(T::f32("text_model.layers.0.weight", &[4], 8));
    let dir = model_dir(&tensors);
    load_err(
        dir.path(),
        &[&show(dir.path()), "text_model.layers.0.weight"],
        &["is not", "unexpected"],
    );
}

#[test]
fn mis_shaped_tensor_names_file_tensor_and_shapes() {
    let name = "model.layers.2.self_attn.q_proj.weight";
    let tensors: Vec<T> = tiny_b()
        .into_iter()
        .map(|t| {
            if t.name != name {
                return t;
            }
            // [32, 48] → its transpose [48, 32].
            let (r, c) = (t.shape[0], t.shape[1]);
            assert_ne!(r, c);
            let v: Vec<[u8; 4]> = t
                .data
                .chunks_exact(4)
                .map(|x| [x[0], x[1], x[2], x[3]])
                .collect();
            let data = (0..c)
                .flat_map(|j| (0..r).map(move |i| (i, j)))
                .flat_map(|(i, j)| v[i * c + j])
                .collect();
            T {
                shape: vec![c, r],
                data,
                ..t
            }
        })
        .collect();
    let dir = model_dir(&tensors);
    let file = dir.path().join("model.safetensors");
    load_err(
        dir.path(),
        &[&show(&file), name, "[48, 32]", "[32, 48]"],
        &["do not belong together"],
    );
}

/// The tensor of `file` (bytes as written) whose data holds byte `at` of the data section.
fn tensor_at(full: &[u8], header: usize, at: usize) -> String {
    let v: Value = serde_json::from_slice(&full[8..header]).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .find(|(_, t)| {
            let o = ids(&t["data_offsets"]);
            (o[0] as usize) <= at && at < o[1] as usize
        })
        .map(|(k, _)| k.clone())
        .unwrap()
}

#[test]
fn truncated_file_is_reported_never_a_panic() {
    let dir = model_dir(&tiny_b());
    let file = dir.path().join("model.safetensors");
    let full = std::fs::read(&file).unwrap();
    let header = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let cuts = [
        full.len() - 1,
        full.len() - 4,
        full.len() / 2,
        header + 57_605,
        header + 1000,
        header + 1,
        header,
        header - 10, // inside the JSON header
        4,           // inside the length prefix
        0,           // empty file
    ];
    for cut in cuts {
        std::fs::write(&file, &full[..cut]).unwrap();
        let err = load_err(dir.path(), &[&show(&file)], &["copy it again"]);
        if cut > header {
            // Cut inside the data: say so, and name the first tensor cut off.
            let tensor = tensor_at(&full, header, cut - header);
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
            assert!(
                err.contains(&format!("`{tensor}`")),
                "cut at {cut}: `{tensor}` not named: {err}"
            );
        } else {
            assert!(
                err.contains("truncated") || err.contains("not a valid safetensors file"),
                "cut at {cut}: {err}"
            );
        }
    }
    // Trailing bytes after the last tensor: not truncated, but not valid either.
    let mut longer = full.clone();
    longer.extend_from_slice(&[0; 16]);
    std::fs::write(&file, &longer).unwrap();
    load_err(
        dir.path(),
        &[&show(&file), "not a valid safetensors file"],
        &["copy it again"],
    );
}

#[test]
fn garbage_header_is_not_a_valid_safetensors_file() {
    let dir = model_dir(&tiny_b());
    let file = dir.path().join("model.safetensors");
    // A plausible length followed by bytes that are not JSON.
    let mut bytes = 64u64.to_le_bytes().to_vec();
    bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(&file, &bytes).unwrap();
    load_err(
        dir.path(),
        &[&show(&file), "not a valid safetensors file"],
        &["copy it again"],
    );
    // An absurd length (the first bytes of a text file).
    std::fs::write(&file, b"this is not a model at all, just text\n").unwrap();
    load_err(
        dir.path(),
        &[&show(&file), "not a valid safetensors file"],
        &["copy it again"],
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let name = "model.layers.0.self_attn.k_norm.weight";
    let tensors: Vec<T> = tiny_b()
        .into_iter()
        .map(|t| {
            if t.name == name {
                T {
                    dtype: Dtype::I32,
                    ..t
                }
            } else {
                t
            }
        })
        .collect();
    let dir = model_dir(&tensors);
    load_err(
        dir.path(),
        &[&show(&dir.path().join("model.safetensors")), name, "I32"],
        &["is not supported"],
    );
}

/// tiny_a copied to a temp dir, with its index rewritten by `edit`.
fn tiny_a_with_index(edit: impl Fn(&mut Value)) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(fixture("tiny_a").join(f), dir.path().join(f)).unwrap();
    }
    let index = fixture("tiny_a").join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn sharded_copy_loads_and_index_problems_are_named() {
    // Unchanged copy: loads (the helper itself is sound).
    let dir = tiny_a_with_index(|_| {});
    load_model(dir.path(), None, &cpu_device(), DType::F32).expect("tiny_a copy loads");

    // The index names a shard that is not there.
    let dir = tiny_a_with_index(|_| {});
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    load_err(dir.path(), &[&show(&shard)], &["check that it exists"]);

    // The index points outside the directory.
    for bad in [
        "../model-00001-of-00002.safetensors",
        "/etc/passwd",
        "sub/model.safetensors",
        "..\\x.safetensors",
        "..",
    ] {
        let dir = tiny_a_with_index(|v| {
            v["weight_map"]["language_model.model.norm.weight"] = Value::String(bad.into());
        });
        load_err(
            dir.path(),
            &[&show(&dir.path().join("model.safetensors.index.json")), bad],
            &["is not a plain file name"],
        );
    }

    // An index that is not JSON, or has no weight_map.
    let dir = tiny_a_with_index(|_| {});
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, "{not json").unwrap();
    load_err(dir.path(), &[&show(&index)], &["copy"]);
    std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
    load_err(dir.path(), &[&show(&index), "weight_map"], &["copy"]);
}

#[test]
fn directory_without_weights_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny_b").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    load_err(
        dir.path(),
        &[&show(dir.path()), "no weights found", "model.safetensors"],
        &["expected"],
    );
    // Not even config.json.
    let empty = tempfile::tempdir().unwrap();
    load_err(
        empty.path(),
        &[&show(&empty.path().join("config.json"))],
        &["check that the file exists"],
    );
}

#[test]
fn path_that_is_not_a_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let missing = dir.path().join("no-such-model");
    let safetensors_file = fixture("tiny_b").join("model.safetensors");
    for p in [&txt, &missing, &safetensors_file] {
        load_err(
            p,
            &[&show(p), "is neither a model directory nor a .gguf file"],
            &["give the folder"],
        );
    }
}

#[test]
fn config_missing_a_required_key_names_the_key() {
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers"] {
        let dir = model_dir(&tiny_b());
        let cfg = dir.path().join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove(key);
        std::fs::write(&cfg, v.to_string()).unwrap();
        load_err(
            dir.path(),
            &[&show(&cfg), &format!("`{key}`")],
            &["lacks the required key", "is this a Gemma 3 checkpoint"],
        );
    }
    // Not JSON at all.
    let dir = model_dir(&tiny_b());
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, "hidden_size = 48").unwrap();
    load_err(dir.path(), &[&show(&cfg)], &["is not valid JSON"]);
}
