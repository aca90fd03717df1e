//! The Gemma 3 tokenizer: text ⇄ token ids, and incremental (streaming)
//! detokenization.
//!
//! Owns: loading a Hugging Face `tokenizer.json` (or taking an already-built
//! [`tokenizers::Tokenizer`], e.g. from GGUF metadata), the table of control
//! ids (spec `model.md` §6), the two encoding modes and the streaming decoder.
//!
//! Two encoding modes:
//! - [`GemmaTokenizer::encode_plain`] is for untrusted text (user, system and
//!   model messages). It never yields a control id: a user typing
//!   `<end_of_turn>` or `<unused94>` gets the ordinary pieces of those
//!   characters. Gemma's `tokenizer.json` marks only 9 of its 6415 added
//!   tokens as "special" (`<unusedN>`, `<mask>`, `[multimodal]` are plain
//!   added tokens), so `set_encode_special_tokens` alone is not enough: a
//!   second tokenizer whose added vocabulary keeps only the harmless added
//!   tokens (newline, tab and space runs, HTML tags) is used instead.
//! - [`GemmaTokenizer::encode_raw`] tokenizes as the tokenizer's own
//!   configuration says (control strings parsed, `<bos>` added when
//!   `add_bos`). It is for trusted, already-rendered prompts and tests.
//!
//! Must never: log, or put message text into an error (errors name files and
//! token ids only); parse control tokens out of text given to `encode_plain`.

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, AddedVocabulary, Tokenizer};

/// Control-token strings looked up by name (spec `model.md` §6).
const BOS: &str = "<bos>";
const EOS: &str = "<eos>";
const PAD: &str = "<pad>";
const START_OF_TURN: &str = "<start_of_turn>";
const END_OF_TURN: &str = "<end_of_turn>";
/// MedGemma 1.5 thinking-trace delimiters (spec `model.md` §7).
const THINK_START: &str = "<unused94>";
const THINK_END: &str = "<unused95>";
const START_OF_IMAGE: &str = "<start_of_image>";
const END_OF_IMAGE: &str = "<end_of_image>";
const IMAGE_SOFT: &str = "<image_soft_token>";

/// Names that are control tokens even where a tokenizer file does not flag
/// them "special" (Gemma's does not flag `<mask>` and `[multimodal]`).
const CONTROL_NAMES: &[&str] = &[
    PAD,
    EOS,
    BOS,
    "<unk>",
    "<mask>",
    "[multimodal]",
    START_OF_TURN,
    END_OF_TURN,
    START_OF_IMAGE,
    END_OF_IMAGE,
    IMAGE_SOFT,
];

/// Largest token-id range accepted (Gemma 3 has 262 145 ids); guards the
/// control-id table against a corrupt file naming an id in the billions.
const MAX_ID_BOUND: usize = 1 << 24;

/// U+FFFD, what the byte-fallback decoder emits for an incomplete or invalid
/// UTF-8 sequence.
const REPLACEMENT: char = '\u{FFFD}';

/// Errors of this module. Messages name the file involved and say what to
/// do; they never contain the text being tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "cannot read the tokenizer file {path}: {source}; check that it exists and is readable \
         (for the test assets run scripts/fetch-assets.sh)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid Hugging Face tokenizer.json: {source}; use the tokenizer.json \
         shipped with the checkpoint"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error(
        "{path} is not valid JSON: {source}; use the tokenizer_config.json shipped with the \
         checkpoint, or remove it to take add_bos from tokenizer.json"
    )]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the tokenizer has no `{token}` token, so it is not a Gemma 3 tokenizer; use the \
         checkpoint's own tokenizer"
    )]
    MissingToken { token: &'static str },
    /// The `tokenizers` error is dropped on purpose: its message may quote
    /// the input text.
    #[error("the tokenizer failed to encode a text (contents withheld); this is a bug, report it")]
    Encode,
    #[error("the tokenizer failed to decode token ids; this is a bug, report it")]
    Decode,
    #[error(
        "the tokenizer has token ids up to {bound}, beyond any real vocabulary; the file is \
         corrupt, use the checkpoint's own tokenizer"
    )]
    IdOutOfRange { bound: usize },
    #[error(
        "the tokenizer's added tokens are not numbered as its vocabulary expects, so control \
         tokens cannot be separated from text; use the checkpoint's own tokenizer"
    )]
    AddedTokenIds,
    #[error(
        "plain text tokenized to control token id {id} and the tokenizer has no byte-fallback \
         pieces to spell it out; use a tokenizer with byte fallback (every Gemma tokenizer has it)"
    )]
    ControlIdInPlainText { id: u32 },
}

