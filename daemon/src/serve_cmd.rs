//! `medgemmad serve --config FILE`: the serving daemon.
//!
//! Startup is one ordered list, read top to bottom in [`run`]
//! (ARCHITECTURE.md "Daemon startup order", shared/spec/sandbox.md); every
//! step up to seccomp runs while the process has a single thread:
//!
//! 1. Clean the process: take the sockets systemd passed (`LISTEN_FDS`),
//!    close every other inherited descriptor, clear the environment to
//!    [`lockdown::ENV_ALLOW`] (exit 6 on failure).
//! 2. Read and validate the configuration: any bad key stops here (exit 2);
//!    resolve the service user (`sandbox.user`) while `/etc/passwd` is readable.
//! 3. Open what the daemon needs: the audit log (exit 5), the model files
//!    (checked; the engine loads later from the same paths, which Landlock
//!    allows read-only; exit 3), the UI socket (the one systemd passed, or
//!    bind `server.ui_socket`) and the admin socket (exit 4), the sd_notify
//!    socket (connected now: `socket(2)` is denied later).
//! 4. Drop root to the service user (when started as root; otherwise stay
//!    and say so). 5. `no_new_privs`, not dumpable, core dumps off.
//!    6. Landlock derived from the configuration: every right the kernel
//!    offers, fully enforced, at least `sandbox.min_landlock_abi` or no
//!    start; what this ABI does not enforce is logged with what covers it.
//!    7. seccomp on every thread, the engine's role CPU or CUDA (exit 6).
//! 8. Only then threads: the audit writer (records are fsynced there, never
//!    on an async worker), the engine thread (narrows itself to the engine
//!    role, CPU or CUDA, loads the model, reports "ready"; exit 3 on
//!    failure), then main
//!    narrows to the HTTP role and builds the async runtime, whose threads
//!    narrow themselves at start; serve until SIGTERM or SIGINT, then shut
//!    down gracefully and remove the socket files this process created.
//!
//! `--insecure-no-sandbox` skips steps 4 to 7 and says so loudly (stderr at
//! startup and every 10 minutes, `insecure_no_sandbox: true` in
//! `/api/status`, red in the UI); `--seccomp-log` logs instead of denying
//! (diagnostics; never a silent "off": the status says `enforced: false`).
//!
//! The audit log is opened right after the configuration (a missing key
//! file stops the daemon: run `medgemmactl setup`), records `startup`,
//! `model_load` and, on the way out, `shutdown`; the admin socket
//! (`server.admin_socket`) is bound with the UI socket.
//!
//! Exit codes: 0 clean shutdown, 1 server failure, 2 configuration, 3 model
//! load, 4 socket, 5 audit log, 6 sandbox, 7 `backend = "cuda"` and no
//! usable GPU (the sentence says why; `auto` runs on the CPU instead, see
//! `gpu.rs`), 8 the engine stopped while serving (repeated GPU failures:
//! systemd restarts the service).
//!
//! Owns: the order of startup and shutdown. Must never: serve before the
//! model is ready, or report a sandbox state the process does not have.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use medgemma_sandbox::{self as sandbox, SandboxError, SeccompMode};

use crate::audit_log::{self, AuditOpenError, Auditor};
use crate::config::{ConfigError, ResolvedBackend, Settings};
use crate::engine::gpu::{self, GpuError};
use crate::engine::load::{self as engine_load, EngineJob, LoadFailure};
use crate::engine::worker::{self, WorkerError};
use crate::server::admin::{self, AdminError};
use crate::server::listener::{self, ListenerError};
use crate::server::{self, ServerConfig, ServerError};
use crate::{lockdown, log};

