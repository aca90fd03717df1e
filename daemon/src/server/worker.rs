//! The engine thread and the bounded queue in front of it.
//!
//! One OS thread owns the [`Engine`] (and so the model): it loads it, reports
//! readiness through a handshake (as mistral.rs does), then answers jobs one
//! at a time from a bounded `sync_channel`. Each [`Job`] carries its own
//! response channel; a full queue is refused at once ([`SubmitError::QueueFull`])
//! so the HTTP layer can answer 503 instead of making a clinician wait.
//!
//! Before generating, the thread counts the prompt with
//! [`Engine::count_prompt_tokens`] and refuses a conversation that no longer
//! fits ([`TurnError::ContextFull`]): nothing is ever truncated silently.
//!
//! Owns: the engine, the queue and its counters. Must never: block on the
//! async runtime, log message text, or keep a request after answering it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use medgemma_model::generate::Flow;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::engine::{ChatEvent, ChatRequest, ChatSummary, Engine, EngineError, EngineInfo};

/// Why the engine thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The OS refused the thread.
    #[error("cannot start the engine thread: {0}")]
    Spawn(std::io::Error),
    /// The loader failed; the message is the loader's.
    #[error("{0}")]
    Load(Box<dyn std::error::Error + Send + Sync>),
    /// The thread ended (panicked) before reporting.
    #[error(
        "the engine thread stopped while loading the model (see the message above); this is a bug, please report it"
    )]
    DiedWhileLoading,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the model is busy and its queue is full; try again in a few seconds")]
    QueueFull,
    /// The engine thread is gone (shutting down).
    #[error("the engine has stopped; the service is shutting down")]
    Stopped,
}

/// Why one turn failed. Messages carry counts and indices only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// The conversation no longer fits the context.
    #[error(
        "this conversation needs {needed} tokens but the model's context holds {limit}; start a new conversation to continue"
    )]
    ContextFull {
        /// Prompt tokens plus one answer token.
        needed: usize,
        /// The context limit.
        limit: usize,
    },
    /// The conversation is malformed (the engine's message, indices only).
    #[error("{0}")]
    Invalid(String),
    /// The engine failed (the engine's message; it never holds text).
    #[error("the model failed to answer: {0}")]
    Engine(String),
    /// The engine panicked; it is ready for the next request.
    #[error("the model stopped with an internal error; try again, and report it if it repeats")]
    Panicked,
}

impl TurnError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ContextFull { .. } => "context_full",
            Self::Invalid(_) => "invalid_conversation",
            Self::Engine(_) => "engine_error",
            Self::Panicked => "engine_panic",
        }
    }

    fn from_engine(e: EngineError) -> Self {
        match e {
            EngineError::ContextFull { needed, limit } => Self::ContextFull { needed, limit },
            EngineError::Generate(medgemma_model::generate::GenerateError::PromptTooLong {
                prompt_tokens,
                cached,
                context,
            }) => Self::ContextFull {
                needed: prompt_tokens + cached + 1,
                limit: context,
            },
            EngineError::Chat(e) => Self::Invalid(e.to_string()),
            other => Self::Engine(other.to_string()),
        }
    }
}

/// What the engine thread sends back for one job, in this order:
/// `Started`, any number of `Event`s, then `Done`; or `Failed` at any point.
#[derive(Debug)]
pub enum WorkerMsg {
    /// The prompt fits and generation begins.
    Started {
        /// Time spent waiting in the queue.
        queued_for: Duration,
    },
    /// A reasoning or answer delta.
    Event(ChatEvent),
    /// The turn ended.
    Done(Box<ChatSummary>),
    /// The turn failed.
    Failed(TurnError),
}

/// One turn to answer.
#[derive(Debug)]
pub struct Job {
    /// The request (its `cancel` flag is watched throughout).
    pub request: ChatRequest,
    /// Where the answer goes.
    pub reply: UnboundedSender<WorkerMsg>,
    /// When it was queued.
    pub queued_at: Instant,
}

/// Queue counters. Admission counts jobs *in flight* (waiting or running)
/// rather than relying on the channel's bound alone: the engine thread gives
/// its slot back before it sends a turn's last message, so a client that
/// sends its next turn the moment the previous one is done is never refused
/// because the thread has not yet picked up the next job.
#[derive(Debug, Default)]
pub struct QueueStats {
    in_flight: AtomicUsize,
    active: AtomicUsize,
    served: AtomicUsize,
    rejected: AtomicUsize,
    /// False once the engine thread has ended (returned or panicked).
    engine_alive: AtomicBool,
}

/// Clears [`QueueStats::engine_alive`] when the engine thread ends, also by
/// unwinding from a panic outside a job.
struct AliveGuard<'a>(&'a QueueStats);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.engine_alive.store(false, Ordering::Release);
    }
}

