//! `medgemmactl audit export` and `audit verify`.
//!
//! Export copies a time range of the live log with a signed manifest;
//! verify checks a log directory or an export and names the first bad line
//! (file, line, reason). Export then appends one `export` record (through
//! the daemon while it runs); verify never writes.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use medgemma_audit::{
    ActorId, AuditLog, AuditOptions, Event, ExportKind, InitialKey, Outcome, VerifyReport,
};

use medgemma_protocol::admin::{EXPORT_ROUTE, ExportReport};

use crate::daemon_config::DaemonConfig;
use crate::status_cmd;
use crate::{EXIT_DEGRADED, EXIT_OK, Report};

/// `medgemmactl audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Copy the records of a time range, with a manifest signed by the export key.
    Export(ExportArgs),
    /// Verify a log directory or an export; names the first bad line.
    Verify(VerifyArgs),
}

/// `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Start of the range (inclusive): `2026-05-01`, `2026-05-01T08:00:00Z`, Unix seconds, or `now`.
    #[arg(long)]
    since: String,
    /// End of the range (exclusive), same forms; default now.
    #[arg(long, default_value = "now")]
    until: String,
    /// The export directory (created; must be empty).
    #[arg(long)]
    out: PathBuf,
    /// The log directory (default: `audit.dir` of the configuration).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The Ed25519 signing key, PKCS#8 (default: `audit.signing_key_file`).
    #[arg(long, visible_alias = "key-file")]
    signing_key: Option<PathBuf>,
    /// Only the records that name this account (its user name, or its id
    /// `acct-…`): its logins, questions, exports, token use and the changes
    /// made to it. Each record keeps its MAC; the manifest names the account.
    #[arg(long)]
    user: Option<String>,
}

/// `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A log directory or an export directory.
    path: PathBuf,
    /// The initial key shown once by `setup`: with it every record's MAC is checked.
    #[arg(long, conflicts_with = "initial_key_file")]
    initial_key: Option<String>,
    /// A file holding the initial key (safer than the command line).
    #[arg(long)]
    initial_key_file: Option<PathBuf>,
    /// The export signer's public key (hex or 32 raw bytes; `setup` writes `signing.pub`).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Ask the running daemon to verify its live log over the admin socket
    /// (no read access to the log needed); PATH is then ignored.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: an auditor account's API token, in a file (an auditor
    /// is let in by its token instead of the admin group).
    #[arg(long, requires = "daemon")]
    token_file: Option<PathBuf>,
}

/// Runs an audit subcommand.
pub fn run(config: &Path, cmd: AuditCommand) -> Report {
    match cmd {
        AuditCommand::Export(a) => export(config, &a),
        AuditCommand::Verify(a) if a.daemon => verify_by_daemon(config, &a),
        AuditCommand::Verify(a) => verify(&a),
    }
}

fn export(config: &Path, a: &ExportArgs) -> Report {
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e.to_string()),
    };
    let audit = cfg.audit();
    let (since, until) = match (parse_time(&a.since), parse_time(&a.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return Report::error(e),
    };
    let dir = a.dir.clone().unwrap_or_else(|| audit.dir.clone());
    let Some(key_path) = a
        .signing_key
        .clone()
        .or_else(|| audit.signing_key_file.clone())
    else {
        return Report::error(format!(
            "no signing key: give --signing-key or set audit.signing_key_file in {} (medgemmactl setup creates one)",
            config.display()
        ));
    };
    let key = match std::fs::read(&key_path) {
        Ok(k) => k,
        Err(e) => {
            return Report::error(format!(
                "cannot read the signing key {}: {e}",
                key_path.display()
            ));
        }
    };
    let actor = match a
        .user
        .as_deref()
        .map(|u| resolve_account(&cfg, u))
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return Report::error(e),
    };
    let exported = medgemma_audit::export_for(&dir, since, until, &a.out, &key, actor.as_ref());
    // Every export attempt, good or failed, is itself an `export` record.
    let recorded = record_export(&cfg, &dir, exported.is_ok());
    let recorded = match recorded {
        Ok(how) => how,
        Err(why) => {
            let done = match &exported {
                Ok(_) => format!("the export into {} was written, but ", a.out.display()),
                Err(e) => format!("export failed ({e}), and "),
            };
            return Report::error(format!(
                "{done}it could not be recorded in the audit log: {why}"
            ));
        }
    };
    match exported {
        Ok(s) => Report {
            code: EXIT_OK,
            text: format!(
                "exported {} records ({}) in {} files into {}; manifest {} is signed; the export is recorded in the audit log ({recorded}). Verify it with: medgemmactl audit verify {} --public-key <signing.pub> --initial-key-file <file>",
                s.records,
                match (s.first_seq, s.last_seq) {
                    (Some(a), Some(b)) => format!("seq {a}..{b}"),
                    _ => "none in the range".to_owned(),
                },
                s.files,
                a.out.display(),
                s.manifest.display(),
                a.out.display(),
            ),
            json: serde_json::json!({
                "ok": true,
                "out": a.out,
                "files": s.files,
                "records": s.records,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "manifest": s.manifest,
                "recorded": recorded,
            }),
        },
        Err(e) => Report::error(format!("export failed: {e}")),
    }
}

