//! HTTP plumbing shared by the routes: the response body type, JSON
//! responses, the one error shape, and reading a bounded JSON request body.
//!
//! Every error leaves as `{"error": {"code": "stable_snake_case", "message":
//! "A sentence saying what to do."}}`. Messages are written here or by the
//! modules that own the failure; they never echo the request body (a parser
//! error that would quote input is replaced by its position).
//!
//! Owns: [`ApiError`], [`Body`], body limits. Must never: log or return request text.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use medgemma_protocol::admin::{ErrorBody, ErrorDetail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Largest request body accepted (a chat message is text: 256 KiB is a long
/// clinical document; the model's context is far smaller anyway).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Largest body of a chat request, which may carry images as base64 `data:`
/// URLs: four 20 MiB files (base64 is 4/3 of the bytes) and the text.
pub const MAX_CHAT_BODY_BYTES: usize = 4 * (20 << 20) / 3 * 4 + MAX_BODY_BYTES;

/// How long a client may take to send the body once the headers arrived
/// (hyper's `header_read_timeout` covers the headers).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The response body of every route.
pub type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response; API responses are never cached (they may hold patient text).
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An API error: status, stable code, and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// What to do.
    pub message: String,
    /// Seconds for `Retry-After` (503 and 429).
    pub retry_after: Option<u32>,
    /// Seconds for the body's `retry_after_s` (429 `locked_out`).
    pub retry_after_s: Option<u32>,
    /// `Allow` header value (405 only).
    pub allow: Option<String>,
}

impl ApiError {
    /// An error with no extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            retry_after_s: None,
            allow: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is nothing at this address; open the assistant's start page (/) instead.",
        )
    }

    /// 405 with `Allow`.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self {
            allow: Some(allow.to_owned()),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("This address accepts {allow} only."),
            )
        }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The JSON body as a value (also used inside SSE `error` events).
    pub fn body(&self) -> serde_json::Value {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                retry_after_s: self.retry_after_s,
            },
        };
        serde_json::to_value(body).unwrap_or_default()
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        resp
    }
}

/// Bodies declared up to this size are drained before a 413 (see [`read_json`]).
const DRAIN_MAX_BYTES: usize = 4 * MAX_BODY_BYTES;

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`]
/// and decodes it. Requires `Content-Type: application/json`, which a
/// cross-site form or `no-cors` fetch cannot send without a CORS preflight.
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    read_json_up_to(req, MAX_BODY_BYTES).await
}

/// The 413 for text above [`MAX_BODY_BYTES`] in a body that may be larger
/// because of its images.
pub fn text_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "The text of the request is larger than {} KiB; shorten the message or start a new conversation.",
            MAX_BODY_BYTES / 1024
        ),
    )
}

/// [`read_json`] with a body of at most `limit` bytes (chat requests with
/// images: [`MAX_CHAT_BODY_BYTES`]).
pub async fn read_json_up_to<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the request body as JSON with the header Content-Type: application/json.",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            if limit > MAX_BODY_BYTES {
                format!(
                    "The request body is larger than {} MiB; send fewer or smaller images, or a shorter message.",
                    limit >> 20
                )
            } else {
                format!(
                    "The request body is larger than {} KiB; shorten the message or start a new conversation.",
                    limit / 1024
                )
            },
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        // Read (and drop) a moderately large body before answering, so the
        // client finishes sending and gets the 413 and its sentence instead
        // of a connection reset in the middle of its upload. A larger one
        // is refused at once.
        if n <= (limit + DRAIN_MAX_BYTES) as u64 {
            let _ = tokio::time::timeout(
                BODY_READ_TIMEOUT,
                Limited::new(req.into_body(), limit + DRAIN_MAX_BYTES).collect(),
            )
            .await;
        }
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "The request body did not arrive in time; send it again.",
            ));
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_large());
        }
        Ok(Err(_)) => {
            return Err(ApiError::bad_request(
                "The request body could not be read; send it again.",
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes).map_err(json_error)
}

/// A serde error without any quoted input: its category and position, plus
/// the field name when a required field is missing or unknown (names come
/// from our own schema or are short keys, never message text).
fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    let msg = e.to_string();
    let message = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("The request body is not valid JSON (at {at}).")
        }
        Category::Data => {
            if let Some(field) = msg
                .strip_prefix("missing field ")
                .and_then(|r| r.split('`').nth(1))
            {
                format!("The request is missing the field \"{field}\".")
            } else if msg.starts_with("unknown field ") {
                format!(
                    "The request has a field this endpoint does not accept (at {at}); see the API description."
                )
            } else {
                format!(
                    "A field of the request has the wrong type or value (at {at}); see the API description."
                )
            }
        }
    };
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
}

/// Sets a cancel flag when dropped: ties a turn's life to its response (or
/// to the handler still waiting for it), so a client that closes the
/// connection (the browser's stop button aborts the fetch) stops generation.
#[derive(Debug)]
pub struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    /// Arms a guard for `flag`.
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        Self(Some(flag))
    }

    /// Hands the flag on without setting it (to the body that takes over).
    pub fn disarm(mut self) -> Arc<AtomicBool> {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// A streamed body fed by a channel (SSE). Dropping it (the connection
/// closed) cancels the turn it streams.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _cancel: CancelOnDrop,
}

impl ChannelBody {
    /// A body streaming what arrives on `rx`; `cancel` is set when it is dropped.
    pub fn new(rx: mpsc::Receiver<Bytes>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            rx,
            _cancel: CancelOnDrop::new(cancel),
        }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// One server-sent event: `event: NAME` and a one-line JSON `data`.
pub fn sse_event(name: &str, data: &serde_json::Value) -> Bytes {
    // serde_json never emits a raw newline, so one `data:` line suffices.
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// One `data:` line (the OpenAI streaming format has no event names).
pub fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// A `text/event-stream` response over `body`.
pub fn event_stream(body: ChannelBody) -> Response<Body> {
    let mut resp = Response::new(body.boxed());
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_the_input() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let secret = "Patient Jane Doe";
        let e = serde_json::from_str::<T>(&format!("{{\"n\": \"{secret}\"}}")).unwrap_err();
        let api = json_error(e);
        assert!(!api.message.contains("Jane"), "{}", api.message);
        let e = serde_json::from_str::<T>("{}").unwrap_err();
        assert_eq!(
            json_error(e).message,
            "The request is missing the field \"n\"."
        );
        let e = serde_json::from_str::<T>(&format!("{{\"n\": 1, {secret}")).unwrap_err();
        assert!(!json_error(e).message.contains("Jane"));
    }
}
