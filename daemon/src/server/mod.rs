//! The HTTP server of `medgemmad serve`: HTTP/1.1 (hyper) on a Unix socket,
//! shaped like mini-redis.
//!
//! [`run`] takes an already-bound listener (from systemd socket activation or
//! from [`listener::open`]), an [`EngineHandle`] to the engine thread and the
//! validated settings, and serves until `shutdown` resolves. A semaphore caps
//! open connections ([`MAX_CONNECTIONS`]); on shutdown a broadcast tells every
//! connection to finish its response and close, running turns are cancelled,
//! and `run` returns once every handler has dropped its "done" sender (or
//! after [`SHUTDOWN_GRACE`]).
//!
//! Routes: the table [`ROUTES`] (path, methods, handler), and the UI's
//! embedded assets ([`assets`], GET and HEAD) for any other path.
//!
//! Every request first passes the Host allow-list, and every state-changing
//! one the Origin check ([`security`]); every response carries the security
//! headers. The server speaks no TLS and opens no network socket: the browser
//! reaches it through a loopback proxy.
//!
//! Owns: connections, routing, timeouts and limits. Must never: log request
//! paths that are not routes, bodies, or answers.

pub mod admin;
pub mod assets;
mod chat;
pub mod conversations;
pub mod forward;
pub mod http;
mod images;
pub mod listener;
mod openai;
mod security;
pub mod status;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use medgemma_protocol::status::SandboxStatus;

use crate::audit_log::Auditor;
use crate::config::Settings;
pub use crate::engine::EngineHandle;
use crate::log;
use conversations::Conversations;
use http::{ApiError, Body};
use security::HostPolicy;

/// Connections served at once. A browser opens about six per host and the
/// appliance has a handful of users; beyond this, new connections wait in
/// the socket's backlog until one closes (the bound protects memory and file
/// descriptors, not throughput: the engine queue limits work).
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send a request's headers. hyper starts this timer
/// whenever it waits for a request head, so it is also the keep-alive idle
/// timeout: an idle connection closes after this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Time given to open connections to finish after the shutdown signal
/// (running turns are cancelled first, so streams end within a token or two).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often idle conversations are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// Why the server stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `accept` failed with an error that retrying cannot fix.
    #[error("the UI socket stopped accepting connections: {0}")]
    Accept(std::io::Error),
}

/// What [`run`] needs besides the listener and the engine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Reads the sandbox state as the process really has it, at the time of
    /// each status request (`lockdown::sandbox_status`).
    pub sandbox: fn() -> SandboxStatus,
    /// The open audit log: every answer is recorded before it is returned.
    pub audit: Arc<Auditor>,
    /// The admin socket (`server.admin_socket`), already bound, if configured.
    pub admin: Option<Arc<admin::AdminSocket>>,
}

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// The engine thread.
    pub engine: EngineHandle,
    /// Conversations in memory.
    pub conversations: Arc<Conversations>,
    /// Reads the sandbox state for the status documents.
    pub sandbox: fn() -> SandboxStatus,
    /// When serving began.
    pub started: Instant,
    /// The same, as Unix seconds.
    pub started_unix: u64,
    /// The audit log.
    pub audit: Arc<Auditor>,
    /// Decode speed of the last finished turn (f64 bits; 0 before the first).
    pub recent_tokens_per_s: AtomicU64,
    hosts: HostPolicy,
}

