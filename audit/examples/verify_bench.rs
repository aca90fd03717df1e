//! Benchmark: writes 1,000,000 answer records (fsync off via
//! `Durability::NoFsyncBenchmarksOnly`; the key file is still replaced by
//! rename after every record), then times `verify` with and without the
//! initial key and prints records per second.
//!
//! Run: `cargo run --release -p medgemma-audit --example verify_bench [RECORDS] [DIR]`
//! (DIR defaults to a temp dir under /tmp; about 600 bytes per record).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use medgemma_audit::{
    ActorId, Answer, AuditError, AuditLog, AuditOptions, ContentHasher, ConversationId, Durability,
    Event, FinishReason, ModelFingerprint, Outcome, create_key, verify,
};

fn main() -> Result<(), AuditError> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir_in(args.next().map_or_else(std::env::temp_dir, PathBuf::from))
        .map_err(|source| AuditError::Dir {
            path: std::env::temp_dir(),
            source,
        })?;
    let dir = tmp.path().join("log");
    let key_file = tmp.path().join("key");
    let initial = create_key(&key_file)?;
    let hasher = ContentHasher::from_key_bytes(&[1u8; 32])?;
    let opts = AuditOptions {
        durability: Durability::NoFsyncBenchmarksOnly,
        ..AuditOptions::default()
    };
    let actor = ActorId::new("bench-user")?;
    let model =
        ModelFingerprint::new("6f1c0ee5b2d1a3c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c")?;
    let conversations: Vec<ConversationId> = (0..100)
        .map(|i| ConversationId::new(&format!("conv-{i:04}")))
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let mut log = AuditLog::open(&dir, &key_file, opts)?;
    for i in 0..records {
        log.append(Event::Answer(Answer {
            actor: actor.clone(),
            conversation: conversations[(i % 100) as usize].clone(),
            model: model.clone(),
            tokens_in: 200 + (i % 50) as u32,
            tokens_out: 400 + (i % 70) as u32,
            finish: FinishReason::Stop,
            latency_ms: 3000 + i % 1000,
            outcome: Outcome::Ok,
            input: hasher.hash("benchmark question"),
            output: hasher.hash("benchmark answer"),
        }))?;
    }
    drop(log);
    let write_s = started.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(&dir)
        .map_err(|source| AuditError::Dir {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wrote {records} records ({:.1} MiB) in {write_s:.2} s: {:.0} records/s (fsync off)",
        bytes as f64 / (1024.0 * 1024.0),
        records as f64 / write_s
    );

    for (label, key) in [
        ("with initial key (MACs)", Some(&initial)),
        ("without key", None),
    ] {
        let t = Instant::now();
        let report = verify(&dir, key, None)?;
        let s = t.elapsed().as_secs_f64();
        assert!(report.is_ok(), "benchmark log failed verification");
        assert_eq!(report.records, records);
        println!(
            "verify {label}: {records} records in {s:.2} s: {:.0} records/s",
            records as f64 / s
        );
    }
    Ok(())
}
