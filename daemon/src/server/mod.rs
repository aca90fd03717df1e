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
//! Routes: the table `ROUTES` (path, and per method a handler and who may
//! call it), and the UI's embedded assets ([`assets`], GET and HEAD) for
//! any other path.
//!
//! Every request first passes the Host allow-list, and every state-changing
//! one the Origin check (`security`); then the route's access rule
//! ([`auth`]): public (status, login, logout, the UI's files), a login
//! session (the UI's API; 401 `login_required` without one), or a personal
//! API token (the OpenAI API). Every response carries the security headers.
//! The server speaks no TLS and opens no network socket: the browser
//! reaches it through a loopback proxy (or the hospital's reverse proxy).
//!
//! The server runs while the model loads ([`engine_slot`]): the UI and the
//! status are served, chat answers 503 `loading` until the engine is ready.
//!
//! Owns: connections, routing, timeouts and limits. Must never: log request
//! paths that are not routes, bodies, or answers.

pub mod admin;
pub mod assets;
pub mod auth;
mod chat;
pub mod conversations;
pub mod engine_slot;
pub mod forward;
pub mod http;
mod images;
pub mod listener;
mod openai;
mod security;
pub mod status;
pub mod terms;
mod transcripts;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use medgemma_audit::ActorId;
use medgemma_protocol::status::SandboxStatus;