/// Ids of the control tokens the engine inserts or reacts to (spec §6–§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub start_of_turn: u32,
    pub end_of_turn: u32,
    /// `<unused94>`: opens a MedGemma thinking trace.
    pub think_start: u32,
    /// `<unused95>`: closes it.
    pub think_end: u32,
    pub start_of_image: Option<u32>,
    pub end_of_image: Option<u32>,
    pub image_soft: Option<u32>,
}

/// The Gemma 3 tokenizer with the encoding modes this engine needs.
#[derive(Clone)]
pub struct GemmaTokenizer {
    /// As configured by the file: control strings are parsed.
    raw: Tokenizer,
    /// Same model, but an added vocabulary without control tokens.
    plain: Tokenizer,
    add_bos: bool,
    special: SpecialIds,
    /// `control[id]`: the id is a control token (never produced by
    /// `encode_plain`, never printed by `decode`).
    control: Vec<bool>,
    /// Ids of the byte-fallback pieces `<0x00>`..`<0xFF>`, where present.
    byte_ids: [Option<u32>; 256],
    /// Cached: `tokenizers` computes it by cloning the whole vocabulary.
    vocab_size: usize,
}

impl fmt::Debug for GemmaTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GemmaTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("add_bos", &self.add_bos)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl GemmaTokenizer {
    /// Loads a Hugging Face `tokenizer.json`. `add_bos` comes from
    /// `add_bos_token` in a `tokenizer_config.json` in the same folder when
    /// that file has it, otherwise from whether the file's post-processor
    /// adds `<bos>`.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(tokenizer_json).map_err(|source| TokenizerError::Read {
            path: tokenizer_json.to_path_buf(),
            source,
        })?;
        let tok = Tokenizer::from_bytes(&bytes).map_err(|source| TokenizerError::Parse {
            path: tokenizer_json.to_path_buf(),
            source,
        })?;
        let config_path = tokenizer_json.with_file_name("tokenizer_config.json");
        let add_bos = match read_add_bos(&config_path)? {
            Some(add_bos) => add_bos,
            None => post_processor_adds_bos(&tok)?,
        };
        Self::from_tokenizers(tok, add_bos)
    }

    /// Wraps an already-built tokenizer (the GGUF loader builds one from the
    /// file's metadata). `add_bos` says whether [`Self::encode_raw`] prepends
    /// `<bos>`.
    pub fn from_tokenizers(tok: Tokenizer, add_bos: bool) -> Result<Self, TokenizerError> {
        let required = |token: &'static str| {
            tok.token_to_id(token)
                .ok_or(TokenizerError::MissingToken { token })
        };
        let special = SpecialIds {
            bos: required(BOS)?,
            eos: required(EOS)?,
            pad: required(PAD)?,
            start_of_turn: required(START_OF_TURN)?,
            end_of_turn: required(END_OF_TURN)?,
            think_start: required(THINK_START)?,
            think_end: required(THINK_END)?,
            start_of_image: tok.token_to_id(START_OF_IMAGE),
            end_of_image: tok.token_to_id(END_OF_IMAGE),
            image_soft: tok.token_to_id(IMAGE_SOFT),
        };

        let vocab_size = tok.get_vocab_size(true);
        let added = tok.get_added_tokens_decoder();
        // Ids may have gaps: size the table by the largest id, not the count.
        let id_bound = added
            .keys()
            .map(|&id| usize::try_from(id).unwrap_or(usize::MAX).saturating_add(1))
            .chain([tok.get_vocab_size(false), vocab_size])
            .max()
            .unwrap_or(vocab_size);
        if id_bound > MAX_ID_BOUND {
            return Err(TokenizerError::IdOutOfRange { bound: id_bound });
        }
        let mut control = vec![false; id_bound];
        let mut mark = |id: u32| {
            if let Some(slot) = usize::try_from(id).ok().and_then(|i| control.get_mut(i)) {
                *slot = true;
            }
        };
        // Every added token flagged special, and every piece (added or in the
        // model's vocabulary) whose name is a control name or `<unusedN>`.
        for (&id, token) in &added {
            if token.special {
                mark(id);
            }
        }
        for id in 0..u32::try_from(id_bound).unwrap_or(u32::MAX) {
            if tok
                .id_to_token(id)
                .is_some_and(|piece| is_control_name(&piece))
            {
                mark(id);
            }
        }
        for id in [
            special.bos,
            special.eos,
            special.pad,
            special.start_of_turn,
            special.end_of_turn,
            special.think_start,
            special.think_end,
        ]
        .into_iter()
        .chain(special.start_of_image)
        .chain(special.end_of_image)
        .chain(special.image_soft)
        {
            mark(id);
        }

        // The plain tokenizer: same model, normalizer, pre-tokenizer and
        // decoder, but only the added tokens that are ordinary text.
        let mut kept: Vec<(u32, AddedToken)> = added
            .into_iter()
            .filter(|(id, _)| !is_control_id(&control, *id))
            .collect();
        kept.sort_by_key(|(id, _)| *id);
        let kept: Vec<AddedToken> = kept.into_iter().map(|(_, t)| t.special(false)).collect();
        let mut plain = tok.clone();
        let mut vocabulary = AddedVocabulary::new();
        vocabulary.add_tokens(&kept, plain.get_model(), plain.get_normalizer());
        plain.with_added_vocabulary(vocabulary);
        // Ids are assigned anew when a vocabulary is built; they must be the
        // original ones.
        for token in &kept {
            if plain.token_to_id(&token.content) != tok.token_to_id(&token.content) {
                return Err(TokenizerError::AddedTokenIds);
            }
        }

        let mut byte_ids = [None; 256];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            *slot = tok.token_to_id(&format!("<0x{byte:02X}>"));
        }

        Ok(Self {
            raw: tok,
            plain,
            add_bos,
            special,
            control,
            byte_ids,
            vocab_size,
        })
    }

    /// The control ids the engine uses.
    pub fn special(&self) -> &SpecialIds {
        &self.special
    }

    /// Number of token ids, added tokens included (262 145 for Gemma 3; the
    /// embedding matrix has more rows, see spec §1).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `add_bos` is on (see [`Self::from_file`]).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` is a control token: the special tokens, `<unusedN>`
    /// (thinking delimiters included), `<mask>`, `[multimodal]`, the image
    /// tokens. Unknown ids are not control tokens.
    pub fn is_control(&self, id: u32) -> bool {
        is_control_id(&self.control, id)
    }

    /// Id of a piece or added token, by its exact string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.raw.token_to_id(token)
    }

    /// Tokenizes untrusted message text: no control-token parsing, no
    /// `<bos>`. Never returns a control id.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .plain
            .encode_fast(text, false)
            .map_err(|_| TokenizerError::Encode)?;
        if !encoding.get_ids().iter().any(|&id| self.is_control(id)) {
            return Ok(encoding.get_ids().to_vec());
        }
        // Defence in depth: Gemma's BPE merges never build a control piece,
        // but a tokenizer built elsewhere (GGUF) might. Spell such a token
        // out with byte-fallback pieces of the text it covered.
        let encoding = self
            .plain
            .encode(text, false)
            .map_err(|_| TokenizerError::Encode)?;
        let mut ids = Vec::with_capacity(encoding.len());
        for (&id, &(start, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
            if !self.is_control(id) {
                ids.push(id);
                continue;
            }
            let covered = text.as_bytes().get(start..end).unwrap_or_default();
            for &byte in covered {
                match self.byte_ids[usize::from(byte)] {
                    Some(byte_id) if !self.is_control(byte_id) => ids.push(byte_id),
                    _ => return Err(TokenizerError::ControlIdInPlainText { id }),
                }
            }
        }
        Ok(ids)
    }

    /// Tokenizes as the tokenizer's own configuration says: control strings
    /// become control ids, and `<bos>` is prepended when `add_bos` is on.
    /// Only for trusted text.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .raw
            .encode_fast(text, false)
            .map_err(|_| TokenizerError::Encode)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos {
            ids.push(self.special.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of the ordinary tokens among `ids`. Control tokens
    /// (including `<unused94>`/`<unused95>`) and unknown ids print nothing;
    /// a control token also ends any byte-fallback sequence before it, as in
    /// [`StreamDecoder`].
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut text = String::new();
        for segment in ids.split(|&id| self.is_control(id)) {
            if !segment.is_empty() {
                text.push_str(&self.decode_segment(segment)?);
            }
        }
        Ok(text)
    }

    /// A decoder that turns generated ids into text deltas one id at a time.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            state: DecodeState::default(),
        }
    }

    /// Decodes ids that contain no control token.
    fn decode_segment(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.raw
            .decode(ids, false)
            .map_err(|_| TokenizerError::Decode)
    }
}

