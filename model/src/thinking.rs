//! The MedGemma 1.5 thinking trace (spec `model.md` §7): splits a generated
//! stream into a reasoning channel and an answer channel.
//!
//! The trace is `<unused94>` (id 100) + `"thought\n"` + reasoning +
//! `<unused95>` (id 101) + answer. The parser works on ids for the two
//! delimiters and on text deltas (from [`crate::tokenizer::StreamDecoder`])
//! for the rest, so the label `"thought\n"` is recognised however the deltas
//! split it.
//!
//! Rules:
//! - a trace opens only if id 100 comes before any non-whitespace text;
//!   otherwise everything is answer and ids 100/101 are ignored;
//! - the label `"thought\n"` right after id 100 is dropped (a bare
//!   `"thought"` closed by id 101 or by the end of the stream too);
//! - id 101 closes the trace; leading whitespace of the answer is dropped;
//! - a stream that ends inside the trace leaves everything after id 100 as
//!   reasoning, with [`ParsedResponse::thinking_unterminated`] set.
//!
//! The delta passed with an id is text decoded *before* that id takes effect
//! (a decoder may release held bytes when it sees a control id), so it is
//! attributed to the channel that was open.
//!
//! Must never: log or put response text into an error or a `Debug` output.

use std::fmt;

/// The literal that follows `<unused94>` (Google's MedGemma notebook drops
/// `"<unused94>thought\n"`).
const LABEL: &str = "thought\n";
/// Textual forms of the delimiters, for [`strip_reasoning`].
const THINK_START_TEXT: &str = "<unused94>";
const THINK_END_TEXT: &str = "<unused95>";

/// Where a piece of generated text belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Inside the thinking trace.
    Reasoning,
    /// The final answer.
    Answer,
}

/// The whole response, split. `Debug` does not print the text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ParsedResponse {
    /// The trace without its delimiters and label; `None` when the response
    /// had no trace.
    pub reasoning: Option<String>,
    pub answer: String,
    /// The stream ended inside the trace (e.g. max tokens ran out).
    pub thinking_unterminated: bool,
}

impl fmt::Debug for ParsedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedResponse")
            .field("reasoning_bytes", &self.reasoning.as_ref().map(String::len))
            .field("answer_bytes", &self.answer.len())
            .field("thinking_unterminated", &self.thinking_unterminated)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace seen yet (held, in case a trace opens).
    Start {
        whitespace: String,
    },
    /// Right after id 100: matching the label.
    Label {
        pending: String,
    },
    Reasoning,
    /// Right after id 101: dropping leading whitespace.
    AfterClose,
    Answer,
}

/// Streaming parser; feed it every generated (id, delta) pair in order.
pub struct ThinkingParser {
    think_start: u32,
    think_end: u32,
    state: State,
    response: ParsedResponse,
}

impl fmt::Debug for ThinkingParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThinkingParser")
            .field("think_start", &self.think_start)
            .field("think_end", &self.think_end)
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

impl ThinkingParser {
    /// `think_start`/`think_end`: the ids of `<unused94>`/`<unused95>`
    /// (see [`crate::tokenizer::SpecialIds`]).
    pub fn new(think_start: u32, think_end: u32) -> Self {
        Self {
            think_start,
            think_end,
            state: State::Start {
                whitespace: String::new(),
            },
            response: ParsedResponse::default(),
        }
    }

    /// Whether a trace is open and not yet closed.
    pub fn in_reasoning(&self) -> bool {
        matches!(self.state, State::Label { .. } | State::Reasoning)
    }

    /// Feeds one generated id and the text delta decoded with it; returns
    /// the new text per channel (consecutive pieces of one channel merged).
    pub fn push(&mut self, id: u32, delta: &str) -> Vec<(Channel, String)> {
        let mut out = Vec::new();
        self.text(delta, &mut out);
        if id == self.think_start {
            self.open();
        } else if id == self.think_end {
            self.close(&mut out);
        }
        out
    }

