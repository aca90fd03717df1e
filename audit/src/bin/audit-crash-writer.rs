//! Test helper for `tests/crash.rs`, not a product binary: opens the audit
//! log given on the command line (recovering it) and appends answer records
//! as fast as it can, with fsync on, until it is killed. After each append
//! returns it prints the record's sequence number on stdout, so the test
//! knows which records were acknowledged.
//!
//! Usage: `audit-crash-writer <log dir> <key file>`

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use medgemma_audit::{
    ActorId, Answer, AuditError, AuditLog, AuditOptions, ContentHasher, ConversationId, Event,
    FinishReason, ModelFingerprint, Outcome,
};

fn run(dir: PathBuf, key_file: PathBuf) -> Result<(), AuditError> {
    let hasher = ContentHasher::from_key_bytes(&[7u8; 32])?;
    let mut log = AuditLog::open(&dir, &key_file, AuditOptions::default())?;
    let actor = ActorId::new("crash-writer")?;
    let model = ModelFingerprint::new("test-model")?;
    let stdout = std::io::stdout();
    for i in 0u64.. {
        let receipt = log.append(Event::Answer(Answer {
            actor: actor.clone(),
            conversation: ConversationId::new(&format!("c{}", i % 7))?,
            model: model.clone(),
            tokens_in: 10,
            tokens_out: 20,
            finish: FinishReason::Stop,
            latency_ms: i,
            outcome: Outcome::Ok,
            input: hasher.hash("question"),
            output: hasher.hash("answer"),
        }))?;
        // Acknowledge only after append returned (the record is durable).
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", receipt.seq);
        let _ = out.flush();
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: audit-crash-writer <log dir> <key file>");
        return ExitCode::from(2);
    };
    match run(PathBuf::from(dir), PathBuf::from(key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit-crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