/// Arguments of `medgemmad serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (see packaging/medgemmad.example.toml).
    #[arg(long)]
    config: PathBuf,
    /// Development only: run WITHOUT the kernel sandbox (no privilege drop,
    /// Landlock or seccomp). Loud: warned on stderr and shown in red in the UI.
    #[arg(long, conflicts_with = "seccomp_log")]
    insecure_no_sandbox: bool,
    /// Diagnostics: seccomp logs calls outside the allow-lists (kernel log,
    /// `type=1326`) instead of denying them; the hostile calls still kill.
    #[arg(long)]
    seccomp_log: bool,
    /// Testing: ask Landlock for the rights of at most this ABI even if the
    /// kernel offers more (shows what an older kernel enforces); never
    /// below `sandbox.min_landlock_abi`.
    #[arg(long, value_name = "ABI", value_parser = clap::value_parser!(i32).range(1..=10))]
    landlock_abi_cap: Option<i32>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The UI socket could not be opened.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The model could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(WorkerError),
    /// The async runtime could not start.
    #[error("cannot start the server runtime: {0}")]
    Runtime(std::io::Error),
    /// The server stopped on its own.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The sandbox could not be applied in full: the daemon never serves
    /// under a partial sandbox.
    #[error("cannot apply the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// A model file cannot be opened.
    #[error("cannot open the model file {path}: {source}")]
    ModelFile {
        /// The configured path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The audit log cannot be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    /// The audit writer thread cannot start.
    #[error(transparent)]
    AuditWriter(#[from] audit_log::WriterError),
    /// The admin socket cannot be opened.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The engine thread ended while serving (repeated GPU failures).
    #[error(
        "the engine stopped after repeated GPU failures; the service restarts under systemd (else start it again) and medgemmactl gpu shows the GPU's state"
    )]
    EngineStopped,
    /// `backend = "cuda"` and the GPU cannot be used.
    #[error("{}", gpu::refusal(.0))]
    Gpu(#[from] GpuError),
}

impl ServeError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Load(WorkerError::Load(e))
                if e.downcast_ref::<LoadFailure>()
                    .is_some_and(LoadFailure::is_gpu_refusal) =>
            {
                gpu::EXIT_GPU_UNUSABLE
            }
            Self::Load(_) | Self::ModelFile { .. } => 3,
            Self::Gpu(e) => e.exit_code(),
            Self::Sandbox(_) => 6,
            Self::Listener(_) | Self::Admin(_) => 4,
            Self::Audit(_) => 5,
            Self::AuditWriter(_) => 6,
            Self::Runtime(_) | Self::Server(_) => 1,
            Self::EngineStopped => 8,
        }
    }
}