use crate::audit_log::{self, Auditor};
use crate::config::Settings;
pub use crate::engine::EngineHandle;
use crate::log;
use auth::{Auth, User};
use conversations::Conversations;
pub use engine_slot::{EngineArg, EngineSlot};
use http::{ApiError, Body};
use security::HostPolicy;
use terms::Terms;

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
    /// The engine thread: loading, ready or failed.
    pub engine: Arc<EngineSlot>,
    /// Accounts, sessions, lockouts.
    pub auth: Auth,
    /// The terminology for term alignment (replaced when reloaded).
    terms: RwLock<Arc<Terms>>,
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

    /// The terminology now.
    pub fn terms(&self) -> Arc<Terms> {
        Arc::clone(&self.terms.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads `answers.terms_dir` again (blocking: call off the runtime's
    /// workers); returns the phrases now known and the tables left out.
    pub fn reload_terms(&self) -> (usize, Vec<String>) {
        let Some(dir) = &self.settings.answers.terms_dir else {
            return (0, Vec::new());
        };
        let (terms, problems) = Terms::load(dir);
        for p in &problems {
            log::warn(format_args!("terms: {p}"));
        }
        let n = terms.len();
        *self.terms.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(terms);
        log::info(format_args!("terms: {n} phrases loaded"));
        (n, problems)
    }
}

/// Who is calling a route that needs a caller, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who owns the conversations this caller may use: the account, or the
    /// browser's client id (no accounts); `None`: nobody in particular.
    pub owner: Option<String>,
    /// The audit log's actor.
    pub actor: ActorId,
    /// The logged-in user, with accounts.
    pub user: Option<User>,
}

impl Caller {
    fn of_user(user: User) -> Self {
        Self {
            owner: Some(user.owner()),
            actor: user.actor(),
            user: Some(user),
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then shuts down
/// gracefully. `engine` is a ready [`EngineHandle`], or an [`EngineSlot`]
/// that the caller fills once the model has loaded.
pub async fn run(
    listener: UnixListener,
    engine: impl Into<EngineArg>,
    config: ServerConfig,
    shutdown: impl Future,
) -> Result<(), ServerError> {
    let settings = config.settings;
    let state = Arc::new(AppState {
        hosts: HostPolicy::new(
            settings.server.listen_port,
            &settings.server.allowed_hosts,
            &settings.server.allowed_origins,
        ),
        conversations: Arc::new(Conversations::new(settings.session_idle_timeout())),
        engine: engine.into().0,
        auth: Auth::new(&settings.auth, settings.sso_proxy_uid),
        terms: RwLock::new(Arc::new(Terms::empty())),
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
    tokio::spawn(sweep(
        Arc::clone(&state),
        server.notify_shutdown.subscribe(),
    ));
    if state.settings.answers.terms_dir.is_some() {
        let loader = Arc::clone(&state);
        tokio::task::spawn_blocking(move || loader.reload_terms());
    }
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
                peer_uid: stream.peer_cred().ok().map(|c| c.uid()),
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
    /// The peer's uid (`SO_PEERCRED`): the SSO header is trusted only from
    /// the configured proxy's.
    peer_uid: Option<u32>,
    state: Arc<AppState>,
    shutdown: broadcast::Receiver<()>,
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        let state = Arc::clone(&self.state);
        let id = self.id;
        let peer = self.peer_uid;
        let service = service_fn(move |req| handle(Arc::clone(&state), id, peer, req));
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

/// Forgets idle conversations and ends idle login sessions until shutdown.
async fn sweep(state: Arc<AppState>, mut shutdown: broadcast::Receiver<()>) {
    let every = SWEEP_INTERVAL
        .min(state.conversations.idle_timeout())
        .min(state.auth.idle_logout());
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = state.conversations.sweep();
                if n > 0 {
                    log::info(format_args!("forgot {n} idle conversation(s)"));
                }
                let n = state.auth.sweep(&state.audit, &state.conversations).await;
                if n > 0 {
                    log::info(format_args!("ended {n} login session(s)"));
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
    peer_uid: Option<u32>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let (route, result) = route(state, peer_uid, req).await;
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    security::apply_headers(resp.headers_mut());
    log::request(conn, &method, route, resp.status(), start.elapsed());
    Ok(resp)
}

/// What serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Status,
    Login,
    Logout,
    Chat,
    Cancel,
    ListConversations,
    GetConversation,
    DeleteConversation,
    ExportConversation,
    Models,
    Completions,
}

/// Who may call a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone who passes the Host and Origin checks.
    Public,
    /// A login session (with accounts), else the browser.
    Session,
    /// A personal API token (with accounts), else anyone.
    Token,
}

impl Handler {
    fn access(self) -> Access {
        match self {
            Self::Status | Self::Login | Self::Logout => Access::Public,
            Self::Chat
            | Self::Cancel
            | Self::ListConversations
            | Self::GetConversation
            | Self::DeleteConversation
            | Self::ExportConversation => Access::Session,
            Self::Models | Self::Completions => Access::Token,
        }
    }
}

/// One API route: its path (`{id}` stands for one path segment) and its
/// handler per method. The path is also its name in the log.
#[derive(Debug)]
struct Route {
    path: &'static str,
    handlers: &'static [(Method, Handler)],
}

/// Every API route, in one place (the UI's assets are served for any other path).
const ROUTES: &[Route] = &[
    Route {
        path: "/api/status",
        handlers: &[(Method::GET, Handler::Status)],
    },
    Route {
        path: "/api/login",
        handlers: &[(Method::POST, Handler::Login)],
    },
    Route {
        path: "/api/logout",
        handlers: &[(Method::POST, Handler::Logout)],
    },
    Route {
        path: "/api/chat",
        handlers: &[(Method::POST, Handler::Chat)],
    },
    Route {
        path: "/api/chat/cancel",
        handlers: &[(Method::POST, Handler::Cancel)],
    },
    Route {
        path: "/api/conversations",
        handlers: &[(Method::GET, Handler::ListConversations)],
    },
    Route {
        path: "/api/conversations/{id}",
        handlers: &[
            (Method::GET, Handler::GetConversation),
            (Method::DELETE, Handler::DeleteConversation),
        ],
    },
    Route {
        path: "/api/conversations/{id}/export",
        handlers: &[(Method::POST, Handler::ExportConversation)],
    },
    Route {
        path: "/v1/models",
        handlers: &[(Method::GET, Handler::Models)],
    },
    Route {
        path: "/v1/chat/completions",
        handlers: &[(Method::POST, Handler::Completions)],
    },
];

impl Route {
    /// The route for `path` and the id it carries, if any.
    fn find(path: &str) -> Option<(&'static Route, Option<&str>)> {
        ROUTES.iter().find_map(|r| match r.path.split_once("{id}") {
            Some((prefix, suffix)) => path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .map(|id| (r, Some(id))),
            None => (r.path == path).then_some((r, None)),
        })
    }

    /// The handler for `method`.
    fn handler(&self, method: &Method) -> Option<Handler> {
        self.handlers
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, h)| *h)
    }

    /// The `Allow` value of a 405.
    fn allow(&self) -> String {
        self.handlers
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The caller of a [`Access::Session`] route.
async fn session_caller(
    state: &AppState,
    headers: &hyper::HeaderMap,
    peer_uid: Option<u32>,
) -> Result<Caller, ApiError> {
    if !state.auth.required() {
        let client = security::client_id(headers);
        return Ok(Caller {
            owner: client.as_ref().map(|c| format!("client:{c}")),
            actor: audit_log::browser_actor(client.as_deref()),
            user: None,
        });
    }
    state
        .auth
        .session_user(&state.audit, headers, peer_uid, true, &state.conversations)
        .await
        .map(Caller::of_user)
        .ok_or_else(auth::login_required)
}

/// The caller of a [`Access::Token`] route.
async fn token_caller(state: &AppState, headers: &hyper::HeaderMap) -> Result<Caller, ApiError> {
    match state.auth.token_user(&state.audit, headers).await? {
        Some(user) => Ok(Caller::of_user(user)),
        None => Ok(Caller {
            owner: None,
            actor: audit_log::api_actor(),
            user: None,
        }),
    }
}

/// The `POST /api/login` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

impl std::fmt::Debug for LoginBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginBody").finish_non_exhaustive()
    }
}

/// `POST /api/login`.
async fn login(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    // Set through an https origin (a TLS reverse proxy): the cookie is Secure.
    let secure = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.to_ascii_lowercase().starts_with("https://"));
    let body: LoginBody = http::read_json(req).await?;
    match state
        .auth
        .login(&state.audit, &body.user, &body.password, secure)
        .await
    {
        auth::LoginResult::Ok { cookie, user } => {
            let mut resp = http::json(
                hyper::StatusCode::OK,
                &serde_json::json!({ "user": user.name, "role": user.role.as_str() }),
            );
            resp.headers_mut().append(hyper::header::SET_COOKIE, cookie);
            Ok(resp)
        }
        auth::LoginResult::Refused(e) => Err(e),
    }
}

/// `POST /api/logout`: ends the session (if any) and clears its cookie.
async fn logout(
    state: &AppState,
    req: &Request<Incoming>,
    peer_uid: Option<u32>,
) -> Response<Body> {
    state
        .auth
        .logout(&state.audit, req.headers(), peer_uid, &state.conversations)
        .await;
    let mut resp = Response::new(http::empty());
    *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
    auth::clear_session(resp.headers_mut());
    resp
}

/// Dispatches a request; returns the route's name for the log.
async fn route(
    state: Arc<AppState>,
    peer_uid: Option<u32>,
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
        && let Err(e) = security::check_origin(req.headers(), &host, &state.hosts)
    {
        return (name, Err(e));
    }

    let result = match api {
        Some((r, id)) => match r.handler(&method) {
            None => Err(ApiError::method_not_allowed(&r.allow())),
            Some(handler) => dispatch(&state, handler, id.unwrap_or(""), peer_uid, req).await,
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

/// Checks the handler's access rule, then runs it.
async fn dispatch(
    state: &Arc<AppState>,
    handler: Handler,
    id: &str,
    peer_uid: Option<u32>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = match handler.access() {
        Access::Public => None,
        Access::Session => Some(session_caller(state, req.headers(), peer_uid).await?),
        Access::Token => Some(token_caller(state, req.headers()).await?),
    };
    let Some(caller) = caller else {
        return match handler {
            Handler::Status => Ok(status::public(state, req.headers(), peer_uid).await),
            Handler::Login => login(state, req).await,
            _ => Ok(logout(state, &req, peer_uid).await),
        };
    };
    match handler {
        Handler::Chat => chat::chat(Arc::clone(state), req, caller, peer_uid).await,
        Handler::Cancel => chat::cancel(Arc::clone(state), req, caller).await,
        Handler::ListConversations => Ok(transcripts::list(state, &caller)),
        Handler::GetConversation => transcripts::get(state, id, &caller),
        Handler::DeleteConversation => chat::delete(state, id, &caller),
        Handler::ExportConversation => {
            transcripts::export(Arc::clone(state), req, id, &caller).await
        }
        Handler::Models => Ok(openai::models(state)),
        Handler::Completions => openai::completions(Arc::clone(state), req, caller).await,
        Handler::Status | Handler::Login | Handler::Logout => {
            unreachable!("public handlers are dispatched above")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_path_and_ids_by_segment() {
        let (r, id) = Route::find("/api/chat").unwrap();
        assert_eq!((r.handler(&Method::POST), id), (Some(Handler::Chat), None));
        let (r, id) = Route::find("/api/conversations/abc").unwrap();
        assert_eq!(
            (r.handler(&Method::DELETE), id),
            (Some(Handler::DeleteConversation), Some("abc"))
        );
        assert_eq!(r.handler(&Method::GET), Some(Handler::GetConversation));
        assert_eq!(r.allow(), "GET, DELETE");
        let (r, id) = Route::find("/api/conversations/abc/export").unwrap();
        assert_eq!(
            (r.handler(&Method::POST), id),
            (Some(Handler::ExportConversation), Some("abc"))
        );
        assert!(Route::find("/api/conversations/a/b").is_none());
        assert!(Route::find("/api/conversations/").is_none());
        assert!(Route::find("/api/chats").is_none());
        assert!(Route::find("/").is_none());
        assert_eq!(Route::find("/v1/models").unwrap().0.allow(), "GET");
    }

    #[test]
    fn only_status_login_and_logout_are_public() {
        for r in ROUTES {
            for (m, h) in r.handlers {
                let public = h.access() == Access::Public;
                let expected = matches!(r.path, "/api/status" | "/api/login" | "/api/logout");
                assert_eq!(public, expected, "{m} {}", r.path);
            }
        }
    }
}
