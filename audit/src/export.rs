//! Signed exports: a time range of the log, copied verbatim, plus a manifest
//! signed with Ed25519.
//!
//! Owns the export directory layout:
//!
//! ```text
//! out_dir/
//!   audit-YYYY-MM-DD.jsonl   the exported records of that day, byte-identical lines
//!   manifest.json            files, SHA-256s, sequence ranges, chain heads, time range
//!   manifest.sig             hex Ed25519 signature of manifest.json's exact bytes
//! ```
//!
//! It reads the log directory (possibly while the daemon appends) and writes
//! only into `out_dir`, which must be new or empty. It never alters a
//! record: the exported lines keep their MACs, so [`crate::verify`] with the
//! initial key checks them as in the live log.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::event::Event;
use crate::record::{LineError, file_name, list_log_files, parse_file_name, parse_line};
use crate::types::{ActorId, LogDay, Mac, Sha256, Timestamp};
use crate::verify::FailureReason;

/// Name of the manifest in an export directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Name of the manifest's detached signature.
pub const SIGNATURE_NAME: &str = "manifest.sig";
const EXPORT_FORMAT: &str = "medgemma-audit-export/1";

/// The manifest (`manifest.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) tool_version: String,
    pub(crate) created: Timestamp,
    pub(crate) since: Timestamp,
    pub(crate) until: Timestamp,
    pub(crate) records: u64,
    pub(crate) first_seq: Option<u64>,
    pub(crate) last_seq: Option<u64>,
    /// MAC of the record before the first exported one.
    pub(crate) prev_of_first: Option<Mac>,
    /// MAC of the last exported record (the chain head).
    pub(crate) head: Option<Mac>,
    pub(crate) files: Vec<ManifestFile>,
    /// Set when the export holds only the records that name this account
    /// (`export_for`): the sequence then has gaps where other records were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) actor: Option<ActorId>,
}

impl Manifest {
    pub(crate) fn is_well_formed(&self) -> bool {
        self.format == EXPORT_FORMAT
            && self
                .files
                .iter()
                .all(|f| parse_file_name(&f.name).is_some())
            && self.files.windows(2).all(|w| w[0].name < w[1].name)
    }
}

/// One exported file in the manifest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestFile {
    pub(crate) name: String,
    pub(crate) sha256: Sha256,
    pub(crate) records: u64,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) first_ts: Timestamp,
    pub(crate) last_ts: Timestamp,
    pub(crate) head: Mac,
}

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Log files written.
    pub files: usize,
    /// Records exported.
    pub records: u64,
    /// First exported sequence number.
    pub first_seq: Option<u64>,
    /// Last exported sequence number.
    pub last_seq: Option<u64>,
    /// Path of `manifest.json`.
    pub manifest: PathBuf,
}

/// Generates a new Ed25519 signing key as a PKCS#8 document. Store it where
/// only the export tool can read it; hand out [`signing_public_key`].
///
/// # Errors
/// [`AuditError::Random`] when the random source fails.
pub fn generate_signing_key() -> Result<Vec<u8>, AuditError> {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| AuditError::Random)?;
    Ok(doc.as_ref().to_vec())
}

/// The raw 32-byte public key for a PKCS#8 signing key, for [`crate::verify`].
///
/// # Errors
/// [`AuditError::SigningKey`] when `pkcs8` is not an Ed25519 key.
pub fn signing_public_key(pkcs8: &[u8]) -> Result<Vec<u8>, AuditError> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| AuditError::SigningKey)?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// Exports the records dated in `[since, until)` from the log in `dir_in`
/// into `out_dir` (created if missing, must be empty) with a signed manifest.
///
/// The export is one contiguous run of the chain: from the first record
/// dated at or after `since` to the last record dated before `until`, with
/// everything in between (if the clock jumped, a few records outside the
/// range come along rather than breaking the chain). A partial last line of
/// a log being written is skipped.
///
/// # Errors
/// [`AuditError::SigningKey`], [`AuditError::InvalidTimeRange`],
/// [`AuditError::ExportDirNotEmpty`], [`AuditError::ExportCorrupt`] for an
/// unreadable record, and I/O errors.
pub fn export(
    dir_in: &Path,
    since: SystemTime,
    until: SystemTime,
    out_dir: &Path,
    signing_key: &[u8],
) -> Result<ExportSummary, AuditError> {
    export_for(dir_in, since, until, out_dir, signing_key, None)
}

