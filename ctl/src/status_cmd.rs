//! `medgemmactl status`: `GET /admin/status` on the admin socket.
//!
//! The daemon authorizes the connection by its peer credentials (root or
//! the admin group); this side only speaks one HTTP/1.1 request and reads
//! the JSON answer. Exit codes: 0 healthy, 1 degraded (the reasons are
//! listed), 2 not running (no socket, nobody answers, or access refused).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use medgemma_protocol::admin::{ErrorBody, STATUS_ROUTE};
use medgemma_protocol::status::{AdminStatus, HealthState};

use crate::daemon_config::DaemonConfig;
use crate::{EXIT_DEGRADED, EXIT_DOWN, EXIT_OK, Report};

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The admin socket (default: `server.admin_socket` of the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Time allowed for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `status`.
pub fn run(config: &Path, args: &StatusArgs) -> Report {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => match DaemonConfig::load(config) {
            Ok(c) => c.admin_socket(),
            Err(e) => return Report::error(e.to_string()),
        },
    };
    match fetch(&socket) {
        Ok(doc) => report(&doc),
        Err(why) => Report {
            code: EXIT_DOWN,
            text: format!(
                "medgemmad is not running or not reachable: {why}\nfix: start it (systemctl start medgemmad) and check that server.admin_socket is {} and that you are root or in the admin group",
                socket.display()
            ),
            json: serde_json::json!({ "running": false, "socket": socket, "error": why }),
        },
    }
}

/// One `GET /admin/status` on `socket`.
pub fn fetch(socket: &Path) -> Result<AdminStatus, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let doc = request(stream, "GET", STATUS_ROUTE, None)?;
    serde_json::from_value(doc).map_err(|e| {
        format!("the daemon's status does not have the expected form ({e}); is medgemmactl the same version as medgemmad?")
    })
}

/// One request on a connected admin socket; the answer's JSON body when the
/// status is 200, else a sentence.
pub fn request(
    mut stream: UnixStream,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n",
        body.len()
    );
    const REFUSED: &str = "the daemon closed the connection without answering (access refused: run as root or as a member of server.admin_group)";
    // The daemon disconnects a refused peer at once: the request may then
    // fail to send (EPIPE) or the answer be a reset or nothing at all.
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    };
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| {
            if closed(&e) {
                REFUSED.to_owned()
            } else {
                format!("cannot send the request: {e}")
            }
        })?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| {
        if closed(&e) {
            REFUSED.to_owned()
        } else {
            format!("no answer: {e}")
        }
    })?;
    if raw.is_empty() {
        return Err(REFUSED.to_owned());
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer is not HTTP")?;
    if !head.starts_with("HTTP/1.1 200") {
        let why = serde_json::from_str::<ErrorBody>(body)
            .map(|b| b.error.message)
            .unwrap_or_default();
        return Err(format!(
            "the daemon answered {} {why}",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("the answer is not JSON: {e}"))
}

fn report(doc: &AdminStatus) -> Report {
    let healthy = doc.health.status == HealthState::Healthy;
    let mib = |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{} MiB", b >> 20));
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut text = format!(
        "medgemmad {} (pid {}), up {} s: {}\n",
        doc.version,
        doc.pid,
        doc.uptime_s,
        if healthy { "healthy" } else { "DEGRADED" },
    );
    for r in &doc.health.reasons {
        text.push_str(&format!("  degraded: {r}\n"));
    }
    let pins = &doc.model_files.pins;
    text.push_str(&format!(
        "model:    {} ({}, {} parameters), fingerprint {}\n          pins: {}\n",
        doc.model.label,
        doc.model.format,
        doc.model.parameters,
        doc.model_files.fingerprint,
        match pins.ok {
            Some(true) => format!(
                "ok ({} files, sizes checked)",
                pins.files.map_or("-".to_owned(), |n| n.to_string())
            ),
            Some(false) => format!("MISMATCH: {}", or_dash(pins.detail.clone())),
            None => or_dash(pins.detail.clone()),
        }
    ));
    text.push_str(&format!(
        "backend:  {}: {}\n",
        doc.backend.kind, doc.backend.reason
    ));
    if let Some(gpu) = &doc.backend.gpu {
        text.push_str(&format!(
            "gpu:      {}; {} of {} in use after warm-up ({} s); model budget {}\n",
            gpu.device(),
            mib(gpu.memory_used_bytes),
            mib(Some(gpu.memory_total_bytes)),
            gpu.warm_up_s.map_or("-".to_owned(), |w| format!("{w:.1}")),
            mib(Some(gpu.budget_bytes)),
        ));
    }
    let sandbox = if doc.sandbox.enforced {
        format!("enforced: {}", doc.sandbox.summary.join("; "))
    } else if doc.sandbox.insecure_no_sandbox {
        "OFF (--insecure-no-sandbox)".to_owned()
    } else {
        format!("NOT ENFORCED: {}", doc.sandbox.problems.join("; "))
    };
    text.push_str(&format!(
        "memory:   {} resident, {} peak\nsandbox:  {sandbox}\n",
        mib(doc.memory.rss_bytes),
        mib(doc.memory.peak_rss_bytes),
    ));
    let q = &doc.queue;
    text.push_str(&format!(
        "queue:    {} waiting of {}, {} running of {}, {} served, {} refused; {} conversations\nspeed:    {} tokens/s (last answer)\naudit:    {}, next record {}, head {}\n",
        q.waiting,
        q.capacity,
        q.active,
        q.max_concurrent,
        q.served,
        q.rejected,
        doc.conversations.count,
        doc.recent_tokens_per_s
            .map_or("-".to_owned(), |s| s.to_string()),
        doc.audit.dir.display(),
        doc.audit.chain.next_seq,
        doc.audit.chain.head,
    ));
    let mut json = serde_json::to_value(doc).unwrap_or_default();
    json["running"] = serde_json::Value::Bool(true);
    Report {
        code: if healthy { EXIT_OK } else { EXIT_DEGRADED },
        text,
        json,
    }
}
