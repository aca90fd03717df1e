//! The daemon's one logging path: every line it writes goes through here,
//! to stderr (the systemd journal collects it).
//!
//! Two kinds of line:
//! - lifecycle sentences for the administrator ([`info`], [`warn`],
//!   [`error`]): startup steps, the sandbox, the GPU, shutdown. They carry
//!   configuration values (paths, numbers), never anything a client sent;
//! - typed records with a fixed field set ([`request`], [`turn`],
//!   [`turn_failed`]): method, route name, status, latency, token counts and
//!   the short conversation id. They take no string a client chose, so
//!   nothing here can log patient text, because nothing here is ever given
//!   any.
//!
//! Each line has a level. Under systemd (`JOURNAL_STREAM` set at start) it
//! is prefixed with the syslog priority (`<3>` error, `<4>` warning, `<6>`
//! info; sd-daemon(3)), so `journalctl -p warning` works; otherwise the
//! level is written as a word for warnings and errors.
//!
//! Owns: what may be logged and how it looks. Must never: take a message, an
//! answer, a query string, a header value or a full conversation id.

use std::fmt::Arguments;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::{Method, StatusCode};
use medgemma_model::generate::FinishReason;

/// The numbers of a finished turn that may be logged.
#[derive(Debug, Clone, Copy)]
pub struct TurnCounts {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Time to the first token.
    pub time_to_first_token: Duration,
    /// Decode speed.
    pub tokens_per_s: f64,
}

/// How serious a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The daemon cannot do what it was asked (it may still run).
    Error,
    /// Running, but not as configured, or something needs attention.
    Warn,
    /// Normal operation.
    Info,
}

impl Level {
    /// The syslog priority (sd-daemon(3) prefixes).
    fn priority(self) -> u8 {
        match self {
            Self::Error => 3,
            Self::Warn => 4,
            Self::Info => 6,
        }
    }
}

static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Reads how stderr is connected; call first thing in `main` (before the
/// environment is cleared).
pub fn init() {
    JOURNAL.store(
        std::env::var_os("JOURNAL_STREAM").is_some(),
        Ordering::Relaxed,
    );
}

/// The line as written (without the newline).
fn format_line(level: Level, journal: bool, what: Arguments<'_>) -> String {
    if journal {
        format!("<{}>medgemmad: {what}", level.priority())
    } else {
        match level {
            Level::Error => format!("medgemmad: error: {what}"),
            Level::Warn => format!("medgemmad: warning: {what}"),
            Level::Info => format!("medgemmad: {what}"),
        }
    }
}

/// Writes one line.
pub fn emit(level: Level, what: Arguments<'_>) {
    let line = format_line(level, JOURNAL.load(Ordering::Relaxed), what);
    eprintln!("{line}");
}

/// A lifecycle sentence.
pub fn info(what: Arguments<'_>) {
    emit(Level::Info, what);
}

/// Something an administrator should look at.
pub fn warn(what: Arguments<'_>) {
    emit(Level::Warn, what);
}

/// A failure.
pub fn error(what: Arguments<'_>) {
    emit(Level::Error, what);
}

/// A request was answered. `route` is a fixed route name or an embedded
/// asset's path, never the raw request path.
pub fn request(conn: u64, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let level = if status.is_server_error() {
        Level::Warn
    } else {
        Level::Info
    };
    emit(
        level,
        format_args!(
            "http conn={conn} {method} {route} {} {}ms",
            status.as_u16(),
            elapsed.as_millis()
        ),
    );
}

/// A turn ended. `conv` is a short conversation id or the API name.
pub fn turn(conv: &str, s: &TurnCounts, queued_for: Duration) {
    info(format_args!(
        "turn conv={conv} prompt_tokens={} completion_tokens={} finish={:?} queue_ms={} ttft_ms={} tok_s={:.1}",
        s.prompt_tokens,
        s.completion_tokens,
        s.finish,
        queued_for.as_millis(),
        s.time_to_first_token.as_millis(),
        s.tokens_per_s,
    ));
}

thread_local! {
    /// Where this thread last panicked (set by the panic hook).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replaces the default panic hook, which prints the panic's message: a
/// string-slicing panic quotes up to 256 bytes of the string, which may be a
/// clinician's question. This hook logs the thread and the source location
/// only, and keeps the location for [`last_panic_location`].
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map_or_else(
            || "an unknown place".to_owned(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(at.clone()));
        error(format_args!(
            "internal error (a panic) in thread {thread} at {at}; its message is not logged, as it may quote request text"
        ));
    }));
}

/// Where the calling thread last panicked, if it did (for sentences about a
/// caught panic: the location, never the message).
pub fn last_panic_location() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

/// A turn failed with `code` (a stable error code).
pub fn turn_failed(conv: &str, code: &str) {
    warn(format_args!("turn conv={conv} failed code={code}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_journal_priorities_or_words() {
        let l = |level, journal| format_line(level, journal, format_args!("x"));
        assert_eq!(l(Level::Info, true), "<6>medgemmad: x");
        assert_eq!(l(Level::Warn, true), "<4>medgemmad: x");
        assert_eq!(l(Level::Error, true), "<3>medgemmad: x");
        assert_eq!(l(Level::Info, false), "medgemmad: x");
        assert_eq!(l(Level::Warn, false), "medgemmad: warning: x");
        assert_eq!(l(Level::Error, false), "medgemmad: error: x");
    }
}
