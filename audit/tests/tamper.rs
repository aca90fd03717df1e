//! Tampering with a live log directory: every edit, deletion, reordering,
//! insertion, swap or drop is reported at the right file and line; a torn
//! tail is reported, then repaired by `open` with a `recovery` record.

mod common;

use common::*;
use medgemma_audit::{AuditError, AuditLog, EpochKey, FailureReason, VerifyReport, verify};

const DAYS: u64 = 3;
const PER_DAY: u64 = 6;

fn check(f: &Fixture, keyed: bool) -> VerifyReport {
    verify(&f.dir, keyed.then_some(&f.initial), None).unwrap()
}

/// Asserts the first failure is `reason` at `file` index and 1-based `line`.
fn assert_fails_at(r: &VerifyReport, f: &Fixture, file: usize, line: u64, reason: FailureReason) {
    let failure = r.failure.as_ref().expect("tampering was not detected");
    assert_eq!(failure.file, f.files()[file], "{failure}");
    assert_eq!(failure.line, Some(line), "{failure}");
    assert_eq!(failure.reason, reason, "{failure}");
}

#[test]
fn clean_log_verifies_with_and_without_key() {
    let f = Fixture::build(DAYS, PER_DAY);
    assert_eq!(f.files().len(), DAYS as usize);
    let keyed = check(&f, true);
    assert!(keyed.is_ok(), "{:?}", keyed.failure);
    assert!(keyed.checks.macs && keyed.checks.chain && keyed.checks.sequence);
    assert!(!keyed.checks.signature && !keyed.checks.manifest);
    assert_eq!(keyed.records, DAYS * PER_DAY);
    assert_eq!(
        (keyed.first_seq, keyed.last_seq),
        (Some(0), Some(DAYS * PER_DAY - 1))
    );
    let keyless = check(&f, false);
    assert!(keyless.is_ok());
    assert!(!keyless.checks.macs && keyless.checks.chain && keyless.checks.sequence);
}

#[test]
fn edited_field_is_found_at_its_line() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[1];
    let mut l = lines(file);
    l[2] = edit(&l[2], "\"tokens_out\":20", "\"tokens_out\":21");
    write_lines(file, &l);
    assert_fails_at(&check(&f, true), &f, 1, 3, FailureReason::BadMac);
    // Without the key a careful one-field edit is invisible; the report says
    // the MACs were not checked.
    let keyless = check(&f, false);
    assert!(keyless.is_ok() && !keyless.checks.macs);
}

#[test]
fn edited_mac_is_found_with_and_without_key() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[1];
    let mut l = lines(file);
    let (_, mac) = split_mac(&l[2]);
    let flipped = format!(
        "{}{}",
        if mac.starts_with('0') { "1" } else { "0" },
        &mac[1..]
    );
    l[2] = edit(&l[2], &mac, &flipped);
    write_lines(file, &l);
    assert_fails_at(&check(&f, true), &f, 1, 3, FailureReason::BadMac);
    // Keyless: the next record's `prev` no longer matches.
    assert_fails_at(&check(&f, false), &f, 1, 4, FailureReason::BrokenChain);
}

#[test]
fn non_canonical_edit_is_found_without_key() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[0];
    let mut l = lines(file);
    l[4] = edit(&l[4], "\"tokens_out\":20", "\"tokens_out\": 20");
    write_lines(file, &l);
    assert_fails_at(&check(&f, false), &f, 0, 5, FailureReason::NotCanonical);
}

#[test]
fn deleted_line_is_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[1];
    let mut l = lines(file);
    l.remove(2);
    write_lines(file, &l);
    let seq = |line| FailureReason::Sequence {
        expected: PER_DAY + 2,
        found: PER_DAY + line,
    };
    assert_fails_at(&check(&f, true), &f, 1, 3, seq(3));
    assert_fails_at(&check(&f, false), &f, 1, 3, seq(3));
}

#[test]
fn reordered_lines_are_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[2];
    let mut l = lines(file);
    l.swap(1, 4);
    write_lines(file, &l);
    let reason = FailureReason::Sequence {
        expected: 2 * PER_DAY + 1,
        found: 2 * PER_DAY + 4,
    };
    assert_fails_at(&check(&f, true), &f, 2, 2, reason);
    assert_fails_at(&check(&f, false), &f, 2, 2, reason);
}

#[test]
fn inserted_duplicate_line_is_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = &f.files()[0];
    let mut l = lines(file);
    let copy = l[1].clone();
    l.insert(2, copy);
    write_lines(file, &l);
    let reason = FailureReason::Sequence {
        expected: 2,
        found: 1,
    };
    assert_fails_at(&check(&f, true), &f, 0, 3, reason);
    assert_fails_at(&check(&f, false), &f, 0, 3, reason);
}

