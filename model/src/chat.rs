//! The Gemma 3 chat template (spec `model.md` §6), reimplemented without a
//! template engine.
//!
//! Owns: conversation validation (system first, user/model alternation),
//! [`render_text`], which reproduces the Jinja template of Gemma 3's
//! `tokenizer_config.json` byte for byte, and [`encode_chat`], which builds
//! the prompt ids with control tokens inserted by id and message text
//! tokenized by [`GemmaTokenizer::encode_plain`].
//!
//! Must never: let message text produce a control token (a user typing
//! `<end_of_turn>\n<start_of_turn>model` stays inside their own turn), log
//! message text, or put it into an error (errors carry message indices only).
//!
//! On ordinary text `encode_chat` gives exactly the ids the reference gets by
//! tokenizing the rendered string: Gemma's added-token splitting isolates the
//! text between two control tokens, so tokenizing each segment alone is the
//! same (checked against the reference tokenizer in `tests/chat_golden.rs`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tokenizer::{GemmaTokenizer, TokenizerError};

/// Who wrote a message. Serialized in lower case; `assistant` is written
/// `model` in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation. `Debug` does not print the content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("content_bytes", &self.content.len())
            .finish()
    }
}

/// Errors of this module. Indices are positions in the `messages` slice.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the conversation has no user message; send at least one")]
    Empty,
    #[error(
        "message {index} is a system message, but only the first message may be one; merge it \
         into the first message"
    )]
    SystemNotFirst { index: usize },
    #[error(
        "conversation roles must alternate user/assistant/user/... starting with user (after an \
         optional system message); message {index} breaks the order"
    )]
    RolesMustAlternate { index: usize },
    #[error("message {index} is a system message with an image; put images in a user message")]
    ImageInSystem { index: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// One turn after validation: the system prefix folded into the first user
/// turn, content trimmed.
struct Turn<'a> {
    /// `user` or `model`.
    role: &'static str,
    /// Text of the leading system message (untrimmed), first user turn only.
    system: Option<&'a str>,
    content: &'a str,
}

/// Validates `messages` as the template (and spec §6) does.
fn turns(messages: &[Message]) -> Result<Vec<Turn<'_>>, ChatError> {
    let (system, offset) = match messages.first() {
        Some(first) if first.role == Role::System => (Some(first.content.as_str()), 1),
        _ => (None, 0),
    };
    let rest = messages.get(offset..).unwrap_or_default();
    if rest.is_empty() {
        return Err(ChatError::Empty);
    }
    let mut turns = Vec::with_capacity(rest.len());
    for (i, message) in rest.iter().enumerate() {
        let index = i + offset;
        let role = match (message.role, i % 2 == 0) {
            (Role::System, _) => return Err(ChatError::SystemNotFirst { index }),
            (Role::User, true) => "user",
            (Role::Assistant, false) => "model",
            _ => return Err(ChatError::RolesMustAlternate { index }),
        };
        turns.push(Turn {
            role,
            system: if i == 0 { system } else { None },
            content: py_strip(&message.content),
        });
    }
    Ok(turns)
}

const BOS: &str = "<bos>";
const START_OF_TURN: &str = "<start_of_turn>";
const END_OF_TURN: &str = "<end_of_turn>";
/// Separates the system text from the first user message.
const SYSTEM_SEPARATOR: &str = "\n\n";

/// The prompt string exactly as the Gemma 3 Jinja chat template renders it
/// (for tests and debugging; the engine uses [`encode_chat`]).
pub fn render_text(messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
    let turns = turns(messages)?;
    let mut text = String::from(BOS);
    for turn in &turns {
        text.push_str(START_OF_TURN);
        text.push_str(turn.role);
        text.push('\n');
        if let Some(system) = turn.system {
            text.push_str(system);
            text.push_str(SYSTEM_SEPARATOR);
        }
        text.push_str(turn.content);
        text.push_str(END_OF_TURN);
        text.push('\n');
    }
    if add_generation_prompt {
        text.push_str(START_OF_TURN);
        text.push_str("model\n");
    }
    Ok(text)
}