/// Incremental detokenizer (the "prefix offset" technique of HF TGI and vLLM):
/// it keeps only a short window of ids: those of the last emitted chunk, as
/// context, and those not yet emitted. Each [`StreamDecoder::push`] decodes
/// that window twice, so the cost per token does not grow with the length of
/// the generation.
///
/// A chunk is held while its text ends in U+FFFD, i.e. while a byte-fallback
/// sequence (`<0xE6><0xB0><0xB4>` = "水") is incomplete. The deltas
/// concatenate to [`GemmaTokenizer::decode`] of all pushed ids.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a GemmaTokenizer,
    state: DecodeState,
}

impl StreamDecoder<'_> {
    /// Adds one generated id; returns the new text (possibly empty).
    ///
    /// A control id prints nothing itself, but ends the current
    /// byte-fallback sequence: any held incomplete bytes are returned as
    /// U+FFFD with it.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.state.push(self.tok, id)
    }

    /// Ends the stream: returns the held text, incomplete bytes as U+FFFD,
    /// and starts afresh.
    pub fn flush(&mut self) -> String {
        self.state.flush(self.tok)
    }
}

/// The state of a [`StreamDecoder`] without the tokenizer it borrows, for
/// owners that keep many streams next to one tokenizer (the daemon's batch of
/// running turns); each call takes the tokenizer.
#[derive(Default)]
pub struct DecodeState {
    /// `window[..read]`: context already emitted; `window[read..]`: pending.
    window: Vec<u32>,
    read: usize,
}

