//! The writer: [`AuditLog`] opens, repairs, appends, rotates and expires.
//!
//! Owns the log directory's files and the key file while the daemon runs.
//! Everything that needs a path is opened in [`AuditLog::open`] (log
//! directory, key file's directory, newest log file), so the daemon can open
//! the log *before* entering its Landlock sandbox; afterwards the writer only
//! appends to open handles, fsyncs open handles, creates files inside the
//! log directory (daily rotation), replaces the key file by rename inside its
//! directory and deletes expired files on request. It never reads or writes
//! anything else and never rewrites a byte it wrote, except cutting a torn
//! last record at open.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::AuditError;
use crate::event::{Event, Recovery, Retention};
use crate::keys::{KeyFile, open_parent_dir};
use crate::record::{Record, body_bytes, file_name, line_bytes, list_log_files, parse_line};
use crate::types::{BootId, LogDay, Mac, Sha256, Timestamp};
use crate::verify::FailureReason;

/// Default retention: 180 days (China's Cybersecurity Law art. 21 asks for
/// at least six months of logs; see spec/sandbox.md "Audit log").
pub const DEFAULT_RETENTION_DAYS: u32 = 180;

/// Where time comes from. The default is the system clock; tests inject a
/// fake clock to cross day boundaries.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    #[must_use]
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock that calls `f`.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Whether `append` waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fsync every record (and the key file and directory) before `append`
    /// returns. The only setting for production.
    #[default]
    Fsync,
    /// No fsync at all. For benchmarks only: a power loss can lose records
    /// that `append` already acknowledged.
    NoFsyncBenchmarksOnly,
}

/// How to run the log.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Files older than this many days are deleted by
    /// [`AuditLog::apply_retention`] (never automatically).
    pub retention_days: u32,
    /// The boot id written into every record; `None` picks a random one.
    pub boot_id: Option<BootId>,
    /// fsync policy.
    pub durability: Durability,
    /// Time source.
    pub clock: Clock,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            retention_days: DEFAULT_RETENTION_DAYS,
            boot_id: None,
            durability: Durability::Fsync,
            clock: Clock::system(),
        }
    }
}

/// What [`AuditLog::append`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The record's sequence number.
    pub seq: u64,
    /// Its timestamp.
    pub ts: Timestamp,
    /// Its MAC (the new chain head).
    pub mac: Mac,
    /// The file it went to.
    pub file: PathBuf,
}

/// What [`AuditLog::apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Files deleted, oldest first.
    pub removed: Vec<PathBuf>,
    /// Sequence number of the `retention` record describing the deletion
    /// (`None` when nothing had expired).
    pub record_seq: Option<u64>,
}

#[derive(Debug)]
struct Current {
    day: LogDay,
    path: PathBuf,
    file: File,
}

/// An open, append-only audit log. See the crate documentation for the
/// design.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    dir_handle: File,
    key_path: PathBuf,
    key_dir: File,
    /// The key for the next record, the MAC of the last one, unlogged cuts.
    state: KeyFile,
    current: Option<Current>,
    boot: BootId,
    opts: AuditOptions,
    poisoned: bool,
    recovered: u64,
    /// Held for the log's lifetime: see [`writer_lock`].
    _lock: File,
}

/// The lock file in a log directory (see [`AuditLog::open`]).
pub const LOCK_FILE: &str = ".writer.lock";

/// Takes the exclusive writer lock of `dir` without waiting.
fn writer_lock(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| AuditError::Write {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::Write { path, source }),
    }
}

/// The last valid record of a file.
#[derive(Debug)]
pub(crate) struct Last {
    pub(crate) record: Record,
    pub(crate) mac: Mac,
}

/// What [`scan_file`] found after the file's valid records.
#[derive(Debug)]
pub(crate) enum Tail {
    /// Nothing: the file ends after a valid record (or is empty).
    Clean,
    /// One partial or invalid last line: safe to cut.
    Torn { offset: u64, len: u64, sha: Sha256 },
    /// An invalid line followed by more lines: not a crash, do not touch.
    Corrupt { line: u64, reason: FailureReason },
}

