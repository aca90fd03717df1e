//! The daemon's log lines (stderr; the systemd journal collects them).
//!
//! One line per request (method, route, status, latency, connection) and one
//! per turn (counts, timings, finish reason, the short conversation id).
//!
//! Owns: what may be logged. Must never: take a message, an answer, a query
//! string or a full conversation id as an argument: nothing here can log
//! patient text, because nothing here is ever given any.

use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::engine::ChatSummary;

/// A request was answered. `route` is a fixed route name or an embedded
/// asset's path, never the raw request path.
pub fn request(conn: u64, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    eprintln!(
        "medgemmad: http conn={conn} {method} {route} {} {}ms",
        status.as_u16(),
        elapsed.as_millis()
    );
}

/// A turn ended. `conv` is a short conversation id or the API name.
pub fn turn(conv: &str, s: &ChatSummary, queued_for: Duration) {
    eprintln!(
        "medgemmad: turn conv={conv} prompt_tokens={} completion_tokens={} finish={:?} queue_ms={} ttft_ms={} tok_s={:.1}",
        s.prompt_tokens,
        s.completion_tokens,
        s.finish,
        queued_for.as_millis(),
        s.time_to_first_token.as_millis(),
        s.decode_tokens_per_s,
    );
}

/// A turn failed with `code`.
pub fn turn_failed(conv: &str, code: &str) {
    eprintln!("medgemmad: turn conv={conv} failed code={code}");
}

/// A lifecycle event (startup, shutdown, a connection-level failure).
pub fn event(what: std::fmt::Arguments<'_>) {
    eprintln!("medgemmad: {what}");
}