impl fmt::Debug for DecodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodeState")
            .field("pending_ids", &(self.window.len() - self.read))
            .finish_non_exhaustive()
    }
}

impl DecodeState {
    /// [`StreamDecoder::push`] with `tok`.
    pub fn push(&mut self, tok: &GemmaTokenizer, id: u32) -> Result<String, TokenizerError> {
        if tok.is_control(id) {
            return Ok(self.flush(tok));
        }
        self.window.push(id);
        let context = tok.decode_segment(&self.window[..self.read])?;
        let text = tok.decode_segment(&self.window)?;
        if text.len() <= context.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let Some(delta) = text.strip_prefix(context.as_str()).map(str::to_owned) else {
            // The decoder rewrote the context (not the case for Gemma's
            // decoder); wait for more ids rather than emit a wrong delta.
            return Ok(String::new());
        };
        // The pending ids become the context of the next chunk.
        self.window.drain(..self.read);
        self.read = self.window.len();
        Ok(delta)
    }

    /// [`StreamDecoder::flush`] with `tok`.
    pub fn flush(&mut self, tok: &GemmaTokenizer) -> String {
        let held = if self.read < self.window.len() {
            let context = tok.decode_segment(&self.window[..self.read]);
            let text = tok.decode_segment(&self.window);
            match (context, text) {
                (Ok(context), Ok(text)) => match text.strip_prefix(context.as_str()) {
                    Some(delta) => delta.to_owned(),
                    None => REPLACEMENT.to_string(),
                },
                _ => REPLACEMENT.to_string(),
            }
        } else {
            String::new()
        };
        self.window.clear();
        self.read = 0;
        held
    }
}