/// Scans a log file whose predecessor ended with `anchor`: checks form,
/// sequence, chain links and dates (not MACs: the writer no longer has the
/// keys of past records).
pub(crate) fn scan_file(
    day: LogDay,
    path: &Path,
    anchor: Option<&Last>,
) -> Result<(Option<Last>, Tail), AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    let mut expected = anchor.map(|a| (a.record.seq + 1, a.mac));
    let mut last: Option<Last> = None;
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok((last, Tail::Clean));
        }
        line_no += 1;
        let problem = match parse_line(&buf) {
            Err(e) => Some(FailureReason::from(e)),
            Ok(p) => {
                let r = &p.record;
                match expected {
                    Some((seq, _)) if r.seq != seq => Some(FailureReason::Sequence {
                        expected: seq,
                        found: r.seq,
                    }),
                    Some((_, prev)) if r.prev != prev => Some(FailureReason::BrokenChain),
                    None if r.seq == 0 && r.prev != Mac::GENESIS => {
                        Some(FailureReason::BrokenChain)
                    }
                    _ if r.ts.day() > day => Some(FailureReason::WrongFile),
                    _ => {
                        expected = Some((r.seq + 1, p.mac));
                        last = Some(Last {
                            record: p.record,
                            mac: p.mac,
                        });
                        None
                    }
                }
            }
        };
        if let Some(reason) = problem {
            // Everything from here on is the tail. A crash leaves at most one
            // partial line; anything longer is damage we must not cut.
            let mut tail = std::mem::take(&mut buf);
            reader.read_to_end(&mut tail).map_err(read_err)?;
            let inner_newline = tail[..tail.len() - 1].contains(&b'\n');
            return Ok(if inner_newline {
                (
                    last,
                    Tail::Corrupt {
                        line: line_no,
                        reason,
                    },
                )
            } else {
                (
                    last,
                    Tail::Torn {
                        offset,
                        len: tail.len() as u64,
                        sha: Sha256::of(&tail),
                    },
                )
            });
        }
        offset += n as u64;
    }
}

/// Largest record the format can produce is well under 2 KiB; read this much
/// from the end of a file to find its last record.
const TAIL_PROBE: u64 = 16 * 1024;

/// The last record of a complete (older) log file, if it has one.
pub(crate) fn last_record_of(day: LogDay, path: &Path) -> Result<Option<Last>, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let len = f.metadata().map_err(read_err)?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_PROBE);
    f.seek(SeekFrom::Start(start)).map_err(read_err)?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(read_err)?;
    let body_end = tail.len() - 1;
    let line_start = tail[..body_end]
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1);
    let fast = match line_start {
        Some(s) => parse_line(&tail[s..]).ok(),
        None if start == 0 => parse_line(&tail).ok(),
        None => None,
    };
    if let Some(p) = fast {
        return Ok(Some(Last {
            record: p.record,
            mac: p.mac,
        }));
    }
    // The end is damaged: scan the whole file to name the bad line.
    match scan_file(day, path, None)? {
        (_, Tail::Corrupt { line, reason }) => Err(AuditError::CorruptLog {
            path: path.to_path_buf(),
            line,
            reason,
        }),
        (_, Tail::Torn { .. }) => Err(AuditError::CorruptLog {
            path: path.to_path_buf(),
            line: count_lines(path)?,
            reason: FailureReason::TornLine,
        }),
        (last, Tail::Clean) => Ok(last),
    }
}

