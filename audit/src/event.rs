//! The events the appliance records, as typed values.
//!
//! Owns the vocabulary of the log: one [`Event`] variant per kind of event,
//! each with typed fields only. It must never gain a `String` field: a field
//! that can hold arbitrary text is a field that will one day hold a patient's
//! question. Conversation text enters only through
//! [`ContentHasher::hash`](crate::ContentHasher::hash), as a [`Digest`].

use serde::{Deserialize, Serialize};

use crate::types::{
    ActorId, ConversationId, Digest, LogDay, Mac, ModelFingerprint, Sha256, SoftwareVersion,
};

/// One event to record. The record around it (time, sequence number, boot
/// id, chain MAC) is added by [`AuditLog::append`](crate::AuditLog::append).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The daemon started.
    Startup {
        /// Version of the daemon software.
        software: SoftwareVersion,
    },
    /// A model was loaded (or failed to load).
    ModelLoad {
        /// Which weights.
        model: ModelFingerprint,
        /// How long loading took.
        latency_ms: u64,
        /// Whether it worked.
        outcome: Outcome,
    },
    /// A user or client opened a conversation.
    ConversationStart {
        /// Who.
        actor: ActorId,
        /// The new conversation.
        conversation: ConversationId,
        /// The model it talks to.
        model: ModelFingerprint,
    },
    /// A question was accepted for answering. On disk before the first
    /// token of its answer leaves the appliance, so an answer never exists
    /// without its record (the `answer` record follows when it ends).
    Request {
        /// Who asked.
        actor: ActorId,
        /// The conversation it belongs to.
        conversation: ConversationId,
        /// The model asked.
        model: ModelFingerprint,
        /// Keyed hash of the question.
        input: Digest,
    },
    /// One generated answer.
    Answer(Answer),
    /// Something left the appliance (a conversation or the audit log).
    Export {
        /// Who asked for the export.
        actor: ActorId,
        /// What was exported.
        kind: ExportKind,
        /// The conversation, when one conversation was exported.
        conversation: Option<ConversationId>,
        /// Whether it worked.
        outcome: Outcome,
    },
    /// A login through the UI (password or single sign-on), or a refused one.
    Login {
        /// The account (its pseudonymous id; `unknown-account` when the
        /// name matches none, so the log never holds a name).
        actor: ActorId,
        /// How the user authenticated.
        method: LoginMethod,
        /// `ok`, or `rejected` for a wrong password, a disabled account or
        /// a locked-out name.
        outcome: Outcome,
    },
    /// Repeated wrong passwords locked a user name out.
    Lockout {
        /// The account (or `unknown-account`).
        actor: ActorId,
        /// For how long, in seconds.
        seconds: u32,
    },
    /// A login session ended.
    Logout {
        /// The account.
        actor: ActorId,
        /// Why it ended.
        reason: LogoutReason,
    },
    /// An administrator changed an account.
    AccountChange {
        /// Who made the change (`uid-<n>` of the administrator).
        actor: ActorId,
        /// The account changed.
        account: ActorId,
        /// What changed.
        change: AccountChangeKind,
    },
    /// A request authenticated with a personal API token.
    TokenUse {
        /// The token's account.
        actor: ActorId,
        /// The token's id (never the token).
        token: ActorId,
    },
    /// The daemon is stopping.
    Shutdown {
        /// Why.
        reason: ShutdownReason,
    },
    /// Written by [`AuditLog::open`](crate::AuditLog::open) after it cut an
    /// invalid tail off the newest file. Its fields are private: callers
    /// match on it but do not write one.
    Recovery(Recovery),
    /// Written by [`AuditLog::apply_retention`](crate::AuditLog::apply_retention)
    /// before it deletes old files. Its fields are private, as for
    /// [`Event::Recovery`].
    Retention(Retention),
}

