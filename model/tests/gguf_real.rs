//! The GGUF reader on the real Gemma 3 270M Q4_K_M file (see
//! shared/spec/assets.md §2), plus truncated and corrupted copies of it.
//!
//! Needs the assets fetched by `scripts/fetch-assets.sh` (directory from
//! `MEDGEMMA_ASSETS`, default `$HOME/.cache/medgemma-assets`).

#![allow(clippy::print_stdout)] // timings are reported with --nocapture

mod support;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use medgemma_model::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

fn gguf_path() -> PathBuf {
    support::gguf_270m()
}

fn open_real() -> GgufFile {
    GgufFile::open(&gguf_path()).expect("the real 270M GGUF opens")
}

/// A scratch file that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("medgemma-gguf-{tag}-{}.gguf", std::process::id()));
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn header_matches_assets_md() {
    let g = open_real();
    assert_eq!(g.version(), 3);
    assert_eq!(g.architecture().expect("architecture"), "gemma3");
    assert_eq!(g.tensors().len(), 236);
    assert_eq!(g.alignment(), 32);
    let u = |k: &str| g.meta_u64(k).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u("gemma3.block_count"), 18);
    assert_eq!(u("gemma3.embedding_length"), 640);
    assert_eq!(u("gemma3.feed_forward_length"), 2048);
    assert_eq!(u("gemma3.attention.head_count"), 4);
    assert_eq!(u("gemma3.attention.head_count_kv"), 1);
    assert_eq!(u("gemma3.attention.key_length"), 256);
    assert_eq!(u("gemma3.attention.value_length"), 256);
    assert_eq!(u("gemma3.context_length"), 32768);
    assert_eq!(u("gemma3.attention.sliding_window"), 512);
    assert_eq!(g.meta_f32("gemma3.rope.freq_base").expect("freq_base"), 1e6);
    assert_eq!(
        g.meta_f32("gemma3.attention.layer_norm_rms_epsilon")
            .expect("eps"),
        1e-6
    );
    assert!(
        g.get("gemma3.rope.scaling.type").is_none(),
        "270M has no RoPE scaling"
    );
    assert_eq!(
        g.meta_str("tokenizer.ggml.model").expect("tokenizer model"),
        "llama"
    );
    assert_eq!(
        g.meta_array("tokenizer.ggml.tokens").expect("tokens").len(),
        262_144
    );
    assert_eq!(u("tokenizer.ggml.bos_token_id"), 2);
    assert_eq!(u("tokenizer.ggml.eos_token_id"), 1);
    assert!(
        g.meta_bool("tokenizer.ggml.add_bos_token")
            .expect("add_bos")
    );
    assert!(
        !g.meta_bool("tokenizer.ggml.add_space_prefix")
            .expect("add_space_prefix")
    );

    // Typed getters report a wrong type or a missing key by name.
    let err = g
        .meta_u64("general.architecture")
        .expect_err("a string is not an integer");
    assert!(matches!(err, GgufError::WrongKeyType { .. }), "{err}");
    let err = g.meta_u64("gemma3.no_such_key").expect_err("missing");
    assert!(err.to_string().contains("gemma3.no_such_key"), "{err}");
}

#[test]
fn tensor_types_and_shapes() {
    let g = open_real();
    let types: BTreeSet<String> = g.tensors().iter().map(|t| format!("{:?}", t.ty)).collect();
    let expected: BTreeSet<String> = ["F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"]
        .map(String::from)
        .into();
    assert_eq!(types, expected);

    let embd = g.tensor("token_embd.weight").expect("token_embd");
    assert_eq!(embd.ty, GgmlType::Q8_0);
    assert_eq!(embd.dims, vec![640, 262_144], "GGUF order: ne[0] innermost");
    assert_eq!(
        embd.shape(),
        vec![262_144, 640],
        "row-major [vocab, hidden]"
    );
    assert_eq!(embd.n_elements(), 262_144 * 640);

    // Linear weights read [out, in] like PyTorch: q is 4 heads x 256 -> 640.
    let shape = |name: &str| g.require_tensor(name).expect("tensor present").shape();
    assert_eq!(shape("blk.0.attn_q.weight"), vec![1024, 640]);
    assert_eq!(shape("blk.0.attn_k.weight"), vec![256, 640]);
    assert_eq!(shape("blk.0.attn_v.weight"), vec![256, 640]);
    assert_eq!(shape("blk.0.attn_output.weight"), vec![640, 1024]);
    assert_eq!(shape("blk.0.ffn_gate.weight"), vec![2048, 640]);
    assert_eq!(shape("blk.0.ffn_down.weight"), vec![640, 2048]);
    assert_eq!(shape("blk.0.attn_q_norm.weight"), vec![256]);
    assert_eq!(shape("output_norm.weight"), vec![640]);
    assert!(
        g.tensor("output.weight").is_none(),
        "the head is tied to token_embd"
    );

    let err = g
        .require_tensor("blk.99.attn_q.weight")
        .expect_err("missing");
    assert!(err.to_string().contains("blk.99.attn_q.weight"), "{err}");

    // Every tensor's bytes have exactly the size its type and shape imply.
    for t in g.tensors() {
        let bytes = g.tensor_bytes(t).expect("in bounds");
        assert_eq!(Some(bytes.len()), t.byte_size(), "{}", t.name);
    }
}

