//! The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`
//! (streamed and not), enough for the official `openai` Python client.
//!
//! Stateless: the client sends the whole conversation each time. Reasoning
//! (MedGemma's thinking trace) is returned apart from the answer as
//! `reasoning_content` in `message` / `delta`, as several OpenAI-compatible
//! servers do; a client asks for it with Google's switch in its system
//! message (`SYSTEM INSTRUCTION: think silently if needed.`, spec model.md
//! §7). When a terminology is loaded, the terms found in the last user
//! message and the answer come back in the extension field `terms` of the
//! `message` (and of the last chunk's `delta` when streamed). With accounts,
//! every request needs `Authorization: Bearer` with a personal token. The request's `model` is not checked: this server has one
//! model, listed by `/v1/models`. Unknown request fields are ignored (the
//! client sends many); images, tools and `n > 1` are refused with a 400.
//!
//! The handler waits until the engine has accepted the prompt (it fits the
//! context) before answering, so `context_full` and malformed conversations
//! are HTTP errors, not broken streams.
//!
//! Owns: the OpenAI wire format. Must never: log message text.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use medgemma_model::chat::Message;
use medgemma_model::generate::FinishReason;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::chat::{Recorder, audit_error, check_limits, failed_outcome, sampling, submit_error};
use super::conversations::random_id;
use super::http::{ApiError, Body, CancelOnDrop, ChannelBody, event_stream, json, sse_data};
use super::{AppState, Caller, images};
use crate::audit_log;
use crate::engine::worker::{TurnError, WorkerMsg};
use crate::engine::{ChatEvent, ChatRequest, ChatSummary, TurnImage};
use crate::log;

/// Frames buffered towards a slow client.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<ImageUrl>,
}

/// An `image_url` part's URL: a `data:` URL only (nothing is fetched).
#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

/// The messages and each image's `data:` URL with the index of its message.
type Converted = (Vec<Message>, Vec<(usize, String)>);