impl AppState {
    /// Notes the decode speed of a finished turn for the admin status.
    pub fn note_speed(&self, tokens_per_s: f64) {
        self.recent_tokens_per_s
            .store(tokens_per_s.to_bits(), Ordering::Relaxed);
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listener: UnixListener,
    engine: EngineHandle,
    config: ServerConfig,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let settings = config.settings;
    let state = Arc::new(AppState {
        hosts: HostPolicy::new(settings.server.listen_port, &settings.server.allowed_hosts),
        conversations: Arc::new(Conversations::new(settings.session_idle_timeout())),
        engine,
        sandbox: config.sandbox,
        audit: config.audit,
        recent_tokens_per_s: AtomicU64::new(0),
        started: Instant::now(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        settings,
    });
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let mut server = Listener {
        listener,
        state: Arc::clone(&state),
        limit_connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        notify_shutdown,
        shutdown_complete_tx,
        next_conn: AtomicU64::new(1),
    };
    tokio::spawn(sweep_conversations(
        Arc::clone(&state.conversations),
        server.notify_shutdown.subscribe(),
    ));
    if let Some(admin) = config.admin {
        admin::spawn(
            &admin,
            Arc::clone(&state),
            server.notify_shutdown.subscribe(),
        );
    }

    let result = tokio::select! {
        res = server.accept_loop() => res,
        _ = shutdown => {
            log::info(format_args!("shutting down: cancelling running turns, closing connections"));
            Ok(())
        }
    };

    // Stop generating, tell every connection, then wait for them all.
    state.conversations.cancel_all();
    let Listener {
        notify_shutdown,
        shutdown_complete_tx,
        ..
    } = server;
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, shutdown_complete_rx.recv())
        .await
        .is_err()
    {
        log::info(format_args!(
            "shutdown: connections still open after {SHUTDOWN_GRACE:?}; closing them"
        ));
    }
    result
}

/// The accept loop's state (mini-redis `Listener`).
struct Listener {
    listener: UnixListener,
    state: Arc<AppState>,
    limit_connections: Arc<Semaphore>,
    /// Dropped to tell every connection to shut down.
    notify_shutdown: broadcast::Sender<()>,
    /// Cloned into every connection; `recv` on the other end returns `None`
    /// once all are dropped, i.e. all handlers are done.
    shutdown_complete_tx: mpsc::Sender<()>,
    next_conn: AtomicU64,
}

impl Listener {
    async fn accept_loop(&mut self) -> Result<(), ServerError> {
        loop {
            // Wait for a free slot before accepting: excess clients wait in the backlog.
            let Ok(permit) = Arc::clone(&self.limit_connections).acquire_owned().await else {
                return Ok(()); // the semaphore is never closed
            };
            let stream = self.accept().await?;
            let conn = Connection {
                id: self.next_conn.fetch_add(1, Ordering::Relaxed),
                state: Arc::clone(&self.state),
                shutdown: self.notify_shutdown.subscribe(),
                _done: self.shutdown_complete_tx.clone(),
            };
            tokio::spawn(async move {
                conn.serve(stream).await;
                drop(permit);
            });
        }
    }

    /// Accepts one connection, backing off on errors that pass (out of file
    /// descriptors or memory, aborted handshakes).
    async fn accept(&mut self) -> Result<UnixStream, ServerError> {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return Ok(stream),
                Err(e) if is_transient(&e) => {
                    log::info(format_args!("accept failed ({e}); retrying in {backoff:?}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(ServerError::Accept(e)),
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory)
        // EMFILE, ENFILE, ENOBUFS, ENOMEM (errno(3)).
        || matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// One client connection.
struct Connection {
    id: u64,
    state: Arc<AppState>,
    shutdown: broadcast::Receiver<()>,
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        let state = Arc::clone(&self.state);
        let id = self.id;
        let service = service_fn(move |req| handle(Arc::clone(&state), id, req));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = self.shutdown.recv() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// Forgets idle conversations until shutdown.
async fn sweep_conversations(store: Arc<Conversations>, mut shutdown: broadcast::Receiver<()>) {
    let every = SWEEP_INTERVAL.min(store.idle_timeout());
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = store.sweep();
                if n > 0 {
                    log::info(format_args!("forgot {n} idle conversation(s)"));
                }
            }
            _ = shutdown.recv() => return,
        }
    }
}

/// One request: checks, route, security headers, one log line.
async fn handle(
    state: Arc<AppState>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let (route, result) = route(state, req).await;
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    security::apply_headers(resp.headers_mut());
    log::request(conn, &method, route, resp.status(), start.elapsed());
    Ok(resp)
}

/// What serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Status,
    Chat,
    Cancel,
    DeleteConversation,
    Models,
    Completions,
}

/// One API route: its path (a trailing `/` is a prefix followed by an id),
/// the methods it answers and its handler. The path is also its name in the
/// log.
#[derive(Debug)]
struct Route {
    path: &'static str,
    methods: &'static [Method],
    handler: Handler,
}

/// Every API route, in one place (the UI's assets are served for any other path).
const ROUTES: &[Route] = &[
    Route {
        path: "/api/status",
        methods: &[Method::GET],
        handler: Handler::Status,
    },
    Route {
        path: "/api/chat",
        methods: &[Method::POST],
        handler: Handler::Chat,
    },
    Route {
        path: "/api/chat/cancel",
        methods: &[Method::POST],
        handler: Handler::Cancel,
    },
    Route {
        path: "/api/conversations/{id}",
        methods: &[Method::DELETE],
        handler: Handler::DeleteConversation,
    },
    Route {
        path: "/v1/models",
        methods: &[Method::GET],
        handler: Handler::Models,
    },
    Route {
        path: "/v1/chat/completions",
        methods: &[Method::POST],
        handler: Handler::Completions,
    },
];

impl Route {
    /// The route for `path` and the id it carries, if any.
    fn find(path: &str) -> Option<(&'static Route, Option<&str>)> {
        ROUTES
            .iter()
            .find_map(|r| match r.path.strip_suffix("{id}") {
                Some(prefix) => path
                    .strip_prefix(prefix)
                    .filter(|id| !id.is_empty())
                    .map(|id| (r, Some(id))),
                None => (r.path == path).then_some((r, None)),
            })
    }

