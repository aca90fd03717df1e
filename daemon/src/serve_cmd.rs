//! `medgemmad serve --config FILE`: the serving daemon.
//!
//! Startup is one ordered list (ARCHITECTURE.md "Daemon startup order"; the
//! sandbox steps join it when `medgemma-sandbox` is wired in):
//!
//! 1. Read and validate the configuration: any bad key stops here (exit 2).
//! 2. Open the UI socket: the one systemd passed, or bind `server.ui_socket` (exit 4).
//! 3. Start the engine thread and wait for its "ready" handshake; it loads the
//!    model and reports progress. A load failure ends the process (exit 3).
//! 4. Build the async runtime and serve until SIGTERM or SIGINT, then shut
//!    down gracefully and remove the socket file this process created.
//!
//! Exit codes: 0 clean shutdown, 1 server failure, 2 configuration, 3 model
//! load, 4 socket.
//!
//! Owns: the order of startup and shutdown. Must never: serve before the
//! model is ready, or report a sandbox state the process does not have.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use medgemma_model::backend;
use medgemma_model::load::{self, LoadError};

use crate::config::{Config, ConfigError, ResolvedBackend, Settings};
use crate::engine::{Engine, EngineError, ModelEngine};
use crate::server::listener::{self, ListenerError};
use crate::server::worker::{self, WorkerError};
use crate::server::{self, ServerConfig, ServerError};

/// Arguments of `medgemmad serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (see packaging/medgemmad.example.toml).
    #[arg(long)]
    config: PathBuf,
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
}

impl ServeError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Load(_) => 3,
            Self::Listener(_) => 4,
            Self::Runtime(_) | Self::Server(_) => 1,
        }
    }
}

/// Why the model engine could not be built.
#[derive(Debug, thiserror::Error)]
enum LoadFailure {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What `/api/status` says about the sandbox until `medgemma-sandbox` is
/// applied at startup and its `SandboxState` replaces this.
fn sandbox_state() -> serde_json::Value {
    serde_json::json!({ "enforced": false, "reason": "sandbox not yet applied" })
}

/// Runs the daemon.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    // 1. Configuration.
    let settings = Arc::new(Config::load(&args.config)?.resolve(&args.config)?);
    say(format_args!(
        "configuration {} is valid: model \"{}\"{}, backend {:?} ({}); audit directory {} (the audit log is not written yet)",
        settings.source.display(),
        settings.model.label,
        if settings.model.demo { " (demo)" } else { "" },
        settings.backend.backend,
        settings.backend.reason,
        settings.audit.dir.display(),
    ));

    // 2. The UI socket.
    let ui = listener::open(&settings.server.ui_socket)?;
    let result = serve(&settings, ui.listener);
    if let Some(path) = &ui.bound_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn serve(settings: &Arc<Settings>, ui: std::os::unix::net::UnixListener) -> Result<(), ServeError> {
    // 3. The engine thread, ready before anything is served.
    let loader = loader(settings);
    let engine = worker::start(loader, settings.engine.queue_length).map_err(ServeError::Load)?;
    let info = engine.info();
    say(format_args!(
        "ready: {} parameters ({}), context {} tokens, backend {}; serving on {}",
        info.model.parameters,
        info.model.format,
        info.context_limit,
        info.backend,
        settings.server.ui_socket.display()
    ));

    // 4. Serve until a signal.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("medgemmad-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let config = ServerConfig {
        settings: Arc::clone(settings),
        sandbox: sandbox_state(),
    };
    runtime.block_on(async move {
        ui.set_nonblocking(true).map_err(ServeError::Runtime)?;
        let listener = tokio::net::UnixListener::from_std(ui).map_err(ServeError::Runtime)?;
        notify_systemd("READY=1\nSTATUS=serving");
        server::run(listener, engine, config, shutdown_signal()).await?;
        notify_systemd("STOPPING=1");
        Ok::<(), ServeError>(())
    })?;
    // The engine thread ends with its last handle; it may still be finishing a
    // cancelled token, which the process exit cuts short.
    runtime.shutdown_timeout(server::SHUTDOWN_GRACE);
    say(format_args!("stopped"));
    Ok(())
}

/// The engine for the configured backend, built on the engine thread.
fn loader(
    settings: &Settings,
) -> impl FnOnce() -> Result<Box<dyn Engine>, LoadFailure> + Send + 'static {
    let path = settings.model.path.clone();
    let tokenizer = settings.model.tokenizer_path.clone();
    let context = settings.engine.context_length;
    let decision = settings.backend.clone();
    move || match decision.backend {
        ResolvedBackend::Cpu => {
            say(format_args!(
                "loading model {} on the CPU",
                file_name(&path)
            ));
            let t0 = Instant::now();
            let loaded = load::load_model(
                &path,
                tokenizer.as_deref(),
                &backend::cpu_device(),
                backend::cpu_dtype(),
            )?;
            say(format_args!(
                "model loaded in {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
            let engine = ModelEngine::new(loaded, context, "cpu".to_owned(), decision.reason)?;
            Ok(Box::new(engine) as Box<dyn Engine>)
        }
        #[cfg(feature = "test-engine")]
        ResolvedBackend::Scripted => {
            Ok(Box::new(server::scripted::ScriptedEngine::new(context)) as Box<dyn Engine>)
        }
        #[cfg(not(feature = "test-engine"))]
        ResolvedBackend::Scripted => {
            unreachable!("config::resolve refuses \"scripted\" without the test-engine feature")
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

fn say(what: std::fmt::Arguments<'_>) {
    eprintln!("medgemmad: {what}");
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
        _ = term.recv() => say(format_args!("SIGTERM received")),
        _ = tokio::signal::ctrl_c() => say(format_args!("SIGINT received")),
    }
}

/// Tells systemd (`Type=notify`) about readiness, as `sd_notify(3)` does:
/// a datagram to `$NOTIFY_SOCKET` (a path, or an abstract name after '@').
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        say(format_args!("cannot notify systemd ({e}); continuing"));
    }
}
