//! The verifier: checks a log directory or an export and names the first
//! bad line.
//!
//! Owns the rules a log must satisfy. It only reads; it never repairs. With
//! the initial key it re-derives every record's key (HKDF forward from
//! `k_0`) and checks every MAC; without it, it still checks what needs no
//! secret (form, sequence numbers, chain links, dates, and for an export the
//! manifest's hashes) and says in [`Checks`] which checks ran.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, UnparsedPublicKey};

use crate::error::AuditError;
use crate::event::Event;
use crate::export::{MANIFEST_NAME, Manifest, ManifestFile, SIGNATURE_NAME};
use crate::keys::{EpochKey, InitialKey};
use crate::record::{LineError, file_name, list_log_files, parse_line};
use crate::types::{LogDay, Mac};

/// Which checks a verification ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// Every line is a complete record in canonical form.
    pub form: bool,
    /// Sequence numbers increase by one, across files.
    pub sequence: bool,
    /// Every record's `prev` is the MAC of the record before.
    pub chain: bool,
    /// No record is in a file named for an earlier day.
    pub dates: bool,
    /// Every MAC recomputed from the initial key (only with the key).
    pub macs: bool,
    /// The export's files match its manifest (only for an export).
    pub manifest: bool,
    /// The manifest's Ed25519 signature (only with a public key).
    pub signature: bool,
    /// The export holds one account's records only (`export_for`):
    /// sequence numbers may skip the other records, and the chain is
    /// checked between neighbouring records only.
    pub filtered: bool,
}

/// Why verification failed. Never carries record content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The last line has no newline: a write was torn (a crash, or a copy
    /// taken while the daemon was writing).
    TornLine,
    /// The line is not an audit record.
    Malformed,
    /// The line parses but is not byte-for-byte how the writer writes it.
    NotCanonical,
    /// A record format version this verifier does not know.
    UnsupportedVersion,
    /// A sequence number is out of order: a record was deleted, inserted or
    /// moved here.
    Sequence {
        /// What should have come.
        expected: u64,
        /// What came.
        found: u64,
    },
    /// The record's `prev` is not the MAC of the record before it.
    BrokenChain,
    /// The MAC does not match: the record was edited or forged.
    BadMac,
    /// The record's date is after the day its file is named for.
    WrongFile,
    /// The log starts after record 0 and no `retention` record explains the
    /// missing beginning.
    UnexplainedStart {
        /// The first sequence number present.
        first_seq: u64,
    },
    /// A public key was given but there is no manifest.
    ManifestMissing,
    /// The manifest is not valid JSON of the export format.
    ManifestInvalid,
    /// A public key was given but there is no signature file.
    SignatureMissing,
    /// The signature does not verify with the given public key.
    SignatureInvalid,
    /// A file is present that the manifest does not list.
    FileNotInManifest,
    /// A file the manifest lists is missing.
    FileMissing,
    /// The file's SHA-256 differs from the manifest.
    FileHash,
    /// The file's records (count, sequence range or head MAC) differ from
    /// the manifest.
    ManifestMismatch,
    /// An export made for one account holds a record that does not name it.
    OutsideFilter,
}

