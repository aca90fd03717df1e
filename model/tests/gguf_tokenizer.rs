//! The tokenizer rebuilt from the 270M GGUF's `tokenizer.ggml.*` vocabulary
//! must be the Gemma 3 `tokenizer.json`: same serialized structure, and the
//! same ids and decoded text on every string of `tests/data/tokenizer_corpus.json`.
//!
//! Needs the assets fetched by `scripts/fetch-assets.sh` (directory from
//! `MEDGEMMA_ASSETS`, default `$HOME/.cache/medgemma-assets`).

#![allow(clippy::print_stdout)] // timings are reported with --nocapture

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use medgemma_model::gguf::GgufFile;
use medgemma_model::gguf_tokenizer::{GgufTokenizerInfo, tokenizer_from_gguf};
use tokenizers::Tokenizer;

use support::asset;

fn reference() -> Tokenizer {
    let t0 = Instant::now();
    let tok = Tokenizer::from_file(asset("tokenizer/tokenizer.json"))
        .expect("reference tokenizer.json loads");
    println!("reference tokenizer.json load {:.2?}", t0.elapsed());
    tok
}

/// Built once per test binary: parsing and merge derivation take a moment.
fn from_gguf() -> &'static (Tokenizer, GgufTokenizerInfo) {
    static BUILT: OnceLock<(Tokenizer, GgufTokenizerInfo)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let t0 = Instant::now();
        let g =
            GgufFile::open(&asset("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")).expect("GGUF opens");
        let t1 = Instant::now();
        let built = tokenizer_from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "GGUF open {:.2?}; tokenizer_from_gguf (merges + BPE + added tokens) {:.2?}",
            t1 - t0,
            t1.elapsed()
        );
        built
    })
}

fn corpus() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_corpus.json");
    serde_json::from_slice(&std::fs::read(path).expect("read corpus"))
        .expect("corpus is a JSON list of strings")
}

#[test]
fn info_matches_gemma3() {
    let (tok, info) = from_gguf();
    assert_eq!(
        *info,
        GgufTokenizerInfo {
            bos: 2,
            eos: 1,
            add_bos: true,
            add_eos: false,
            unk: Some(3),
            pad: Some(0),
            vocab_size: 262_145,
        }
    );
    assert_eq!(tok.get_vocab_size(true), 262_145);
    for (piece, id) in [
        ("<pad>", 0),
        ("<eos>", 1),
        ("<bos>", 2),
        ("<start_of_turn>", 105),
        ("<end_of_turn>", 106),
        ("\n", 107),
        ("<start_of_image>", 255_999),
        ("<end_of_image>", 256_000),
        ("<image_soft_token>", 262_144),
    ] {
        assert_eq!(tok.token_to_id(piece), Some(id), "{piece:?}");
    }
    // assets.md §1's worked example.
    let ids = tok
        .encode(
            "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
            false,
        )
        .expect("encode")
        .get_ids()
        .to_vec();
    assert_eq!(ids, [105, 2364, 107, 9259, 106, 107, 105, 4368, 107]);
}

/// The strongest structural check: serialized, the rebuilt tokenizer is the
/// reference tokenizer.json (normalizer, pre-tokenizer, post-processor,
/// decoder, BPE flags, vocabulary, every merge in rank order, added tokens
/// with their flags).
#[test]
fn serializes_to_the_reference_tokenizer_json() {
    let (tok, _) = from_gguf();
    let ours: serde_json::Value =
        serde_json::from_str(&tok.to_string(false).expect("serialize")).expect("our JSON parses");
    let theirs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(asset("tokenizer/tokenizer.json")).expect("read tokenizer.json"),
    )
    .expect("reference JSON parses");
    for key in [
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
        "truncation",
        "padding",
    ] {
        assert_eq!(ours[key], theirs[key], "`{key}` differs");
    }
    let (om, tm) = (&ours["model"], &theirs["model"]);
    for key in [
        "type",
        "dropout",
        "unk_token",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "fuse_unk",
        "byte_fallback",
        "ignore_merges",
        "vocab",
    ] {
        assert_eq!(om[key], tm[key], "model.{key} differs");
    }
    let (ours_merges, ref_merges) = (
        om["merges"].as_array().expect("merges"),
        tm["merges"].as_array().expect("merges"),
    );
    assert_eq!(ours_merges.len(), ref_merges.len(), "merge count");
    if let Some(i) = ours_merges.iter().zip(ref_merges).position(|(a, b)| a != b) {
        panic!(
            "merge #{i} differs: ours {} reference {}",
            ours_merges[i], ref_merges[i]
        );
    }
}

#[test]
fn corpus_encodes_and_decodes_identically() {
    let mut reference = reference();
    let mut ours = from_gguf().0.clone();
    let corpus = corpus();
    assert!(corpus.len() >= 50, "corpus has {} strings", corpus.len());
    for parse_special in [true, false] {
        // `encode_special_tokens = true` means special tokens are NOT parsed
        // out of the text (it is encoded as plain text).
        reference.set_encode_special_tokens(!parse_special);
        ours.set_encode_special_tokens(!parse_special);
        for text in &corpus {
            for add_special in [true, false] {
                let want = reference
                    .encode(text.as_str(), add_special)
                    .expect("reference encodes");
                let got = ours
                    .encode(text.as_str(), add_special)
                    .expect("ours encodes");
                assert_eq!(
                    got.get_ids(),
                    want.get_ids(),
                    "ids differ for {text:?} (parse_special={parse_special}, add_special={add_special})"
                );
                assert_eq!(
                    got.get_tokens(),
                    want.get_tokens(),
                    "tokens differ for {text:?}"
                );
                assert_eq!(
                    got.get_offsets(),
                    want.get_offsets(),
                    "offsets differ for {text:?}"
                );
                for skip in [false, true] {
                    let d_want = reference
                        .decode(want.get_ids(), skip)
                        .expect("reference decodes");
                    let d_got = ours.decode(got.get_ids(), skip).expect("ours decodes");
                    assert_eq!(
                        d_got, d_want,
                        "decode differs for {text:?} (skip_special={skip})"
                    );
                }
            }
        }
    }
}

#[test]
fn special_tokens_parse_only_when_enabled() {
    let mut tok = from_gguf().0.clone();
    let text = "<start_of_turn>user\n";
    let parsed = tok.encode(text, false).expect("encode").get_ids().to_vec();
    assert_eq!(parsed.first(), Some(&105));
    tok.set_encode_special_tokens(true);
    let plain = tok.encode(text, false).expect("encode").get_ids().to_vec();
    assert!(
        !plain.contains(&105),
        "special-token parsing off: {plain:?}"
    );
    // Non-special added tokens (here <unused94>, the thinking marker) are
    // matched either way, as in the reference.
    let thought = tok
        .encode("<unused94>thought\n", false)
        .expect("encode")
        .get_ids()
        .to_vec();
    assert_eq!(thought.first(), tok.token_to_id("<unused94>").as_ref());
}
