//! The daemon's side of the audit log (`medgemma-audit`): opened at startup
//! before anything is served, one record per startup, model load,
//! conversation start, answer and shutdown.
//!
//! Text reaches the log only as keyed digests ([`Auditor::digest`]): the
//! input digest covers the new user message (the web UI) or the whole
//! request's messages (the OpenAI API), the output digest the answer text.
//! An answer's record is appended and fsynced *before* its final event
//! (`done`, the last OpenAI chunk or the JSON response) is sent, and a turn
//! whose record cannot be written is answered with an error instead: an
//! answer never leaves the appliance unrecorded.
//!
//! Owns: the mapping from daemon events to audit events. Must never: put
//! text anywhere but [`medgemma_audit::ContentHasher::hash`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use medgemma_audit::{
    ActorId, Answer, AuditError, AuditLog, AuditOptions, ContentHasher, ConversationId, Digest,
    Event, ExportKind, FinishReason, ModelFingerprint, Outcome, ShutdownReason, SoftwareVersion,
};
use medgemma_model::generate::FinishReason as ModelFinish;

use medgemma_protocol::status::ChainHead;

use crate::config::AuditSection;

/// The actor recorded for OpenAI-API clients (they carry no client cookie).
pub const API_ACTOR: &str = "api";
/// The actor recorded for a browser request without a client cookie.
pub const UNKNOWN_BROWSER_ACTOR: &str = "browser-unknown";

/// Why the audit log could not be opened. Messages carry paths only.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// The key file is missing: the appliance was not set up.
    #[error(
        "the audit key file {0} does not exist; run `medgemmactl setup` to create the audit keys (the daemon does not serve without an audit log)"
    )]
    MissingKey(PathBuf),
    /// The content key file is missing.
    #[error("the audit content key file {0} does not exist; run `medgemmactl setup` to create it")]
    MissingContentKey(PathBuf),
    /// The log or a key could not be used.
    #[error("cannot open the audit log: {0}")]
    Audit(#[from] AuditError),
}

/// The open audit log, shared by the request handlers.
#[derive(Debug)]
pub struct Auditor {
    log: Mutex<AuditLog>,
    hasher: ContentHasher,
    model: ModelFingerprint,
    dir: PathBuf,
}

impl Auditor {
    /// Opens the log and the content key (before the sandbox closes the
    /// file system) and appends the startup record.
    pub fn open(cfg: &AuditSection, model: ModelFingerprint) -> Result<Self, AuditOpenError> {
        if !cfg.key_file.is_file() {
            return Err(AuditOpenError::MissingKey(cfg.key_file.clone()));
        }
        if !cfg.content_key_file.is_file() {
            return Err(AuditOpenError::MissingContentKey(
                cfg.content_key_file.clone(),
            ));
        }
        let log = AuditLog::open(&cfg.dir, &cfg.key_file, AuditOptions::default())?;
        let hasher = ContentHasher::load(&cfg.content_key_file)?;
        let me = Self {
            log: Mutex::new(log),
            hasher,
            model,
            dir: cfg.dir.clone(),
        };
        me.append(Event::Startup {
            software: software_version(),
        })?;
        Ok(me)
    }

    fn lock(&self) -> MutexGuard<'_, AuditLog> {
        // An append that panicked left either a whole record or a torn one
        // that the next open repairs; the writer itself stays usable.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record and waits for it to be on disk (blocking).
    pub fn append(&self, event: Event) -> Result<(), AuditError> {
        self.lock().append(event).map(|_| ())
    }

    /// [`Auditor::append`] off the async runtime's worker threads.
    pub async fn append_async(self: &Arc<Self>, event: Event) -> Result<(), AuditError> {
        // The server runs on a multi-threaded runtime: fsync here without
        // stalling the other connections.
        tokio::task::block_in_place(|| self.append(event))
    }

    /// The keyed digest of a text.
    pub fn digest(&self, text: &str) -> Digest {
        self.hasher.hash(text)
    }

