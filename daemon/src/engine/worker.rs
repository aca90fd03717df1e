//! The engine thread and the bounded queue in front of it.
//!
//! One OS thread owns the [`Engine`] (and so the model): it loads it, reports
//! readiness through a handshake (as mistral.rs does), then answers jobs from
//! a bounded `sync_channel`: one at a time, or, when the engine batches
//! ([`Engine::max_batch`] > 1), with continuous batching: between two decode
//! steps, waiting jobs join the running batch (up to the limit) and ended
//! ones leave it, so several conversations share each read of the weights
//! and nobody waits for another's whole answer. Each [`Job`] carries its own
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
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use medgemma_model::generate::Flow;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use medgemma_protocol::status::QueueStatus;

use super::health::EngineHealth;
use super::{ChatEvent, ChatRequest, ChatSummary, Engine, EngineError, EngineInfo, TurnId};
use crate::log;

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

/// What the status pages read of the engine, in one piece.
#[derive(Debug, Clone)]
pub struct EngineSnapshot {
    /// What was loaded and where it runs.
    pub info: Arc<EngineInfo>,
    /// The queue's counters now.
    pub queue: QueueStatus,
    /// GPU failures in a row (0 off the GPU).
    pub gpu_failures_in_a_row: usize,
    /// Whether the GPU's record says degraded.
    pub gpu_degraded: bool,
    /// Whether the engine thread still runs.
    pub alive: bool,
}

/// Upper bound of the jobs that run at once (the configuration allows up to
/// this many); the channel holds this many besides the queue.
pub const MAX_RUNNING: usize = 64;

/// The HTTP side's handle on the engine thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    stats: Arc<QueueStats>,
    capacity: usize,
    /// Jobs the engine runs at once.
    running: usize,
    info: Arc<EngineInfo>,
    health: Option<Arc<EngineHealth>>,
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

    /// Jobs the engine generates at once (its batch).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Queue counters now.
    pub fn queue(&self) -> QueueStatus {
        let in_flight = self.stats.in_flight.load(Ordering::Relaxed);
        let active = self.stats.active.load(Ordering::Relaxed);
        QueueStatus {
            waiting: in_flight.saturating_sub(active),
            capacity: self.capacity,
            active,
            max_concurrent: self.running,
            served: self.stats.served.load(Ordering::Relaxed),
            rejected: self.stats.rejected.load(Ordering::Relaxed),
        }
    }

    /// Everything the status pages show of the engine, read now.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            info: Arc::clone(&self.info),
            queue: self.queue(),
            gpu_failures_in_a_row: self.health.as_ref().map_or(0, |h| h.failures_in_a_row()),
            gpu_degraded: self.health.as_ref().is_some_and(|h| h.degraded()),
            alive: self.is_alive(),
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
                (n < self.capacity + self.running).then_some(n + 1)
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
        // The channel holds capacity + MAX_RUNNING jobs, so an admitted job always fits.
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
/// running ones ([`Engine::max_batch`], at most [`MAX_RUNNING`]). The thread
/// ends when the last handle is dropped.
pub fn start<L, E>(load: L, queue_length: usize) -> Result<EngineHandle, WorkerError>
where
    L: FnOnce() -> Result<Box<dyn Engine>, E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Ready = (EngineInfo, usize, Option<Arc<EngineHealth>>);
    let (ready_tx, ready_rx) = sync_channel::<Result<Ready, WorkerError>>(1);
    let (tx, rx) = sync_channel::<Job>(queue_length + MAX_RUNNING);
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
            let running = engine.max_batch().clamp(1, MAX_RUNNING);
            let _ = ready_tx.send(Ok((engine.info(), running, engine.health())));
            drop(ready_tx);
            if running > 1 {
                serve_batched(engine.as_mut(), &rx, &thread_stats, running);
            } else {
                serve_jobs(engine.as_mut(), &rx, &thread_stats);
            }
        })
        .map_err(WorkerError::Spawn)?;
    let (info, running, health) = match ready_rx.recv() {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(WorkerError::DiedWhileLoading),
    };
    Ok(EngineHandle {
        tx,
        stats,
        capacity: queue_length,
        running,
        info: Arc::new(info),
        health,
    })
}

