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
}