impl From<LineError> for FailureReason {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Torn => Self::TornLine,
            LineError::Malformed => Self::Malformed,
            LineError::NotCanonical => Self::NotCanonical,
            LineError::Version => Self::UnsupportedVersion,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TornLine => f.write_str("the line is incomplete (torn write)"),
            Self::Malformed => f.write_str("the line is not an audit record"),
            Self::NotCanonical => {
                f.write_str("the record is not in the writer's exact form (edited)")
            }
            Self::UnsupportedVersion => f.write_str("unknown record format version"),
            Self::Sequence { expected, found } => write!(
                f,
                "sequence number {found} where {expected} was expected (record deleted, inserted or reordered)"
            ),
            Self::BrokenChain => {
                f.write_str("the record does not chain to the one before it (deleted, inserted or reordered)")
            }
            Self::BadMac => f.write_str("the MAC does not match (record edited or forged)"),
            Self::WrongFile => {
                f.write_str("the record is dated after the day its file is named for (files swapped or renamed)")
            }
            Self::UnexplainedStart { first_seq } => write!(
                f,
                "the log starts at record {first_seq} and no retention record explains the missing earlier records"
            ),
            Self::ManifestMissing => f.write_str("no manifest.json (not an export, or it was removed)"),
            Self::ManifestInvalid => f.write_str("manifest.json is not a valid export manifest"),
            Self::SignatureMissing => f.write_str("no manifest.sig next to manifest.json"),
            Self::SignatureInvalid => {
                f.write_str("the manifest's signature does not verify with this public key")
            }
            Self::FileNotInManifest => f.write_str("the file is not listed in the manifest"),
            Self::FileMissing => f.write_str("the manifest lists this file but it is missing"),
            Self::FileHash => f.write_str("the file's SHA-256 differs from the signed manifest"),
            Self::ManifestMismatch => {
                f.write_str("the file's records differ from what the manifest says")
            }
            Self::OutsideFilter => f.write_str(
                "the record does not name the account this export was made for (added)",
            ),
        }
    }
}

/// The first problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The file it is in.
    pub file: PathBuf,
    /// The line (1-based), when the problem is one line.
    pub line: Option<u64>,
    /// What is wrong.
    pub reason: FailureReason,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {}: {}", self.file.display(), line, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Which checks ran.
    pub checks: Checks,
    /// Log files read.
    pub files: usize,
    /// Records that passed every check that ran.
    pub records: u64,
    /// Sequence number of the first record.
    pub first_seq: Option<u64>,
    /// Sequence number of the last good record.
    pub last_seq: Option<u64>,
    /// MAC of the last good record (the chain head).
    pub head: Option<Mac>,
    /// The first problem, if any; checking stops there.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// True when every check that ran passed.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies a log directory, or an export made by [`crate::export`] (a
/// directory with `manifest.json`; giving `public_key` requires one).
///
/// `key` is the initial key shown at setup: with it every MAC is checked.
/// `public_key` is the raw 32-byte Ed25519 public key of the export's
/// signer (see [`crate::signing_public_key`]).
///
/// # Errors
/// Only I/O errors reading the directory or files; problems with the log
/// itself are reported in [`VerifyReport::failure`].
pub fn verify(
    path: &Path,
    key: Option<&InitialKey>,
    public_key: Option<&[u8]>,
) -> Result<VerifyReport, AuditError> {
    let mut v = Verifier {
        initial: key,
        key: None,
        filter: None,
        expected: None,
        retention: Vec::new(),
        first: None,
        report: VerifyReport {
            checks: Checks {
                form: true,
                sequence: true,
                chain: true,
                dates: true,
                macs: key.is_some(),
                ..Checks::default()
            },
            files: 0,
            records: 0,
            first_seq: None,
            last_seq: None,
            head: None,
            failure: None,
        },
    };
    let is_export = path.join(MANIFEST_NAME).exists() || public_key.is_some();
    let manifest = if is_export {
        match load_manifest(path, public_key, &mut v.report.checks)? {
            Ok(m) => Some(m),
            Err(failure) => return Ok(v.fail(failure)),
        }
    } else {
        None
    };
    let files = list_log_files(path).map_err(|source| AuditError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(m) = &manifest {
        if let Some(failure) = match_manifest_files(path, m, &files)? {
            return Ok(v.fail(failure));
        }
        if let (Some(seq), Some(prev)) = (m.first_seq, m.prev_of_first) {
            v.expected = Some((seq, prev));
        }
        if let Some(actor) = &m.actor {
            v.filter = Some(actor.clone());
            v.report.checks.filtered = true;
        }
    }
    for (i, (day, file)) in files.iter().enumerate() {
        let entry = manifest.as_ref().and_then(|m| m.files.get(i));
        if let Some(failure) = v.check_file(*day, file, entry)? {
            return Ok(v.fail(failure));
        }
    }
    let end = match &manifest {
        Some(m) => v.check_manifest_totals(path, m),
        None => v.check_start(),
    };
    Ok(match end {
        Some(failure) => v.fail(failure),
        None => v.report,
    })
}

struct Verifier<'k> {
    initial: Option<&'k InitialKey>,
    key: Option<EpochKey>,
    /// The account a filtered export was made for.
    filter: Option<crate::types::ActorId>,
    /// Next sequence number and `prev` expected.
    expected: Option<(u64, Mac)>,
    /// `(through_seq, head)` of every retention record seen.
    retention: Vec<(u64, Mac)>,
    /// File, first sequence number and `prev` of the first record.
    first: Option<(PathBuf, u64, Mac)>,
    report: VerifyReport,
}

