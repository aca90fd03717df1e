//! The admin socket (`server.admin_socket`) for `medgemmactl`: JSON over
//! HTTP/1.1, the routes of `medgemma_protocol::admin`: `GET /admin/status`
//! (the document `server::status` builds), `POST /admin/audit/export`
//! (records an audit-log export, made by `medgemmactl audit export`, in the
//! log the daemon writes), `POST /admin/audit/verify` (verifies the live
//! log), `POST /admin/accounts/event` (records an account change made by
//! `medgemmactl user` and reads the accounts file again) and
//! `POST /admin/terms/reload` (reads the terminology again).
//!
//! The socket file is mode 0660 and belongs to `server.admin_group`; on top
//! of that every connection is authorized by its peer credentials
//! (`SO_PEERCRED`): root, a process whose group is the admin group, or a user
//! listed as a member of it in /etc/group (read at startup, before the
//! sandbox) may use every route. Any other peer may use only the two audit
//! routes, and only with the personal API token of an account whose role is
//! auditor (`Authorization: Bearer`): an auditor exports and verifies the
//! log without a shell on the appliance or an administrator's rights. The
//! socket is never proxied: the loopback proxy only reaches the UI socket.
//!
//! Owns: the admin socket and who may use it. Must never: show
//! conversation content or ids, or serve any UI route.

use std::collections::HashSet;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::broadcast;

use medgemma_audit::{AccountChangeKind, Event};
use medgemma_protocol::admin::{
    ACCOUNT_EVENT_ROUTE, AUDIT_VERIFY_ROUTE, AccountEvent, EXPORT_ROUTE, EventRecorded,
    ExportRecorded, ExportReport, STATUS_ROUTE, TERMS_RELOAD_ROUTE, TermsReloaded, VerifyAnswer,
    VerifyRequest,
};

use super::http::{ApiError, Body, json, read_json};
use super::{AppState, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, status};
use crate::{audit_log, log};

/// Why the admin socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding or setting permissions failed.
    #[error("cannot open the admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something other than a stale socket is at the path.
    #[error(
        "{path} exists and is in use or not a socket; stop the other daemon or choose another server.admin_socket"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket systemd passed is not usable.
    #[error(transparent)]
    Activated(NotUnix),
    /// The admin group does not exist.
    #[error(
        "server.admin_group {0:?} is not a group in /etc/group; create it (groupadd) or give a numeric gid"
    )]
    UnknownGroup(String),
}

/// Who may use the admin socket.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    gid: Option<u32>,
    member_uids: HashSet<u32>,
}

impl Authorizer {
    /// Root, the admin group's gid, or a listed member.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.gid == Some(gid) || self.member_uids.contains(&uid)
    }
}

/// The bound admin socket and its authorization rule.
#[derive(Debug)]
pub struct AdminSocket {
    /// The listener.
    pub listener: UnixListener,
    /// Who may connect.
    pub authorizer: Authorizer,
    /// The socket file this daemon bound, removed on exit; `None` when
    /// systemd passed the socket (`FileDescriptorName=admin`) and owns it.
    pub path: Option<PathBuf>,
}

/// Why a socket systemd passed as the admin socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "socket activation: the descriptor named \"admin\" is not a Unix stream socket ({0}); check ListenStream= in medgemmad-admin.socket"
)]
pub struct NotUnix(std::io::Error);

/// Adopts the admin socket systemd passed (its mode and group come from the
/// socket unit); connections are still authorized by peer credentials.
pub fn adopt(fd: std::os::fd::OwnedFd, group: Option<&str>) -> Result<AdminSocket, AdminError> {
    let authorizer = match group {
        Some(g) => resolve_group(g)?,
        None => Authorizer::default(),
    };
    let listener = UnixListener::from(fd);
    listener
        .local_addr()
        .map_err(|e| AdminError::Activated(NotUnix(e)))?;
    Ok(AdminSocket {
        listener,
        authorizer,
        path: None,
    })
}