/// The engine thread's loop: one job at a time until every sender is gone.
fn serve_jobs(engine: &mut dyn Engine, rx: &Receiver<Job>, stats: &QueueStats) {
    let limit = engine.info().context_limit;
    while let Ok(job) = rx.recv() {
        stats.active.fetch_add(1, Ordering::AcqRel);
        let last = run_job(engine, &job, limit);
        finish_job(stats, &job, last);
        if !engine.usable() {
            log::error(format_args!(
                "the engine cannot recover (repeated GPU failures); stopping it so that the service restarts"
            ));
            return;
        }
    }
}

/// Checks a job before it runs: the client still waits, the conversation
/// counts and fits. Sends `Started`. `Err` holds the job's last message
/// (`None` when the client is gone).
fn admit(engine: &dyn Engine, job: &Job, limit: usize) -> Result<(), Option<WorkerMsg>> {
    // The client went away while the job waited: skip it.
    if job.request.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
        return Err(None);
    }
    let counted = catch_unwind(AssertUnwindSafe(|| {
        engine.count_prompt_tokens(&job.request.messages)
    }));
    let prompt_tokens = match counted {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(Some(WorkerMsg::Failed(TurnError::from_engine(e)))),
        Err(_) => return Err(Some(WorkerMsg::Failed(TurnError::Panicked))),
    };
    // At least one answer token must fit after the prompt.
    if prompt_tokens >= limit {
        return Err(Some(WorkerMsg::Failed(TurnError::ContextFull {
            needed: prompt_tokens + 1,
            limit,
        })));
    }
    let started = WorkerMsg::Started {
        queued_for: job.queued_at.elapsed(),
    };
    job.reply.send(started).map_err(|_| None)
}

/// Forwards one event; `Stop` once the client is gone.
fn send_event(job: &Job, event: ChatEvent) -> Flow {
    if job.reply.send(WorkerMsg::Event(event)).is_ok() {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Answers one job; returns its last message (`Done` or `Failed`), or `None`
/// when the client is gone.
fn run_job(engine: &mut dyn Engine, job: &Job, limit: usize) -> Option<WorkerMsg> {
    if let Err(last) = admit(engine, job, limit) {
        return last;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        engine.chat(&job.request, &mut |event| send_event(job, event))
    }));
    Some(match outcome {
        Ok(Ok(summary)) => WorkerMsg::Done(Box::new(summary)),
        Ok(Err(e)) => WorkerMsg::Failed(TurnError::from_engine(e)),
        Err(_) => WorkerMsg::Failed(TurnError::Panicked),
    })
}

/// Accounts for a job that has left the engine and sends its last message.
fn finish_job(stats: &QueueStats, job: &Job, last: Option<WorkerMsg>) {
    // Free the slot before the client hears the turn is over.
    stats.active.fetch_sub(1, Ordering::AcqRel);
    stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    stats.served.fetch_add(1, Ordering::Relaxed);
    if let Some(msg) = last {
        let _ = job.reply.send(msg);
    }
}