fn count_lines(path: &Path) -> Result<u64, AuditError> {
    let data = std::fs::read(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(data.split(|b| *b == b'\n').count() as u64)
}

impl AuditLog {
    /// Opens (or starts) the log in `dir` with the evolving key in
    /// `key_file` (made by [`crate::create_key`]).
    ///
    /// Steps: open the directory and the key file's directory (handles kept
    /// for later fsyncs); check the newest file's records (form, sequence,
    /// chain, date); reconcile the key file with the log's end (a key file
    /// one record behind, left by a crash, is replaced at once); cut a torn
    /// last record; append a `recovery` record for every cut.
    ///
    /// # Errors
    /// I/O errors; [`AuditError::CorruptLog`] when the newest file is damaged
    /// in a way a crash cannot explain; [`AuditError::KeyAheadOfLog`] /
    /// [`AuditError::KeyLogMismatch`] when key file and log disagree.
    pub fn open(dir: &Path, key_file: &Path, opts: AuditOptions) -> Result<Self, AuditError> {
        let dir_err = |source| AuditError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        // 1. The log directory, kept open to fsync it after creating files.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        let dir_handle = File::open(dir).map_err(dir_err)?;
        // 1a. One writer per directory: an exclusive lock on a file beside
        //     the log, held until this AuditLog is dropped (or the process
        //     dies, which releases it). Not a log file: readers ignore it.
        let lock = writer_lock(dir)?;
        // 2. The key file and its directory (for the atomic replace).
        let key_dir = open_parent_dir(key_file)?;
        let mut state = KeyFile::read(key_file)?;
        let boot = match &opts.boot_id {
            Some(b) => b.clone(),
            None => BootId::random()?,
        };
        // 3. The newest file: its valid records and what follows them.
        let files = list_log_files(dir).map_err(dir_err)?;
        let mut last = None;
        let mut cut = None;
        if let Some(((newest_day, newest), older)) = files.split_last() {
            let mut anchor = None;
            for (day, path) in older.iter().rev() {
                anchor = last_record_of(*day, path)?;
                if anchor.is_some() {
                    break;
                }
            }
            let (tail_last, tail) = scan_file(*newest_day, newest, anchor.as_ref())?;
            match tail {
                Tail::Clean => {}
                Tail::Torn { offset, len, sha } => {
                    cut = Some(Recovery {
                        file: *newest_day,
                        offset,
                        cut_len: len,
                        cut_sha256: sha,
                    });
                }
                Tail::Corrupt { line, reason } => {
                    return Err(AuditError::CorruptLog {
                        path: newest.clone(),
                        line,
                        reason,
                    });
                }
            }
            last = tail_last.or(anchor);
        }
        // 4. Reconcile the key file with the log's end.
        let log_next = last.as_ref().map_or(0, |l| l.record.seq + 1);
        let log_head = last.as_ref().map_or(Mac::GENESIS, |l| l.mac);
        let mismatch = || AuditError::KeyLogMismatch {
            key_file: key_file.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        let key_next = state.key.seq();
        let mut key_stale = false;
        if key_next == log_next {
            if state.head != log_head {
                return Err(mismatch());
            }
        } else if key_next + 1 == log_next {
            // A crash between writing the record and replacing the key file.
            // The key is replaced below, before anything else is written: the
            // stale one on disk could still MAC the last record.
            let l = last.as_ref().ok_or_else(mismatch)?;
            if state.head != l.record.prev {
                return Err(mismatch());
            }
            state.key.advance();
            state.head = l.mac;
            if let Event::Recovery(r) = &l.record.event
                && state.pending_cuts.first() == Some(r)
            {
                state.pending_cuts.remove(0);
            }
            key_stale = true;
        } else if key_next > log_next {
            return Err(AuditError::KeyAheadOfLog {
                key_file: key_file.to_path_buf(),
                dir: dir.to_path_buf(),
                key_seq: key_next,
                log_seq: log_next,
            });
        } else {
            return Err(mismatch());
        }
        // 5. Keep the newest file open for appending.
        let current = match files.last() {
            Some((day, path)) => Some(Current {
                day: *day,
                path: path.clone(),
                file: open_append(path)?,
            }),
            None => None,
        };
        let mut log = Self {
            dir: dir.to_path_buf(),
            dir_handle,
            key_path: key_file.to_path_buf(),
            key_dir,
            state,
            current,
            boot,
            opts,
            poisoned: false,
            recovered: 0,
            _lock: lock,
        };
        if key_stale {
            log.save_key()?;
        }
        // 6. Cut the torn tail. The cut is noted in the key file first, so a
        //    crash right after cutting still gets it logged at the next open.
        if let Some(cut) = cut {
            if !log.state.pending_cuts.contains(&cut) {
                log.state.pending_cuts.push(cut.clone());
                log.save_key()?;
            }
            if let Some(cur) = &log.current {
                cur.file
                    .set_len(cut.offset)
                    .map_err(|source| AuditError::Write {
                        path: cur.path.clone(),
                        source,
                    })?;
                if log.durable() {
                    cur.file.sync_all().map_err(|source| AuditError::Sync {
                        path: cur.path.clone(),
                        source,
                    })?;
                }
            }
        }
        // 7. Log every cut not yet logged.
        while let Some(cut) = log.state.pending_cuts.first().cloned() {
            log.write_record(Event::Recovery(cut), true)?;
            log.recovered += 1;
        }
        Ok(log)
    }

    /// Appends one record and returns once it is on disk (with
    /// [`Durability::Fsync`]): write the line with one `write` on the
    /// `O_APPEND` handle, fdatasync, then evolve the key and replace the key
    /// file. Rotates to a new file when the UTC day has changed.
    ///
    /// # Errors
    /// I/O errors; after any failure the log is poisoned and every later
    /// call fails with [`AuditError::Poisoned`] until it is re-opened.
    pub fn append(&mut self, event: Event) -> Result<AppendReceipt, AuditError> {
        self.write_record(event, false)
    }

    fn write_record(
        &mut self,
        event: Event,
        logs_pending_cut: bool,
    ) -> Result<AppendReceipt, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned {
                path: self.dir.clone(),
            });
        }
        let ts = Timestamp::from_system_time(self.opts.clock.now())?;
        // Cleared only when the record and the key are both written.
        self.poisoned = true;
        let day = ts.day();
        // Never go back to an older file: a clock that jumps back keeps
        // writing into the newest file.
        if self.current.as_ref().is_none_or(|c| day > c.day) {
            self.rotate(day)?;
        }
        let durable = self.durable();
        let Some(cur) = self.current.as_mut() else {
            return Err(AuditError::Poisoned {
                path: self.dir.clone(),
            });
        };
        let seq = self.state.key.seq();
        let body = body_bytes(seq, ts, &self.boot, &event, self.state.head);
        let mac = self.state.key.mac(&body);
        let line = line_bytes(&body, &mac);
        cur.file
            .write_all(&line)
            .map_err(|source| AuditError::Write {
                path: cur.path.clone(),
                source,
            })?;
        if durable {
            cur.file.sync_data().map_err(|source| AuditError::Sync {
                path: cur.path.clone(),
                source,
            })?;
        }
        let file = cur.path.clone();
        self.state.key.advance();
        self.state.head = mac;
        if logs_pending_cut && !self.state.pending_cuts.is_empty() {
            self.state.pending_cuts.remove(0);
        }
        self.save_key()?;
        self.poisoned = false;
        Ok(AppendReceipt { seq, ts, mac, file })
    }

    /// Makes new or removed directory entries durable (no-op when fsync is off for benchmarks).
    fn sync_dir(&self) -> Result<(), AuditError> {
        if self.durable() {
            self.dir_handle
                .sync_all()
                .map_err(|source| AuditError::Sync {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn rotate(&mut self, day: LogDay) -> Result<(), AuditError> {
        let path = self.dir.join(file_name(day));
        let file = open_append(&path)?;
        self.sync_dir()?;
        self.current = Some(Current { day, path, file });
        Ok(())
    }

    fn save_key(&self) -> Result<(), AuditError> {
        self.state
            .save(&self.key_path, &self.key_dir, self.durable())
    }

    fn durable(&self) -> bool {
        self.opts.durability == Durability::Fsync
    }

    /// Deletes the files whose day is more than `retention_days` before
    /// `now`'s UTC day (never the file being written). Before deleting, it
    /// appends a `retention` record naming the range removed and the MAC of
    /// the last removed record, so the verifier can tell retention from an
    /// intruder deleting files.
    ///
    /// # Errors
    /// I/O errors as in [`append`](Self::append) and [`AuditError::Remove`].
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<RetentionReport, AuditError> {
        let today = Timestamp::from_system_time(now)?.day();
        let cutoff = today.0.saturating_sub(u64::from(self.opts.retention_days));
        let current_day = self.current.as_ref().map(|c| c.day);
        let files = list_log_files(&self.dir).map_err(|source| AuditError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let expired: Vec<(LogDay, PathBuf)> = files
            .into_iter()
            .filter(|(day, _)| day.0 < cutoff && Some(*day) != current_day)
            .collect();
        let (Some((oldest, _)), Some((newest, _))) = (expired.first(), expired.last()) else {
            return Ok(RetentionReport::default());
        };
        let mut last = None;
        for (day, path) in expired.iter().rev() {
            last = last_record_of(*day, path)?;
            if last.is_some() {
                break;
            }
        }
        let event = Event::Retention(Retention {
            retention_days: self.opts.retention_days,
            removed_files: u32::try_from(expired.len()).unwrap_or(u32::MAX),
            oldest: *oldest,
            newest: *newest,
            through_seq: last.as_ref().map(|l| l.record.seq),
            head: last.as_ref().map(|l| l.mac),
        });
        let receipt = self.append(event)?;
        let mut removed = Vec::with_capacity(expired.len());
        for (_, path) in expired {
            std::fs::remove_file(&path).map_err(|source| AuditError::Remove {
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
        self.sync_dir()?;
        Ok(RetentionReport {
            removed,
            record_seq: Some(receipt.seq),
        })
    }

    /// The sequence number the next record will get.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.state.key.seq()
    }

    /// The MAC of the last record (all zeros for an empty log).
    #[must_use]
    pub fn head(&self) -> Mac {
        self.state.head
    }

    /// This run's boot id.
    #[must_use]
    pub fn boot_id(&self) -> &BootId {
        &self.boot
    }

    /// The log directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many `recovery` records [`open`](Self::open) wrote (0 after a
    /// clean shutdown).
    #[must_use]
    pub fn recovered_cuts(&self) -> u64 {
        self.recovered
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Write {
            path: path.to_path_buf(),
            source,
        })
}
