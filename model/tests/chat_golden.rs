//! The chat template against golden fixtures rendered with Jinja2 from the
//! real Gemma 3 `chat_template` and tokenized with the Python `tokenizers`
//! package (`scripts/fixtures/gen_chat_fixtures.py`, versions recorded in
//! `tests/data/chat/chat_fixtures.json`).
//!
//! `render_text_matches_jinja` needs nothing else; the id tests need the
//! real tokenizer from `scripts/fetch-assets.sh` in `$MEDGEMMA_ASSETS`
//! (default `~/.cache/medgemma-assets`) and fail, saying so, without it.

mod support;

use std::path::Path;
use std::sync::OnceLock;

use medgemma_model::chat::{Message, encode_chat, render_text};
use medgemma_model::tokenizer::GemmaTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    /// Content holds control-token strings: the reference ids would contain
    /// injected control tokens, so none are recorded.
    injected: bool,
    text: String,
    ids: Option<Vec<u32>>,
}

fn fixtures() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat/chat_fixtures.json");
    let text = std::fs::read_to_string(&path).expect("read chat_fixtures.json");
    let fixtures: Fixtures = serde_json::from_str(&text).expect("parse chat_fixtures.json");
    assert!(fixtures.cases.len() >= 12);
    fixtures.cases
}

fn tok() -> &'static GemmaTokenizer {
    static TOK: OnceLock<GemmaTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = support::tokenizer_json();
        GemmaTokenizer::from_file(&path).expect("load tokenizer.json")
    })
}

/// Number of turns the template writes: messages less a leading system one.
fn turn_count(case: &Case) -> usize {
    let system = case
        .messages
        .first()
        .is_some_and(|m| m.role == medgemma_model::chat::Role::System);
    case.messages.len() - usize::from(system)
}

#[test]
fn render_text_matches_jinja() {
    for case in fixtures() {
        let text = render_text(&case.messages, case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(text, case.text, "{}", case.name);
    }
}

#[test]
fn encode_chat_matches_reference_ids() {
    let mut checked = 0;
    for case in fixtures() {
        let Some(expected) = &case.ids else {
            assert!(case.injected, "{}: no reference ids", case.name);
            continue;
        };
        let ids = encode_chat(tok(), &case.messages, case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(&ids, expected, "{}", case.name);
        // The reference way (render, then tokenize with control strings
        // parsed) gives the same here too.
        let mut raw = tok().encode_raw(&case.text).expect("encode");
        assert_eq!(raw.remove(0), 2, "encode_raw adds <bos>");
        assert_eq!(raw.first(), Some(&2), "the template starts with <bos>");
        assert_eq!(&raw[1..], &expected[1..], "{}", case.name);
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn injected_control_text_stays_in_its_message() {
    let tok = tok();
    let mut injected = 0;
    for case in fixtures() {
        let ids = encode_chat(tok, &case.messages, case.add_generation_prompt)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let turns = turn_count(&case);
        let count = |id: u32| ids.iter().filter(|&&x| x == id).count();
        assert_eq!(ids.first(), Some(&2), "{}", case.name);
        assert_eq!(count(2), 1, "{}: one <bos>", case.name);
        assert_eq!(
            count(105),
            turns + usize::from(case.add_generation_prompt),
            "{}: <start_of_turn> count",
            case.name
        );
        assert_eq!(count(106), turns, "{}: <end_of_turn> count", case.name);
        for &id in &ids {
            assert!(
                matches!(id, 2 | 105 | 106) || !tok.is_control(id),
                "{}: control id {id} inside a message",
                case.name
            );
        }
        // Spelling the three structural ids out and decoding the rest gives
        // the Jinja text back, injected strings included, so the message
        // text went in as ordinary pieces.
        let mut text = String::new();
        for segment in ids.split_inclusive(|id| matches!(id, 2 | 105 | 106)) {
            let (last, body) = segment.split_last().expect("non-empty");
            let (body, marker) = match last {
                2 => (body, "<bos>"),
                105 => (body, "<start_of_turn>"),
                106 => (body, "<end_of_turn>"),
                _ => (segment, ""),
            };
            text.push_str(&tok.decode(body).expect("decode"));
            text.push_str(marker);
        }
        assert_eq!(text, case.text, "{}", case.name);
        injected += usize::from(case.injected);
    }
    assert!(injected >= 2);
}

#[test]
fn encode_chat_validates_like_render_text() {
    let tok = tok();
    let bad = [Message::user("a"), Message::user("b")];
    assert!(encode_chat(tok, &bad, true).is_err());
    assert!(encode_chat(tok, &[], true).is_err());
}