/// [`export`], keeping only the records that name `actor` (as the one who
/// acted, or as the account an administrator changed) when it is given.
/// Each kept record is copied byte for byte, so its MAC still verifies with
/// the initial key; the manifest names the account, and [`crate::verify`]
/// then accepts gaps in the sequence (the other records) but checks the
/// chain wherever two kept records are neighbours.
///
/// # Errors
/// As [`export`].
pub fn export_for(
    dir_in: &Path,
    since: SystemTime,
    until: SystemTime,
    out_dir: &Path,
    signing_key: &[u8],
    actor: Option<&ActorId>,
) -> Result<ExportSummary, AuditError> {
    let pair = Ed25519KeyPair::from_pkcs8(signing_key).map_err(|_| AuditError::SigningKey)?;
    let since = Timestamp::from_system_time(since)?;
    let until = Timestamp::from_system_time(until)?;
    if since >= until {
        return Err(AuditError::InvalidTimeRange);
    }
    let files = list_log_files(dir_in).map_err(|source| AuditError::Dir {
        path: dir_in.to_path_buf(),
        source,
    })?;

    // Pass 1: find the sequence range.
    let mut first_seq = None;
    let mut last_seq = None;
    for_each_record(&files, |_, _, r| {
        if first_seq.is_none() && r.ts >= since {
            first_seq = Some(r.seq);
        }
        if r.ts < until {
            last_seq = Some(r.seq);
        }
    })?;
    let range = match (first_seq, last_seq) {
        (Some(a), Some(b)) if a <= b => Some((a, b)),
        _ => None,
    };

    prepare_out_dir(out_dir)?;

    // Pass 2: copy the range, file by file.
    let mut outputs: Vec<Output> = Vec::new();
    let mut prev_of_first = None;
    let mut failed = None;
    if let Some((a, b)) = range {
        for_each_record(&files, |day, line, r| {
            if failed.is_some() || r.seq < a || r.seq > b {
                return;
            }
            if actor.is_some_and(|who| !r.event.names(who)) {
                return;
            }
            prev_of_first.get_or_insert(r.prev);
            let result = match outputs.last_mut() {
                Some(o) if o.day == day => o.push(line, r),
                _ => Output::create(out_dir, day, line, r).map(|o| outputs.push(o)),
            };
            if let Err(e) = result {
                failed = Some(e);
            }
        })?;
    }
    if let Some(e) = failed {
        return Err(e);
    }

    let mut manifest = Manifest {
        format: EXPORT_FORMAT.to_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        created: Timestamp::from_system_time(SystemTime::now())?,
        since,
        until,
        records: 0,
        first_seq: None,
        last_seq: None,
        prev_of_first,
        head: None,
        files: Vec::with_capacity(outputs.len()),
        actor: actor.cloned(),
    };
    for o in outputs {
        let entry = o.finish()?;
        manifest.records += entry.records;
        manifest.first_seq = manifest.first_seq.or(Some(entry.first_seq));
        manifest.last_seq = Some(entry.last_seq);
        manifest.head = Some(entry.head);
        manifest.files.push(entry);
    }

    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    let manifest_path = out_dir.join(MANIFEST_NAME);
    write_new(&manifest_path, &bytes)?;
    let sig = pair.sign(&bytes);
    let mut sig_hex = hex::encode(sig.as_ref());
    sig_hex.push('\n');
    write_new(&out_dir.join(SIGNATURE_NAME), sig_hex.as_bytes())?;
    File::open(out_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AuditError::Sync {
            path: out_dir.to_path_buf(),
            source,
        })?;
    Ok(ExportSummary {
        files: manifest.files.len(),
        records: manifest.records,
        first_seq: manifest.first_seq,
        last_seq: manifest.last_seq,
        manifest: manifest_path,
    })
}