impl Verifier<'_> {
    fn fail(mut self, failure: Failure) -> VerifyReport {
        self.report.failure = Some(failure);
        self.report
    }

    fn check_file(
        &mut self,
        day: LogDay,
        path: &Path,
        entry: Option<&ManifestFile>,
    ) -> Result<Option<Failure>, AuditError> {
        let read_err = |source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        };
        let fail = |line: Option<u64>, reason| {
            Some(Failure {
                file: path.to_path_buf(),
                line,
                reason,
            })
        };
        self.report.files += 1;
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(read_err)?);
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = Vec::with_capacity(1024);
        let mut line_no = 0u64;
        let mut in_file: Option<(u64, u64, Mac)> = None; // first seq, last seq, head
        let mut count = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(read_err)? == 0 {
                break;
            }
            line_no += 1;
            sha.update(&buf);
            let p = match parse_line(&buf) {
                Ok(p) => p,
                Err(e) => return Ok(fail(Some(line_no), e.into())),
            };
            let r = &p.record;
            let filtered = self.filter.is_some();
            match self.expected {
                // A filtered export skips other accounts' records: the
                // sequence only has to grow, and `prev` links only
                // neighbours.
                Some((seq, _)) if filtered && r.seq < seq => {
                    return Ok(fail(
                        Some(line_no),
                        FailureReason::Sequence {
                            expected: seq,
                            found: r.seq,
                        },
                    ));
                }
                Some((seq, prev)) if filtered && r.seq == seq && r.prev != prev => {
                    return Ok(fail(Some(line_no), FailureReason::BrokenChain));
                }
                Some(_) if filtered => {}
                Some((seq, _)) if r.seq != seq => {
                    return Ok(fail(
                        Some(line_no),
                        FailureReason::Sequence {
                            expected: seq,
                            found: r.seq,
                        },
                    ));
                }
                Some((_, prev)) if r.prev != prev => {
                    return Ok(fail(Some(line_no), FailureReason::BrokenChain));
                }
                None if r.seq == 0 && r.prev != Mac::GENESIS => {
                    return Ok(fail(Some(line_no), FailureReason::BrokenChain));
                }
                _ => {}
            }
            if r.ts.day() > day {
                return Ok(fail(Some(line_no), FailureReason::WrongFile));
            }
            if let Some(who) = &self.filter
                && !r.event.names(who)
            {
                return Ok(fail(Some(line_no), FailureReason::OutsideFilter));
            }
            if let Some(initial) = self.initial {
                let key = self.key.get_or_insert_with(|| {
                    let mut k = EpochKey::from_initial(initial);
                    k.advance_to(r.seq);
                    k
                });
                // A filtered export skips records: derive this one's key.
                key.advance_to(r.seq);
                if !key.verify_mac(&p.body, &p.mac) {
                    return Ok(fail(Some(line_no), FailureReason::BadMac));
                }
                key.advance();
            }
            if let Event::Retention(ret) = &r.event
                && let (Some(seq), Some(head)) = (ret.through_seq, ret.head)
            {
                self.retention.push((seq, head));
            }
            if self.first.is_none() {
                self.first = Some((path.to_path_buf(), r.seq, r.prev));
                self.report.first_seq = Some(r.seq);
            }
            self.expected = Some((r.seq + 1, p.mac));
            self.report.records += 1;
            self.report.last_seq = Some(r.seq);
            self.report.head = Some(p.mac);
            count += 1;
            in_file = Some(match in_file {
                None => (r.seq, r.seq, p.mac),
                Some((first, _, _)) => (first, r.seq, p.mac),
            });
        }
        if let Some(e) = entry {
            let digest = sha.finish();
            if digest.as_ref() != e.sha256.0 {
                return Ok(fail(None, FailureReason::FileHash));
            }
            if Some((e.first_seq, e.last_seq, e.head)) != in_file || e.records != count {
                return Ok(fail(None, FailureReason::ManifestMismatch));
            }
        }
        Ok(None)
    }

    /// A live log must start at record 0 or right after a range that a
    /// retention record says it deleted.
    fn check_start(&self) -> Option<Failure> {
        let (file, first_seq, prev) = self.first.as_ref()?;
        if *first_seq == 0
            || self
                .retention
                .iter()
                .any(|(through, head)| through + 1 == *first_seq && head == prev)
        {
            return None;
        }
        Some(Failure {
            file: file.clone(),
            line: Some(1),
            reason: FailureReason::UnexplainedStart {
                first_seq: *first_seq,
            },
        })
    }

    fn check_manifest_totals(&self, dir: &Path, m: &Manifest) -> Option<Failure> {
        let r = &self.report;
        let same = m.records == r.records
            && m.first_seq == r.first_seq
            && m.last_seq == r.last_seq
            && m.head == r.head;
        (!same).then(|| Failure {
            file: dir.join(MANIFEST_NAME),
            line: None,
            reason: FailureReason::ManifestMismatch,
        })
    }
}

