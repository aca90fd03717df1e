//! The web UI's chat API: `POST /api/chat` (a streamed turn),
//! `POST /api/chat/cancel` and `DELETE /api/conversations/{id}`.
//!
//! `POST /api/chat` takes `{"conversation_id": string|null, "message":
//! string, "max_new_tokens"?: int, "temperature"?: number, "thinking"?:
//! bool, "style"?: "structured"|"brief"|null, "language"?: "en"|"zh",
//! "regenerate"?: bool, "replace_last"?: bool, "images"?: [data: URL]}`
//! (PNG, JPEG or DICOM before the text; `images`; a regenerate reuses the
//! stored question's) and answers
//! `text/event-stream` with, in this order: `event: conversation`
//! `{"conversation_id"}`; any number of `event: reasoning` / `event:
//! answer` `{"delta"}`; then `event: done` with the counts and the `terms`
//! found in the question and the answer, or `event: error` `{"code",
//! "message"}` (e.g. `context_full`, checked before generating). Errors
//! found before the stream starts (bad body, unknown conversation, full
//! queue, the model still loading) are plain JSON errors with their HTTP
//! status.
//!
//! `thinking: true` puts Google's thinking switch in front of the system
//! prompt (spec model.md §7) and streams the trace; `false` asks for no
//! trace and sends none (the model may still think unprompted: the trace is
//! then kept from the client). The system prompt is the configured one,
//! then the answer-style preset of the conversation's style in the UI's
//! language. `regenerate` asks the last question again (its old answer is
//! replaced); `replace_last` replaces the last question and its answer.
//! The reasoning trace is never sent back to the model as history.
//!
//! The turn's `request` audit record is on disk (fsynced by the audit
//! writer) before the turn goes to the engine, so no token leaves without
//! it; when it cannot be written the request fails with 503 `audit_failed`
//! and nothing is generated. A client beyond its share (see
//! [`super::conversations`]) gets 429 `client_limit`.
//!
//! Owns: turning a request into a [`ChatRequest`] and the stream back into
//! events and history. Must never: log message text, or keep a turn's text
//! anywhere but the conversation store.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use medgemma_model::chat::Message;
use medgemma_model::image::RgbImage;
use medgemma_model::sampling::SamplingParams;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::conversations::{
    ConversationError, Conversations, Running, StoredAnswer, TurnMode, TurnRequest, Undo, is_id,
    short,
};
use super::http::{ApiError, Body, ChannelBody, event_stream, json, sse_event};
use super::{AppState, Caller, images};
use crate::audit_log::{self, Auditor, TurnRecord};
use crate::engine::worker::{SubmitError, TurnError, WorkerMsg};
use crate::engine::{ChatEvent, ChatRequest, ChatSummary, TurnImage};
use crate::log;
use medgemma_audit::{ActorId, ConversationId, Digest, Outcome};
use medgemma_protocol::config::AnswerStyle;

/// Google's documented switch for MedGemma's thinking mode (spec model.md §7):
/// a prefix of the system prompt.
pub const THINKING_INSTRUCTION: &str = "SYSTEM INSTRUCTION: think silently if needed.";

/// Highest temperature accepted (beyond it text is noise).
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Seconds a client is told to wait after a 503 for a full queue.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Frames buffered towards a slow client before the stream waits for it.
const STREAM_BUFFER: usize = 64;

/// The `POST /api/chat` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    conversation_id: Option<String>,
    message: String,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    thinking: Option<bool>,
    #[serde(default)]
    style: Option<AnswerStyle>,
    #[serde(default)]
    language: Option<Language>,
    #[serde(default)]
    regenerate: bool,
    #[serde(default)]
    replace_last: bool,
    /// Images (`data:` URLs: PNG, JPEG, DICOM) before the message's text.
    #[serde(default)]
    images: Vec<String>,
}

/// The UI's language, which picks the language of the style preset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    #[default]
    En,
    /// Chinese.
    Zh,
}

impl Language {
    /// The code of the presets' file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }
}

/// The `POST /api/chat/cancel` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    conversation_id: String,
}