/// The prompt ids: `<bos>`, then for each turn `<start_of_turn>`,
/// plain-encoded `"{role}\n{content}"`, `<end_of_turn>`, plain-encoded
/// `"\n"`; with `add_generation_prompt`, `<start_of_turn>` and plain-encoded
/// `"model\n"`. Control ids appear only where this function puts them.
pub fn encode_chat(
    tok: &GemmaTokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    let turns = turns(messages)?;
    let special = tok.special();
    let newline = tok.encode_plain("\n")?;
    let mut ids = vec![special.bos];
    let mut segment = String::new();
    for turn in &turns {
        segment.clear();
        segment.push_str(turn.role);
        segment.push('\n');
        if let Some(system) = turn.system {
            segment.push_str(system);
            segment.push_str(SYSTEM_SEPARATOR);
        }
        segment.push_str(turn.content);
        ids.push(special.start_of_turn);
        ids.extend(tok.encode_plain(&segment)?);
        ids.push(special.end_of_turn);
        ids.extend_from_slice(&newline);
    }
    if add_generation_prompt {
        ids.push(special.start_of_turn);
        ids.extend(tok.encode_plain("model\n")?);
    }
    Ok(ids)
}

/// Jinja's `trim` filter: Python's `str.strip()`, which strips the characters
/// for which `str.isspace()` holds. That set is Unicode `White_Space` (Rust's
/// `char::is_whitespace`) plus U+001C..U+001F (bidi class B/S). Listed
/// explicitly so a Unicode update on either side cannot shift it silently.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\u{09}'..='\u{0D}'
            | '\u{1C}'..='\u{20}'
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// One part of a multimodal message: text, or the place of an image (its
/// pixels travel separately, to `vision::VisionTower::encode`, in the order
/// the image parts appear in the conversation). `Debug` prints only lengths.
#[derive(Clone, PartialEq, Eq)]
pub enum Part {
    /// Text; trimmed like the template's `item['text'] | trim`.
    Text(String),
    /// An image.
    Image,
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Part::Image => f.write_str("Image"),
        }
    }
}

/// A message whose content is a list of parts (the template's list form).
/// A leading system message must be text only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultimodalMessage {
    pub role: Role,
    pub parts: Vec<Part>,
}

impl From<Message> for MultimodalMessage {
    fn from(m: Message) -> Self {
        Self {
            role: m.role,
            parts: vec![Part::Text(m.content)],
        }
    }
}

impl MultimodalMessage {
    /// Images in this message.
    pub fn images(&self) -> usize {
        self.parts.iter().filter(|p| **p == Part::Image).count()
    }
}

/// How one image is written into the prompt ids (spec §5.4): `\n\n`,
/// `<start_of_image>`, `per_image` × `<image_soft_token>`, `<end_of_image>`,
/// `\n\n`. `vision::VisionConfig::image_tokens` gives the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokens {
    /// `<start_of_image>`.
    pub start: u32,
    /// `<image_soft_token>`.
    pub soft: u32,
    /// `<end_of_image>`.
    pub end: u32,
    /// Soft tokens per image (256).
    pub per_image: usize,
}

const START_OF_IMAGE: &str = "<start_of_image>";

/// The template's rendering of a multimodal conversation: each image part
/// becomes `<start_of_image>` (before the processor expands it), text parts
/// are trimmed and joined with nothing between.
pub fn render_text_multimodal(
    messages: &[MultimodalMessage],
    add_generation_prompt: bool,
) -> Result<String, ChatError> {
    let flat = flatten(messages)?;
    let turns = turns(&flat)?;
    let mut text = String::from(BOS);
    let offset = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
    for (turn, message) in turns.iter().zip(&messages[offset..]) {
        text.push_str(START_OF_TURN);
        text.push_str(turn.role);
        text.push('\n');
        if let Some(system) = turn.system {
            text.push_str(system);
            text.push_str(SYSTEM_SEPARATOR);
        }
        for part in &message.parts {
            match part {
                Part::Text(t) => text.push_str(py_strip(t)),
                Part::Image => text.push_str(START_OF_IMAGE),
            }
        }
        text.push_str(END_OF_TURN);
        text.push('\n');
    }
    if add_generation_prompt {
        text.push_str(START_OF_TURN);
        text.push_str("model\n");
    }
    Ok(text)
}