/// Reads `manifest.json`, checks its signature when a public key is given.
/// The outer `Result` is I/O, the inner one a verification failure.
fn load_manifest(
    dir: &Path,
    public_key: Option<&[u8]>,
    checks: &mut Checks,
) -> Result<Result<Manifest, Failure>, AuditError> {
    let manifest_path = dir.join(MANIFEST_NAME);
    let fail = |file: &Path, reason| {
        Ok(Err(Failure {
            file: file.to_path_buf(),
            line: None,
            reason,
        }))
    };
    let bytes = match std::fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(&manifest_path, FailureReason::ManifestMissing);
        }
        Err(source) => {
            return Err(AuditError::Read {
                path: manifest_path,
                source,
            });
        }
    };
    checks.manifest = true;
    if let Some(pk) = public_key {
        checks.signature = true;
        let sig_path = dir.join(SIGNATURE_NAME);
        let sig_text = match std::fs::read_to_string(&sig_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fail(&sig_path, FailureReason::SignatureMissing);
            }
            Err(source) => {
                return Err(AuditError::Read {
                    path: sig_path,
                    source,
                });
            }
        };
        let valid = hex::decode(sig_text.trim()).is_ok_and(|sig| {
            UnparsedPublicKey::new(&ED25519, pk)
                .verify(&bytes, &sig)
                .is_ok()
        });
        if !valid {
            return fail(&manifest_path, FailureReason::SignatureInvalid);
        }
    }
    match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) if m.is_well_formed() => Ok(Ok(m)),
        _ => fail(&manifest_path, FailureReason::ManifestInvalid),
    }
}

/// The export must hold exactly the manifest's files (plus the manifest and
/// its signature).
fn match_manifest_files(
    dir: &Path,
    m: &Manifest,
    files: &[(LogDay, PathBuf)],
) -> Result<Option<Failure>, AuditError> {
    let listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    let dir_err = |source| AuditError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let name = entry.map_err(dir_err)?.file_name();
        let name = name.to_string_lossy();
        if name != MANIFEST_NAME && name != SIGNATURE_NAME && !listed.contains(&name.as_ref()) {
            return Ok(Some(Failure {
                file: dir.join(name.as_ref()),
                line: None,
                reason: FailureReason::FileNotInManifest,
            }));
        }
    }
    for (i, want) in listed.iter().enumerate() {
        let present = files.get(i).map(|(day, _)| file_name(*day));
        if present.as_deref() != Some(*want) {
            return Ok(Some(Failure {
                file: dir.join(want),
                line: None,
                reason: FailureReason::FileMissing,
            }));
        }
    }
    Ok(None)
}