/// The generation limits of a request, checked against the configuration.
pub fn check_limits(
    state: &AppState,
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
) -> Result<(usize, f32), ApiError> {
    let cap = state.settings.engine.max_new_tokens;
    let max_new_tokens = max_new_tokens.unwrap_or(cap);
    if max_new_tokens == 0 || max_new_tokens > cap {
        return Err(ApiError::bad_request(format!(
            "max_new_tokens must be between 1 and {cap} on this appliance."
        )));
    }
    let temperature = temperature.unwrap_or(0.0);
    if !temperature.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(ApiError::bad_request(format!(
            "temperature must be between 0 and {MAX_TEMPERATURE} (0 answers deterministically)."
        )));
    }
    Ok((max_new_tokens, temperature))
}

/// Sampling for a temperature: greedy at 0 (as Google's examples decode),
/// Gemma's top-k/top-p otherwise, with a fresh seed.
pub fn sampling(temperature: f32) -> SamplingParams {
    let mut seed = [0u8; 8];
    // A failed random source only makes the seed predictable, not unsafe.
    let _ = getrandom::fill(&mut seed);
    SamplingParams {
        temperature,
        seed: u64::from_le_bytes(seed),
        ..SamplingParams::default()
    }
}

/// The system message: the thinking switch in front when asked, then the
/// configured prompt, then the answer-style preset.
pub fn system_message(
    configured: Option<&str>,
    preset: Option<&str>,
    thinking: bool,
) -> Option<Message> {
    let body = [configured, preset]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n\n");
    match (body.is_empty(), thinking) {
        (false, true) => Some(Message::system(format!("{THINKING_INSTRUCTION} {body}"))),
        (false, false) => Some(Message::system(body)),
        (true, true) => Some(Message::system(THINKING_INSTRUCTION)),
        (true, false) => None,
    }
}

/// The preset of `style` in `language`, if presets are configured.
pub fn preset(state: &AppState, style: AnswerStyle, language: Language) -> Option<&str> {
    state
        .settings
        .presets
        .iter()
        .find(|(s, l, _)| *s == style && *l == language.as_str())
        .map(|(_, _, text)| text.as_str())
}

/// Maps a refused submission to its HTTP error.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull => ApiError::unavailable(
            "queue_full",
            "The model is busy answering other questions; try again in a few seconds.",
            RETRY_AFTER_SECS,
        ),
        SubmitError::Stopped => ApiError::unavailable(
            "shutting_down",
            "The service is restarting; try again in a minute.",
            RETRY_AFTER_SECS * 6,
        ),
    }
}

/// Maps a conversation store refusal to its HTTP error.
pub fn conversation_error(e: ConversationError) -> ApiError {
    let status = match e {
        ConversationError::NotFound => StatusCode::NOT_FOUND,
        ConversationError::Busy => StatusCode::CONFLICT,
        ConversationError::TooMany | ConversationError::Random => StatusCode::SERVICE_UNAVAILABLE,
        ConversationError::ClientLimit => StatusCode::TOO_MANY_REQUESTS,
        ConversationError::NothingToRegenerate | ConversationError::NothingToReplace => {
            StatusCode::BAD_REQUEST
        }
    };
    let mut err = ApiError::new(status, e.code(), e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        err.retry_after = Some(RETRY_AFTER_SECS * 12);
    }
    err
}