/// A snapshot of [`QueueStats`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct QueueSnapshot {
    /// Jobs queued and not started.
    pub waiting: usize,
    /// Room in the queue (besides the running job).
    pub capacity: usize,
    /// Jobs generating now.
    pub active: usize,
    /// Jobs finished since start.
    pub served: usize,
    /// Jobs refused because the queue was full.
    pub rejected: usize,
}

/// Jobs that run at once on the engine thread.
const RUNNING: usize = 1;

/// The HTTP side's handle on the engine thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    stats: Arc<QueueStats>,
    capacity: usize,
    info: Arc<EngineInfo>,
}

impl EngineHandle {
    /// What was loaded.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Whether the engine thread still runs (the systemd watchdog stops
    /// pinging when it does not, so that systemd restarts the service).
    pub fn is_alive(&self) -> bool {
        self.stats.engine_alive.load(Ordering::Acquire)
    }

    /// Queue counters now.
    pub fn queue(&self) -> QueueSnapshot {
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed);
        let active = self.stats.active.load(Ordering::Relaxed);
        QueueSnapshot {
            waiting: in_flight.saturating_sub(active),
            capacity: self.capacity,
            active,
            served: self.stats.served.load(Ordering::Relaxed),
            rejected: self.stats.rejected.load(Ordering::Relaxed),
        }
    }

    /// Queues a turn without waiting; returns the channel its messages arrive on.
    pub fn submit(
        &self,
        request: ChatRequest,
    ) -> Result<UnboundedReceiver<WorkerMsg>, SubmitError> {
        let admitted = self
            .stats
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity + RUNNING).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull);
        }
        let (reply, rx) = unbounded_channel();
        let job = Job {
            request,
            reply,
            queued_at: Instant::now(),
        };
        // The channel holds capacity + RUNNING jobs, so an admitted job always fits.
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
                match e {
                    TrySendError::Full(_) => {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(SubmitError::QueueFull)
                    }
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }
}

/// Starts the engine thread: `load` runs on it; this returns once the engine
/// is ready (or failed to load). `queue_length` jobs may wait besides the
/// running one. The thread ends when the last handle is dropped.
pub fn start<L, E>(load: L, queue_length: usize) -> Result<EngineHandle, WorkerError>
where
    L: FnOnce() -> Result<Box<dyn Engine>, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let (ready_tx, ready_rx) = sync_channel::<Result<EngineInfo, WorkerError>>(1);
    let (tx, rx) = sync_channel::<Job>(queue_length + RUNNING);
    let stats = Arc::new(QueueStats {
        engine_alive: AtomicBool::new(true),
        ..QueueStats::default()
    });
    let thread_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("medgemmad-engine".to_owned())
        .spawn(move || {
            let _alive = AliveGuard(&thread_stats);
            let mut engine = match load() {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = ready_tx.send(Err(WorkerError::Load(Box::new(e))));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(engine.info()));
            drop(ready_tx);
            serve_jobs(engine.as_mut(), &rx, &thread_stats);
        })
        .map_err(WorkerError::Spawn)?;
    let info = match ready_rx.recv() {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(WorkerError::DiedWhileLoading),
    };
    Ok(EngineHandle {
        tx,
        stats,
        capacity: queue_length,
        info: Arc::new(info),
    })
}

/// The engine thread's loop: one job at a time until every sender is gone.
fn serve_jobs(engine: &mut dyn Engine, rx: &Receiver<Job>, stats: &QueueStats) {
    let limit = engine.info().context_limit;
    while let Ok(job) = rx.recv() {
        stats.active.fetch_add(1, Ordering::AcqRel);
        let last = run_job(engine, &job, limit);
        // Free the slot before the client hears the turn is over.
        stats.active.fetch_sub(1, Ordering::AcqRel);
        stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        stats.served.fetch_add(1, Ordering::Relaxed);
        if let Some(msg) = last {
            let _ = job.reply.send(msg);
        }
        if !engine.usable() {
            eprintln!(
                "medgemmad: the engine cannot recover (repeated GPU failures); stopping it so that the service restarts"
            );
            return;
        }
    }
}

