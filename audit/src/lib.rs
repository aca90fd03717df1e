//! Tamper-evident, content-free audit log for the MedGemma appliance.
//!
//! Hospital IT must be able to prove who used the appliance when, without the
//! log becoming a store of patient data. This crate writes one JSON line per
//! event (startup, model load, conversation start, each request and its
//! answer, export, login, lockout, logout, account change, token use,
//! recovery, retention, shutdown), chains the lines with HMACs under a key
//! that evolves forward, and exports signed, verifiable extracts.
//!
//! It must never store conversation text: text enters only through
//! [`ContentHasher::hash`], which returns a keyed [`Digest`]; every other
//! field is typed (ids are validated tokens `[A-Za-z0-9_-]{1,64}`, numbers,
//! enums, fixed-layout timestamps), and no error message repeats a value.
//!
//! # Example
//!
//! ```no_run
//! use medgemma_audit::*;
//! # fn main() -> Result<(), AuditError> {
//! # let (dir, key_file, content_key) = (std::path::Path::new("/var/lib/medgemma/audit"),
//! #     std::path::Path::new("/var/lib/medgemma/audit-key/current"),
//! #     std::path::Path::new("/var/lib/medgemma/audit-key/content"));
//! // Setup, once: show the initial key to the administrator, who keeps it offline.
//! let initial = create_key(key_file)?;
//! eprintln!("audit key (write it down): {}", initial.display());
//! create_content_key(content_key)?;
//!
//! // Daemon start (before entering the sandbox).
//! let mut log = AuditLog::open(dir, key_file, AuditOptions::default())?;
//! let hasher = ContentHasher::load(content_key)?;
//! log.append(Event::Startup { software: SoftwareVersion::parse("0.1.0")? })?;
//! log.append(Event::Answer(Answer {
//!     actor: ActorId::new("dr-lee")?,
//!     conversation: ConversationId::new("c-0001")?,
//!     model: ModelFingerprint::new("medgemma-4b-it-q8")?,
//!     tokens_in: 42,
//!     tokens_out: 180,
//!     finish: FinishReason::Stop,
//!     latency_ms: 5300,
//!     outcome: Outcome::Ok,
//!     input: hasher.hash("the question"),
//!     output: hasher.hash("the answer"),
//! }))?;
//!
//! // Audit, later, with the offline key.
//! let report = verify(dir, Some(&initial), None)?;
//! assert!(report.is_ok(), "{:?}", report.failure);
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! **Records.** `{"v":1,"seq":…,"ts":…,"boot":…,"event":…,<event fields>,"prev":…,"mac":…}`,
//! one per line, fields in a fixed order, parsed back only if re-serialising
//! reproduces the bytes exactly. `seq` counts from 0 across files and runs;
//! `prev` is the MAC of the record before (zeros for record 0); `mac` is
//! HMAC-SHA256 over the line without the `mac` field, so it covers the record
//! and the previous MAC.
//!
//! **Epoch = one record.** Record `n` is MACed with a key derived from the
//! chain secret `k_n`; after writing it the writer computes
//! `k_{n+1} = HKDF-SHA256(k_n, "next")`, overwrites `k_n` in memory and
//! replaces the key file atomically (write `<key>.tmp`, fsync, rename,
//! fsync the directory). `k_0` is the initial key, returned once by
//! [`create_key`] for the administrator to keep offline; [`verify`] given
//! `k_0` re-derives every `k_n`. A per-record epoch costs one small file
//! replace per append, negligible next to generating an answer, and leaves
//! an intruder no window of earlier records it can rewrite.
//!
//! **Durability.** Files are opened `O_APPEND`; each record is one `write`
//! followed by `fdatasync` before [`AuditLog::append`] returns. On open, the
//! newest file is checked (form, sequence, chain, dates); a torn last line is
//! cut back to the last valid record and a `recovery` record with the cut's
//! offset, length and SHA-256 (never the bytes) is appended. The cut is noted
//! in the key file before cutting, so a crash in between still logs it.
//! Damage before the last line is not a crash: open refuses
//! ([`AuditError::CorruptLog`]) rather than cut evidence.
//!
//! **Files.** One file per UTC day, `audit-YYYY-MM-DD.jsonl`; a new day's
//! first record chains to the previous file's last MAC. Nothing is deleted
//! except by [`AuditLog::apply_retention`] (default
//! [`DEFAULT_RETENTION_DAYS`] = 180), which first appends a `retention`
//! record naming the range and the MAC of the last record it removes, so
//! [`verify`] can tell retention from deletion.
//!
//! **Sandbox.** [`AuditLog::open`] runs before the daemon enters Landlock:
//! it creates and opens the log directory, opens the key file's directory
//! (fsync handles kept for later) and the newest file. Afterwards the writer
//! needs, per directory (Landlock access rights):
//! log directory: `MAKE_REG` + `WRITE_FILE` (daily rotation), and for
//! [`AuditLog::apply_retention`] `READ_DIR` + `READ_FILE` + `REMOVE_FILE`;
//! key file's directory: `MAKE_REG` + `WRITE_FILE` + `TRUNCATE` (the
//! `<key>.tmp` file) + `REMOVE_FILE` (the rename replaces the old key file;
//! same-directory, so no `REFER`). Keep the key file in its own directory
//! (mode 0700), away from the log directory and from exports.
//!
//! **Exports.** [`export`] copies a contiguous range of records byte for
//! byte with `manifest.json` (each file's SHA-256, sequence range, chain
//! head, time range, tool version) and `manifest.sig` (Ed25519 via `ring`).
//! [`verify`] reports the first bad line as (file, line, reason) and which
//! checks it could run ([`Checks`]).
//!
//! # Threat model
//!
//! An intruder who takes over the daemon (or root) at time *t*, when the
//! next record is `n`:
//!
//! * **cannot** edit, delete, reorder or insert any record `< n` without
//!   [`verify`] with the initial key naming the first bad line: the MAC keys
//!   of those records are derived from `k_0…k_{n-1}`, which are erased and
//!   not computable from `k_n` (HKDF is one-way);
//! * **cannot** learn conversation text from the log: it holds HMAC digests
//!   only, and a plain hash of a short question could be brute-forced but an
//!   HMAC cannot without the content key (see spec/sandbox.md);
//! * **can** forge records `≥ n` (it holds `k_n`), and **can** delete the
//!   newest records or whole newest files (truncation). Truncation is only
//!   detectable against something outside its reach: a signed export, the
//!   administrator's note of the last sequence number, or a remote copy;
//! * **can**, holding the content key in the daemon's memory, test guesses
//!   of past texts against their digests (the content key must stay stable
//!   for digests to be comparable; rotate it when this matters);
//! * **may** recover erased keys from places a process cannot wipe: freed
//!   disk blocks or SSD spare cells under the old key file, swap, or stack
//!   copies left by `ring`. Put the key file on an encrypted filesystem and
//!   disable swap for the daemon to narrow this.
//!
//! Without the initial key, [`verify`] still detects deletion, reordering and
//! insertion (sequence numbers and `prev` links) and non-canonical edits, but
//! not a careful edit of one field; only the MAC check does that.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod event;
mod export;
mod keys;
mod record;
mod types;
mod verify;
mod writer;

pub use error::AuditError;
pub use event::{
    AccountChangeKind, Answer, Event, ExportKind, FinishReason, LoginMethod, LogoutReason, Outcome,
    Recovery, Retention, ShutdownReason,
};
pub use export::{
    ExportSummary, MANIFEST_NAME, SIGNATURE_NAME, export, export_for, generate_signing_key,
    signing_public_key,
};
pub use keys::{ContentHasher, EpochKey, HKDF_SALT, InitialKey, create_content_key, create_key};
pub use types::{
    ActorId, BootId, ConversationId, Digest, LogDay, MAX_ID_LEN, Mac, ModelFingerprint, Sha256,
    SoftwareVersion, Timestamp,
};
pub use verify::{Checks, Failure, FailureReason, VerifyReport, verify};
pub use writer::{
    AppendReceipt, AuditLog, AuditOptions, Clock, DEFAULT_RETENTION_DAYS, Durability,
    RetentionReport,
};