/// `POST /api/chat`.
pub async fn chat(
    state: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
    caller: Caller,
    peer: Option<u32>,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let mut body: ChatBody =
        super::http::read_json_up_to(req, super::http::MAX_CHAT_BODY_BYTES).await?;
    // The allowance above 256 KiB is for images only.
    if body.message.len() > super::http::MAX_BODY_BYTES {
        return Err(super::http::text_too_large());
    }
    let mode = match (body.regenerate, body.replace_last) {
        (true, true) => {
            return Err(ApiError::bad_request(
                "regenerate and replace_last cannot be combined.",
            ));
        }
        (true, false) => TurnMode::Regenerate,
        (false, true) => TurnMode::ReplaceLast,
        (false, false) => TurnMode::New,
    };
    if mode != TurnMode::New && body.conversation_id.is_none() {
        return Err(ApiError::bad_request(
            "regenerate and replace_last need a conversation_id.",
        ));
    }
    if mode != TurnMode::Regenerate && body.message.trim().is_empty() {
        return Err(ApiError::bad_request(
            "The message is empty; type a question.",
        ));
    }
    let (max_new_tokens, temperature) =
        check_limits(&state, body.max_new_tokens, body.temperature)?;
    if body.conversation_id.as_deref().is_some_and(|id| !is_id(id)) {
        return Err(conversation_error(ConversationError::NotFound));
    }
    let engine = state.engine.require()?;
    // Images are checked and decoded before the turn is admitted: a bad
    // image is a 400 that leaves the conversation as it was.
    if mode == TurnMode::Regenerate && !body.images.is_empty() {
        return Err(ApiError::bad_request(
            "regenerate answers the stored question with its own images; send no images with it.",
        ));
    }
    let received = if body.images.is_empty() {
        Vec::new()
    } else {
        images::check_count(body.images.len(), 0)?;
        let size = engine
            .snapshot()
            .info
            .image_size
            .ok_or_else(images::not_supported)?;
        images::decode_all(std::mem::take(&mut body.images), size).await?
    };
    let thinking = body.thinking.unwrap_or(false);
    let language = body.language.unwrap_or_default();

    let running = state
        .conversations
        .start_running(caller.owner.as_deref())
        .map_err(conversation_error)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let admitted = state
        .conversations
        .begin_turn(TurnRequest {
            id: body.conversation_id.as_deref(),
            owner: caller.owner.as_deref(),
            peer,
            message: body.message,
            mode,
            style: body.style,
            default_style: state.settings.answers.default_style,
            cancel: Arc::clone(&cancel),
        })
        .map_err(conversation_error)?;
    let actor = caller.actor.clone();
    let audit_conv = audit_log::conversation_id(&admitted.id);
    if admitted.created
        && let Err(e) = state.audit.conversation_start(&actor, &audit_conv).await
    {
        log::error(format_args!(
            "audit: cannot record a conversation start: {e}"
        ));
        state
            .conversations
            .abort_turn(&admitted.id, admitted.created, admitted.undo);
        return Err(audit_error());
    }
    let question = admitted.question;
    let new_images: Vec<Arc<RgbImage>> = if mode == TurnMode::Regenerate {
        admitted.question_images
    } else {
        received.iter().map(|r| Arc::clone(&r.image)).collect()
    };
    if let Err(e) = images::check_count(new_images.len(), admitted.history_images.len()) {
        state
            .conversations
            .abort_turn(&admitted.id, admitted.created, admitted.undo);
        return Err(e);
    }
    // The images' digests join the question's in the audited input (a
    // regenerate's stored images were digested when they were sent).
    let input = if received.is_empty() {
        state.audit.digest(&question)
    } else {
        state
            .audit
            .digest(&format!("{question}{}", images::digest_suffix(&received)))
    };
    // The request's record is on disk before any token can leave; without
    // it the turn does not start (a full or failing audit log stops
    // answers rather than letting them out unrecorded).
    if let Err(e) = state.audit.request(&actor, &audit_conv, input).await {
        log::error(format_args!("audit: cannot record a request: {e}"));
        state
            .conversations
            .abort_turn(&admitted.id, admitted.created, admitted.undo);
        return Err(audit_error());
    }
    let mut messages: Vec<Message> = system_message(
        state.settings.system_prompt.as_deref(),
        preset(&state, admitted.style, language),
        thinking,
    )
    .into_iter()
    .collect();
    // Each image at its message's place (after the system message, if any).
    let offset = messages.len();
    let mut turn_images: Vec<TurnImage> = admitted
        .history_images
        .iter()
        .map(|(i, image)| TurnImage {
            message: offset + i,
            image: Arc::clone(image),
        })
        .collect();
    messages.extend(admitted.history);
    turn_images.extend(new_images.iter().map(|image| TurnImage {
        message: messages.len(),
        image: Arc::clone(image),
    }));
    messages.push(Message::user(question.clone()));

    let request = ChatRequest {
        messages,
        max_new_tokens,
        sampling: sampling(temperature),
        cancel: Arc::clone(&cancel),
        kept: Some(admitted.kept),
        images: turn_images,
    };
    let worker_rx = match engine.submit(request) {
        Ok(rx) => rx,
        Err(e) => {
            // The turn never started: give back what it replaced, and
            // forget a conversation the client never learns of.
            state
                .conversations
                .abort_turn(&admitted.id, admitted.created, admitted.undo);
            return Err(submit_error(e));
        }
    };

    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let turn = Turn {
        store: Arc::clone(&state.conversations),
        id: admitted.id,
        mode,
        question: Some((question, new_images)),
        thinking,
        created: admitted.created,
        started: false,
        undo: Some(admitted.undo),
    };
    let record = Recorder {
        state: Arc::clone(&state),
        actor,
        conversation: audit_conv,
        input,
        started,
        running: std::sync::Mutex::new(Some(running)),
    };
    tokio::spawn(pump(turn, worker_rx, tx, record));
    Ok(event_stream(ChannelBody::new(rx, cancel)))
}