/// Answers one job; returns its last message (`Done` or `Failed`), or `None`
/// when the client is gone.
fn run_job(engine: &mut dyn Engine, job: &Job, limit: usize) -> Option<WorkerMsg> {
    // The client went away while the job waited: skip it.
    if job.request.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
        return None;
    }
    let counted = catch_unwind(AssertUnwindSafe(|| {
        engine.count_prompt_tokens(&job.request.messages)
    }));
    let prompt_tokens = match counted {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Some(WorkerMsg::Failed(TurnError::from_engine(e))),
        Err(_) => return Some(WorkerMsg::Failed(TurnError::Panicked)),
    };
    // At least one answer token must fit after the prompt.
    if prompt_tokens >= limit {
        return Some(WorkerMsg::Failed(TurnError::ContextFull {
            needed: prompt_tokens + 1,
            limit,
        }));
    }
    let started = WorkerMsg::Started {
        queued_for: job.queued_at.elapsed(),
    };
    job.reply.send(started).ok()?;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        engine.chat(&job.request, &mut |event| {
            if job.reply.send(WorkerMsg::Event(event)).is_ok() {
                Flow::Continue
            } else {
                Flow::Stop
            }
        })
    }));
    Some(match outcome {
        Ok(Ok(summary)) => WorkerMsg::Done(Box::new(summary)),
        Ok(Err(e)) => WorkerMsg::Failed(TurnError::from_engine(e)),
        Err(_) => WorkerMsg::Failed(TurnError::Panicked),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    use medgemma_model::chat::Message;
    use medgemma_model::generate::FinishReason;
    use medgemma_model::load::ModelDescription;
    use medgemma_model::sampling::SamplingParams;

    use super::*;
    use crate::engine::ChatSummary;

    /// Answers each turn once the test sends a `()` through `gate`.
    struct GatedEngine {
        gate: mpsc::Receiver<()>,
    }

    impl Engine for GatedEngine {
        fn info(&self) -> EngineInfo {
            EngineInfo {
                model: ModelDescription {
                    path: "gated".into(),
                    format: "test",
                    layers: 0,
                    hidden_size: 0,
                    parameters: 0,
                },
                context_limit: 100,
                backend: "test".into(),
                backend_reason: "test".into(),
            }
        }
        fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
            Ok(messages.len())
        }
        fn chat(
            &mut self,
            _req: &ChatRequest,
            _on_event: &mut dyn FnMut(ChatEvent) -> Flow,
        ) -> Result<ChatSummary, EngineError> {
            let _ = self.gate.recv();
            Ok(ChatSummary {
                prompt_tokens: 1,
                completion_tokens: 0,
                finish: FinishReason::Stop,
                time_to_first_token: Duration::ZERO,
                decode_tokens_per_s: 0.0,
                context_used: 1,
                context_limit: 100,
                reasoning: None,
                answer: String::new(),
                thinking_unterminated: false,
            })
        }
    }

    /// Answers every turn, and says after `answers` turns that it cannot
    /// go on (as the model engine does after repeated GPU failures).
    struct WearingEngine {
        answers: usize,
    }

    impl Engine for WearingEngine {
        fn info(&self) -> EngineInfo {
            GatedEngine {
                gate: mpsc::channel().1,
            }
            .info()
        }
        fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
            Ok(messages.len())
        }
        fn chat(
            &mut self,
            req: &ChatRequest,
            on_event: &mut dyn FnMut(ChatEvent) -> Flow,
        ) -> Result<ChatSummary, EngineError> {
            self.answers = self.answers.saturating_sub(1);
            let (tx, gate) = mpsc::channel();
            tx.send(()).unwrap();
            GatedEngine { gate }.chat(req, on_event)
        }
        fn usable(&self) -> bool {
            self.answers > 0
        }
    }

    #[tokio::test]
    async fn an_engine_that_cannot_recover_ends_its_thread() {
        let engine = start(
            || Ok::<_, std::io::Error>(Box::new(WearingEngine { answers: 2 }) as Box<dyn Engine>),
            4,
        )
        .unwrap();
        for _ in 0..2 {
            let mut rx = engine.submit(request()).unwrap();
            until_done(&mut rx).await;
        }
        // The second answer still arrived; then the thread ended.
        let t0 = Instant::now();
        while engine.is_alive() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "engine thread still alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = engine.submit(request());
        let stopped = match refused {
            Err(SubmitError::Stopped) => true,
            // Admitted into a channel nobody reads: the reply channel closes.
            Ok(mut rx) => rx.recv().await.is_none(),
            Err(SubmitError::QueueFull) => false,
        };
        assert!(
            stopped,
            "a job after the engine ended was neither refused nor closed"
        );
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user("q")],
            max_new_tokens: 1,
            sampling: SamplingParams::default(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn until_done(rx: &mut UnboundedReceiver<WorkerMsg>) {
        while let Some(msg) = rx.recv().await {
            if matches!(msg, WorkerMsg::Done(_)) {
                return;
            }
        }
        panic!("no Done");
    }

    #[tokio::test]
    async fn next_turn_sent_right_after_done_is_not_refused() {
        let (open, gate) = mpsc::channel();
        let engine = start(
            move || Ok::<_, std::io::Error>(Box::new(GatedEngine { gate }) as Box<dyn Engine>),
            1,
        )
        .unwrap();
        let mut first = engine.submit(request()).unwrap();
        let _second = engine.submit(request()).unwrap();
        assert_eq!(
            engine.submit(request()).unwrap_err(),
            SubmitError::QueueFull
        );
        open.send(()).unwrap();
        until_done(&mut first).await;
        // The engine thread may not have taken the second job yet; the slot is free anyway.
        assert!(engine.submit(request()).is_ok());
        assert_eq!(engine.queue().rejected, 1);
    }
}