/// Runs the daemon.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    // 1. Clean fds and environment, keeping systemd's sockets and protocol.
    let activated = sandbox::take_listen_fds()?;
    let keep: Vec<_> = activated.iter().map(|l| l.fd.as_raw_fd()).collect();
    sandbox::clean_process(&keep, lockdown::ENV_ALLOW)?;
    let mode = if args.insecure_no_sandbox {
        sandbox::declare_insecure_no_sandbox();
        log::warn(format_args!("{}", lockdown::INSECURE_WARNING));
        None
    } else if args.seccomp_log {
        Some(SeccompMode::Log)
    } else {
        Some(SeccompMode::Enforce)
    };

    // 2. Configuration; the service user while /etc/passwd is readable.
    let mut settings = Settings::load(&args.config)?;
    //    The GPU driver, while single-threaded: libcuda must load before
    //    CUDA is touched, and the driver's environment is set now (gpu.rs).
    let gpu = gpu::prepare(&mut settings)?;
    for line in &gpu.log {
        log::info(format_args!("gpu: {line}"));
    }
    let settings = Arc::new(settings);
    log::info(format_args!(
        "configuration {} is valid: model \"{}\"{}, backend {:?} ({}); audit directory {}",
        settings
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        settings.model.label,
        if settings.model.demo { " (demo)" } else { "" },
        settings.backend.backend,
        settings.backend.reason,
        settings.audit.dir.display(),
    ));
    let user = match mode {
        Some(_) => lockdown::service_user(&settings)?,
        None => None,
    };

    // 3. Open what is needed: the audit log (before the sandbox closes the
    //    file system), ...
    let auditor = Arc::new(Auditor::open(
        &settings.audit,
        audit_log::label_fingerprint(&settings.model.label),
    )?);
    log::info(format_args!(
        "audit log {} open: next record {}",
        settings.audit.dir.display(),
        auditor.head().next_seq
    ));
    //    Retention now, then daily (`audit.retention_days`).
    retention_done(auditor.apply_retention(), settings.audit.retention_days);

    //    ... the model files (checked), the UI and admin sockets, and the
    //    sd_notify socket (connected now: socket(2) is denied from step 7).
    check_model_files(&settings)?;
    let passed = listener::by_name(activated.into_iter().map(|l| (l.name, l.fd)).collect());
    for name in &passed.ignored {
        log::info(format_args!(
            "socket activation: ignoring the passed socket named {name:?} (medgemmad uses \"ui\" and \"admin\")"
        ));
    }
    let ui = listener::open(&settings.server.ui_socket, passed.ui)?;
    if let (Some(path), Some(user)) = (&ui.bound_path, &user) {
        // The service user removes it on exit; its group may connect (0660).
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
            ListenerError::Bind {
                path: path.clone(),
                source,
            }
        })?;
    }
    let group = settings.server.admin_group.as_deref();
    let admin = match (passed.admin, &settings.server.admin_socket) {
        (Some(fd), _) => Some(Arc::new(admin::adopt(fd, group)?)),
        (None, Some(path)) => Some(Arc::new(admin::bind(path, group)?)),
        (None, None) => None,
    };
    let (notifier, notify_problem) = lockdown::Notifier::connect();
    if let Some(problem) = notify_problem {
        log::warn(format_args!("{problem}"));
    }

    // 4.-7. Drop root, harden, Landlock, seccomp on every thread.
    if let Some(mode) = mode {
        let policy = lockdown::landlock_policy(&settings, &gpu.libraries);
        let landlock = lockdown::landlock_options(&settings, args.landlock_abi_cap);
        let engine = lockdown::engine_role(&settings);
        for line in lockdown::lock_down(user.as_ref(), &policy, &landlock, engine, mode)? {
            log::info(format_args!("sandbox: {line}"));
        }
    }

    // 8. Only now threads: the audit writer, the engine, the runtime; serve.
    auditor.start_writer(move || match mode {
        Some(mode) => lockdown::narrow_thread(medgemma_sandbox::Role::Http, mode),
        None => Ok(()),
    })?;
    let result = serve(
        &settings,
        ui.listener,
        &auditor,
        admin.clone(),
        mode,
        &notifier,
    );
    let reason = match &result {
        Ok(()) => medgemma_audit::ShutdownReason::Signal,
        Err(_) => medgemma_audit::ShutdownReason::Error,
    };
    if let Err(e) = auditor.shutdown(reason) {
        log::error(format_args!("audit: cannot record the shutdown: {e}"));
    }
    if let Some(path) = admin.as_ref().and_then(|a| a.path.as_ref()) {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = &ui.bound_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Opens the model, tokenizer and system prompt files once, so that a
/// missing or unreadable file is reported before the sandbox closes in; the
/// engine opens them again by path (Landlock allows them read-only).
fn check_model_files(settings: &Settings) -> Result<(), ServeError> {
    if settings.backend.backend == ResolvedBackend::Scripted {
        return Ok(());
    }
    let model = &settings.model;
    let files = std::iter::once(&model.path)
        .chain(&model.tokenizer_path)
        .chain(&model.system_prompt_file);
    for path in files {
        let opened = if path.is_dir() {
            std::fs::read_dir(path).map(drop)
        } else {
            std::fs::File::open(path).map(drop)
        };
        opened.map_err(|source| ServeError::ModelFile {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn serve(
    settings: &Arc<Settings>,
    ui: std::os::unix::net::UnixListener,
    auditor: &Arc<Auditor>,
    admin: Option<Arc<admin::AdminSocket>>,
    mode: Option<SeccompMode>,
    notifier: &lockdown::Notifier,
) -> Result<(), ServeError> {
    // 8a. The engine thread (it narrows itself to the engine role before
    //     loading), ready before anything is served.
    let role = lockdown::engine_role(settings);
    let loader = engine_load::loader(EngineJob::new(settings), mode.map(|m| (role, m)));
    let t0 = Instant::now();
    let started = worker::start(loader, settings.engine.queue_length);
    // The log names the weights that answer: their digests, taken while loading.
    if let Some(w) = started
        .as_ref()
        .ok()
        .and_then(|e| e.snapshot().info.weights.clone())
    {
        auditor.set_model(&w.fingerprint);
    }
    auditor
        .model_load(t0.elapsed(), started.is_ok())
        .map_err(|e| ServeError::Audit(e.into()))?;
    let engine = started.map_err(ServeError::Load)?;
    let info = engine.snapshot().info;
    log::info(format_args!(
        "ready: {} parameters ({}), context {} tokens, backend {}; serving on {}",
        info.model.parameters,
        info.model.format,
        info.context_limit,
        info.backend,
        settings.server.ui_socket.display()
    ));

    // 8b. Main narrows itself to the HTTP role, and so does every runtime
    // thread at its start (workers and blocking pool); serve until a signal.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_name("medgemmad-http")
        .enable_all();
    if let Some(mode) = mode {
        builder.on_thread_start(lockdown::narrow_http(mode)?);
    }
    let runtime = builder.build().map_err(ServeError::Runtime)?;
    let sandboxed = lockdown::sandbox_status();
    let line = format_args!(
        "sandbox enforced: {}; problems: {:?}",
        sandboxed.enforced, sandboxed.problems
    );
    if sandboxed.enforced {
        log::info(line);
    } else {
        log::warn(line);
    }
    let config = ServerConfig {
        settings: Arc::clone(settings),
        sandbox: lockdown::sandbox_status,
        audit: Arc::clone(auditor),
        admin,
    };
    runtime.block_on(async move {
        ui.set_nonblocking(true).map_err(ServeError::Runtime)?;
        let listener = tokio::net::UnixListener::from_std(ui).map_err(ServeError::Runtime)?;
        if mode.is_none() {
            tokio::spawn(async {
                let mut every = tokio::time::interval(lockdown::INSECURE_WARNING_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    log::warn(format_args!("{}", lockdown::INSECURE_WARNING));
                }
            });
        }
        notify_systemd(notifier, "READY=1\nSTATUS=serving");
        let watchdog = lockdown::watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        tokio::spawn(daily_retention(
            Arc::clone(auditor),
            settings.audit.retention_days,
        ));
        if let Some(every) = watchdog.filter(|_| notifier.is_connected()) {
            tokio::spawn(watchdog_pings(notifier.clone(), engine.clone(), every));
        }
        let monitor = engine.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = engine_stopped(monitor) => {}
            }
        };
        let alive = engine.clone();
        server::run(listener, engine, config, stop).await?;
        notify_systemd(notifier, "STOPPING=1");
        if !alive.is_alive() {
            return Err(ServeError::EngineStopped);
        }
        Ok::<(), ServeError>(())
    })?;
    // The engine thread ends with its last handle; it may still be finishing a
    // cancelled token, which the process exit cuts short.
    runtime.shutdown_timeout(server::SHUTDOWN_GRACE);
    log::info(format_args!("stopped"));
    Ok(())
}

/// Applies retention once a day while serving.
async fn daily_retention(auditor: Arc<Auditor>, days: u32) {
    let mut every = tokio::time::interval(Duration::from_secs(24 * 3600));
    every.tick().await; // the first tick is now; retention ran at start
    loop {
        every.tick().await;
        retention_done(auditor.apply_retention_async().await, days);
    }
}

/// Logs what retention did.
fn retention_done(result: Result<audit_log::Retained, medgemma_audit::AuditError>, days: u32) {
    match result {
        Ok(r) if r.files > 0 => log::info(format_args!(
            "audit retention: deleted {} file(s) older than {days} days (recorded in the log)",
            r.files
        )),
        Ok(_) => {}
        Err(e) => log::error(format_args!("audit retention failed: {e}")),
    }
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops the daemon.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => log::info(format_args!("SIGTERM received")),
        _ = tokio::signal::ctrl_c() => log::info(format_args!("SIGINT received")),
    }
}

/// Resolves once the engine thread has ended (it stops itself when the
/// engine cannot recover, see [`Engine::usable`]).
async fn engine_stopped(engine: worker::EngineHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while engine.is_alive() {
        tick.tick().await;
    }
    log::error(format_args!("the engine thread has stopped; shutting down"));
}

/// Sends `WATCHDOG=1` every `every` while the runtime turns and the engine
/// thread lives. Once the engine thread has ended the daemon can no longer
/// answer: it asks systemd to act now (`WATCHDOG=trigger`), which restarts
/// the service (`Restart=on-failure`).
async fn watchdog_pings(
    notifier: lockdown::Notifier,
    engine: worker::EngineHandle,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if engine.is_alive() {
            notify_systemd(&notifier, "WATCHDOG=1");
        } else {
            log::error(format_args!(
                "the engine thread has stopped; asking systemd to restart the service"
            ));
            notify_systemd(&notifier, "WATCHDOG=trigger");
            return;
        }
    }
}

/// Tells systemd (`Type=notify`) about readiness, as `sd_notify(3)` does,
/// on the socket connected before the sandbox (`socket(2)` is denied now).
fn notify_systemd(notifier: &lockdown::Notifier, state: &str) {
    if let Err(e) = notifier.notify(state) {
        log::warn(format_args!("cannot notify systemd ({e}); continuing"));
    }
}