/// The API error for a turn whose audit record could not be written.
pub fn audit_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_failed",
        "The audit log cannot be written, so the appliance cannot answer; tell the administrator.",
    )
}

/// Writes a turn's `answer` record.
pub struct Recorder {
    /// Server state (audit log, speed note).
    pub state: Arc<AppState>,
    /// Who asked.
    pub actor: ActorId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Digest of the input.
    pub input: Digest,
    /// When the request arrived.
    pub started: Instant,
    /// Counts the turn against its client's running turns until its last
    /// record is written (before its last event leaves, so the client may
    /// ask again as soon as it has the answer).
    pub running: std::sync::Mutex<Option<Running>>,
}

impl Recorder {
    /// Records a finished turn; `false` when the record could not be written.
    pub async fn done(&self, s: &ChatSummary) -> bool {
        self.state.note_speed(s.decode_tokens_per_s);
        let (finish, outcome) = audit_log::finish(s.finish);
        self.write(
            s.prompt_tokens,
            s.completion_tokens,
            finish,
            outcome,
            self.state.audit.digest(&s.answer),
        )
        .await
    }

    /// Records a failed turn.
    pub async fn failed(&self, outcome: Outcome) -> bool {
        let empty = self.state.audit.digest("");
        self.write(0, 0, medgemma_audit::FinishReason::Error, outcome, empty)
            .await
    }