/// What the export needs to know about one record.
struct RecordInfo {
    seq: u64,
    ts: Timestamp,
    prev: Mac,
    mac: Mac,
    event: Event,
}

/// Calls `f(day, line, info)` for every complete record, in order.
fn for_each_record(
    files: &[(LogDay, PathBuf)],
    mut f: impl FnMut(LogDay, &[u8], &RecordInfo),
) -> Result<(), AuditError> {
    for (i, (day, path)) in files.iter().enumerate() {
        let read_err = |source| AuditError::Read {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(read_err)?);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(read_err)? == 0 {
                break;
            }
            line_no += 1;
            match parse_line(&buf) {
                Ok(p) => f(
                    *day,
                    &buf,
                    &RecordInfo {
                        seq: p.record.seq,
                        ts: p.record.ts,
                        prev: p.record.prev,
                        mac: p.mac,
                        event: p.record.event,
                    },
                ),
                // The daemon may be writing the newest file's last line.
                Err(LineError::Torn) if i + 1 == files.len() => break,
                Err(e) => {
                    return Err(AuditError::ExportCorrupt {
                        path: path.clone(),
                        line: line_no,
                        reason: FailureReason::from(e),
                    });
                }
            }
        }
    }
    Ok(())
}

fn prepare_out_dir(out_dir: &Path) -> Result<(), AuditError> {
    let dir_err = |source| AuditError::Dir {
        path: out_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(dir_err)?;
    if std::fs::read_dir(out_dir)
        .map_err(dir_err)?
        .next()
        .is_some()
    {
        return Err(AuditError::ExportDirNotEmpty {
            path: out_dir.to_path_buf(),
        });
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let err = |source| AuditError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(|source| AuditError::Sync {
        path: path.to_path_buf(),
        source,
    })
}

/// One export file being written.
struct Output {
    day: LogDay,
    path: PathBuf,
    file: std::io::BufWriter<File>,
    sha: ring::digest::Context,
    records: u64,
    first: (u64, Timestamp),
    last: (u64, Timestamp, Mac),
}

impl Output {
    /// Creates the file for `day` with its first record.
    fn create(dir: &Path, day: LogDay, line: &[u8], r: &RecordInfo) -> Result<Self, AuditError> {
        let path = dir.join(file_name(day));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| AuditError::Write {
                path: path.clone(),
                source,
            })?;
        let mut out = Self {
            day,
            path,
            file: std::io::BufWriter::new(file),
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            records: 0,
            first: (r.seq, r.ts),
            last: (r.seq, r.ts, r.mac),
        };
        out.push(line, r)?;
        Ok(out)
    }

    fn push(&mut self, line: &[u8], r: &RecordInfo) -> Result<(), AuditError> {
        self.file
            .write_all(line)
            .map_err(|source| AuditError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.sha.update(line);
        self.records += 1;
        self.last = (r.seq, r.ts, r.mac);
        Ok(())
    }

    fn finish(self) -> Result<ManifestFile, AuditError> {
        let path = self.path;
        let file = self.file.into_inner().map_err(|e| AuditError::Write {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| AuditError::Sync {
            path: path.clone(),
            source,
        })?;
        let digest = self.sha.finish();
        let mut sha = [0u8; 32];
        sha.copy_from_slice(digest.as_ref());
        Ok(ManifestFile {
            name: file_name(self.day),
            sha256: Sha256(sha),
            records: self.records,
            first_seq: self.first.0,
            last_seq: self.last.0,
            first_ts: self.first.1,
            last_ts: self.last.1,
            head: self.last.2,
        })
    }
}