/// Appends the `export` record (see [`record`]).
fn record_export(cfg: &DaemonConfig, dir: &Path, ok: bool) -> Result<&'static str, String> {
    let body = serde_json::to_value(ExportReport { ok }).map_err(|e| e.to_string())?;
    record(cfg, dir, EXPORT_ROUTE, &body, |actor| Event::Export {
        actor,
        kind: ExportKind::AuditLog,
        conversation: None,
        outcome: if ok { Outcome::Ok } else { Outcome::Error },
    })
    .map_err(|e| format!("{e}; fix the daemon, then export again"))
}

/// Appends one record: through the daemon's admin socket (`route` with
/// `body`) while it runs, else `event(actor)` written here (the writer
/// lock keeps a starting daemon out meanwhile); the actor is this
/// process's uid. Files this creates or replaces are given to the owner of
/// the log directory, the daemon's user. Returns how it was recorded.
pub fn record(
    cfg: &DaemonConfig,
    dir: &Path,
    route: &str,
    body: &serde_json::Value,
    event: impl FnOnce(ActorId) -> Event,
) -> Result<&'static str, String> {
    let socket = cfg.admin_socket();
    match UnixStream::connect(&socket) {
        Ok(stream) => {
            return status_cmd::request(stream, "POST", route, Some(body)).map(|_| "by medgemmad");
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {}
        Err(e) => {
            return Err(format!(
                "cannot reach medgemmad on {} ({e}); run as root or as a member of the admin group",
                socket.display()
            ));
        }
    }
    // The daemon is not running: write the record here.
    let audit = cfg.audit();
    let key_file = audit.key_file.as_path();
    let owner = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = std::fs::metadata("/proc/self").map_err(|e| format!("/proc/self: {e}"))?;
    let actor = ActorId::new(&format!("uid-{}", me.uid())).map_err(|e| e.to_string())?;
    let mut log =
        AuditLog::open(dir, key_file, AuditOptions::default()).map_err(|e| e.to_string())?;
    log.append(event(actor)).map_err(|e| e.to_string())?;
    drop(log);
    if me.uid() != owner.uid() {
        give_to_owner(dir, key_file, owner.uid(), owner.gid())?;
    }
    Ok("directly: medgemmad is not running")
}

/// Gives the log's files and the key file back to the daemon's user after
/// root wrote them (a root-owned key file would stop the daemon's next start).
fn give_to_owner(dir: &Path, key_file: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} back to uid {uid}: {e}", p.display()))
    };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        chown(&entry.path())?;
    }
    chown(key_file)
}

/// The audit actor of an account given by name (accounts file, then the
/// names file beside the log) or by id.
fn resolve_account(cfg: &DaemonConfig, user: &str) -> Result<ActorId, String> {
    use medgemma_protocol::accounts::{AccountsFile, read_names};
    if user.starts_with("acct-") {
        return ActorId::new(user).map_err(|e| e.to_string());
    }
    let file = AccountsFile::read(&cfg.auth().accounts_dir).map_err(|e| e.to_string())?;
    let id = match file.by_name(user) {
        Some(a) => a.id.clone(),
        None => read_names(&cfg.audit().dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .rev()
            .find(|e| e.name == user)
            .map(|e| e.id)
            .ok_or_else(|| {
                format!("no account is or was named {user:?} (medgemmactl user list)")
            })?,
    };
    ActorId::new(&id).map_err(|e| e.to_string())
}

/// `audit verify --daemon`: the daemon checks its live log.
fn verify_by_daemon(config: &Path, a: &VerifyArgs) -> Report {
    use medgemma_protocol::admin::{AUDIT_VERIFY_ROUTE, VerifyAnswer, VerifyRequest};
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e.to_string()),
    };
    let initial_key = match (&a.initial_key, &a.initial_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => return Report::error(format!("cannot read {}: {e}", f.display())),
        },
        (None, None) => None,
    };
    let token = match a
        .token_file
        .as_deref()
        .map(std::fs::read_to_string)
        .transpose()
    {
        Ok(t) => t.map(|t| t.trim().to_owned()),
        Err(e) => return Report::error(format!("cannot read the token file: {e}")),
    };
    let socket = cfg.admin_socket();
    let stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            return Report::error(format!(
                "cannot reach medgemmad on {}: {e}",
                socket.display()
            ));
        }
    };
    let body = match serde_json::to_value(VerifyRequest { initial_key }) {
        Ok(b) => b,
        Err(e) => return Report::error(e.to_string()),
    };
    let answer = status_cmd::request_with(
        stream,
        "POST",
        AUDIT_VERIFY_ROUTE,
        Some(&body),
        token.as_deref(),
    )
    .and_then(|v| serde_json::from_value::<VerifyAnswer>(v).map_err(|e| e.to_string()));
    match answer {
        Ok(v) => Report {
            code: if v.ok { EXIT_OK } else { EXIT_DEGRADED },
            text: match &v.failure {
                None => format!(
                    "OK: {} records in {} files (verified by medgemmad); checks: {}",
                    v.records,
                    v.files,
                    v.checks.join(", ")
                ),
                Some(f) => format!("FAILED: {f}\n(checked {} records before it)", v.records),
            },
            json: serde_json::to_value(&v).unwrap_or_default(),
        },
        Err(e) => Report::error(format!("medgemmad could not verify the log: {e}")),
    }
}