/// The model id clients see: the label in lower case, words joined by '-'.
pub fn model_id(label: &str) -> String {
    let mut id = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    let id = id.trim_end_matches('-');
    if id.is_empty() {
        "medgemma".to_owned()
    } else {
        id.to_owned()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`.
pub fn models(state: &AppState) -> Response<Body> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "object": "list",
            "data": [{
                "id": model_id(&state.settings.model.label),
                "object": "model",
                "created": state.started_unix,
                "owned_by": "medgemmad",
            }],
        }),
    )
}

fn to_messages(system: Option<&str>, input: Vec<InMessage>) -> Result<Converted, ApiError> {
    let mut out: Vec<Message> = Vec::with_capacity(input.len() + 1);
    let mut images = Vec::new();
    for (i, m) in input.into_iter().enumerate() {
        let text = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.image_url) {
                        ("text", _) => text.push_str(p.text.as_deref().unwrap_or("")),
                        ("image_url", Some(u)) if m.role == "user" => images.push((i, u.url)),
                        ("image_url", _) => {
                            return Err(ApiError::bad_request(format!(
                                "Message {i} has an image_url part that is not in a user message or has no url; put images in user messages as {{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,...\"}}}}."
                            )));
                        }
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "Message {i} has a content part of a type this server does not accept; send text and image_url parts only."
                            )));
                        }
                    }
                }
                text
            }
        };
        let msg = match m.role.as_str() {
            "system" | "developer" => Message::system(text),
            "user" => Message::user(text),
            "assistant" => Message::assistant(text),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Message {i} has a role this server does not accept; use system, user or assistant (tools are not supported)."
                )));
            }
        };
        out.push(msg);
    }
    // The configured system prompt comes first; a client's system message follows it.
    if let Some(sys) = system {
        match out.first_mut() {
            Some(first) if first.role == medgemma_model::chat::Role::System => {
                first.content = format!("{sys}\n\n{}", first.content);
            }
            _ => {
                out.insert(0, Message::system(sys));
                for (i, _) in &mut images {
                    *i += 1;
                }
            }
        }
    }
    Ok((out, images))
}

/// The text whose digest is the input of an API request: every message the
/// engine sees, in order, separated by U+001E (record separator).
fn input_text(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\u{1e}")
}

fn turn_error(e: &TurnError) -> ApiError {
    let status = match e {
        TurnError::ContextFull { .. } | TurnError::Invalid(_) => StatusCode::BAD_REQUEST,
        TurnError::Engine(_) | TurnError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

fn usage(s: &ChatSummary) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

/// `POST /v1/chat/completions`.
pub async fn completions(
    state: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let started = std::time::Instant::now();
    let body: CompletionRequest =
        super::http::read_json_up_to(req, super::http::MAX_CHAT_BODY_BYTES).await?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "n must be 1: this server returns one choice.",
        ));
    }
    if body.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages is empty; send at least one user message.",
        ));
    }
    let (max_new_tokens, temperature) = check_limits(
        &state,
        body.max_completion_tokens.or(body.max_tokens),
        body.temperature,
    )?;
    let mut params = sampling(temperature);
    if let Some(p) = body.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_request(
                "top_p must be above 0 and at most 1.",
            ));
        }
        params.top_p = p;
    }
    if let Some(seed) = body.seed {
        params.seed = seed;
    }
    let engine = state.engine.require()?;
    let running = state
        .conversations
        .start_running(caller.owner.as_deref())
        .map_err(super::chat::conversation_error)?;
    let (messages, urls) = to_messages(state.settings.system_prompt.as_deref(), body.messages)?;
    // The allowance above 256 KiB is for images only.
    if messages.iter().map(|m| m.content.len()).sum::<usize>() > super::http::MAX_BODY_BYTES {
        return Err(super::http::text_too_large());
    }
    let images = if urls.is_empty() {
        Vec::new()
    } else {
        let size = engine
            .snapshot()
            .info
            .image_size
            .ok_or_else(images::not_supported)?;
        let per_message = urls
            .iter()
            .fold(std::collections::HashMap::new(), |mut m, (i, _)| {
                *m.entry(*i).or_insert(0usize) += 1;
                m
            });
        images::check_count(per_message.values().copied().max().unwrap_or(0), 0)?;
        images::check_count(0, urls.len())?;
        let (at, urls): (Vec<usize>, Vec<String>) = urls.into_iter().unzip();
        let received = images::decode_all(urls, size).await?;
        at.into_iter().zip(received).collect::<Vec<_>>()
    };
    let question = messages
        .iter()
        .rfind(|m| m.role == medgemma_model::chat::Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default();
    // Each request is a conversation of its own in the audit log.
    let meta = Meta {
        id: format!("chatcmpl-{}", random_id().unwrap_or_default()),
        created: unix_now(),
        model: model_id(&state.settings.model.label),
    };
    let actor = caller.actor;
    let conversation = audit_log::conversation_id(&meta.id);
    if let Err(e) = state.audit.conversation_start(&actor, &conversation).await {
        log::error(format_args!(
            "audit: cannot record a conversation start: {e}"
        ));
        return Err(audit_error());
    }
    let received: Vec<images::Received> = images.iter().map(|(_, r)| r.clone()).collect();
    let input = state.audit.digest(&format!(
        "{}{}",
        input_text(&messages),
        images::digest_suffix(&received)
    ));
    let images: Vec<TurnImage> = images
        .into_iter()
        .map(|(message, r)| TurnImage {
            message,
            image: r.image,
        })
        .collect();
    // On disk before any token can leave (see chat.rs).
    if let Err(e) = state.audit.request(&actor, &conversation, input).await {
        log::error(format_args!("audit: cannot record a request: {e}"));
        return Err(audit_error());
    }
    let record = Recorder {
        state: Arc::clone(&state),
        actor,
        conversation,
        input,
        started,
        running: std::sync::Mutex::new(Some(running)),
    };
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = CancelOnDrop::new(Arc::clone(&cancel));
    let request = ChatRequest {
        messages,
        max_new_tokens,
        sampling: params,
        cancel,
        // Stateless: every request sends its whole conversation.
        kept: None,
        images,
    };
    let mut worker = engine.submit(request).map_err(submit_error)?;

    // Wait for the engine to accept the prompt (or refuse it).
    let queued_for = match worker.recv().await {
        Some(WorkerMsg::Started { queued_for }) => queued_for,
        Some(WorkerMsg::Failed(e)) => {
            log::turn_failed("openai", e.code());
            if !record.failed(failed_outcome(&e)).await {
                return Err(audit_error());
            }
            return Err(turn_error(&e));
        }
        Some(_) | None => {
            record.failed(medgemma_audit::Outcome::Error).await;
            return Err(ApiError::unavailable(
                "engine_stopped",
                "The model stopped before answering; send the request again.",
                5,
            ));
        }
    };
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream(
            meta,
            worker,
            tx,
            include_usage,
            queued_for,
            record,
            question,
        ));
        Ok(event_stream(ChannelBody::new(rx, guard.disarm())))
    } else {
        let (mut reasoning, mut answer) = (String::new(), String::new());
        while let Some(msg) = worker.recv().await {
            match msg {
                WorkerMsg::Started { .. } => {}
                WorkerMsg::Event(ChatEvent::Reasoning(d)) => reasoning.push_str(&d),
                WorkerMsg::Event(ChatEvent::Answer(d)) => answer.push_str(&d),
                WorkerMsg::Done(s) => {
                    log::turn("openai", &s.counts(), queued_for);
                    if !record.done(&s).await {
                        return Err(audit_error());
                    }
                    let mut message =
                        serde_json::json!({ "role": "assistant", "content": s.answer });
                    if let Some(r) = &s.reasoning {
                        message["reasoning_content"] = serde_json::Value::String(r.clone());
                    }
                    if let Some(terms) = terms_of(&state, &question, &s.answer) {
                        message["terms"] = terms;
                    }
                    return Ok(json(
                        StatusCode::OK,
                        &serde_json::json!({
                            "id": meta.id,
                            "object": "chat.completion",
                            "created": meta.created,
                            "model": meta.model,
                            "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason(s.finish) }],
                            "usage": usage(&s),
                        }),
                    ));
                }
                WorkerMsg::Failed(e) => {
                    log::turn_failed("openai", e.code());
                    if !record.failed(failed_outcome(&e)).await {
                        return Err(audit_error());
                    }
                    return Err(turn_error(&e));
                }
            }
        }
        drop(guard);
        record.failed(medgemma_audit::Outcome::Cancelled).await;
        Err(ApiError::unavailable(
            "engine_stopped",
            "The model stopped before answering; send the request again.",
            5,
        ))
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Bytes {
        let chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        sse_data(&chunk.to_string())
    }
}

/// The `terms` extension field: the terms found in the question and the
/// answer; none when no terminology is loaded.
fn terms_of(state: &AppState, question: &str, answer: &str) -> Option<serde_json::Value> {
    let terms = state.terms();
    if terms.is_empty() {
        return None;
    }
    serde_json::to_value(terms.find(&format!("{question}\n{answer}"))).ok()
}

async fn stream(
    meta: Meta,
    mut worker: mpsc::UnboundedReceiver<WorkerMsg>,
    tx: mpsc::Sender<Bytes>,
    include_usage: bool,
    queued_for: Duration,
    record: Recorder,
    question: String,
) {
    let _ = tx
        .send(meta.chunk(
            serde_json::json!({ "role": "assistant", "content": "" }),
            None,
        ))
        .await;
    while let Some(msg) = worker.recv().await {
        match msg {
            WorkerMsg::Started { .. } => {}
            WorkerMsg::Event(ChatEvent::Reasoning(d)) => {
                let _ = tx
                    .send(meta.chunk(serde_json::json!({ "reasoning_content": d }), None))
                    .await;
            }
            WorkerMsg::Event(ChatEvent::Answer(d)) => {
                let _ = tx
                    .send(meta.chunk(serde_json::json!({ "content": d }), None))
                    .await;
            }
            WorkerMsg::Done(s) => {
                log::turn("openai", &s.counts(), queued_for);
                // On disk before the client hears the answer is complete.
                if !record.done(&s).await {
                    let _ = tx.send(sse_data(&audit_error().body().to_string())).await;
                    break;
                }
                let mut delta = serde_json::json!({});
                if let Some(terms) = terms_of(&record.state, &question, &s.answer) {
                    delta["terms"] = terms;
                }
                let _ = tx
                    .send(meta.chunk(delta, Some(finish_reason(s.finish))))
                    .await;
                if include_usage {
                    let chunk = serde_json::json!({
                        "id": meta.id,
                        "object": "chat.completion.chunk",
                        "created": meta.created,
                        "model": meta.model,
                        "choices": [],
                        "usage": usage(&s),
                    });
                    let _ = tx.send(sse_data(&chunk.to_string())).await;
                }
                break;
            }
            WorkerMsg::Failed(e) => {
                log::turn_failed("openai", e.code());
                if !record.failed(failed_outcome(&e)).await {
                    let _ = tx.send(sse_data(&audit_error().body().to_string())).await;
                    break;
                }
                let _ = tx.send(sse_data(&turn_error(&e).body().to_string())).await;
                break;
            }
        }
    }
    let _ = tx.send(sse_data("[DONE]")).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_slugs() {
        assert_eq!(model_id("MedGemma 1.5 4B"), "medgemma-1.5-4b");
        assert_eq!(model_id("Gemma 3 270M (demo)"), "gemma-3-270m-demo");
        assert_eq!(model_id("***"), "medgemma");
    }

    #[test]
    fn configured_system_prompt_comes_first() {
        let input = vec![InMessage {
            role: "user".into(),
            content: Some(Content::Text("hi".into())),
        }];
        let (m, _) = to_messages(Some("Be careful."), input).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].content, "Be careful.");
    }
}