    /// Feeds text that arrived without a token of its own (the stream
    /// decoder's final flush).
    pub fn push_text(&mut self, delta: &str) -> Vec<(Channel, String)> {
        let mut out = Vec::new();
        self.text(delta, &mut out);
        out
    }

    /// Ends the stream.
    pub fn finish(mut self) -> ParsedResponse {
        match std::mem::replace(&mut self.state, State::Answer) {
            State::Start { whitespace } => self.response.answer.push_str(&whitespace),
            State::Label { pending } => {
                if !LABEL.starts_with(pending.as_str()) {
                    self.reasoning_text(&pending);
                }
                self.response.thinking_unterminated = true;
            }
            State::Reasoning => self.response.thinking_unterminated = true,
            State::AfterClose | State::Answer => {}
        }
        self.response
    }

    fn text(&mut self, delta: &str, out: &mut Vec<(Channel, String)>) {
        if delta.is_empty() {
            return;
        }
        match &mut self.state {
            State::Start { whitespace } => {
                if delta.chars().all(char::is_whitespace) {
                    whitespace.push_str(delta);
                } else {
                    let text = std::mem::take(whitespace) + delta;
                    self.state = State::Answer;
                    self.emit(Channel::Answer, &text, out);
                }
            }
            State::Label { pending } => {
                pending.push_str(delta);
                if LABEL.starts_with(pending.as_str()) && pending.len() < LABEL.len() {
                    return;
                }
                let pending = std::mem::take(pending);
                self.state = State::Reasoning;
                let rest = pending.strip_prefix(LABEL).unwrap_or(&pending);
                self.emit(Channel::Reasoning, rest, out);
            }
            State::Reasoning => self.emit(Channel::Reasoning, delta, out),
            State::AfterClose => {
                let rest = delta.trim_start();
                if !rest.is_empty() {
                    self.state = State::Answer;
                    self.emit(Channel::Answer, rest, out);
                }
            }
            State::Answer => self.emit(Channel::Answer, delta, out),
        }
    }

    fn open(&mut self) {
        if matches!(self.state, State::Start { .. }) {
            self.state = State::Label {
                pending: String::new(),
            };
            self.response.reasoning = Some(String::new());
        }
    }

    fn close(&mut self, out: &mut Vec<(Channel, String)>) {
        match std::mem::replace(&mut self.state, State::AfterClose) {
            State::Label { pending } => {
                // A bare (partial) label is still the label.
                if !LABEL.starts_with(pending.as_str()) {
                    self.emit(Channel::Reasoning, &pending, out);
                }
            }
            State::Reasoning => {}
            other => self.state = other,
        }
    }

    fn reasoning_text(&mut self, text: &str) {
        self.response
            .reasoning
            .get_or_insert_with(String::new)
            .push_str(text);
    }

    fn emit(&mut self, channel: Channel, text: &str, out: &mut Vec<(Channel, String)>) {
        if text.is_empty() {
            return;
        }
        match channel {
            Channel::Reasoning => self.reasoning_text(text),
            Channel::Answer => self.response.answer.push_str(text),
        }
        match out.last_mut() {
            Some((last, buffered)) if *last == channel => buffered.push_str(text),
            _ => out.push((channel, text.to_owned())),
        }
    }
}