    /// The model's fingerprint as recorded.
    pub fn model(&self) -> &ModelFingerprint {
        &self.model
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain's end now.
    pub fn head(&self) -> ChainHead {
        let log = self.lock();
        ChainHead {
            next_seq: log.next_seq(),
            head: log.head().to_hex(),
            boot_id: log.boot_id().as_str().to_owned(),
            recovered_cuts: log.recovered_cuts(),
        }
    }

    /// The `model_load` record.
    pub fn model_load(&self, latency: Duration, ok: bool) -> Result<(), AuditError> {
        self.append(Event::ModelLoad {
            model: self.model.clone(),
            latency_ms: millis(latency),
            outcome: if ok { Outcome::Ok } else { Outcome::Error },
        })
    }

    /// The `export` record of an audit-log export; returns the chain's end
    /// after it.
    pub async fn export(
        self: &Arc<Self>,
        actor: ActorId,
        ok: bool,
    ) -> Result<ChainHead, AuditError> {
        self.append_async(Event::Export {
            actor,
            kind: ExportKind::AuditLog,
            conversation: None,
            outcome: if ok { Outcome::Ok } else { Outcome::Error },
        })
        .await?;
        Ok(self.head())
    }

    /// The `shutdown` record.
    pub fn shutdown(&self, reason: ShutdownReason) -> Result<(), AuditError> {
        self.append(Event::Shutdown { reason })
    }

    /// The `conversation_start` record.
    pub async fn conversation_start(
        self: &Arc<Self>,
        actor: &ActorId,
        conversation: &ConversationId,
    ) -> Result<(), AuditError> {
        let event = Event::ConversationStart {
            actor: actor.clone(),
            conversation: conversation.clone(),
            model: self.model.clone(),
        };
        self.append_async(event).await
    }

    /// The `answer` record of one turn.
    pub async fn answer(self: &Arc<Self>, turn: TurnRecord) -> Result<(), AuditError> {
        let event = Event::Answer(Answer {
            actor: turn.actor,
            conversation: turn.conversation,
            model: self.model.clone(),
            tokens_in: clamp(turn.tokens_in),
            tokens_out: clamp(turn.tokens_out),
            finish: turn.finish,
            latency_ms: millis(turn.latency),
            outcome: turn.outcome,
            input: turn.input,
            output: turn.output,
        });
        self.append_async(event).await
    }
}

/// What one turn's `answer` record says.
#[derive(Debug)]
pub struct TurnRecord {
    /// Who asked.
    pub actor: ActorId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Prompt tokens.
    pub tokens_in: usize,
    /// Generated tokens.
    pub tokens_out: usize,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Request to last token.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Digest of the input.
    pub input: Digest,
    /// Digest of the output.
    pub output: Digest,
}

/// The audit vocabulary for the model's finish reasons.
pub fn finish(f: ModelFinish) -> (FinishReason, Outcome) {
    match f {
        ModelFinish::Stop => (FinishReason::Stop, Outcome::Ok),
        ModelFinish::Length | ModelFinish::ContextFull => (FinishReason::Length, Outcome::Ok),
        ModelFinish::Cancelled => (FinishReason::Cancelled, Outcome::Cancelled),
    }
}

/// The actor for a browser request: its client cookie, else a fixed name.
pub fn browser_actor(client: Option<&str>) -> ActorId {
    client
        .and_then(|c| ActorId::new(c).ok())
        .unwrap_or_else(|| fixed_actor(UNKNOWN_BROWSER_ACTOR))
}

/// The actor for an admin-socket request: the peer's uid (`uid-0` is root).
pub fn admin_actor(uid: u32) -> ActorId {
    ActorId::new(&format!("uid-{uid}")).unwrap_or_else(|_| unreachable!("uid-<digits> is a token"))
}

/// The actor for OpenAI-API requests.
pub fn api_actor() -> ActorId {
    fixed_actor(API_ACTOR)
}

fn fixed_actor(name: &str) -> ActorId {
    // The constants are valid tokens; a test checks it.
    ActorId::new(name).unwrap_or_else(|_| unreachable!("fixed actor names are tokens"))
}

/// A conversation id for the log (ids from `random_id` are valid tokens).
pub fn conversation_id(id: &str) -> ConversationId {
    ConversationId::new(id).unwrap_or_else(|_| {
        ConversationId::new("invalid-id").unwrap_or_else(|_| unreachable!("a token"))
    })
}

/// The fingerprint of the configured model: the SHA-256 of the pins file
/// `medgemmactl setup` wrote (so it changes with any model file), else the
/// label as a token.
pub fn model_fingerprint(pins_file: Option<&Path>, label: &str) -> ModelFingerprint {
    if let Some(bytes) = pins_file.and_then(|p| std::fs::read(p).ok()) {
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(f) = ModelFingerprint::new(&hex) {
            return f;
        }
    }
    let mut slug: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if slug.is_empty() {
        slug.push_str("model");
    }
    ModelFingerprint::new(&slug)
        .unwrap_or_else(|_| ModelFingerprint::new("model").unwrap_or_else(|_| unreachable!()))
}

fn software_version() -> SoftwareVersion {
    SoftwareVersion::parse(env!("CARGO_PKG_VERSION"))
        .unwrap_or_else(|_| unreachable!("the crate version is x.y.z"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_are_tokens() {
        assert_eq!(api_actor().as_str(), API_ACTOR);
        assert_eq!(browser_actor(None).as_str(), UNKNOWN_BROWSER_ACTOR);
        assert_eq!(
            model_fingerprint(None, "MedGemma 1.5 4B").as_str(),
            "medgemma-1-5-4b"
        );
    }
}