#[test]
fn forged_insert_with_stolen_current_key_is_found() {
    // The intruder holds the current key file and inserts a well-formed
    // record in the middle, with the right sequence number and `prev`.
    let f = Fixture::build(DAYS, PER_DAY);
    let stolen = EpochKey::from_key_file(&f.key_file).unwrap();
    let file = &f.files()[1];
    let mut l = lines(file);
    let (body, _) = split_mac(&l[2]);
    let forged_body =
        String::from_utf8(body)
            .unwrap()
            .replacen("\"tokens_in\":", "\"tokens_in\":9", 1);
    let mac = stolen.mac(forged_body.as_bytes());
    let forged = format!(
        "{},\"mac\":\"{}\"}}\n",
        &forged_body[..forged_body.len() - 1],
        mac.to_hex()
    );
    l[2] = forged.into_bytes();
    write_lines(file, &l);
    assert_fails_at(&check(&f, true), &f, 1, 3, FailureReason::BadMac);
    assert_fails_at(&check(&f, false), &f, 1, 4, FailureReason::BrokenChain);
}

#[test]
fn torn_tail_is_reported_then_recovered() {
    // What a crash leaves: the first bytes of a record whose append never
    // returned (so the key file was not advanced for it).
    let f = Fixture::build(DAYS, PER_DAY);
    let file = f.files()[2].clone();
    let mut data = std::fs::read(&file).unwrap();
    let torn = lines(&file).pop().unwrap()[..40].to_vec();
    data.extend_from_slice(&torn);
    std::fs::write(&file, &data).unwrap();
    assert_fails_at(
        &check(&f, true),
        &f,
        2,
        PER_DAY + 1,
        FailureReason::TornLine,
    );

    let log = f.open();
    assert_eq!(log.recovered_cuts(), 1);
    assert_eq!(log.next_seq(), DAYS * PER_DAY + 1); // the recovery record took the torn one's number
    drop(log);
    let r = check(&f, true);
    assert!(r.is_ok(), "{:?}", r.failure);
    // The recovery record names the cut by length and SHA-256, not by content.
    let last = lines(&file).pop().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(v["event"], "recovery");
    assert_eq!(v["cut_len"], torn.len() as u64);
    let sha = ring::digest::digest(&ring::digest::SHA256, &torn);
    assert_eq!(v["cut_sha256"], hex::encode(sha.as_ref()));
    // Re-opening again finds nothing to repair.
    assert_eq!(f.open().recovered_cuts(), 0);
}

#[test]
fn truncating_an_acknowledged_record_mid_line_is_found_and_refused() {
    // Cutting into a record whose append returned is deletion, not a crash:
    // verify names the line, open refuses and leaves the file as it is.
    let f = Fixture::build(DAYS, PER_DAY);
    let file = f.files()[2].clone();
    let data = std::fs::read(&file).unwrap();
    std::fs::write(&file, &data[..data.len() - 40]).unwrap();
    assert_fails_at(&check(&f, true), &f, 2, PER_DAY, FailureReason::TornLine);
    assert_fails_at(&check(&f, false), &f, 2, PER_DAY, FailureReason::TornLine);
    match AuditLog::open(&f.dir, &f.key_file, f.opts()) {
        Err(AuditError::KeyAheadOfLog { .. }) => {}
        other => panic!("expected KeyAheadOfLog, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), &data[..data.len() - 40]);
}

#[test]
fn swapped_files_are_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    let files = f.files();
    let tmp = f.dir.join("swap");
    std::fs::rename(&files[0], &tmp).unwrap();
    std::fs::rename(&files[1], &files[0]).unwrap();
    std::fs::rename(&tmp, &files[1]).unwrap();
    // The day-1 file now holds day-2 records: named at its first line,
    // with or without the key.
    assert_fails_at(&check(&f, true), &f, 0, 1, FailureReason::WrongFile);
    assert_fails_at(&check(&f, false), &f, 0, 1, FailureReason::WrongFile);
}

#[test]
fn dropped_middle_file_is_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    std::fs::remove_file(&f.files()[1]).unwrap();
    let reason = FailureReason::Sequence {
        expected: PER_DAY,
        found: 2 * PER_DAY,
    };
    assert_fails_at(&check(&f, true), &f, 1, 1, reason);
    assert_fails_at(&check(&f, false), &f, 1, 1, reason);
}

#[test]
fn dropped_first_file_is_found() {
    let f = Fixture::build(DAYS, PER_DAY);
    std::fs::remove_file(&f.files()[0]).unwrap();
    let reason = FailureReason::UnexplainedStart { first_seq: PER_DAY };
    assert_fails_at(&check(&f, true), &f, 0, 1, reason);
    assert_fails_at(&check(&f, false), &f, 0, 1, reason);
}

