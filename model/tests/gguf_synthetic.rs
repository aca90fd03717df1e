//! The GGUF reader and the GGUF tokenizer on small hand-built files: every
//! validation rule gets a file that breaks exactly it. Needs no assets.

use std::path::PathBuf;

use medgemma_model::gguf::{GgmlType, GgufError, GgufFile, MetaValue};
use medgemma_model::gguf_tokenizer::tokenizer_from_gguf;

// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// A tensor to write: name, GGUF dims, ggml type id, data offset, data.
struct Tensor {
    name: &'static str,
    dims: Vec<u64>,
    ty: u32,
    offset: Option<u64>,
    data: Vec<u8>,
}

/// Builds GGUF bytes. Values are written raw so tests can break them.
struct Gguf {
    version: u32,
    alignment: u64,
    kvs: Vec<(Vec<u8>, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
}

fn gguf_string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn string_array(items: &[&str]) -> Vec<u8> {
    let mut out = T_STRING.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    for s in items {
        out.extend(gguf_string(s.as_bytes()));
    }
    out
}

fn f32_array(items: &[f32]) -> Vec<u8> {
    let mut out = T_F32.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    for v in items {
        out.extend(v.to_le_bytes());
    }
    out
}

fn i32_array(items: &[i32]) -> Vec<u8> {
    let mut out = 5u32.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    for v in items {
        out.extend(v.to_le_bytes());
    }
    out
}

impl Gguf {
    fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            kvs: vec![(
                b"general.architecture".to_vec(),
                T_STRING,
                gguf_string(b"gemma3"),
            )],
            tensors: Vec::new(),
        }
    }

    fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kvs.push((key.as_bytes().to_vec(), ty, value));
        self
    }

    fn tensor(mut self, name: &'static str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor {
            name,
            dims: dims.to_vec(),
            ty,
            offset: None,
            data,
        });
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in &self.kvs {
            out.extend(gguf_string(key));
            out.extend(ty.to_le_bytes());
            out.extend(value);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut next = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            // An explicit (test-chosen, possibly hostile) offset gets no data.
            let offset = match t.offset {
                Some(o) => {
                    placed.push(None);
                    o
                }
                None => {
                    placed.push(Some(next));
                    let o = next;
                    next = align(o + t.data.len() as u64);
                    o
                }
            };
            out.extend(gguf_string(t.name.as_bytes()));
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        let data_start = align(out.len() as u64);
        for (t, offset) in self.tensors.iter().zip(placed) {
            let Some(offset) = offset else { continue };
            let at = (data_start + offset) as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

/// Writes `bytes` to a scratch file and opens it.
fn open_bytes(tag: &str, bytes: &[u8]) -> (Result<GgufFile, GgufError>, PathBuf) {
    let path =
        std::env::temp_dir().join(format!("medgemma-synth-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).expect("write scratch file");
    let result = GgufFile::open(&path);
    let _ = std::fs::remove_file(&path);
    (result, path)
}

fn open_err(tag: &str, g: &Gguf) -> GgufError {
    let (result, path) = open_bytes(tag, &g.bytes());
    let err = result.expect_err("the file must be rejected");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error names the file: {err}"
    );
    err
}

fn f32_data(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn q8_0_block(d: f32, qs: [i8; 32]) -> Vec<u8> {
    let mut out = half::f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(qs.iter().map(|&q| q as u8));
    out
}

#[test]
fn valid_file_round_trips() {
    let mut qs = [0i8; 32];
    for (i, q) in qs.iter_mut().enumerate() {
        *q = i as i8 - 16;
    }
    let g = Gguf {
        alignment: 64,
        ..Gguf::new()
    }
    .kv("general.alignment", T_U32, 64u32.to_le_bytes().to_vec())
    .kv("flag", T_BOOL, vec![1])
    .kv("nested", T_ARRAY, {
        let mut v = T_ARRAY.to_le_bytes().to_vec();
        v.extend(1u64.to_le_bytes());
        v.extend(T_U8.to_le_bytes());
        v.extend(2u64.to_le_bytes());
        v.extend([7, 9]);
        v
    })
    .tensor("norm.weight", &[3], 0, f32_data(&[1.0, -2.5, 3.25]))
    .tensor(
        "w.weight",
        &[32, 2],
        8,
        [q8_0_block(0.5, qs), q8_0_block(-1.0, qs)].concat(),
    );
    let (file, _) = open_bytes("valid", &g.bytes());
    let file = file.expect("valid file opens");
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.get("flag"), Some(&MetaValue::Bool(true)));
    assert_eq!(
        file.get("nested"),
        Some(&MetaValue::Array(vec![MetaValue::Array(vec![
            MetaValue::U8(7),
            MetaValue::U8(9)
        ])]))
    );
    let norm = file.tensor("norm.weight").expect("norm");
    assert_eq!(file.dequantize(norm).expect("f32"), vec![1.0, -2.5, 3.25]);
    let w = file.tensor("w.weight").expect("w");
    assert_eq!(w.ty, GgmlType::Q8_0);
    assert_eq!(w.shape(), vec![2, 32]);
    assert_eq!(w.offset % 64, 0);
    let values = file.dequantize(w).expect("q8_0");
    assert_eq!(values[0], -8.0);
    assert_eq!(values[31], 7.5);
    assert_eq!(values[32], 16.0);
    assert_eq!(values[63], -15.0);
}

#[test]
fn version_2_is_accepted_others_are_not() {
    let (ok, _) = open_bytes(
        "v2",
        &Gguf {
            version: 2,
            ..Gguf::new()
        }
        .bytes(),
    );
    assert_eq!(ok.expect("v2 opens").version(), 2);
    // 1: 32-bit counts; 0x0300_0000: a big-endian v3 file read little-endian.
    for version in [0, 1, 4, 0x0300_0000] {
        let err = open_err(
            "version",
            &Gguf {
                version,
                ..Gguf::new()
            },
        );
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{err}"
        );
    }
}

#[test]
fn metadata_errors_name_the_key() {
    let err = open_err("valtype", &Gguf::new().kv("weird.key", 13, vec![0; 8]));
    assert!(
        matches!(&err, GgufError::UnknownValueType { key, type_id: 13, .. } if key == "weird.key"),
        "{err}"
    );

    let err = open_err(
        "arrtype",
        &Gguf::new().kv(
            "weird.array",
            T_ARRAY,
            [77u32.to_le_bytes(), [0; 4]].concat(),
        ),
    );
    assert!(
        matches!(&err, GgufError::UnknownValueType { type_id: 77, .. }),
        "{err}"
    );

    let err = open_err(
        "dupkey",
        &Gguf::new().kv("general.architecture", T_STRING, gguf_string(b"x")),
    );
    assert!(
        matches!(&err, GgufError::DuplicateKey { key, .. } if key == "general.architecture"),
        "{err}"
    );

    let err = open_err(
        "utf8",
        &Gguf::new().kv("bad", T_STRING, gguf_string(&[0xff, 0xfe])),
    );
    assert!(matches!(err, GgufError::InvalidUtf8 { .. }), "{err}");

    let mut deep = Vec::new();
    for _ in 0..12 {
        deep.extend(T_ARRAY.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(T_U8.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    let mut g = Gguf::new();
    g.kvs.push((b"deep".to_vec(), T_ARRAY, deep));
    let err = open_err("deep", &g);
    assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{err}");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    // An array claiming 2^60 strings in a file of a few hundred bytes.
    let err = open_err(
        "hugearray",
        &Gguf::new().kv(
            "tokens",
            T_ARRAY,
            [
                T_STRING.to_le_bytes().to_vec(),
                (1u64 << 60).to_le_bytes().to_vec(),
            ]
            .concat(),
        ),
    );
    assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err}");

    // A string claiming 2^62 bytes.
    let err = open_err(
        "hugestring",
        &Gguf::new().kv("s", T_STRING, (1u64 << 62).to_le_bytes().to_vec()),
    );
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    // A tensor count of 2^40.
    let mut bytes = Gguf::new().bytes();
    bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (result, _) = open_bytes("hugecount", &bytes);
    assert!(matches!(
        result,
        Err(GgufError::CountTooLarge {
            what: "tensors",
            ..
        })
    ));
}

#[test]
fn alignment_must_be_a_power_of_two() {
    for bad in [0u32, 3, 48] {
        let err = open_err(
            "align",
            &Gguf::new().kv("general.alignment", T_U32, bad.to_le_bytes().to_vec()),
        );
        assert!(
            matches!(err, GgufError::BadAlignment { .. }),
            "{bad}: {err}"
        );
    }
    let err = open_err(
        "aligntype",
        &Gguf::new().kv("general.alignment", T_F32, 32f32.to_le_bytes().to_vec()),
    );
    assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
}

#[test]
fn tensor_info_errors_name_the_tensor() {
    let f = f32_data(&[0.0; 8]);
    let named = |err: &GgufError, name: &str| {
        assert!(err.to_string().contains(name), "{err}");
    };

    let err = open_err(
        "dims",
        &Gguf::new().tensor("t5", &[1, 1, 1, 1, 1], 0, f.clone()),
    );
    assert!(
        matches!(err, GgufError::TooManyDims { n_dims: 5, .. }),
        "{err}"
    );
    named(&err, "t5");

    let err = open_err("type", &Gguf::new().tensor("odd", &[8], 99, f.clone()));
    assert!(
        matches!(err, GgufError::UnknownTensorType { type_id: 99, .. }),
        "{err}"
    );
    named(&err, "odd");

    let err = open_err(
        "overflow",
        &Gguf::new().tensor("big", &[u64::MAX, 2], 0, f.clone()),
    );
    assert!(matches!(err, GgufError::BadDims { .. }), "{err}");
    named(&err, "big");

    // Q8_0 needs whole 32-element blocks along the innermost dimension.
    let err = open_err("block", &Gguf::new().tensor("q", &[16, 2], 8, vec![0; 34]));
    assert!(matches!(err, GgufError::BadDims { .. }), "{err}");

    let err = open_err(
        "dup",
        &Gguf::new()
            .tensor("x", &[8], 0, f.clone())
            .tensor("x", &[8], 0, f.clone()),
    );
    assert!(
        matches!(&err, GgufError::DuplicateTensor { tensor, .. } if tensor == "x"),
        "{err}"
    );

    let mut g = Gguf::new().tensor("mis", &[8], 0, f.clone());
    g.tensors[0].offset = Some(4);
    let err = open_err("misaligned", &g);
    assert!(
        matches!(
            err,
            GgufError::MisalignedTensor {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{err}"
    );

    let mut g = Gguf::new().tensor("far", &[8], 0, f.clone());
    g.tensors[0].offset = Some(u64::MAX - 31);
    let err = open_err("far", &g);
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    named(&err, "far");

    // Types with a known layout but no dequantizer open fine and fail on use.
    let (file, _) = open_bytes(
        "q2k",
        &Gguf::new().tensor("q2", &[256], 10, vec![0; 84]).bytes(),
    );
    let file = file.expect("Q2_K file opens");
    let t = file.tensor("q2").expect("q2");
    assert_eq!(file.tensor_bytes(t).expect("bytes").len(), 84);
    let err = file.dequantize(t).expect_err("Q2_K cannot be dequantized");
    assert!(
        matches!(&err, GgufError::UnsupportedType { tensor, ty: GgmlType::Q2_K, .. } if tensor == "q2"),
        "{err}"
    );
}

/// A tiny SentencePiece-style vocabulary, with the GGUF keys llama.cpp writes.
fn tiny_vocab() -> Gguf {
    let tokens = [
        "<unk>",
        "<bos>",
        "<eos>",
        "\u{2581}",
        "a",
        "b",
        "ab",
        "\u{2581}a",
        "\u{2581}ab",
        "<0x21>",
        "  ",
    ];
    let scores = [
        0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 0.0, -1000.0,
    ];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 4];
    Gguf::new()
        .kv("tokenizer.ggml.model", T_STRING, gguf_string(b"llama"))
        .kv("tokenizer.ggml.tokens", T_ARRAY, string_array(&tokens))
        .kv("tokenizer.ggml.scores", T_ARRAY, f32_array(&scores))
        .kv("tokenizer.ggml.token_type", T_ARRAY, i32_array(&types))
        .kv(
            "tokenizer.ggml.bos_token_id",
            T_U32,
            1u32.to_le_bytes().to_vec(),
        )
        .kv(
            "tokenizer.ggml.eos_token_id",
            T_U32,
            2u32.to_le_bytes().to_vec(),
        )
        .kv(
            "tokenizer.ggml.unknown_token_id",
            T_U32,
            0u32.to_le_bytes().to_vec(),
        )
        .kv("tokenizer.ggml.add_space_prefix", T_BOOL, vec![0])
}

#[test]
fn tiny_vocabulary_builds_sentencepiece_merges() {
    let (file, _) = open_bytes("tinyvocab", &tiny_vocab().bytes());
    let file = file.expect("opens");
    let (tok, info) = tokenizer_from_gguf(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (info.bos, info.eos, info.add_bos, info.unk),
        (1, 2, true, Some(0))
    );
    // gemma3 files get <image_soft_token> appended after the vocabulary.
    assert_eq!(info.vocab_size, 12);
    assert_eq!(tok.token_to_id("<image_soft_token>"), Some(11));
    // "ab ab" -> "ab▁ab": a+b merges first (score -4), then ▁+ab (score -6).
    let enc = tok.encode("ab ab", true).expect("encode");
    assert_eq!(enc.get_ids(), [1, 6, 8]);
    // A character outside the vocabulary falls back to its byte piece.
    assert_eq!(tok.encode("!", false).expect("encode").get_ids(), [9]);
    // The user-defined piece had "▁▁" turned into "  " by llama.cpp; it is
    // restored, so it matches the text "▁▁" (as the original did), not "  ".
    assert_eq!(tok.token_to_id("\u{2581}\u{2581}"), Some(10));
    assert_eq!(tok.decode(&[1, 6, 8], true).expect("decode"), "ab ab");
}

#[test]
fn broken_vocabularies_are_rejected() {
    let replace = |g: Gguf, key: &str, ty: u32, value: Vec<u8>| {
        let mut g = g;
        let slot = g
            .kvs
            .iter_mut()
            .find(|kv| kv.0 == key.as_bytes())
            .expect("key present");
        slot.1 = ty;
        slot.2 = value;
        g
    };
    let build = |tag: &str, g: Gguf| {
        let (file, _) = open_bytes(tag, &g.bytes());
        tokenizer_from_gguf(&file.expect("the GGUF itself is valid"))
            .map(|_| ())
            .expect_err("tokenizer must fail")
    };

    let err = build(
        "gpt2",
        replace(
            tiny_vocab(),
            "tokenizer.ggml.model",
            T_STRING,
            gguf_string(b"gpt2"),
        ),
    );
    assert!(
        matches!(&err, GgufError::UnsupportedTokenizerModel { model, .. } if model == "gpt2"),
        "{err}"
    );

    let err = build(
        "scores",
        replace(
            tiny_vocab(),
            "tokenizer.ggml.scores",
            T_ARRAY,
            f32_array(&[0.0; 3]),
        ),
    );
    assert!(
        matches!(
            err,
            GgufError::VocabLengthMismatch {
                len: 3,
                expected: 11,
                ..
            }
        ),
        "{err}"
    );

    let err = build(
        "bos",
        replace(
            tiny_vocab(),
            "tokenizer.ggml.bos_token_id",
            T_U32,
            500u32.to_le_bytes().to_vec(),
        ),
    );
    assert!(
        matches!(err, GgufError::TokenIdOutOfRange { id: 500, .. }),
        "{err}"
    );

    let dup = [
        "<unk>", "<bos>", "<eos>", "a", "b", "a", "x", "y", "z", "w", "v",
    ];
    let err = build(
        "dup",
        replace(
            tiny_vocab(),
            "tokenizer.ggml.tokens",
            T_ARRAY,
            string_array(&dup),
        ),
    );
    assert!(
        matches!(
            err,
            GgufError::DuplicatePiece {
                first: 3,
                second: 5,
                ..
            }
        ),
        "{err}"
    );

    let err = build(
        "types",
        replace(
            tiny_vocab(),
            "tokenizer.ggml.token_type",
            T_ARRAY,
            string_array(&["x"; 11]),
        ),
    );
    assert!(matches!(err, GgufError::WrongKeyType { .. }), "{err}");

    let mut g = tiny_vocab();
    g.kvs.retain(|kv| kv.0 != b"tokenizer.ggml.eos_token_id");
    let err = build("noeos", g);
    assert!(
        matches!(&err, GgufError::MissingKey { key, .. } if key == "tokenizer.ggml.eos_token_id"),
        "{err}"
    );
}
