//! The crate's one error type.
//!
//! Every message is a sentence that says what to do. No variant carries
//! record content, conversation text, identifiers that failed validation or
//! key material: only paths, counts, line numbers and fixed descriptions.

use std::io;
use std::path::PathBuf;

use crate::verify::FailureReason;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log directory cannot be created, opened or listed.
    #[error(
        "cannot use the audit directory {path}: {source}; check that it exists, is a directory and is readable and writable by the daemon's user"
    )]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A log file cannot be read.
    #[error("cannot read the audit file {path}: {source}; check its permissions and the disk")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A log file cannot be created or written.
    #[error(
        "cannot write the audit file {path}: {source}; free disk space or fix the mount, then restart the daemon (the log repairs a partial record when it re-opens)"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// fsync failed, so the record may not be on disk.
    #[error(
        "cannot flush {path} to disk: {source}; the last record may be lost: check the disk, then restart the daemon so the log re-opens and repairs itself"
    )]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Retention could not delete an expired file.
    #[error(
        "cannot delete the expired audit file {path}: {source}; check the directory's permissions (the deletion was already recorded in the log), then run retention again"
    )]
    Remove {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The key file (or its directory) cannot be read or replaced.
    #[error(
        "cannot read or replace the audit key file {path}: {source}; check that its directory exists and is writable by the daemon's user only"
    )]
    KeyFile {
        /// The key file or the temporary file next to it.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The key file is damaged or of another format.
    #[error(
        "the audit key file {path} is not usable ({problem}); keys cannot be restored by design: start a new log directory with a new key (create_key) and keep the old directory and its initial key for verification"
    )]
    KeyFileInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: &'static str,
    },
    /// `create_key` would overwrite an existing key.
    #[error(
        "the key file {path} already exists; a new key would orphan the existing log: remove the file only if you mean to start a new log"
    )]
    KeyFileExists {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is further along than the log: records are missing.
    #[error(
        "the key file {key_file} expects record {key_seq} next but the log in {dir} ends before record {log_seq}: records were deleted; run verify with the initial key, keep the directory as evidence and start a new log"
    )]
    KeyAheadOfLog {
        /// The key file.
        key_file: PathBuf,
        /// The log directory.
        dir: PathBuf,
        /// The key file's next sequence number.
        key_seq: u64,
        /// The log's next sequence number.
        log_seq: u64,
    },
    /// The key file does not belong to this log (or the log's end was replaced).
    #[error(
        "the key file {key_file} does not match the end of the log in {dir}; check that the daemon is configured with the right key file, otherwise run verify with the initial key and keep the directory as evidence"
    )]
    KeyLogMismatch {
        /// The key file.
        key_file: PathBuf,
        /// The log directory.
        dir: PathBuf,
    },
    /// The newest file is damaged before its last line, which a crash cannot
    /// cause; the log refuses to cut it.
    #[error(
        "the audit file {path} is damaged at line {line} ({reason}) and more follows, which a crash cannot cause; run verify, move the directory aside as evidence and start a new log"
    )]
    CorruptLog {
        /// The file.
        path: PathBuf,
        /// The first bad line (1-based).
        line: u64,
        /// Why the line is bad.
        reason: FailureReason,
    },
    /// An identifier is not a short token.
    #[error(
        "the {field} must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-' (got {len} bytes that do not fit); pass an opaque identifier, never a name or text"
    )]
    InvalidId {
        /// Which identifier.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A typed initial key does not parse.
    #[error("that is not a valid initial audit key: {problem}; retype it from the offline copy")]
    InvalidInitialKey {
        /// What is wrong, in words.
        problem: &'static str,
    },
    /// A version is not `MAJOR.MINOR.PATCH`.
    #[error("a software version must be MAJOR.MINOR.PATCH with digits only")]
    InvalidVersion,
    /// A content key is shorter than 32 bytes.
    #[error("the content key must be at least 32 bytes; generate one with create_content_key")]
    ContentKeyTooShort,
    /// The clock reads a time before 1970.
    #[error("the system clock is before 1970; set the clock, then retry")]
    ClockBeforeEpoch,
    /// An earlier write or fsync failed, so the file may end in a partial
    /// record; appending more would bury it.
    #[error(
        "an earlier write to the audit log in {path} failed; re-open the log (AuditLog::open repairs the tail) before appending again"
    )]
    Poisoned {
        /// The log directory.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error(
        "the system random number generator failed; check /dev/urandom and the getrandom syscall"
    )]
    Random,
    /// The Ed25519 signing key is not a valid PKCS#8 document.
    #[error(
        "the export signing key is not an Ed25519 PKCS#8 key; generate one with generate_signing_key"
    )]
    SigningKey,
    /// `since` is not before `until`.
    #[error("the export range is empty: `since` must be before `until`")]
    InvalidTimeRange,
    /// Another process holds the log open for writing.
    #[error(
        "another process is writing the audit log in {path} (medgemmad, or a second medgemmad on the same directory); stop it or give this one its own audit.dir"
    )]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// The export target already has files in it.
    #[error("the export directory {path} is not empty; choose a new or empty directory")]
    ExportDirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A record to export is unreadable.
    #[error(
        "cannot export: {path} line {line} is not a valid record ({reason}); run verify on the log directory first"
    )]
    ExportCorrupt {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: u64,
        /// Why.
        reason: FailureReason,
    },
}
