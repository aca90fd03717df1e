//! The admin socket's HTTP API, for `medgemmactl`: its routes, request and
//! answer bodies, and the error body every route of both sockets answers
//! with.
//!
//! Owns: the admin wire contract. Must never: grow a route that serves the
//! UI or returns conversation content.

use serde::{Deserialize, Serialize};

use crate::status::ChainHead;

/// `GET`: the [`crate::status::AdminStatus`] document.
pub const STATUS_ROUTE: &str = "/admin/status";

/// `POST` [`ExportReport`]: `medgemmactl audit export` reports each export
/// here so that the log records it (the daemon is the log's only writer
/// while it runs); answers [`ExportRecorded`].
pub const EXPORT_ROUTE: &str = "/admin/audit/export";

/// `POST` [`AccountEvent`]: `medgemmactl user` reports each account change
/// here, so that the daemon records it in the audit log (it is the log's
/// only writer while it runs) and reads the accounts file again at once
/// (ending the sessions of a disabled account); answers [`EventRecorded`].
pub const ACCOUNT_EVENT_ROUTE: &str = "/admin/accounts/event";

/// `POST` (no body): `medgemmactl terms import` and `terms remove` ask the
/// daemon to read the terminology again; answers [`TermsReloaded`].
pub const TERMS_RELOAD_ROUTE: &str = "/admin/terms/reload";

/// `POST` [`VerifyRequest`]: the daemon verifies its own audit log and
/// answers [`VerifyAnswer`]. Besides administrators (peer credentials), an
/// account with the auditor role may call it with its API token
/// (`Authorization: Bearer`), as it may [`EXPORT_ROUTE`].
pub const AUDIT_VERIFY_ROUTE: &str = "/admin/audit/verify";

/// The body of [`ACCOUNT_EVENT_ROUTE`]. The actor is the peer's uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEvent {
    /// The account's pseudonymous id.
    pub account: String,
    /// What changed: "created", "disabled", "enabled", "password_changed",
    /// "token_created" or "token_revoked".
    pub change: String,
}

/// The answer of [`ACCOUNT_EVENT_ROUTE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecorded {
    /// The record is on disk.
    pub recorded: bool,
    /// Login sessions ended because of the change.
    pub sessions_ended: usize,
}

/// The answer of [`TERMS_RELOAD_ROUTE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsReloaded {
    /// Phrases now known.
    pub phrases: usize,
    /// Tables that could not be read (file: reason).
    pub problems: Vec<String>,
}

/// The body of [`AUDIT_VERIFY_ROUTE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The initial key shown once at setup: with it every MAC is checked.
    #[serde(default)]
    pub initial_key: Option<String>,
}

/// The answer of [`AUDIT_VERIFY_ROUTE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// Every check that ran passed.
    pub ok: bool,
    /// Records that passed.
    pub records: u64,
    /// Log files read.
    pub files: usize,
    /// The checks that ran.
    pub checks: Vec<String>,
    /// The first problem (file, line, reason), if any.
    pub failure: Option<String>,
}

/// The body of [`EXPORT_ROUTE`]: whether the export worked. Nothing else is
/// taken from the client: the actor is the peer's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportReport {
    /// The export was written and signed.
    pub ok: bool,
}

/// The answer of [`EXPORT_ROUTE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecorded {
    /// The record is on disk.
    pub recorded: bool,
    /// The chain's end after it.
    pub audit: ChainHead,
}

/// Every error answer of both sockets: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `queue_full`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// Seconds to wait before trying again (`locked_out`, and with
    /// `Retry-After` on 503s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u32>,
}
