//! One writer per log directory: a second `AuditLog::open` on a directory
//! that is being written is refused (two writers would fork the chain), and
//! the lock goes with the first writer. The lock file is no log file:
//! verification still sees exactly the records.

mod common;

use common::*;
use medgemma_audit::{AuditError, AuditLog, verify};

#[test]
fn second_writer_is_refused_until_the_first_is_gone() {
    let f = Fixture::new();
    let mut first = f.open();
    first.append(f.answer(0, "q", "a")).unwrap();

    let err = AuditLog::open(&f.dir, &f.key_file, f.opts()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("another process is writing"), "{text}");
    assert!(text.contains(&f.dir.display().to_string()), "{text}");

    // The refused open changed nothing: the first writer goes on.
    first.append(f.answer(1, "q", "a")).unwrap();
    drop(first);

    let mut second = f.open();
    second.append(f.answer(2, "q", "a")).unwrap();
    assert_eq!(second.next_seq(), 3);
    drop(second);

    let report = verify(&f.dir, Some(&f.initial), None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 3);
}
