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
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
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

/// Why the audit writer thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The OS refused the thread.
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(std::io::Error),
    /// Its start-up step (narrowing its seccomp role) failed.
    #[error("cannot start the audit writer thread: {0}")]
    Start(String),
}

/// The open audit log, shared by the request handlers.
#[derive(Debug)]
pub struct Auditor {
    log: Mutex<AuditLog>,
    hasher: ContentHasher,
    /// The model's fingerprint: the label until the weights are checked
    /// ([`Auditor::set_model`]).
    model: RwLock<ModelFingerprint>,
    dir: PathBuf,
    /// The writer thread's queue, once started ([`Auditor::start_writer`]).
    writer: OnceLock<Sender<WriteJob>>,
}

/// Work for the writer thread, and where its outcome goes.
enum WriteJob {
    /// Append one record.
    Append(Event, tokio::sync::oneshot::Sender<Result<(), AuditError>>),
    /// Apply retention.
    Retain(tokio::sync::oneshot::Sender<Result<Retained, AuditError>>),
}

/// What retention did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Files deleted.
    pub files: usize,
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
        let options = AuditOptions {
            retention_days: cfg.retention_days,
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&cfg.dir, &cfg.key_file, options)?;
        let hasher = ContentHasher::load(&cfg.content_key_file)?;
        let me = Self {
            log: Mutex::new(log),
            hasher,
            model: RwLock::new(model),
            dir: cfg.dir.clone(),
            writer: OnceLock::new(),
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

    /// Starts the thread that writes the records of requests
    /// ([`Auditor::append_async`]), so their fsync never blocks an async
    /// worker and never makes the runtime start a thread. Call it after the
    /// sandbox is applied (a thread inherits Landlock only from the thread
    /// that creates it after `landlock_restrict_self`); `on_start` runs
    /// first on the new thread (it narrows the thread's seccomp role) and its
    /// error is returned here. The thread ends when the last handle on the
    /// auditor is dropped.
    pub fn start_writer<E>(
        self: &Arc<Self>,
        on_start: impl FnOnce() -> Result<(), E> + Send + 'static,
    ) -> Result<(), WriterError>
    where
        E: std::fmt::Display,
    {
        let (tx, rx) = channel::<WriteJob>();
        let (ready_tx, ready_rx) = channel::<Result<(), String>>();
        let auditor: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("medgemmad-audit".to_owned())
            .spawn(move || {
                let started = on_start().map_err(|e| e.to_string());
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    let Some(auditor) = auditor.upgrade() else {
                        return;
                    };
                    match job {
                        WriteJob::Append(event, reply) => {
                            let _ = reply.send(auditor.append(event));
                        }
                        WriteJob::Retain(reply) => {
                            let _ = reply.send(auditor.apply_retention());
                        }
                    }
                }
            })
            .map_err(WriterError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(WriterError::Start(e)),
            Err(_) => return Err(WriterError::Start("the thread ended at once".to_owned())),
        }
        let _ = self.writer.set(tx);
        Ok(())
    }

    /// [`Auditor::append`] on the writer thread, waiting for the record to
    /// be on disk without blocking the async runtime (before the writer
    /// starts, appends here: tests, start-up).
    pub async fn append_async(self: &Arc<Self>, event: Event) -> Result<(), AuditError> {
        let Some(writer) = self.writer.get() else {
            return self.append(event);
        };
        let (reply, outcome) = tokio::sync::oneshot::channel();
        writer
            .send(WriteJob::Append(event, reply))
            .map_err(|_| self.writer_stopped())?;
        outcome.await.map_err(|_| self.writer_stopped())?
    }

    /// Deletes the files older than `audit.retention_days`, after recording
    /// the deletion in the log (blocking; at start and from the daily task
    /// through [`Auditor::apply_retention_async`]).
    pub fn apply_retention(&self) -> Result<Retained, AuditError> {
        let report = self.lock().apply_retention(std::time::SystemTime::now())?;
        Ok(Retained {
            files: report.removed.len(),
        })
    }

    /// [`Auditor::apply_retention`] on the writer thread.
    pub async fn apply_retention_async(self: &Arc<Self>) -> Result<Retained, AuditError> {
        let Some(writer) = self.writer.get() else {
            return self.apply_retention();
        };
        let (reply, outcome) = tokio::sync::oneshot::channel();
        writer
            .send(WriteJob::Retain(reply))
            .map_err(|_| self.writer_stopped())?;
        outcome.await.map_err(|_| self.writer_stopped())?
    }

    fn writer_stopped(&self) -> AuditError {
        AuditError::Write {
            path: self.dir.clone(),
            source: std::io::Error::other("the audit writer thread has stopped"),
        }
    }

    /// The keyed digest of a text.
    pub fn digest(&self, text: &str) -> Digest {
        self.hasher.hash(text)
    }

    /// The model's fingerprint as recorded.
    pub fn model(&self) -> ModelFingerprint {
        self.model
            .read()
            .map_or_else(|p| p.into_inner().clone(), |m| m.clone())
    }

    /// Records the weights' fingerprint (hex SHA-256 over the model files'
    /// digests, `engine::verify`), once the model is loaded.
    pub fn set_model(&self, fingerprint: &str) {
        if let Ok(f) = ModelFingerprint::new(fingerprint) {
            match self.model.write() {
                Ok(mut m) => *m = f,
                Err(p) => *p.into_inner() = f,
            }
        }
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
            model: self.model(),
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
            model: self.model(),
        };
        self.append_async(event).await
    }

    /// The `answer` record of one turn.
    pub async fn answer(self: &Arc<Self>, turn: TurnRecord) -> Result<(), AuditError> {
        let event = Event::Answer(Answer {
            actor: turn.actor,
            conversation: turn.conversation,
            model: self.model(),
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

/// The model's name as a token: what the log records until the weights'
/// fingerprint is known ([`Auditor::set_model`]), and for the scripted test
/// double, which has none.
pub fn label_fingerprint(label: &str) -> ModelFingerprint {
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
            label_fingerprint("MedGemma 1.5 4B").as_str(),
            "medgemma-1-5-4b"
        );
    }
}
