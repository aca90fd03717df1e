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

use crate::daemon_config::{DEFAULT_ADMIN_SOCKET, DaemonConfig};
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
    let cfg = match DaemonConfig::load_or_default(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e),
    };
    let socket = args
        .socket
        .clone()
        .or(cfg.server.admin_socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
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
pub fn fetch(socket: &Path) -> Result<serde_json::Value, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    request(stream, "GET", "/admin/status", None)
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
        let why = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!(
            "the daemon answered {} {why}",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("the answer is not JSON: {e}"))
}

fn report(doc: &serde_json::Value) -> Report {
    let healthy = doc["health"]["status"] == "healthy";
    let reasons: Vec<String> = doc["health"]["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mib = |v: &serde_json::Value| {
        v.as_u64()
            .map_or("-".to_owned(), |b| format!("{} MiB", b / (1024 * 1024)))
    };
    let mut text = format!(
        "medgemmad {} (pid {}), up {} s: {}\n",
        s(&doc["version"]),
        s(&doc["pid"]),
        s(&doc["uptime_s"]),
        if healthy { "healthy" } else { "DEGRADED" },
    );
    for r in &reasons {
        text.push_str(&format!("  degraded: {r}\n"));
    }
    text.push_str(&format!(
        "model:    {} ({}, {} parameters), fingerprint {}\n          pins: {}\n",
        s(&doc["model"]["label"]),
        s(&doc["model"]["format"]),
        s(&doc["model"]["parameters"]),
        s(&doc["model"]["fingerprint"]),
        match doc["model"]["pins"]["ok"].as_bool() {
            Some(true) => format!(
                "ok ({} files, sizes checked)",
                s(&doc["model"]["pins"]["files"])
            ),
            Some(false) => format!("MISMATCH: {}", s(&doc["model"]["pins"]["detail"])),
            None => s(&doc["model"]["pins"]["detail"]),
        }
    ));
    text.push_str(&format!(
        "backend:  {}: {}\n",
        s(&doc["backend"]["kind"]),
        s(&doc["backend"]["reason"]),
    ));
    let gpu = &doc["backend"]["gpu"];
    if gpu.is_object() {
        text.push_str(&format!(
            "gpu:      {}; {} of {} in use after warm-up ({} s); model budget {}\n",
            s(&doc["backend"]["device"]),
            mib(&gpu["memory_used_bytes"]),
            mib(&gpu["memory_total_bytes"]),
            gpu["warm_up_s"]
                .as_f64()
                .map_or("-".to_owned(), |w| format!("{w:.1}")),
            mib(&gpu["budget_bytes"]),
        ));
    }
    text.push_str(&format!(
        "memory:   {} resident, {} peak\nsandbox:  {}\n",
        mib(&doc["memory"]["rss_bytes"]),
        mib(&doc["memory"]["peak_rss_bytes"]),
        doc["sandbox"],
    ));
    text.push_str(&format!(
        "queue:    {} waiting of {}, {} running of {}, {} served, {} refused; {} conversations\nspeed:    {} tokens/s (last answer)\naudit:    {}, next record {}, head {}\n",
        s(&doc["queue"]["waiting"]),
        s(&doc["queue"]["capacity"]),
        s(&doc["queue"]["active"]),
        s(&doc["queue"]["max_concurrent"]),
        s(&doc["queue"]["served"]),
        s(&doc["queue"]["rejected"]),
        s(&doc["conversations"]["count"]),
        s(&doc["recent_tokens_per_s"]),
        s(&doc["audit"]["dir"]),
        s(&doc["audit"]["chain"]["next_seq"]),
        s(&doc["audit"]["chain"]["head"]),
    ));
    let mut json = doc.clone();
    json["running"] = serde_json::Value::Bool(true);
    Report {
        code: if healthy { EXIT_OK } else { EXIT_DEGRADED },
        text,
        json,
    }
}
