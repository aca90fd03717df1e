//! Rebuilds a Hugging Face `tokenizers::Tokenizer` from the SentencePiece
//! vocabulary that llama.cpp embeds in a GGUF file (`tokenizer.ggml.*`,
//! model `llama`).
//!
//! Owns: undoing llama.cpp's conversion of the vocabulary (see
//! [`tokenizer_from_gguf`]), deriving the BPE merges from the piece scores the
//! way SentencePiece and Hugging Face do, and assembling a tokenizer that is
//! structurally identical to Gemma 3's `tokenizer.json` (normalizer,
//! pre-tokenizer, BPE with byte fallback, added tokens, `<bos>` template,
//! decoder). `model/tests/gguf_tokenizer.rs` checks it id for id against the
//! real `tokenizer.json`.
//!
//! Must never: read files (it gets an open [`GgufFile`]), or return a tokenizer
//! that silently differs from the original: what it cannot rebuild faithfully is
//! an error, and the two Gemma-specific restorations (special flags, the image
//! token) are documented where they happen.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab as BpeVocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::gguf::{GgufError, GgufFile, MetaValue};

/// SentencePiece's meta symbol for a space (U+2581).
const SPACE_SYMBOL: &str = "\u{2581}";

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`, equal to
/// SentencePiece's `ModelProto.SentencePiece.Type`).
mod token_type {
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Tokens that Gemma's `tokenizer_config.json` / `tokenizer.json` mark
/// `special: true` (skipped by `decode(skip_special_tokens)`, and matched as
/// plain text when special-token parsing is off). The GGUF vocabulary does not
/// record this flag: llama.cpp's token types do not line up with it
/// (`<mask>` is CONTROL but not special; `<start_of_image>` is USER_DEFINED
/// but special), so it is restored from this list plus the ids the GGUF names
/// (bos, eos, unk, pad).
const GEMMA_SPECIAL_TOKENS: [&str; 9] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
];

/// Gemma 3's image placeholder. Gemma 3 checkpoints append it to the
/// SentencePiece vocabulary as id 262144 (`image_token_index`); llama.cpp's
/// text GGUFs leave it out, so it is re-added for `gemma3` files.
const GEMMA3_IMAGE_TOKEN: &str = "<image_soft_token>";

/// Special ids and flags read from the GGUF alongside the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTokenizerInfo {
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: u32,
    /// `tokenizer.ggml.eos_token_id` (for Gemma 3 this is `<eos>`, 1; chat
    /// generation also stops on `<end_of_turn>`, 106).
    pub eos: u32,
    /// Whether `encode(.., add_special_tokens = true)` prepends `bos`.
    pub add_bos: bool,
    /// Whether `encode(.., add_special_tokens = true)` appends `eos`.
    pub add_eos: bool,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Number of ids the tokenizer can produce (vocabulary plus re-added
    /// tokens such as `<image_soft_token>`).
    pub vocab_size: usize,
}

/// Builds the tokenizer described by `g`'s `tokenizer.ggml.*` metadata.
///
/// llama.cpp's converter (`convert_hf_to_gguf.py`, `_create_vocab_sentencepiece`)
/// changes two things that this function undoes so the result equals the
/// original tokenizer:
///
/// - every token listed in `added_tokens_decoder` gets score −1000 instead of
///   SentencePiece's 0; the scores of CONTROL and USER_DEFINED pieces are set
///   back to 0 before deriving merges (their rank decides, e.g., how runs of
///   spaces merge);
/// - USER_DEFINED pieces have `▁` replaced by a plain space; it is put back.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<(Tokenizer, GgufTokenizerInfo), GgufError> {
    let path = g.path().to_path_buf();
    let model = g.meta_str("tokenizer.ggml.model")?;
    if model != "llama" {
        return Err(GgufError::UnsupportedTokenizerModel {
            path,
            model: model.to_owned(),
        });
    }

    let vocab = read_vocab(g)?;
    let ids = index_pieces(&path, &vocab.pieces)?;
    let n = vocab.pieces.len();
    let id_key = |key: &'static str| -> Result<Option<u32>, GgufError> {
        let Some(v) = g.get(key) else { return Ok(None) };
        let id = v
            .as_u64()
            .ok_or_else(|| g.wrong_type(key, "non-negative integer", v))?;
        match usize::try_from(id) {
            Ok(i) if i < n => Ok(Some(id as u32)),
            _ => Err(GgufError::TokenIdOutOfRange {
                path: path.clone(),
                key,
                id,
                vocab: n,
            }),
        }
    };
    let required_id = |key: &'static str| -> Result<u32, GgufError> {
        id_key(key)?.ok_or_else(|| GgufError::MissingKey {
            path: path.clone(),
            key: key.to_owned(),
        })
    };
    let bos = required_id("tokenizer.ggml.bos_token_id")?;
    let eos = required_id("tokenizer.ggml.eos_token_id")?;
    let unk = id_key("tokenizer.ggml.unknown_token_id")?;
    let pad = id_key("tokenizer.ggml.padding_token_id")?;
    let flag = |key: &str, default: bool| -> Result<bool, GgufError> {
        match g.get(key) {
            None => Ok(default),
            Some(v) => Ok(v.as_bool().ok_or_else(|| g.wrong_type(key, "bool", v))?),
        }
    };
    // llama.cpp's defaults for SentencePiece vocabularies.
    let add_bos = flag("tokenizer.ggml.add_bos_token", true)?;
    let add_eos = flag("tokenizer.ggml.add_eos_token", false)?;
    let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", true)?;

    let mut special_ids: Vec<u32> = [Some(bos), Some(eos), unk, pad]
        .into_iter()
        .flatten()
        .collect();
    special_ids.sort_unstable();
    let is_special = |id: u32, piece: &str| {
        special_ids.binary_search(&id).is_ok() || GEMMA_SPECIAL_TOKENS.contains(&piece)
    };

    // Added tokens, in id order like tokenizer.json's `added_tokens`.
    let mut added: Vec<AddedToken> = vocab
        .pieces
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|(_, (_, ty))| {
            matches!(
                **ty,
                token_type::UNKNOWN | token_type::CONTROL | token_type::USER_DEFINED
            )
        })
        .map(|(id, (piece, _))| {
            AddedToken::from(piece.clone(), is_special(id as u32, piece)).normalized(false)
        })
        .collect();
    let is_gemma3 = g
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .is_some_and(|a| a == "gemma3");
    let mut vocab_size = n;
    if is_gemma3 && !ids.contains_key(GEMMA3_IMAGE_TOKEN) {
        // Appended after the vocabulary, so it gets id n (262144 for Gemma 3).
        added.push(AddedToken::from(GEMMA3_IMAGE_TOKEN, true).normalized(false));
        vocab_size += 1;
    }

    let merges = sentencepiece_merges(&vocab, &ids);
    let build_err = |source: tokenizers::Error| GgufError::TokenizerBuild {
        path: path.clone(),
        source,
    };

    let unk_piece = unk.map(|id| vocab.pieces[id as usize].clone());
    let bos_piece = vocab.pieces[bos as usize].clone();
    let eos_piece = vocab.pieces[eos as usize].clone();
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(a, b)| {
            (
                vocab.pieces[a as usize].clone(),
                vocab.pieces[b as usize].clone(),
            )
        })
        .collect();

    let mut bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk_piece) = unk_piece {
        bpe = bpe.unk_token(unk_piece);
    }
    let bpe = bpe.build().map_err(build_err)?;

    let mut tokenizer = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(build_err);
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new(SPACE_SYMBOL.to_owned()).into(),
            replace(" ", SPACE_SYMBOL)?.into(),
        ])
        .into()
    } else {
        replace(" ", SPACE_SYMBOL)?.into()
    };
    tokenizer.with_normalizer(Some(normalizer));
    // Gemma's tokenizer.json splits on " " after the normalizer has replaced
    // every space, so this is a no-op; kept for structural identity.
    tokenizer.with_pre_tokenizer(Some(
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false).map_err(build_err)?,
    ));
    tokenizer.with_post_processor(
        template(
            add_bos.then_some((bos_piece.as_str(), bos)),
            add_eos.then_some((eos_piece.as_str(), eos)),
        )
        .map_err(build_err)?,
    );
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace(SPACE_SYMBOL, " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    tokenizer.add_tokens(&added);

    Ok((
        tokenizer,
        GgufTokenizerInfo {
            bos,
            eos,
            add_bos,
            add_eos,
            unk,
            pad,
            vocab_size,
        },
    ))
}

/// The post-processor: `<bos> $A [<eos>]`, and for pairs the same around `$B`
/// (Gemma's tokenizer.json: `<bos>:0 $A:0 <bos>:1 $B:1`). `None` when neither
/// token is added.
fn template(
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
) -> Result<Option<TemplateProcessing>, tokenizers::Error> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let seq = |s: &str, type_id: u32| {
        let mut parts = Vec::new();
        if let Some((b, _)) = bos {
            parts.push(format!("{b}:{type_id}"));
        }
        parts.push(format!("${s}:{type_id}"));
        if let Some((e, _)) = eos {
            parts.push(format!("{e}:{type_id}"));
        }
        parts.join(" ")
    };
    let specials: Vec<(String, u32)> = bos
        .into_iter()
        .chain(eos)
        .map(|(p, id)| (p.to_owned(), id))
        .collect();
    let processor = TemplateProcessing::builder()
        .try_single(seq("A", 0))?
        .try_pair(format!("{} {}", seq("A", 0), seq("B", 1)))?
        .special_tokens(specials)
        .build()?;
    Ok(Some(processor))
}

/// The vocabulary with llama.cpp's changes undone.
struct Vocab {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i64>,
}

fn read_vocab(g: &GgufFile) -> Result<Vocab, GgufError> {
    let path = g.path().to_path_buf();
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const SCORES: &str = "tokenizer.ggml.scores";
    const TYPES: &str = "tokenizer.ggml.token_type";
    let tokens = g.meta_array(TOKENS)?;
    let n = tokens.len();
    if u32::try_from(n).is_err() {
        return Err(GgufError::VocabTooLarge { path, len: n });
    }
    let check_len = |key: &'static str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(GgufError::VocabLengthMismatch {
                path: path.clone(),
                key,
                len,
                expected: n,
            })
        }
    };
    let scores_meta = g.meta_array(SCORES)?;
    check_len(SCORES, scores_meta.len())?;
    let types_meta = g.meta_array(TYPES)?;
    check_len(TYPES, types_meta.len())?;

    let mut vocab = Vocab {
        pieces: Vec::with_capacity(n),
        scores: Vec::with_capacity(n),
        types: Vec::with_capacity(n),
    };
    for ((t, s), ty) in tokens.iter().zip(scores_meta).zip(types_meta) {
        let piece = t
            .as_str()
            .ok_or_else(|| g.wrong_type(TOKENS, "array of strings", t))?;
        let score = s
            .as_f32()
            .ok_or_else(|| g.wrong_type(SCORES, "array of floats", s))?;
        let ty = ty
            .as_i64()
            .ok_or_else(|| g.wrong_type(TYPES, "array of integers", ty))?;
        // Undo llama.cpp: user-defined pieces had `▁` replaced by " "; both
        // control and user-defined pieces had their score set to -1000
        // (SentencePiece gives them 0).
        let (piece, score) = match ty {
            token_type::USER_DEFINED => (piece.replace(' ', SPACE_SYMBOL), 0.0),
            token_type::CONTROL => (piece.to_owned(), 0.0),
            _ => (piece.to_owned(), score),
        };
        vocab.pieces.push(piece);
        vocab.scores.push(score);
        vocab.types.push(ty);
    }
    Ok(vocab)
}

/// Piece → id, rejecting duplicates (SentencePiece pieces are unique; a
/// duplicate would make ids ambiguous). The same map is the BPE vocabulary.
fn index_pieces(path: &std::path::Path, pieces: &[String]) -> Result<BpeVocab, GgufError> {
    let mut ids = BpeVocab::with_capacity(pieces.len());
    for (id, piece) in pieces.iter().enumerate() {
        // `read_vocab` checked that the count fits in u32.
        let id = id as u32;
        if let Some(first) = ids.insert(piece.clone(), id) {
            return Err(GgufError::DuplicatePiece {
                path: path.to_path_buf(),
                piece: piece.clone(),
                first,
                second: id,
            });
        }
    }
    Ok(ids)
}

/// SentencePiece's BPE merges, as Hugging Face derives them
/// (`convert_slow_tokenizer.generate_merges` with piece scores): for every
/// piece, every split into two pieces of the vocabulary is a merge; merges
/// are ranked by the merged piece's score (descending), then by the lengths
/// of the left and right parts in characters (descending), then by the
/// merged piece's id and the parts' ids (ascending), which is Python's stable
/// sort over that enumeration order. Returns `(left id, right id)` pairs.
fn sentencepiece_merges(vocab: &Vocab, ids: &BpeVocab) -> Vec<(u32, u32)> {
    struct Merge {
        score: f32,
        len_l: u32,
        len_r: u32,
        l: u32,
        r: u32,
    }
    let mut merges = Vec::new();
    let mut local = Vec::new();
    for (piece, &score) in vocab.pieces.iter().zip(&vocab.scores) {
        // Compare as Python does: -0.0 equals 0.0 (SentencePiece gives some
        // pieces -0.0, and total_cmp would order it below the 0.0 we gave the
        // user-defined pieces). NaN, which Python cannot order either, sorts last.
        let score = if score == 0.0 {
            0.0
        } else if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        };
        local.clear();
        let n_chars = piece.chars().count() as u32;
        for (k, (byte_idx, _)) in piece.char_indices().enumerate().skip(1) {
            let (l, r) = piece.split_at(byte_idx);
            if let (Some(&l_id), Some(&r_id)) = (ids.get(l), ids.get(r)) {
                local.push(Merge {
                    score,
                    len_l: k as u32,
                    len_r: n_chars - k as u32,
                    l: l_id,
                    r: r_id,
                });
            }
        }
        local.sort_by_key(|m| (m.l, m.r));
        merges.append(&mut local);
    }
    // Stable: ties keep the enumeration order above, as in Python.
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.len_l.cmp(&a.len_l))
            .then(b.len_r.cmp(&a.len_r))
    });
    merges.into_iter().map(|m| (m.l, m.r)).collect()
}