/// Binds `path` (replacing only a stale socket), mode 0660, group `group`.
pub fn bind(path: &Path, group: Option<&str>) -> Result<AdminSocket, AdminError> {
    let authorizer = match group {
        Some(g) => resolve_group(g)?,
        None => Authorizer::default(),
    };
    let err = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        let live = std::os::unix::net::UnixStream::connect(path).is_ok();
        if !is_socket || live {
            return Err(AdminError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(gid) = authorizer.gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    Ok(AdminSocket {
        listener,
        authorizer,
        path: Some(path.to_owned()),
    })
}

/// Reads the group's gid and members from /etc/group, the members' uids
/// from /etc/passwd.
fn resolve_group(group: &str) -> Result<Authorizer, AdminError> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let mut gid = group.parse::<u32>().ok();
    let mut members: Vec<String> = Vec::new();
    for line in groups.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let this_gid = f[2].parse::<u32>().ok();
        if f[0] == group || (gid.is_some() && this_gid == gid) {
            gid = this_gid;
            members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            break;
        }
    }
    let Some(gid) = gid else {
        return Err(AdminError::UnknownGroup(group.to_owned()));
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let member_uids = passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && members.iter().any(|m| m == f[0]))
                .then(|| f[2].parse::<u32>().ok())
                .flatten()
        })
        .collect();
    Ok(Authorizer {
        gid: Some(gid),
        member_uids,
    })
}

/// Serves the admin socket until shutdown.
pub fn spawn(admin: &AdminSocket, state: Arc<AppState>, mut shutdown: broadcast::Receiver<()>) {
    let listener = match admin
        .listener
        .try_clone()
        .and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .and_then(tokio::net::UnixListener::from_std)
    {
        Ok(l) => l,
        Err(e) => {
            log::error(format_args!(
                "admin socket unusable ({e}); medgemmactl status will not answer"
            ));
            return;
        }
    };
    let authorizer = admin.authorizer.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        log::warn(format_args!("admin accept failed ({e})"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.recv() => return,
            };
            let Some(peer) = stream.peer_cred().ok() else {
                log::warn(format_args!(
                    "admin: refused a connection without peer credentials"
                ));
                continue;
            };
            let (uid, admin) = (peer.uid(), authorizer.allows(peer.uid(), peer.gid()));
            if !admin && !state.auth.required() {
                // No accounts, so no auditor token: nothing to serve.
                log::warn(format_args!("admin: refused a connection from uid {uid}"));
                continue;
            }
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&state), uid, admin, req));
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Who is asking on the admin socket.
enum AdminCaller {
    /// Root or the admin group: every route.
    Admin(u32),
    /// An auditor account (by its token): the audit routes.
    Auditor(medgemma_audit::ActorId),
}

async fn handle(
    state: Arc<AppState>,
    uid: u32,
    admin: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let audit_route = path == EXPORT_ROUTE || path == AUDIT_VERIFY_ROUTE;
    let caller = if admin {
        Some(AdminCaller::Admin(uid))
    } else if audit_route {
        state
            .auth
            .auditor_of_token(req.headers())
            .map(|u| AdminCaller::Auditor(u.actor()))
    } else {
        None
    };
    let resp = match (caller, &method, path.as_str()) {
        (None, _, _) => ApiError::new(
            StatusCode::FORBIDDEN,
            "not_allowed",
            "Only root, the admin group, or an auditor account's token (audit routes) may use the admin socket.",
        )
        .into_response(),
        (Some(_), &Method::GET, STATUS_ROUTE) => {
            json(StatusCode::OK, &status::admin_document(&state))
        }
        (Some(_), _, STATUS_ROUTE) => ApiError::method_not_allowed("GET").into_response(),
        (Some(c), &Method::POST, EXPORT_ROUTE) => record_export(&state, c, req).await,
        (Some(_), &Method::POST, AUDIT_VERIFY_ROUTE) => verify(&state, req).await,
        (Some(AdminCaller::Admin(uid)), &Method::POST, ACCOUNT_EVENT_ROUTE) => {
            account_event(&state, uid, req).await
        }
        (Some(AdminCaller::Admin(_)), &Method::POST, TERMS_RELOAD_ROUTE) => {
            reload_terms(&state).await
        }
        (
            Some(_),
            _,
            EXPORT_ROUTE | AUDIT_VERIFY_ROUTE | ACCOUNT_EVENT_ROUTE | TERMS_RELOAD_ROUTE,
        ) => ApiError::method_not_allowed("POST").into_response(),
        _ => ApiError::not_found().into_response(),
    };
    log::info(format_args!("admin {method} {}", resp.status().as_u16()));
    Ok(resp)
}