fn is_control_id(control: &[bool], id: u32) -> bool {
    usize::try_from(id)
        .ok()
        .and_then(|i| control.get(i))
        .copied()
        .unwrap_or(false)
}

/// `<unusedN>` or one of [`CONTROL_NAMES`].
fn is_control_name(piece: &str) -> bool {
    if CONTROL_NAMES.contains(&piece) {
        return true;
    }
    piece
        .strip_prefix("<unused")
        .and_then(|rest| rest.strip_suffix('>'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `add_bos_token` from a `tokenizer_config.json`, if the file exists and
/// has the key.
fn read_add_bos(path: &Path) -> Result<Option<bool>, TokenizerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Config {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(config
        .get("add_bos_token")
        .and_then(serde_json::Value::as_bool))
}

/// Whether the tokenizer's post-processor puts `<bos>` first.
fn post_processor_adds_bos(tok: &Tokenizer) -> Result<bool, TokenizerError> {
    let bos = tok
        .token_to_id(BOS)
        .ok_or(TokenizerError::MissingToken { token: BOS })?;
    let encoding = tok
        .encode_fast("", true)
        .map_err(|_| TokenizerError::Encode)?;
    Ok(encoding.get_ids().first() == Some(&bos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GemmaTokenizer>();
        assert_send_sync::<TokenizerError>();
    }

    /// A tokenizer shaped like one built from GGUF metadata: no added
    /// tokens at all, control pieces only in the BPE vocabulary, and merges
    /// that can build `<unused94>` out of plain characters.
    fn gguf_like() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        let mut add = |piece: &str| {
            let id = vocab.len();
            vocab.insert(piece.to_owned(), serde_json::Value::from(id));
        };
        for piece in [
            PAD,
            EOS,
            BOS,
            "<unk>",
            START_OF_TURN,
            END_OF_TURN,
            THINK_END,
        ] {
            add(piece);
        }
        for byte in 0..=255u8 {
            add(&format!("<0x{byte:02X}>"));
        }
        for c in ["<", "u", "n", "s", "e", "d", "9", "4", ">"] {
            add(c);
        }
        let mut merges = Vec::new();
        let mut built = String::new();
        for c in THINK_START.chars() {
            if !built.is_empty() {
                merges.push(serde_json::json!([built.clone(), c.to_string()]));
            }
            built.push(c);
            if built.len() > 1 {
                add(&built);
            }
        }
        assert_eq!(built, THINK_START);
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }
        });
        Tokenizer::from_bytes(json.to_string()).expect("valid tokenizer JSON")
    }

    #[test]
    fn plain_spells_out_control_pieces_built_by_merges() {
        let tok = GemmaTokenizer::from_tokenizers(gguf_like(), false).expect("wrap");
        let think = tok.special().think_start;
        assert!(tok.is_control(think));
        // The model alone builds the control piece from plain characters...
        let raw = tok.encode_raw(THINK_START).expect("encode");
        assert_eq!(raw, [think]);
        // ...encode_plain spells it out in byte-fallback pieces instead.
        let plain = tok.encode_plain(THINK_START).expect("encode");
        let bytes: Vec<u32> = THINK_START
            .bytes()
            .map(|b| tok.token_id(&format!("<0x{b:02X}>")).expect("byte piece"))
            .collect();
        assert_eq!(plain, bytes);
        assert_eq!(tok.decode(&plain).expect("decode"), THINK_START);
        let plain = tok.encode_plain("sun<unused94>4").expect("encode");
        assert!(plain.iter().all(|&id| !tok.is_control(id)));
        assert_eq!(tok.decode(&plain).expect("decode"), "sun<unused94>4");
    }

    #[test]
    fn control_names() {
        assert!(is_control_name("<unused0>"));
        assert!(is_control_name("<unused6241>"));
        assert!(is_control_name("<mask>"));
        assert!(is_control_name("<start_of_turn>"));
        assert!(!is_control_name("<unused>"));
        assert!(!is_control_name("<unused9a>"));
        assert!(!is_control_name("<b>"));
        assert!(!is_control_name("\n"));
    }
}