    async fn write(
        &self,
        tokens_in: usize,
        tokens_out: usize,
        finish: medgemma_audit::FinishReason,
        outcome: Outcome,
        output: Digest,
    ) -> bool {
        let audit: &Arc<Auditor> = &self.state.audit;
        // The turn has ended: it no longer counts against its client.
        drop(
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let record = TurnRecord {
            actor: self.actor.clone(),
            conversation: self.conversation.clone(),
            tokens_in,
            tokens_out,
            finish,
            latency: self.started.elapsed(),
            outcome,
            input: self.input,
            output,
        };
        match audit.answer(record).await {
            Ok(()) => true,
            Err(e) => {
                log::error(format_args!("audit: cannot record an answer: {e}"));
                false
            }
        }
    }
}

/// The outcome recorded for a failed turn.
pub fn failed_outcome(e: &TurnError) -> Outcome {
    match e {
        TurnError::ContextFull { .. } | TurnError::Invalid(_) => Outcome::Rejected,
        TurnError::Engine(_) | TurnError::Panicked => Outcome::Error,
    }
}

fn audit_error_event() -> Bytes {
    let err = audit_error();
    sse_event("error", &err.body()["error"])
}

/// A running turn; dropped without [`Turn::finish`] it ends without an
/// answer, and one that never started (cancelled while queued, the engine
/// gone) gives back what it replaced and frees the conversation it created.
struct Turn {
    store: Arc<Conversations>,
    id: String,
    mode: TurnMode,
    /// The question and its images, until the turn ends.
    question: Option<(String, Vec<Arc<RgbImage>>)>,
    /// The client asked for the reasoning trace.
    thinking: bool,
    /// This turn created the conversation.
    created: bool,
    /// The engine took the prompt.
    started: bool,
    /// What `begin_turn` removed (a regenerated answer, a replaced turn).
    undo: Option<Undo>,
}

impl Turn {
    fn finish(&mut self, answer: StoredAnswer) {
        if let Some((question, images)) = self.question.take() {
            self.store
                .finish_turn(&self.id, self.mode, question, images, answer);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.question.is_some() {
            let undo = self.undo.take().filter(|_| !self.started);
            let forget = self.created && !self.started;
            self.store
                .abort_turn(&self.id, forget, undo.unwrap_or(Undo::Nothing));
        }
    }
}

/// Moves the engine's messages into SSE frames. Keeps draining after the
/// client left so the (cancelled) turn still reaches the history.
async fn pump(
    mut turn: Turn,
    mut worker: mpsc::UnboundedReceiver<WorkerMsg>,
    tx: mpsc::Sender<Bytes>,
    record: Recorder,
) {
    // A send fails only when the client left; the engine sees the cancel flag.
    let conversation = serde_json::json!({ "conversation_id": turn.id });
    let _ = tx.send(sse_event("conversation", &conversation)).await;
    let mut queued_for = Duration::ZERO;
    while let Some(msg) = worker.recv().await {
        let frame = match msg {
            WorkerMsg::Started { queued_for: q } => {
                queued_for = q;
                turn.started = true;
                continue;
            }
            WorkerMsg::Event(ChatEvent::Reasoning(_)) if !turn.thinking => continue,
            WorkerMsg::Event(ChatEvent::Reasoning(delta)) => {
                sse_event("reasoning", &serde_json::json!({ "delta": delta }))
            }
            WorkerMsg::Event(ChatEvent::Answer(delta)) => {
                sse_event("answer", &serde_json::json!({ "delta": delta }))
            }
            WorkerMsg::Done(summary) => {
                log::turn(short(&turn.id), &summary.counts(), queued_for);
                // On disk before the client hears the answer is complete.
                if !record.done(&summary).await {
                    let _ = tx.send(audit_error_event()).await;
                    return;
                }
                let question = turn.question.as_ref().map_or("", |(q, _)| q.as_str());
                let terms = record
                    .state
                    .terms()
                    .find(&format!("{question}\n{}", summary.answer));
                let mut done = done_event(&summary, queued_for);
                done["terms"] = serde_json::to_value(&terms).unwrap_or_default();
                let reasoning = summary.reasoning.clone().filter(|_| turn.thinking);
                turn.finish(StoredAnswer {
                    content: summary.answer,
                    reasoning,
                    terms,
                });
                let _ = tx.send(sse_event("done", &done)).await;
                return;
            }
            WorkerMsg::Failed(e) => {
                log::turn_failed(short(&turn.id), e.code());
                if !record.failed(failed_outcome(&e)).await {
                    let _ = tx.send(audit_error_event()).await;
                    return;
                }
                let err = serde_json::json!({ "code": e.code(), "message": e.to_string() });
                let _ = tx.send(sse_event("error", &err)).await;
                return;
            }
        };
        let _ = tx.send(frame).await;
    }
    // The engine dropped the job without an answer: it was cancelled while
    // queued (the client is gone) or the engine stopped.
    record.failed(Outcome::Cancelled).await;
    let err = serde_json::json!({
        "code": "engine_stopped",
        "message": "The model stopped before answering; send the message again.",
    });
    let _ = tx.send(sse_event("error", &err)).await;
}

/// The `done` event's data.
fn done_event(s: &ChatSummary, queued_for: Duration) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": s.prompt_tokens,
        "reused_tokens": s.reused_tokens,
        "completion_tokens": s.completion_tokens,
        "tokens_per_s": (s.decode_tokens_per_s * 10.0).round() / 10.0,
        "time_to_first_token_ms": (queued_for + s.time_to_first_token).as_millis() as u64,
        "context_used": s.context_used,
        "context_limit": s.context_limit,
        "finish_reason": s.finish,
        "thinking_unterminated": s.thinking_unterminated,
    })
}

/// `POST /api/chat/cancel`: stops the running turn of a conversation.
pub async fn cancel(
    state: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let body: CancelBody = super::http::read_json(req).await?;
    if !is_id(&body.conversation_id) {
        return Err(conversation_error(ConversationError::NotFound));
    }
    let cancelled = state
        .conversations
        .cancel(&body.conversation_id, caller.owner.as_deref())
        .map_err(conversation_error)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "cancelled": cancelled }),
    ))
}

/// `DELETE /api/conversations/{id}`: stops any running turn and forgets the conversation.
pub fn delete(state: &AppState, id: &str, caller: &Caller) -> Result<Response<Body>, ApiError> {
    if !is_id(id) {
        return Err(conversation_error(ConversationError::NotFound));
    }
    state
        .conversations
        .delete(id, caller.owner.as_deref())
        .map_err(conversation_error)?;
    let mut resp = Response::new(super::http::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
