//! A scripted [`Engine`] for the end-to-end tests of the HTTP layer
//! (`engine.backend = "scripted"`): a fixed reasoning trace, then a fixed
//! answer, one word per "token" with a small delay, so event order, cancel,
//! queueing and context limits can be tested without weights and without
//! waiting for a model to happen to think.
//!
//! Compiled only with the `test-engine` feature, and never into a release
//! build. Must never: be reachable in a shipped binary.

#[cfg(not(debug_assertions))]
compile_error!(
    "the `test-engine` feature is a test double: it must never be built into a release binary"
);

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use medgemma_model::chat::Message;
use medgemma_model::generate::{FinishReason, Flow};
use medgemma_model::load::ModelDescription;

use super::{ChatEvent, ChatRequest, ChatSummary, Engine, EngineError, EngineInfo};

/// Words of the scripted thinking trace.
pub const REASONING: &[&str] = &["Considering ", "the ", "question ", "step ", "by ", "step."];
/// Words of the scripted answer, repeated until `max_new_tokens`.
pub const ANSWER: &[&str] = &["This ", "is ", "a ", "scripted ", "answer. "];
/// A user message starting with this makes the double panic with the
/// message's text in the panic message (the canary test of the panic hook).
pub const PANIC_TEST: &str = "PANIC-TEST";
/// Time per scripted token.
pub const TOKEN_DELAY: Duration = Duration::from_millis(20);

/// The test double.
#[derive(Debug)]
pub struct ScriptedEngine {
    context_limit: usize,
}

impl ScriptedEngine {
    /// A scripted engine with this context limit.
    pub fn new(context_limit: usize) -> Self {
        Self { context_limit }
    }
}

/// Scripted token count of a conversation: one per word plus four per turn
/// (the turn markers), plus `<bos>` and the generation prompt.
fn count(messages: &[Message]) -> usize {
    3 + messages
        .iter()
        .map(|m| m.content.split_whitespace().count() + 4)
        .sum::<usize>()
}

impl Engine for ScriptedEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model: ModelDescription {
                path: "scripted".into(),
                format: "scripted",
                layers: 0,
                hidden_size: 0,
                parameters: 0,
            },
            context_limit: self.context_limit,
            backend: "scripted".to_owned(),
            backend_reason: "engine.backend = \"scripted\": a test double, not a model".to_owned(),
            gpu: None,
            weights: None,
        }
    }

    fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
        Ok(count(messages))
    }

    fn chat(
        &mut self,
        req: &ChatRequest,
        on_event: &mut dyn FnMut(ChatEvent) -> Flow,
    ) -> Result<ChatSummary, EngineError> {
        // The canary test of the panic hook: a panic whose message quotes
        // the request, as a string-slicing panic would.
        if let Some(last) = req.messages.last()
            && last.content.starts_with(PANIC_TEST)
        {
            panic!("scripted failure on {:?}", last.content);
        }
        let prompt_tokens = count(&req.messages);
        if prompt_tokens >= self.context_limit {
            return Err(EngineError::ContextFull {
                needed: prompt_tokens + 1,
                limit: self.context_limit,
            });
        }
        let start = Instant::now();
        let room = self.context_limit - prompt_tokens;
        let budget = req.max_new_tokens.min(room);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        let mut generated = 0;
        let mut first_token = None;
        let mut finish = FinishReason::Stop;
        let script = REASONING
            .iter()
            .map(|w| (true, *w))
            .chain(ANSWER.iter().cycle().map(|w| (false, *w)));
        for (is_reasoning, word) in script {
            if generated == budget {
                finish = if budget == room {
                    FinishReason::ContextFull
                } else {
                    FinishReason::Length
                };
                break;
            }
            if req.cancel.load(Ordering::Relaxed) {
                finish = FinishReason::Cancelled;
                break;
            }
            std::thread::sleep(TOKEN_DELAY);
            first_token.get_or_insert_with(|| start.elapsed());
            generated += 1;
            let event = if is_reasoning {
                reasoning.push_str(word);
                ChatEvent::Reasoning(word.to_owned())
            } else {
                answer.push_str(word);
                ChatEvent::Answer(word.to_owned())
            };
            if on_event(event) == Flow::Stop {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
        Ok(ChatSummary {
            prompt_tokens,
            completion_tokens: generated,
            finish,
            time_to_first_token: first_token.unwrap_or_default(),
            decode_tokens_per_s: generated as f64 / elapsed,
            context_used: prompt_tokens + generated,
            context_limit: self.context_limit,
            thinking_unterminated: !reasoning.is_empty() && generated < REASONING.len() + 1,
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            answer: answer.trim_end().to_owned(),
        })
    }
}
