//! Signed exports: an export verifies with the initial key and the signer's
//! public key; an edited manifest, an edited file, a missing or extra file,
//! or a signature from another key is reported.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use medgemma_audit::{
    FailureReason, MANIFEST_NAME, SIGNATURE_NAME, VerifyReport, export, generate_signing_key,
    signing_public_key, verify,
};

struct Exported {
    f: Fixture,
    out: PathBuf,
    signing: Vec<u8>,
    public: Vec<u8>,
}

/// 4 days x 5 records; exports days 2 and 3 (records 5..=14).
fn exported() -> Exported {
    let f = Fixture::build(4, 5);
    let signing = generate_signing_key().unwrap();
    let public = signing_public_key(&signing).unwrap();
    let out = f.tmp.path().join("export");
    let summary = export(
        &f.dir,
        Fixture::at(T0 + DAY),
        Fixture::at(T0 + 3 * DAY),
        &out,
        &signing,
    )
    .unwrap();
    assert_eq!(
        (
            summary.files,
            summary.records,
            summary.first_seq,
            summary.last_seq
        ),
        (2, 10, Some(5), Some(14))
    );
    Exported {
        f,
        out,
        signing,
        public,
    }
}

fn check(e: &Exported, keyed: bool, public: Option<&[u8]>) -> VerifyReport {
    verify(&e.out, keyed.then_some(&e.f.initial), public).unwrap()
}

fn failure_of(r: &VerifyReport) -> (PathBuf, Option<u64>, FailureReason) {
    let f = r.failure.clone().expect("tampering was not detected");
    (f.file, f.line, f.reason)
}

#[test]
fn export_verifies_with_key_and_signature() {
    let e = exported();
    let r = check(&e, true, Some(&e.public));
    assert!(r.is_ok(), "{:?}", r.failure);
    assert!(r.checks.macs && r.checks.signature && r.checks.manifest && r.checks.chain);
    assert_eq!(
        (r.records, r.first_seq, r.last_seq),
        (10, Some(5), Some(14))
    );
    // Without secrets: chain, sequence and manifest hashes, no signature.
    let r = check(&e, false, None);
    assert!(r.is_ok() && r.checks.manifest && !r.checks.signature && !r.checks.macs);
    // The log itself keeps going and the export stays valid.
    let mut log = e.f.open();
    log.append(e.f.answer(99, "q", "a")).unwrap();
    assert!(check(&e, true, Some(&e.public)).is_ok());
    // Exported lines are byte-identical to the log's.
    for p in files_in(&e.out) {
        let exported = std::fs::read(&p).unwrap();
        let original = std::fs::read(e.f.dir.join(p.file_name().unwrap())).unwrap();
        assert!(contains(&original, &exported));
    }
}

#[test]
fn edited_manifest_is_found() {
    let e = exported();
    let path = e.out.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"records\": 10", "\"records\": 9", 1);
    assert_ne!(text, edited);
    std::fs::write(&path, edited).unwrap();
    assert_eq!(
        failure_of(&check(&e, true, Some(&e.public))),
        (path.clone(), None, FailureReason::SignatureInvalid)
    );
    // Without the public key the manifest no longer matches the files.
    assert_eq!(
        failure_of(&check(&e, true, None)),
        (path, None, FailureReason::ManifestMismatch)
    );
}

#[test]
fn edited_file_is_found() {
    let e = exported();
    let file = files_in(&e.out)[1].clone();
    let mut l = lines(&file);
    l[3] = edit(&l[3], "\"tokens_out\":20", "\"tokens_out\":2");
    write_lines(&file, &l);
    // With the key: the exact line.
    assert_eq!(
        failure_of(&check(&e, true, Some(&e.public))),
        (file.clone(), Some(4), FailureReason::BadMac)
    );
    // With the signature only: the file's signed hash.
    assert_eq!(
        failure_of(&check(&e, false, Some(&e.public))),
        (file, None, FailureReason::FileHash)
    );
}

#[test]
fn deleted_line_in_export_is_found() {
    let e = exported();
    let file = files_in(&e.out)[0].clone();
    let mut l = lines(&file);
    l.remove(1);
    write_lines(&file, &l);
    assert_eq!(
        failure_of(&check(&e, false, None)),
        (
            file,
            Some(2),
            FailureReason::Sequence {
                expected: 6,
                found: 7
            }
        )
    );
}

#[test]
fn signature_from_another_key_is_rejected() {
    let e = exported();
    // Re-sign the (unchanged) manifest with another key.
    let other = generate_signing_key().unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&other).unwrap();
    let manifest = std::fs::read(e.out.join(MANIFEST_NAME)).unwrap();
    std::fs::write(
        e.out.join(SIGNATURE_NAME),
        format!("{}\n", hex::encode(pair.sign(&manifest))),
    )
    .unwrap();
    let manifest_path = e.out.join(MANIFEST_NAME);
    assert_eq!(
        failure_of(&check(&e, true, Some(&e.public))),
        (manifest_path.clone(), None, FailureReason::SignatureInvalid)
    );
    // And the genuine signature does not verify under the other public key.
    let e2 = exported();
    let other_public = signing_public_key(&other).unwrap();
    assert_eq!(
        failure_of(&check(&e2, true, Some(&other_public))).2,
        FailureReason::SignatureInvalid
    );
    let _ = &e2.signing;
}

#[test]
fn missing_extra_and_unsigned_files_are_found() {
    let e = exported();
    let files = files_in(&e.out);
    // Extra file.
    let extra = e.out.join("notes.txt");
    std::fs::write(&extra, "x").unwrap();
    assert_eq!(
        failure_of(&check(&e, false, None)),
        (extra.clone(), None, FailureReason::FileNotInManifest)
    );
    std::fs::remove_file(&extra).unwrap();
    // Missing file.
    let moved = e.f.tmp.path().join("moved");
    std::fs::rename(&files[1], &moved).unwrap();
    assert_eq!(
        failure_of(&check(&e, false, None)),
        (files[1].clone(), None, FailureReason::FileMissing)
    );
    std::fs::rename(&moved, &files[1]).unwrap();
    // Missing signature while a public key is given.
    std::fs::remove_file(e.out.join(SIGNATURE_NAME)).unwrap();
    assert_eq!(
        failure_of(&check(&e, false, Some(&e.public))).2,
        FailureReason::SignatureMissing
    );
    // A public key for a directory without manifest: not silently accepted.
    assert_eq!(
        verify(&e.f.dir, None, Some(&e.public))
            .unwrap()
            .failure
            .unwrap()
            .reason,
        FailureReason::ManifestMissing
    );
}

#[test]
fn empty_range_and_non_empty_target() {
    let e = exported();
    let out = e.f.tmp.path().join("empty");
    let s = export(
        &e.f.dir,
        Fixture::at(T0 + 50 * DAY),
        Fixture::at(T0 + 51 * DAY),
        &out,
        &e.signing,
    )
    .unwrap();
    assert_eq!(s.records, 0);
    assert!(check_dir(&out, &e).is_ok());
    assert!(
        export(
            &e.f.dir,
            Fixture::at(T0),
            Fixture::at(T0 + DAY),
            &out,
            &e.signing
        )
        .is_err()
    );
}

fn check_dir(dir: &Path, e: &Exported) -> VerifyReport {
    verify(dir, Some(&e.f.initial), Some(&e.public)).unwrap()
}
