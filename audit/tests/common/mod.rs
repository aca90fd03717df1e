//! Shared fixtures for the integration tests: a log in a temp dir with a
//! controllable clock, and helpers to read and rewrite its lines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medgemma_audit::{
    ActorId, Answer, AuditLog, AuditOptions, Clock, ContentHasher, ConversationId, Event,
    FinishReason, InitialKey, ModelFingerprint, Outcome, create_key,
};

/// 2025-03-01T00:00:00Z.
pub const T0: u64 = 1_740_787_200;
pub const DAY: u64 = 86_400;

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub key_file: PathBuf,
    pub initial: InitialKey,
    /// Seconds since the epoch the fake clock reads.
    pub now: Arc<AtomicU64>,
    pub hasher: ContentHasher,
}

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let key_dir = tmp.path().join("key");
        std::fs::create_dir(&key_dir).unwrap();
        let key_file = key_dir.join("current");
        let initial = create_key(&key_file).unwrap();
        Self {
            dir: tmp.path().join("log"),
            key_file,
            initial,
            now: Arc::new(AtomicU64::new(T0)),
            hasher: ContentHasher::from_key_bytes(&[42u8; 32]).unwrap(),
            tmp,
        }
    }

    pub fn set_time(&self, secs: u64) {
        self.now.store(secs, Ordering::SeqCst);
    }

    pub fn opts(&self) -> AuditOptions {
        let now = Arc::clone(&self.now);
        AuditOptions {
            clock: Clock::from_fn(move || {
                UNIX_EPOCH + Duration::from_secs(now.load(Ordering::SeqCst))
            }),
            ..AuditOptions::default()
        }
    }

    pub fn open(&self) -> AuditLog {
        AuditLog::open(&self.dir, &self.key_file, self.opts()).unwrap()
    }

    pub fn answer(&self, i: u64, input: &str, output: &str) -> Event {
        Event::Answer(Answer {
            actor: ActorId::new("dr-lee").unwrap(),
            conversation: ConversationId::new(&format!("conv-{}", i / 3)).unwrap(),
            model: ModelFingerprint::new("medgemma-4b").unwrap(),
            tokens_in: 10 + i as u32,
            tokens_out: 20,
            finish: FinishReason::Stop,
            latency_ms: 100 + i,
            outcome: Outcome::Ok,
            input: self.hasher.hash(input),
            output: self.hasher.hash(output),
        })
    }

    /// `days` daily files with `per_day` answers each, one second apart.
    pub fn build(days: u64, per_day: u64) -> Self {
        let f = Self::new();
        let mut log = f.open();
        for d in 0..days {
            for i in 0..per_day {
                f.set_time(T0 + d * DAY + 3600 + i);
                log.append(f.answer(d * per_day + i, "q", "a")).unwrap();
            }
        }
        f
    }

    pub fn files(&self) -> Vec<PathBuf> {
        files_in(&self.dir)
    }

    pub fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }
}

/// The `audit-*.jsonl` files of a directory, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("audit-") && n.ends_with(".jsonl")
        })
        .collect();
    v.sort();
    v
}

/// The file's lines, each with its `\n`.
pub fn lines(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    data.split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// Replaces the first occurrence of `from` in a line.
pub fn edit(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(line.to_vec()).unwrap();
    assert!(s.contains(from), "test bug: {from} not in line");
    s.replacen(from, to, 1).into_bytes()
}

/// A line's body (what the MAC covers) and its MAC hex.
pub fn split_mac(line: &[u8]) -> (Vec<u8>, String) {
    let s = std::str::from_utf8(line).unwrap();
    let at = s.rfind(",\"mac\":\"").unwrap();
    let mut body = s.as_bytes()[..at].to_vec();
    body.push(b'}');
    let mac = s[at + 8..at + 8 + 64].to_owned();
    (body, mac)
}

/// Every byte of every file under `dir`, recursively.
pub fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