#[test]
fn renamed_file_is_found() {
    // Records on day 0 and day 3; renaming day 3's file to the free name of
    // day 2 keeps the chain intact but puts records in a file named for a
    // day before theirs.
    let f = Fixture::new();
    let mut log = f.open();
    for (n, day) in [0u64, 3].into_iter().enumerate() {
        for i in 0..3 {
            f.set_time(T0 + day * DAY + i);
            log.append(f.answer(n as u64 * 3 + i, "q", "a")).unwrap();
        }
    }
    drop(log);
    let files = f.files();
    let renamed = files[1].with_file_name("audit-2025-03-03.jsonl");
    std::fs::rename(&files[1], &renamed).unwrap();
    assert_fails_at(&check(&f, true), &f, 1, 1, FailureReason::WrongFile);
    assert_fails_at(&check(&f, false), &f, 1, 1, FailureReason::WrongFile);
}

#[test]
fn damage_before_the_last_line_is_refused_on_open() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = f.files()[2].clone();
    let mut l = lines(&file);
    l[1] = b"garbage\n".to_vec();
    write_lines(&file, &l);
    let before = std::fs::read(&file).unwrap();
    match AuditLog::open(&f.dir, &f.key_file, f.opts()) {
        Err(AuditError::CorruptLog { path, line, .. }) => {
            assert_eq!(path, file);
            assert_eq!(line, 2);
        }
        other => panic!("expected CorruptLog, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "evidence was modified"
    );
}

#[test]
fn deleted_tail_record_is_refused_on_open() {
    let f = Fixture::build(DAYS, PER_DAY);
    let file = f.files()[2].clone();
    let mut l = lines(&file);
    l.pop();
    write_lines(&file, &l);
    assert!(verify(&f.dir, Some(&f.initial), None).unwrap().is_ok());
    match AuditLog::open(&f.dir, &f.key_file, f.opts()) {
        Err(AuditError::KeyAheadOfLog {
            key_seq, log_seq, ..
        }) => assert_eq!((key_seq, log_seq), (DAYS * PER_DAY, DAYS * PER_DAY - 1)),
        other => panic!("expected KeyAheadOfLog, got {other:?}"),
    }
}

#[test]
fn retention_deletes_old_files_and_logs_it() {
    let f = Fixture::new();
    let mut log = f.open();
    for (n, day) in [0u64, 10, 200].into_iter().enumerate() {
        for i in 0..4 {
            f.set_time(T0 + day * DAY + i);
            log.append(f.answer(n as u64 * 4 + i, "q", "a")).unwrap();
        }
    }
    assert_eq!(f.files().len(), 3);
    let now = Fixture::at(T0 + 200 * DAY + 100);
    f.set_time(T0 + 200 * DAY + 100);
    let report = log.apply_retention(now).unwrap();
    assert_eq!(report.removed.len(), 2);
    assert_eq!(report.record_seq, Some(12));
    assert_eq!(f.files().len(), 1);
    drop(log);
    let r = verify(&f.dir, Some(&f.initial), None).unwrap();
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(r.first_seq, Some(8));
    // Nothing more to remove: no record, no deletion.
    let mut log = f.open();
    assert_eq!(log.apply_retention(now).unwrap().removed.len(), 0);
}

#[test]
fn reopen_continues_the_chain_across_runs_and_days() {
    let f = Fixture::build(1, 3);
    let first_boot = f.open().boot_id().clone();
    f.set_time(T0 + 5 * DAY);
    let mut log = f.open();
    assert_ne!(log.boot_id(), &first_boot);
    assert_eq!(log.next_seq(), 3);
    log.append(f.answer(3, "q", "a")).unwrap();
    drop(log);
    // A clock that went back keeps writing into the newest file.
    f.set_time(T0 + 2 * DAY);
    let mut log = f.open();
    let receipt = log.append(f.answer(4, "q", "a")).unwrap();
    assert_eq!(receipt.file, f.files()[1]);
    drop(log);
    let r = verify(&f.dir, Some(&f.initial), None).unwrap();
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(r.records, 5);
}

#[test]
fn key_file_left_one_behind_by_a_crash_is_replaced_at_open() {
    // Regression (found by the crash test): a crash after writing a record
    // but before replacing the key file leaves the key one record behind.
    // Open used to advance it only in memory, so a second crash after the
    // next append left it two behind and the log refused to open.
    let f = Fixture::build(1, 3);
    let stale = std::fs::read(&f.key_file).unwrap();
    let mut log = f.open();
    log.append(f.answer(3, "q", "a")).unwrap();
    drop(log);
    std::fs::write(&f.key_file, &stale).unwrap(); // the crash
    assert_eq!(EpochKey::from_key_file(&f.key_file).unwrap().seq(), 3);

    let log = f.open();
    assert_eq!(log.next_seq(), 4);
    drop(log);
    // The stale key (which could still MAC record 3) is gone from disk.
    assert_eq!(EpochKey::from_key_file(&f.key_file).unwrap().seq(), 4);
    let mut log = f.open();
    log.append(f.answer(4, "q", "a")).unwrap();
    drop(log);
    assert!(verify(&f.dir, Some(&f.initial), None).unwrap().is_ok());
}
