//! Crash safety: a writer process (`audit-crash-writer`, fsync on) is
//! killed with SIGKILL at random moments, over and over; after every kill the
//! log must re-open (repairing a torn tail if there is one), contain every
//! record whose append had returned, and verify with the initial key.
//!
//! SIGKILL practically never tears a single `write` of one record, so after
//! a quarter of the rounds the test also appends a random partial record (what
//! a power loss can leave) for the *next* writer to repair while it, too, is
//! being killed; each such cut must end up logged exactly once.
//!
//! The log lives on /dev/shm (tmpfs) when it exists: fsync stays on but is
//! cheap there, which keeps 1000 rounds near a minute on two cores. tmpfs
//! cannot lose data on power loss; process death is what this test is about.
//! Set `AUDIT_CRASH_SEED` to replay a run and `AUDIT_CRASH_ROUNDS` to change
//! the number of kills.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use medgemma_audit::{AuditLog, AuditOptions, InitialKey, create_key, verify};

const DEFAULT_ROUNDS: u64 = 1000;
/// A fresh log every this many kills keeps re-open and verify cheap.
const ROUNDS_PER_LOG: u64 = 25;
/// Kills land 0 to 5 ms after the chosen start point.
const MAX_DELAY_US: u64 = 5000;

/// SplitMix64: small, seedable, good enough to pick delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One log directory under test.
struct Log {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    key_file: PathBuf,
    initial: InitialKey,
    /// SHA-256 (hex) of every partial record the test appended.
    injected: Vec<String>,
}

impl Log {
    fn new(base: &Path) -> Self {
        let tmp = tempfile::tempdir_in(base).unwrap();
        let key_file = tmp.path().join("key");
        let initial = create_key(&key_file).unwrap();
        Self {
            dir: tmp.path().join("log"),
            key_file,
            initial,
            injected: Vec::new(),
            tmp,
        }
    }

    fn newest_file(&self) -> Option<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .ok()?
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files.pop()
    }

    /// Checks that every injected cut was logged exactly once; returns the
    /// number of records.
    fn finish(self, seed: u64) -> u64 {
        // A torn record injected after the last round is repaired here.
        drop(AuditLog::open(&self.dir, &self.key_file, AuditOptions::default()).unwrap());
        let report = verify(&self.dir, Some(&self.initial), None).unwrap();
        assert!(report.is_ok(), "seed {seed}: {}", report.failure.unwrap());
        let mut all = Vec::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            all.extend(std::fs::read(e.unwrap().path()).unwrap());
        }
        let text = String::from_utf8(all).unwrap();
        for sha in &self.injected {
            let logged = text.matches(&format!("\"cut_sha256\":\"{sha}\"")).count();
            assert_eq!(
                logged, 1,
                "seed {seed}: injected cut {sha} logged {logged} times"
            );
        }
        let _ = &self.tmp;
        text.lines().count() as u64
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let seed = env_u64("AUDIT_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let rounds = env_u64("AUDIT_CRASH_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    eprintln!(
        "crash test: seed {seed} (replay with AUDIT_CRASH_SEED={seed}), {rounds} kills, logs under {}",
        base.display()
    );
    let mut rng = Rng(seed);
    let writer = env!("CARGO_BIN_EXE_audit-crash-writer");
    let started = Instant::now();
    let (mut records, mut in_startup, mut in_key_replace, mut injected) = (0u64, 0u64, 0u64, 0u64);

    let mut log: Option<Log> = None;
    for round in 0..rounds {
        if round.is_multiple_of(ROUNDS_PER_LOG) {
            if let Some(done) = log.take() {
                records += done.finish(seed);
            }
            log = Some(Log::new(&base));
        }
        let Some(l) = log.as_mut() else {
            unreachable!()
        };

        let mut child = Command::new(writer)
            .arg(&l.dir)
            .arg(&l.key_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acks = String::new();
        // Even rounds kill during start-up and re-open (recovery included),
        // odd rounds once the writer is appending steadily.
        if round % 2 == 1 {
            stdout.read_line(&mut acks).unwrap();
        }
        std::thread::sleep(Duration::from_micros(rng.next() % (MAX_DELAY_US + 1)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        stdout.read_to_string(&mut acks).unwrap();
        if status.signal() != Some(9) {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("round {round} (seed {seed}): writer exited by itself: {status}: {stderr}");
        }
        // Only complete lines are acknowledgements; the last may be cut.
        let acked = acks
            .split_inclusive('\n')
            .filter_map(|a| a.strip_suffix('\n')?.parse::<u64>().ok())
            .max();
        if acked.is_none() {
            in_startup += 1;
        }
        if l.key_file.with_file_name("key.tmp").exists() {
            in_key_replace += 1;
        }

        let reopened =
            AuditLog::open(&l.dir, &l.key_file, AuditOptions::default()).unwrap_or_else(|e| {
                panic!("round {round} (seed {seed}): re-open after kill failed: {e}")
            });
        if let Some(n) = acked {
            assert!(
                reopened.next_seq() > n,
                "round {round} (seed {seed}): record {n} was acknowledged but is gone"
            );
        }
        drop(reopened);
        let report = verify(&l.dir, Some(&l.initial), None).unwrap();
        assert!(
            report.is_ok(),
            "round {round} (seed {seed}): {}",
            report.failure.unwrap()
        );

        // Leave a torn record for the next writer to repair under fire.
        if rng.next().is_multiple_of(4)
            && let Some(newest) = l.newest_file()
        {
            let len = 1 + (rng.next() % 300) as usize;
            let torn: Vec<u8> = (0..len).map(|_| b' ' + (rng.next() % 94) as u8).collect();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(newest)
                .unwrap();
            f.write_all(&torn).unwrap();
            let sha = ring::digest::digest(&ring::digest::SHA256, &torn);
            l.injected.push(hex::encode(sha.as_ref()));
            injected += 1;
        }
    }
    if let Some(done) = log.take() {
        records += done.finish(seed);
    }
    eprintln!(
        "crash test: {rounds} kills in {:.1} s, {records} records; kills before the first \
         acknowledgement: {in_startup}, during a key-file replace: {in_key_replace}; torn \
         records injected and each logged exactly once: {injected}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        records > rounds,
        "the writer hardly ever got to write; timing is off"
    );
}