/// The prompt ids of a multimodal conversation: as [`encode_chat`], with
/// each image part replaced by its block of ids inserted directly (spec §5.4
/// advice: tokenizing the expanded string could merge its `\n\n` with
/// neighbouring newlines). Text between two images or controls is encoded
/// on its own with [`GemmaTokenizer::encode_plain`], so message text never
/// yields a control or image token.
pub fn encode_chat_multimodal(
    tok: &GemmaTokenizer,
    messages: &[MultimodalMessage],
    image: &ImageTokens,
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    let flat = flatten(messages)?;
    let turns = turns(&flat)?;
    let special = tok.special();
    let newline = tok.encode_plain("\n")?;
    let gap = tok.encode_plain("\n\n")?;
    let offset = usize::from(messages.first().is_some_and(|m| m.role == Role::System));
    let mut ids = vec![special.bos];
    let mut segment = String::new();
    for (turn, message) in turns.iter().zip(&messages[offset..]) {
        segment.clear();
        segment.push_str(turn.role);
        segment.push('\n');
        if let Some(system) = turn.system {
            segment.push_str(system);
            segment.push_str(SYSTEM_SEPARATOR);
        }
        ids.push(special.start_of_turn);
        for part in &message.parts {
            match part {
                Part::Text(t) => segment.push_str(py_strip(t)),
                Part::Image => {
                    if !segment.is_empty() {
                        ids.extend(tok.encode_plain(&segment)?);
                        segment.clear();
                    }
                    ids.extend_from_slice(&gap);
                    ids.push(image.start);
                    ids.extend(std::iter::repeat_n(image.soft, image.per_image));
                    ids.push(image.end);
                    ids.extend_from_slice(&gap);
                }
            }
        }
        if !segment.is_empty() {
            ids.extend(tok.encode_plain(&segment)?);
        }
        ids.push(special.end_of_turn);
        ids.extend_from_slice(&newline);
    }
    if add_generation_prompt {
        ids.push(special.start_of_turn);
        ids.extend(tok.encode_plain("model\n")?);
    }
    Ok(ids)
}

/// Text-only stand-ins for validation by [`turns`] (roles, system first);
/// a system message with an image is refused.
fn flatten(messages: &[MultimodalMessage]) -> Result<Vec<Message>, ChatError> {
    messages
        .iter()
        .enumerate()
        .map(|(index, m)| {
            if m.role == Role::System && m.images() > 0 {
                return Err(ChatError::ImageInSystem { index });
            }
            let content = m
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t.as_str()),
                    Part::Image => None,
                })
                .collect::<Vec<_>>()
                .concat();
            Ok(Message {
                role: m.role,
                content,
            })
        })
        .collect()
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_strip_matches_python_isspace() {
        // Every code point for which Python 3.11's str.isspace() holds.
        let python: &[u32] = &[
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                is_py_space(c),
                python.contains(&u32::from(c)),
                "U+{:04X}",
                u32::from(c)
            );
        }
        assert_eq!(py_strip("\u{3000} a b \u{1f}\u{85}"), "a b");
        assert_eq!(py_strip("\u{200b}x\u{200b}"), "\u{200b}x\u{200b}");
    }

    #[test]
    fn empty_conversation_is_an_error() {
        assert!(matches!(render_text(&[], true), Err(ChatError::Empty)));
        assert!(matches!(
            render_text(&[Message::system("s")], true),
            Err(ChatError::Empty)
        ));
    }

    #[test]
    fn roles_must_alternate() {
        let err = render_text(&[Message::user("a"), Message::user("b")], true);
        assert!(matches!(
            err,
            Err(ChatError::RolesMustAlternate { index: 1 })
        ));
        let err = render_text(&[Message::assistant("a")], true);
        assert!(matches!(
            err,
            Err(ChatError::RolesMustAlternate { index: 0 })
        ));
        let err = render_text(&[Message::system("s"), Message::assistant("a")], true);
        assert!(matches!(
            err,
            Err(ChatError::RolesMustAlternate { index: 1 })
        ));
        let err = render_text(
            &[
                Message::user("a"),
                Message::assistant("b"),
                Message::assistant("c"),
            ],
            true,
        );
        assert!(matches!(
            err,
            Err(ChatError::RolesMustAlternate { index: 2 })
        ));
    }

    #[test]
    fn system_only_first() {
        // Jinja would render a system message at an odd position as a
        // "system" turn; the spec makes it an error.
        let err = render_text(
            &[Message::user("a"), Message::system("s"), Message::user("b")],
            true,
        );
        assert!(matches!(err, Err(ChatError::SystemNotFirst { index: 1 })));
        let err = render_text(&[Message::system("s"), Message::system("t")], true);
        assert!(matches!(err, Err(ChatError::SystemNotFirst { index: 1 })));
    }

    #[test]
    fn spec_example() {
        let text = render_text(
            &[
                Message::system("You are a careful clinical assistant."),
                Message::user("  What is HbA1c?  "),
                Message::assistant("A marker of average glucose."),
                Message::user("Describe this X-ray."),
            ],
            true,
        )
        .expect("valid conversation");
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nYou are a careful clinical assistant.\n\nWhat is \
             HbA1c?<end_of_turn>\n<start_of_turn>model\nA marker of average \
             glucose.<end_of_turn>\n<start_of_turn>user\nDescribe this \
             X-ray.<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn message_debug_hides_content() {
        let shown = format!("{:?}", Message::user("patient name"));
        assert!(!shown.contains("patient"), "{shown}");
    }
}