#[test]
fn every_tensor_dequantizes_to_finite_values() {
    let g = open_real();
    let start = Instant::now();
    let mut total = 0usize;
    for t in g.tensors() {
        let values = g.dequantize(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values.len(), t.n_elements(), "{}", t.name);
        assert_eq!(
            values.len(),
            t.shape().iter().product::<usize>(),
            "{}",
            t.name
        );
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            panic!("{}[{i}] = {} is not finite", t.name, values[i]);
        }
        total += values.len();
    }
    println!(
        "dequantized {} tensors, {total} values, in {:.2?}",
        g.tensors().len(),
        start.elapsed()
    );
}

/// llama.cpp's converter stores Gemma's RMSNorm weights as `1 + w`
/// (assets.md §2). Evidence: for every norm tensor, `v - 1` is exactly a bf16
/// value (the checkpoint's dtype) while `v` itself often is not. Loaders must
/// subtract 1 to get the Hugging Face convention the model code expects.
#[test]
fn norm_weights_have_one_added() {
    let g = open_real();
    let bf16_exact = |x: f32| x.to_bits() & 0xFFFF == 0;
    let mut norms = 0;
    let mut v_not_bf16 = 0;
    for t in g
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with("norm.weight"))
    {
        assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
        let values = g.dequantize(t).expect("dequantize norm");
        for &v in &values {
            assert!(
                bf16_exact(v - 1.0),
                "{}: {v} - 1 is not a bf16 value",
                t.name
            );
        }
        v_not_bf16 += values.iter().filter(|&&v| !bf16_exact(v)).count();
        norms += 1;
    }
    assert_eq!(
        norms,
        18 * 6 + 1,
        "4 block norms + q/k norms per layer, plus output_norm"
    );
    assert!(
        v_not_bf16 > 1000,
        "raw values are not bf16, so they are not the stored w"
    );
}

#[test]
fn foreign_tensor_info_is_rejected_not_indexed() {
    let g = open_real();
    let embd = g.tensor("token_embd.weight").expect("token_embd").clone();
    let far = TensorInfo {
        offset: u64::MAX - 16,
        ..embd.clone()
    };
    assert!(matches!(
        g.tensor_bytes(&far),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    let huge = TensorInfo {
        dims: vec![u64::MAX, u64::MAX],
        ..embd.clone()
    };
    assert!(g.tensor_bytes(&huge).is_err());
    let odd = TensorInfo {
        dims: vec![33, 1],
        ..embd
    };
    assert!(matches!(
        g.tensor_bytes(&odd),
        Err(GgufError::BadDims { .. })
    ));
    let q2 = TensorInfo {
        ty: GgmlType::Q2_K,
        dims: vec![256],
        ..g.tensor("blk.0.ffn_down.weight").expect("ffn_down").clone()
    };
    let err = g.dequantize(&q2).expect_err("Q2_K is unsupported");
    assert!(
        matches!(&err, GgufError::UnsupportedType { tensor, .. } if tensor == "blk.0.ffn_down.weight"),
        "{err}"
    );
}

/// Reads the header region (everything before the tensor data) plus a little.
fn header_prefix(g: &GgufFile) -> Vec<u8> {
    let len = g.data_offset() as usize + 4096;
    let mut buf = vec![0u8; len];
    File::open(g.path())
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read header prefix");
    buf
}

#[test]
fn truncated_copies_fail_cleanly() {
    let g = open_real();
    let full_len = std::fs::metadata(g.path()).expect("stat").len();
    let prefix = header_prefix(&g);
    let data_offset = g.data_offset();

    // Offsets: every byte of the fixed header and first keys, then a
    // geometric spread across the metadata (the 262k-token vocabulary) and
    // tensor infos, then the data section.
    let mut cuts: BTreeSet<u64> = (0..=96).collect();
    let mut x = 97.0f64;
    while x < data_offset as f64 {
        cuts.insert(x as u64);
        x *= 1.12;
    }
    cuts.extend([
        data_offset - 1,
        data_offset,
        data_offset + 1,
        full_len / 2,
        full_len - 1,
    ]);

    let scratch = Scratch::new("truncated");
    let mut file = File::create(&scratch.0).expect("create scratch file");
    file.write_all(&prefix).expect("write prefix");
    let start = Instant::now();
    // Largest first, so each cut only shrinks the file; cuts past the prefix
    // extend it sparsely (zeros stand in for tensor data).
    for &cut in cuts.iter().rev() {
        file.set_len(cut).expect("set_len");
        file.flush().expect("flush");
        match GgufFile::open(&scratch.0) {
            Ok(_) => panic!("a copy cut to {cut} of {full_len} bytes opened"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&scratch.0.display().to_string()),
                    "error names the file: {msg}"
                );
                if cut >= data_offset {
                    assert!(
                        matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if msg.contains(tensor.as_str())),
                        "cut in the data section names the tensor: {msg}"
                    );
                }
            }
        }
    }
    println!(
        "{} truncated copies rejected in {:.2?}",
        cuts.len(),
        start.elapsed()
    );

    // Control: the same prefix extended to the full length opens.
    file.set_len(full_len).expect("set_len");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(&prefix).expect("rewrite prefix");
    GgufFile::open(&scratch.0).expect("header + zero data of the right length opens");
}