fn verify(a: &VerifyArgs) -> Report {
    let key_text = match (&a.initial_key, &a.initial_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t),
            Err(e) => return Report::error(format!("cannot read {}: {e}", f.display())),
        },
        (None, None) => None,
    };
    let key = match key_text
        .as_deref()
        .map(|t| InitialKey::parse(t.trim()))
        .transpose()
    {
        Ok(k) => k,
        Err(e) => return Report::error(format!("the initial key is not valid: {e}")),
    };
    let public = match &a.public_key {
        Some(p) => match read_public_key(p) {
            Ok(k) => Some(k),
            Err(e) => return Report::error(e),
        },
        None => None,
    };
    match medgemma_audit::verify(&a.path, key.as_ref(), public.as_deref()) {
        Ok(report) => verify_report(&a.path, &report),
        Err(e) => Report::error(format!("cannot verify {}: {e}", a.path.display())),
    }
}

fn verify_report(path: &Path, r: &VerifyReport) -> Report {
    let c = &r.checks;
    let checks = serde_json::json!({
        "form": c.form, "sequence": c.sequence, "chain": c.chain, "dates": c.dates,
        "macs": c.macs, "manifest": c.manifest, "signature": c.signature,
    });
    let ran: Vec<&str> = [
        ("form", c.form),
        ("sequence", c.sequence),
        ("chain", c.chain),
        ("dates", c.dates),
        ("MACs", c.macs),
        ("manifest", c.manifest),
        ("signature", c.signature),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..{b}"),
        _ => "no records".to_owned(),
    };
    let mut json = serde_json::json!({
        "ok": r.is_ok(),
        "path": path,
        "files": r.files,
        "records": r.records,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "head": r.head.map(|h| h.to_hex()),
        "checks": checks,
        "failure": null,
    });
    match &r.failure {
        None => {
            let mut text = format!(
                "OK: {} records ({range}) in {} files; checks: {}",
                r.records,
                r.files,
                ran.join(", ")
            );
            if !c.macs {
                text.push_str(
                    "\nnote: without --initial-key the MACs were not checked: a careful edit of one field would go unnoticed",
                );
            }
            Report {
                code: EXIT_OK,
                text,
                json,
            }
        }
        Some(f) => {
            json["failure"] = serde_json::json!({
                "file": f.file,
                "line": f.line,
                "reason": f.reason.to_string(),
            });
            Report {
                code: EXIT_DEGRADED,
                text: format!(
                    "FAILED: {}{}: {}\n(checked {} records before it; checks: {})",
                    f.file.display(),
                    f.line.map(|l| format!(" line {l}")).unwrap_or_default(),
                    f.reason,
                    r.records,
                    ran.join(", ")
                ),
                json,
            }
        }
    }
}

fn read_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() == 32 {
        return Ok(bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    match hex::decode(text.trim()) {
        Ok(k) if k.len() == 32 => Ok(k),
        _ => Err(format!(
            "{} is not an Ed25519 public key (64 hex digits or 32 bytes)",
            path.display()
        )),
    }
}

/// Parses `now`, Unix seconds, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!("{s:?} is not a time; write 2026-05-01, 2026-05-01T08:00:00Z, Unix seconds or now")
    };
    let s = s.trim();
    if s == "now" {
        return Ok(SystemTime::now());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d.as_slice() else {
        return Err(bad());
    };
    let (y, m, day): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        day.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, day) * 86_400;
    if let Some(t) = time {
        let p: Vec<&str> = t.split(':').collect();
        let [h, mi, se] = p.as_slice() else {
            return Err(bad());
        };
        let (h, mi, se): (i64, i64, i64) = (
            h.parse().map_err(|_| bad())?,
            mi.parse().map_err(|_| bad())?,
            se.parse().map_err(|_| bad())?,
        );
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se;
    }
    u64::try_from(secs)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_utc() {
        let t = |s| {
            parse_time(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(t("1970-01-01"), 0);
        assert_eq!(t("2026-11-28"), 1_795_824_000);
        assert_eq!(t("2026-11-28T09:30:00Z"), 1_795_824_000 + 9 * 3600 + 1800);
        assert_eq!(t("12345"), 12345);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01").is_err());
    }
}