    /// The `Allow` value of a 405.
    fn allow(&self) -> String {
        self.methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Dispatches a request; returns the route's name for the log.
async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let api = Route::find(&path);
    let asset = if api.is_none() {
        assets::find(&path)
    } else {
        None
    };
    let name = match (&api, asset) {
        (Some((r, _)), _) => r.path,
        (None, Some(a)) => a.path,
        (None, None) => "(unknown path)",
    };

    let host = match security::check_host(&req, &state.hosts) {
        Ok(h) => h,
        Err(e) => return (name, Err(e)),
    };
    if security::is_state_changing(&method)
        && let Err(e) = security::check_origin(req.headers(), &host)
    {
        return (name, Err(e));
    }
    let client = security::client_id(req.headers());

    let result = match api {
        Some((r, _)) if !r.methods.contains(&method) => {
            Err(ApiError::method_not_allowed(&r.allow()))
        }
        Some((r, id)) => match r.handler {
            Handler::Status => Ok(status::public(&state)),
            Handler::Chat => chat::chat(Arc::clone(&state), req, client).await,
            Handler::Cancel => chat::cancel(Arc::clone(&state), req, client).await,
            Handler::DeleteConversation => chat::delete(&state, id.unwrap_or(""), client),
            Handler::Models => Ok(openai::models(&state)),
            Handler::Completions => openai::completions(Arc::clone(&state), req).await,
        },
        None => match asset {
            Some(a) if method == Method::GET || method == Method::HEAD => {
                let mut resp = assets::respond(a, req.headers(), method == Method::HEAD);
                if a.path == "/index.html" {
                    security::ensure_client_cookie(req.headers(), resp.headers_mut());
                }
                Ok(resp)
            }
            Some(_) => Err(ApiError::method_not_allowed("GET, HEAD")),
            None => Err(ApiError::not_found()),
        },
    };
    (name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_path_and_ids_by_prefix() {
        let (r, id) = Route::find("/api/chat").unwrap();
        assert_eq!((r.handler, id), (Handler::Chat, None));
        let (r, id) = Route::find("/api/conversations/abc").unwrap();
        assert_eq!((r.handler, id), (Handler::DeleteConversation, Some("abc")));
        assert!(Route::find("/api/conversations/").is_none());
        assert!(Route::find("/api/chats").is_none());
        assert!(Route::find("/").is_none());
        assert_eq!(Route::find("/v1/models").unwrap().0.allow(), "GET");
    }
}