#[test]
fn corrupted_headers_never_panic() {
    let g = open_real();
    let full_len = std::fs::metadata(g.path()).expect("stat").len();
    let prefix = header_prefix(&g);
    let data_offset = g.data_offset();
    let scratch = Scratch::new("corrupt");
    {
        let mut file = File::create(&scratch.0).expect("create scratch file");
        file.write_all(&prefix).expect("write prefix");
        file.set_len(full_len).expect("extend sparsely");
    }
    let mut file = OpenOptions::new()
        .write(true)
        .open(&scratch.0)
        .expect("reopen");

    // Deterministic pseudo-random (offset, byte) pairs: dense in the first
    // 4 KiB (counts, first keys, their types and lengths), sparse after; plus
    // every byte of the fixed header set to 0xFF.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut edits: Vec<(u64, u8)> = (0..24).map(|o| (o, 0xFF)).collect();
    for i in 0..160 {
        let span = if i % 2 == 0 { 4096 } else { data_offset };
        edits.push((next() % span, (next() >> 32) as u8));
    }
    // The last tensor info (its type and offset fields) lies just before the data.
    for back in 1..=24 {
        edits.push((data_offset - back, (next() >> 24) as u8));
    }

    let start = Instant::now();
    let (mut ok, mut err) = (0, 0);
    for &(offset, byte) in &edits {
        let original = prefix[offset as usize];
        let value = if byte == original { !byte } else { byte };
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.write_all(&[value]).expect("corrupt");
        file.flush().expect("flush");
        // Ok (e.g. a changed letter in a string) and Err are both fine; a
        // panic or an abort from a giant allocation is the bug.
        match GgufFile::open(&scratch.0) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file.write_all(&[original]).expect("restore");
    }
    file.flush().expect("flush");
    println!(
        "{} corrupted headers: {ok} opened, {err} rejected, in {:.2?}",
        edits.len(),
        start.elapsed()
    );
    GgufFile::open(&scratch.0).expect("restored copy opens");
}

#[test]
fn not_gguf_files_are_rejected() {
    let scratch = Scratch::new("notgguf");
    for contents in [
        &b""[..],
        b"GG",
        b"GGUF",
        b"GGML\x03\0\0\0",
        b"GGUF\x01\0\0\0\0\0\0\0",
    ] {
        std::fs::write(&scratch.0, contents).expect("write");
        let err = GgufFile::open(&scratch.0).expect_err("not a usable GGUF");
        assert!(
            matches!(
                err,
                GgufError::BadMagic { .. }
                    | GgufError::UnsupportedVersion { .. }
                    | GgufError::Truncated { .. }
            ),
            "{contents:?}: {err}"
        );
    }
    let missing = Path::new("/nonexistent/medgemma/model.gguf");
    let err = GgufFile::open(missing).expect_err("missing file");
    assert!(
        matches!(err, GgufError::Io { .. }) && err.to_string().contains("/nonexistent/medgemma")
    );
}