/// For re-feeding history: a model turn kept as text with its trace spelled
/// out (`"<unused94>thought\n…<unused95>answer"`) loses the trace; an
/// unterminated trace leaves nothing. Text without a leading `<unused94>` is
/// returned unchanged. (Turns produced by this engine are better stored as
/// [`ParsedResponse::answer`], which never holds the trace.)
pub fn strip_reasoning(response: &str) -> &str {
    match response.trim_start().strip_prefix(THINK_START_TEXT) {
        Some(trace) => match trace.find(THINK_END_TEXT) {
            Some(end) => trace[end + THINK_END_TEXT.len()..].trim_start(),
            None => "",
        },
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u32 = 100;
    const END: u32 = 101;
    const TEXT: u32 = 7;

    /// Runs the parser over (id, delta) pairs; returns the streamed text per
    /// channel and the final result.
    fn run(events: &[(u32, &str)]) -> (String, String, ParsedResponse) {
        let mut parser = ThinkingParser::new(START, END);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        for &(id, delta) in events {
            for (channel, text) in parser.push(id, delta) {
                assert!(!text.is_empty());
                match channel {
                    Channel::Reasoning => reasoning.push_str(&text),
                    Channel::Answer => answer.push_str(&text),
                }
            }
        }
        (reasoning, answer, parser.finish())
    }

    #[test]
    fn no_trace_is_all_answer() {
        let (r, a, p) = run(&[(TEXT, "Hello"), (TEXT, " world"), (START, ""), (END, "")]);
        assert_eq!((r.as_str(), a.as_str()), ("", "Hello world"));
        assert_eq!(p.reasoning, None);
        assert_eq!(p.answer, "Hello world");
        assert!(!p.thinking_unterminated);
    }

    #[test]
    fn leading_whitespace_before_trace_is_dropped() {
        let (r, a, p) = run(&[
            (TEXT, "\n"),
            (START, ""),
            (TEXT, "thought\nwhy"),
            (END, ""),
            (TEXT, "ok"),
        ]);
        assert_eq!((r.as_str(), a.as_str()), ("why", "ok"));
        assert_eq!(p.reasoning.as_deref(), Some("why"));
        assert_eq!(p.answer, "ok");
    }

    #[test]
    fn whitespace_only_response_without_trace() {
        let (_, _, p) = run(&[(TEXT, " "), (TEXT, "\n")]);
        assert_eq!(p.reasoning, None);
        assert_eq!(p.answer, " \n");
    }

    #[test]
    fn label_split_at_every_byte() {
        let full = "thought\nStep 1: eGFR is 48.\nStep 2: CKD 3a.";
        for i in 0..=full.len() {
            for j in i..=full.len() {
                let events = [
                    (START, ""),
                    (TEXT, &full[..i]),
                    (TEXT, &full[i..j]),
                    (TEXT, &full[j..]),
                    (END, ""),
                    (TEXT, "\n\n"),
                    (TEXT, "  CKD stage 3a."),
                    (TEXT, "\n"),
                ];
                let (r, a, p) = run(&events);
                let expected = "Step 1: eGFR is 48.\nStep 2: CKD 3a.";
                assert_eq!(r, expected, "split at {i},{j}");
                assert_eq!(a, "CKD stage 3a.\n", "split at {i},{j}");
                assert_eq!(p.reasoning.as_deref(), Some(expected));
                assert_eq!(p.answer, "CKD stage 3a.\n");
                assert!(!p.thinking_unterminated);
            }
        }
    }

    #[test]
    fn label_one_byte_per_delta() {
        let mut events = vec![(START, "")];
        let text = "thought\nx";
        events.extend((0..text.len()).map(|i| (TEXT, &text[i..=i])));
        events.push((END, ""));
        events.push((TEXT, "y"));
        let (r, a, _) = run(&events);
        assert_eq!((r.as_str(), a.as_str()), ("x", "y"));
    }

    #[test]
    fn unterminated_trace() {
        let (r, a, p) = run(&[(START, ""), (TEXT, "thought\nLet me"), (TEXT, " think")]);
        assert_eq!((r.as_str(), a.as_str()), ("Let me think", ""));
        assert_eq!(p.reasoning.as_deref(), Some("Let me think"));
        assert_eq!(p.answer, "");
        assert!(p.thinking_unterminated);
    }

    #[test]
    fn unterminated_inside_label() {
        for cut in 0..LABEL.len() {
            let (_, _, p) = run(&[(START, ""), (TEXT, &LABEL[..cut])]);
            assert_eq!(p.reasoning.as_deref(), Some(""), "cut {cut}");
            assert!(p.thinking_unterminated);
        }
    }

    #[test]
    fn label_without_newline_closed() {
        let (r, a, p) = run(&[(START, ""), (TEXT, "thought"), (END, ""), (TEXT, "answer")]);
        assert_eq!((r.as_str(), a.as_str()), ("", "answer"));
        assert_eq!(p.reasoning.as_deref(), Some(""));
        assert!(!p.thinking_unterminated);
    }

    #[test]
    fn missing_label_is_reasoning() {
        let (r, a, p) = run(&[
            (START, ""),
            (TEXT, "Let"),
            (TEXT, " me"),
            (END, ""),
            (TEXT, "x"),
        ]);
        assert_eq!((r.as_str(), a.as_str()), ("Let me", "x"));
        assert_eq!(p.reasoning.as_deref(), Some("Let me"));
    }

    #[test]
    fn label_is_dropped_only_once() {
        let (r, _, _) = run(&[(START, ""), (TEXT, "thought\nthought\n"), (END, "")]);
        assert_eq!(r, "thought\n");
    }

    #[test]
    fn delta_with_delimiter_belongs_to_the_channel_before_it() {
        // A decoder releasing held text with id 101 (e.g. U+FFFD of an
        // incomplete byte sequence) attributes it to the reasoning.
        let (r, a, _) = run(&[(START, ""), (TEXT, "thought\nab"), (END, "c"), (TEXT, "d")]);
        assert_eq!((r.as_str(), a.as_str()), ("abc", "d"));
    }

    #[test]
    fn second_start_and_stray_end_are_ignored() {
        let (r, a, p) = run(&[
            (START, ""),
            (TEXT, "thought\nr"),
            (START, ""),
            (END, ""),
            (TEXT, "a"),
            (END, ""),
            (START, ""),
            (TEXT, "b"),
        ]);
        assert_eq!((r.as_str(), a.as_str()), ("r", "ab"));
        assert_eq!(p.answer, "ab");
    }

    #[test]
    fn empty_trace_and_answer_whitespace_trimmed() {
        let (r, a, p) = run(&[
            (START, ""),
            (TEXT, "thought\n"),
            (END, ""),
            (TEXT, " \n"),
            (TEXT, "\t"),
            (TEXT, "\n Answer  "),
        ]);
        assert_eq!((r.as_str(), a.as_str()), ("", "Answer  "));
        assert_eq!(p.reasoning.as_deref(), Some(""));
    }

    #[test]
    fn chunks_are_merged_per_channel() {
        let mut parser = ThinkingParser::new(START, END);
        assert!(parser.push(START, "").is_empty());
        assert!(parser.in_reasoning());
        assert!(parser.push(TEXT, "thou").is_empty());
        assert_eq!(
            parser.push(TEXT, "ght\nabc"),
            vec![(Channel::Reasoning, "abc".to_owned())]
        );
        assert_eq!(
            parser.push(END, "d"),
            vec![(Channel::Reasoning, "d".to_owned())]
        );
        assert!(!parser.in_reasoning());
    }

    #[test]
    fn strip_reasoning_text() {
        assert_eq!(
            strip_reasoning("<unused94>thought\nx<unused95>\n\nAnswer"),
            "Answer"
        );
        assert_eq!(strip_reasoning("  <unused94>thought\nunfinished"), "");
        assert_eq!(strip_reasoning("Plain answer"), "Plain answer");
        assert_eq!(
            strip_reasoning("Mentions <unused95> inside"),
            "Mentions <unused95> inside"
        );
    }

    #[test]
    fn debug_hides_text() {
        let (_, _, p) = run(&[(TEXT, "secret")]);
        assert!(!format!("{p:?}").contains("secret"));
    }
}