/// The engine thread's loop with continuous batching: up to `running` jobs
/// generate together; between two decode steps, waiting jobs join (each is
/// prefilled alone, which pauses the others for that long) and ended jobs
/// leave. Blocks only while nothing runs.
fn serve_batched(engine: &mut dyn Engine, rx: &Receiver<Job>, stats: &QueueStats, running: usize) {
    let limit = engine.info().context_limit;
    let mut batch: Vec<(TurnId, Job)> = Vec::with_capacity(running);
    let mut senders_gone = false;
    loop {
        while batch.len() < running && !senders_gone {
            let job = if batch.is_empty() {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            };
            stats.active.fetch_add(1, Ordering::AcqRel);
            if let Err(last) = admit(engine, &job, limit) {
                finish_job(stats, &job, last);
                continue;
            }
            let begun = catch_unwind(AssertUnwindSafe(|| {
                engine.begin(&job.request, &mut |event| send_event(&job, event))
            }));
            match begun {
                Ok(Ok(id)) => batch.push((id, job)),
                Ok(Err(e)) => finish_job(
                    stats,
                    &job,
                    Some(WorkerMsg::Failed(TurnError::from_engine(e))),
                ),
                Err(_) => finish_job(stats, &job, Some(WorkerMsg::Failed(TurnError::Panicked))),
            }
        }
        if batch.is_empty() {
            if senders_gone {
                return;
            }
            continue;
        }
        for (id, job) in &batch {
            if job.request.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
                engine.cancel(*id);
            }
        }
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            engine.step(
                &mut |id, event| match batch.iter().find(|(t, _)| *t == id) {
                    Some((_, job)) => send_event(job, event),
                    None => Flow::Stop,
                },
            )
        }));
        let ended: Vec<(TurnId, Result<ChatSummary, TurnError>)> = match stepped {
            Ok(ended) => ended
                .into_iter()
                .map(|(id, r)| (id, r.map_err(TurnError::from_engine)))
                .collect(),
            Err(_) => {
                // A panic outside the GPU guard: fail the whole batch, and
                // let the engine drop those turns (cancelled, one more step).
                for (id, _) in &batch {
                    engine.cancel(*id);
                }
                let _ = catch_unwind(AssertUnwindSafe(|| engine.step(&mut |_, _| Flow::Stop)));
                batch
                    .iter()
                    .map(|(id, _)| (*id, Err(TurnError::Panicked)))
                    .collect()
            }
        };
        for (id, result) in ended {
            let Some(pos) = batch.iter().position(|(t, _)| *t == id) else {
                continue;
            };
            let (_, job) = batch.swap_remove(pos);
            let last = match result {
                Ok(summary) => WorkerMsg::Done(Box::new(summary)),
                Err(e) => WorkerMsg::Failed(e),
            };
            finish_job(stats, &job, Some(last));
        }
        if !engine.usable() {
            for (_, job) in batch.drain(..) {
                finish_job(stats, &job, Some(WorkerMsg::Failed(TurnError::Panicked)));
            }
            log::error(format_args!(
                "the engine cannot recover (repeated GPU failures); stopping it so that the service restarts"
            ));
            return;
        }
    }
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

    /// What every test double reports.
    fn test_info() -> EngineInfo {
        EngineInfo {
            model: ModelDescription {
                path: "test".into(),
                format: "test",
                layers: 0,
                hidden_size: 0,
                parameters: 0,
            },
            context_limit: 100,
            backend: "test".into(),
            backend_reason: "test".into(),
            gpu: None,
            weights: None,
        }
    }

    /// What every test double answers for `info` and `count_prompt_tokens`.
    macro_rules! test_basics {
        () => {
            fn info(&self) -> EngineInfo {
                test_info()
            }
            fn count_prompt_tokens(&self, messages: &[Message]) -> Result<usize, EngineError> {
                Ok(messages.len())
            }
        };
    }

    /// Answers each turn once the test sends a `()` through `gate`; after
    /// `answers_left` turns it says it cannot go on (as the model engine
    /// does after repeated GPU failures).
    struct GatedEngine {
        gate: mpsc::Receiver<()>,
        answers_left: usize,
    }

    impl Engine for GatedEngine {
        test_basics!();
        fn chat(
            &mut self,
            _req: &ChatRequest,
            _on_event: &mut dyn FnMut(ChatEvent) -> Flow,
        ) -> Result<ChatSummary, EngineError> {
            let _ = self.gate.recv();
            self.answers_left = self.answers_left.saturating_sub(1);
            Ok(summary(0, FinishReason::Stop))
        }
        fn usable(&self) -> bool {
            self.answers_left > 0
        }
    }

    /// A batching double: every turn emits one token in `begin` and one per
    /// `step` until `max_new_tokens`; it records how many turns each step
    /// advanced. The first `begin` waits for `gate`, so a test can queue
    /// several jobs before the batch starts. A turn with `max_new_tokens ==
    /// PANIC_TURN` panics in the step that would give its third token.
    struct LockstepEngine {
        gate: Option<mpsc::Receiver<()>>,
        turns: Vec<LockstepTurn>,
        next: u64,
        steps: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    struct LockstepTurn {
        id: TurnId,
        max: usize,
        emitted: usize,
        cancelled: bool,
    }

    const PANIC_TURN: usize = 999;

    impl LockstepTurn {
        fn ended(&self) -> bool {
            self.cancelled || self.emitted >= self.max
        }
    }

    impl Engine for LockstepEngine {
        test_basics!();
        fn chat(
            &mut self,
            _req: &ChatRequest,
            _on_event: &mut dyn FnMut(ChatEvent) -> Flow,
        ) -> Result<ChatSummary, EngineError> {
            panic!("a batching engine is never asked to chat by the worker");
        }
        fn max_batch(&self) -> usize {
            2
        }
        fn begin(
            &mut self,
            req: &ChatRequest,
            on_event: &mut dyn FnMut(ChatEvent) -> Flow,
        ) -> Result<TurnId, EngineError> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let id = TurnId(self.next);
            self.next += 1;
            let cancelled = on_event(ChatEvent::Answer("t".into())) == Flow::Stop;
            self.turns.push(LockstepTurn {
                id,
                max: req.max_new_tokens,
                emitted: 1,
                cancelled,
            });
            Ok(id)
        }
        fn step(
            &mut self,
            on_event: &mut dyn FnMut(TurnId, ChatEvent) -> Flow,
        ) -> Vec<super::super::TurnOutcome> {
            let active = self.turns.iter().filter(|t| !t.ended()).count();
            self.steps.lock().unwrap().push(active);
            // Time for a client to leave between steps.
            std::thread::sleep(Duration::from_millis(10));
            for t in self.turns.iter_mut().filter(|t| !t.ended()) {
                assert!(
                    !(t.max == PANIC_TURN && t.emitted == 2),
                    "a bug in the engine"
                );
                t.emitted += 1;
                if on_event(t.id, ChatEvent::Answer("t".into())) == Flow::Stop {
                    t.cancelled = true;
                }
            }
            let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.turns)
                .into_iter()
                .partition(LockstepTurn::ended);
            self.turns = running;
            ended
                .into_iter()
                .map(|t| {
                    let finish = if t.cancelled {
                        FinishReason::Cancelled
                    } else {
                        FinishReason::Length
                    };
                    (t.id, Ok(summary(t.emitted, finish)))
                })
                .collect()
        }
        fn cancel(&mut self, turn: TurnId) {
            if let Some(t) = self.turns.iter_mut().find(|t| t.id == turn) {
                t.cancelled = true;
            }
        }
    }

    fn summary(tokens: usize, finish: FinishReason) -> ChatSummary {
        ChatSummary {
            prompt_tokens: 1,
            completion_tokens: tokens,
            finish,
            time_to_first_token: Duration::ZERO,
            decode_tokens_per_s: 0.0,
            context_used: 1 + tokens,
            context_limit: 100,
            reasoning: None,
            answer: String::new(),
            thinking_unterminated: false,
        }
    }

    /// A started lockstep engine, its gate and its step log.
    fn lockstep() -> (
        EngineHandle,
        mpsc::Sender<()>,
        Arc<std::sync::Mutex<Vec<usize>>>,
    ) {
        let (open, gate) = mpsc::channel();
        let steps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&steps);
        let engine = start(
            move || {
                Ok::<_, std::io::Error>(Box::new(LockstepEngine {
                    gate: Some(gate),
                    turns: Vec::new(),
                    next: 0,
                    steps: log,
                }) as Box<dyn Engine>)
            },
            4,
        )
        .unwrap();
        (engine, open, steps)
    }

    fn request_for(tokens: usize) -> ChatRequest {
        ChatRequest {
            max_new_tokens: tokens,
            ..request()
        }
    }

    /// Every message of one job: (answer events, the last message).
    async fn drain(rx: &mut UnboundedReceiver<WorkerMsg>) -> (usize, WorkerMsg) {
        let mut events = 0;
        while let Some(msg) = rx.recv().await {
            match msg {
                WorkerMsg::Event(_) => events += 1,
                WorkerMsg::Started { .. } => {}
                last => return (events, last),
            }
        }
        panic!("the job ended without a last message");
    }

    #[tokio::test]
    async fn jobs_share_decode_steps_and_a_third_joins_when_a_slot_frees() {
        let (engine, open, steps) = lockstep();
        assert_eq!(engine.running(), 2);
        let mut rxs: Vec<_> = [5, 3, 4]
            .into_iter()
            .map(|n| engine.submit(request_for(n)).unwrap())
            .collect();
        open.send(()).unwrap();
        for (rx, n) in rxs.iter_mut().zip([5, 3, 4]) {
            let (events, last) = drain(rx).await;
            assert_eq!(events, n);
            match last {
                WorkerMsg::Done(s) => assert_eq!(s.completion_tokens, n),
                other => panic!("expected Done, got {other:?}"),
            }
        }
        // Each turn's first token comes from `begin`. Jobs 1 and 2 decode
        // together for 2 steps (job 2 reaches 3 tokens); job 3 takes the
        // free slot next to job 1 for 2 steps (job 1 reaches 5); job 3 makes
        // its 4th token alone.
        assert_eq!(*steps.lock().unwrap(), vec![2, 2, 2, 2, 1]);
        let q = engine.queue();
        assert_eq!((q.active, q.waiting, q.served), (0, 0, 3));
    }

    #[tokio::test]
    async fn a_client_that_leaves_is_dropped_from_the_batch_and_the_other_goes_on() {
        let (engine, open, steps) = lockstep();
        let mut gone = engine.submit(request_for(50)).unwrap();
        let mut stays = engine.submit(request_for(8)).unwrap();
        open.send(()).unwrap();
        // The first job's client reads one token, then disconnects.
        while !matches!(gone.recv().await, Some(WorkerMsg::Event(_))) {}
        drop(gone);
        let (events, last) = drain(&mut stays).await;
        assert_eq!(events, 8);
        assert!(matches!(last, WorkerMsg::Done(_)), "{last:?}");
        // Run to its end, the first job would have taken 49 steps, the
        // last 41 of them alone.
        let steps = steps.lock().unwrap().clone();
        assert!(
            steps.len() < 49,
            "the cancelled turn did not leave the batch: {steps:?}"
        );
        assert_eq!(engine.queue().served, 2);
    }

    #[tokio::test]
    async fn a_panic_in_a_step_fails_that_batch_and_the_next_job_is_served() {
        let (engine, open, _steps) = lockstep();
        let mut a = engine.submit(request_for(PANIC_TURN)).unwrap();
        let mut b = engine.submit(request_for(10)).unwrap();
        open.send(()).unwrap();
        for rx in [&mut a, &mut b] {
            let (_, last) = drain(rx).await;
            assert!(
                matches!(last, WorkerMsg::Failed(TurnError::Panicked)),
                "{last:?}"
            );
        }
        let mut c = engine.submit(request_for(3)).unwrap();
        let (events, last) = drain(&mut c).await;
        assert_eq!(events, 3);
        assert!(matches!(last, WorkerMsg::Done(_)), "{last:?}");
        assert!(engine.is_alive());
    }

    #[tokio::test]
    async fn an_engine_that_cannot_recover_ends_its_thread() {
        let (open, gate) = mpsc::channel();
        for _ in 0..2 {
            open.send(()).unwrap();
        }
        let engine = start(
            move || {
                Ok::<_, std::io::Error>(Box::new(GatedEngine {
                    gate,
                    answers_left: 2,
                }) as Box<dyn Engine>)
            },
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
            move || {
                Ok::<_, std::io::Error>(Box::new(GatedEngine {
                    gate,
                    answers_left: usize::MAX,
                }) as Box<dyn Engine>)
            },
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