/// `POST /admin/audit/verify`: the live log, checked as `medgemmactl audit
/// verify` checks it (every MAC when the initial key is given).
async fn verify(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let body: VerifyRequest = match read_json(req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let key = match body
        .initial_key
        .as_deref()
        .map(|k| medgemma_audit::InitialKey::parse(k.trim()))
        .transpose()
    {
        Ok(k) => k,
        Err(_) => {
            return ApiError::bad_request(
                "The initial key is not valid; give it as setup showed it.",
            )
            .into_response();
        }
    };
    let dir = state.audit.dir().to_owned();
    let report = tokio::task::block_in_place(|| medgemma_audit::verify(&dir, key.as_ref(), None));
    match report {
        Ok(r) => {
            let c = r.checks;
            let checks = [
                ("form", c.form),
                ("sequence", c.sequence),
                ("chain", c.chain),
                ("dates", c.dates),
                ("macs", c.macs),
            ]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| (*n).to_owned())
            .collect();
            json(
                StatusCode::OK,
                &VerifyAnswer {
                    ok: r.is_ok(),
                    records: r.records,
                    files: r.files,
                    checks,
                    failure: r.failure.map(|f| f.to_string()),
                },
            )
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            format!("the audit log could not be read: {e}"),
        )
        .into_response(),
    }
}

/// `POST /admin/accounts/event`: records an account change, then reads the
/// accounts file again and ends the sessions the change invalidates.
async fn account_event(state: &AppState, uid: u32, req: Request<Incoming>) -> Response<Body> {
    let event: AccountEvent = match read_json(req).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let change = match event.change.as_str() {
        "created" => AccountChangeKind::Created,
        "disabled" => AccountChangeKind::Disabled,
        "enabled" => AccountChangeKind::Enabled,
        "password_changed" => AccountChangeKind::PasswordChanged,
        "token_created" => AccountChangeKind::TokenCreated,
        "token_revoked" => AccountChangeKind::TokenRevoked,
        _ => {
            return ApiError::bad_request("change must be one of created, disabled, enabled, password_changed, token_created, token_revoked.")
                .into_response();
        }
    };
    let Ok(account) = medgemma_audit::ActorId::new(&event.account) else {
        return ApiError::bad_request("account must be an account id (acct-…).").into_response();
    };
    let record = Event::AccountChange {
        actor: audit_log::admin_actor(uid),
        account,
        change,
    };
    if let Err(e) = state.audit.append_async(record).await {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            format!("the account change could not be recorded in the audit log: {e}"),
        )
        .into_response();
    }
    state.auth.refresh();
    let sessions_ended = state.auth.sweep(&state.audit, &state.conversations).await;
    json(
        StatusCode::OK,
        &EventRecorded {
            recorded: true,
            sessions_ended,
        },
    )
}

/// `POST /admin/terms/reload`.
async fn reload_terms(state: &Arc<AppState>) -> Response<Body> {
    let (phrases, problems) = tokio::task::block_in_place(|| state.reload_terms());
    json(StatusCode::OK, &TermsReloaded { phrases, problems })
}

async fn record_export(
    state: &AppState,
    caller: AdminCaller,
    req: Request<Incoming>,
) -> Response<Body> {
    let report: ExportReport = match read_json(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let actor = match caller {
        AdminCaller::Admin(uid) => audit_log::admin_actor(uid),
        AdminCaller::Auditor(actor) => actor,
    };
    match state.audit.export(actor, report.ok).await {
        Ok(audit) => json(
            StatusCode::OK,
            &ExportRecorded {
                recorded: true,
                audit,
            },
        ),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            format!("the export could not be recorded in the audit log: {e}"),
        )
        .into_response(),
    }
}