/// The fields of an [`Event::Answer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The user or client that asked.
    pub actor: ActorId,
    /// The conversation the answer belongs to.
    pub conversation: ConversationId,
    /// The model that generated it.
    pub model: ModelFingerprint,
    /// Prompt tokens.
    pub tokens_in: u32,
    /// Generated tokens.
    pub tokens_out: u32,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Time from request to last token.
    pub latency_ms: u64,
    /// Whether the request succeeded.
    pub outcome: Outcome,
    /// Keyed hash of the input text.
    pub input: Digest,
    /// Keyed hash of the output text.
    pub output: Digest,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Ok,
    /// The request was refused (invalid, too long, not allowed).
    Rejected,
    /// The client cancelled it.
    Cancelled,
    /// An internal error stopped it.
    Error,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced its end-of-turn token.
    Stop,
    /// The token limit was reached.
    Length,
    /// The client cancelled.
    Cancelled,
    /// An error interrupted generation.
    Error,
}

/// What an [`Event::Export`] exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// One conversation's transcript.
    Conversation,
    /// (Part of) this audit log.
    AuditLog,
}

/// How a user authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    /// User name and password.
    Password,
    /// The hospital's single sign-on, through the trusted reverse proxy.
    Sso,
}

/// Why a login session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutReason {
    /// The user logged out.
    Requested,
    /// No request within the idle timeout.
    Idle,
    /// The account was disabled or removed, or its password changed.
    AccountChanged,
}

/// What an administrator changed in an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountChangeKind {
    /// Created.
    Created,
    /// Disabled: it can no longer log in or use its tokens.
    Disabled,
    /// Enabled again.
    Enabled,
    /// Its password was set.
    PasswordChanged,
    /// A personal API token was created.
    TokenCreated,
    /// A personal API token was revoked.
    TokenRevoked,
}

impl Event {
    /// Whether this record names `who`, as the actor or as the account an
    /// administrator changed (what `export` filters by).
    #[must_use]
    pub fn names(&self, who: &ActorId) -> bool {
        match self {
            Self::ConversationStart { actor, .. }
            | Self::Request { actor, .. }
            | Self::Export { actor, .. }
            | Self::Login { actor, .. }
            | Self::Lockout { actor, .. }
            | Self::Logout { actor, .. }
            | Self::TokenUse { actor, .. } => actor == who,
            Self::Answer(a) => &a.actor == who,
            Self::AccountChange { actor, account, .. } => actor == who || account == who,
            Self::Startup { .. }
            | Self::ModelLoad { .. }
            | Self::Shutdown { .. }
            | Self::Recovery(_)
            | Self::Retention(_) => false,
        }
    }
}

/// Why the daemon stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    /// An administrator or the service manager asked.
    Requested,
    /// A termination signal arrived.
    Signal,
    /// A fatal error.
    Error,
}

/// An invalid tail cut off a log file on open: where, how long, and the
/// SHA-256 of the bytes (never the bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub(crate) file: LogDay,
    pub(crate) offset: u64,
    pub(crate) cut_len: u64,
    pub(crate) cut_sha256: Sha256,
}

impl Recovery {
    /// The day of the file that was cut.
    #[must_use]
    pub fn file_day(&self) -> LogDay {
        self.file
    }
    /// The file length after the cut.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// How many bytes were cut.
    #[must_use]
    pub fn cut_len(&self) -> u64 {
        self.cut_len
    }
    /// SHA-256 of the cut bytes.
    #[must_use]
    pub fn cut_sha256(&self) -> Sha256 {
        self.cut_sha256
    }
}

/// Old files about to be deleted by retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub(crate) retention_days: u32,
    pub(crate) removed_files: u32,
    pub(crate) oldest: LogDay,
    pub(crate) newest: LogDay,
    /// Sequence number of the last record removed (none if the removed
    /// files held no record).
    pub(crate) through_seq: Option<u64>,
    /// MAC of that record: the `prev` of the first record that remains.
    pub(crate) head: Option<Mac>,
}

impl Retention {
    /// Number of files removed.
    #[must_use]
    pub fn removed_files(&self) -> u32 {
        self.removed_files
    }
    /// Day of the oldest file removed.
    #[must_use]
    pub fn oldest(&self) -> LogDay {
        self.oldest
    }
    /// Day of the newest file removed.
    #[must_use]
    pub fn newest(&self) -> LogDay {
        self.newest
    }
    /// Sequence number of the last removed record.
    #[must_use]
    pub fn through_seq(&self) -> Option<u64> {
        self.through_seq
    }
}
