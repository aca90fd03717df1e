//! Forward integrity: an intruder who copies the current key file cannot
//! recompute the MAC of any earlier record, while the administrator's
//! initial key still verifies everything.

mod common;

use common::*;
use medgemma_audit::{EpochKey, FailureReason, verify};

const RECORDS: u64 = 20;

#[test]
fn on_disk_key_differs_from_every_earlier_key() {
    let f = Fixture::build(2, RECORDS / 2);
    // The raw key bytes in the key file, as an intruder reads them.
    let text = std::fs::read_to_string(&f.key_file).unwrap();
    let key_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("key="))
        .expect("key line");
    let on_disk = hex::decode(key_hex).unwrap();
    let on_disk_sha = ring::digest::digest(&ring::digest::SHA256, &on_disk);
    let on_disk_fp = &on_disk_sha.as_ref()[..8];

    let stolen = EpochKey::from_key_file(&f.key_file).unwrap();
    assert_eq!(
        stolen.seq(),
        RECORDS,
        "the key file holds the key for the next record"
    );
    assert_eq!(&stolen.fingerprint()[..], on_disk_fp);

    let mut k = EpochKey::from_initial(&f.initial);
    for seq in 0..RECORDS {
        assert_eq!(k.seq(), seq);
        assert_ne!(
            &k.fingerprint()[..],
            on_disk_fp,
            "key of record {seq} is still on disk"
        );
        k.advance();
    }
    // Derived forward from the initial key, we reach exactly the stored key.
    assert_eq!(k.fingerprint(), stolen.fingerprint());
    // The initial key itself is nowhere on disk.
    let initial_hex: String = f.initial.display()[6..].split('-').take(8).collect();
    for (path, bytes) in all_bytes(f.tmp.path()) {
        assert!(
            !contains(&bytes, initial_hex.as_bytes()),
            "initial key found in {}",
            path.display()
        );
    }
}

#[test]
fn stolen_key_cannot_recompute_earlier_macs() {
    let f = Fixture::build(2, RECORDS / 2);
    let stolen = EpochKey::from_key_file(&f.key_file).unwrap();
    let records: Vec<(Vec<u8>, String)> = f
        .files()
        .iter()
        .flat_map(|p| lines(p))
        .map(|l| split_mac(&l))
        .collect();
    assert_eq!(records.len() as u64, RECORDS);
    // Try the stolen key and every key derivable from it (forward only).
    let mut attempt = EpochKey::from_key_file(&f.key_file).unwrap();
    for _ in 0..50 {
        for (seq, (body, mac)) in records.iter().enumerate() {
            assert_ne!(
                &attempt.mac(body).to_hex(),
                mac,
                "recomputed MAC of record {seq}"
            );
        }
        attempt.advance();
    }
    // Whereas the initial key re-derives each record's key.
    let mut k = EpochKey::from_initial(&f.initial);
    for (body, mac) in &records {
        assert_eq!(&k.mac(body).to_hex(), mac);
        k.advance();
    }
    assert_eq!(k.fingerprint(), stolen.fingerprint());
    let r = verify(&f.dir, Some(&f.initial), None).unwrap();
    assert!(r.is_ok() && r.checks.macs, "{:?}", r.failure);
}

#[test]
fn rewrite_with_stolen_key_is_detected_by_the_initial_key() {
    // The intruder rewrites record 5 and re-chains everything after it with
    // the only key it has: keyless checks pass, the MAC check names line 6.
    let f = Fixture::build(1, RECORDS);
    let file = f.files()[0].clone();
    let mut l = lines(&file);
    let mut key = EpochKey::from_key_file(&f.key_file).unwrap();
    let mut prev: Option<String> = None;
    for line in l.iter_mut().skip(5) {
        let (body, old_mac) = split_mac(line);
        let mut body = String::from_utf8(body).unwrap();
        if prev.is_none() {
            body = body.replacen("\"tokens_out\":20", "\"tokens_out\":99", 1);
        }
        if let Some(p) = &prev {
            let at = body.find("\"prev\":\"").unwrap() + 8;
            body.replace_range(at..at + 64, p);
        }
        let mac = key.mac(body.as_bytes()).to_hex();
        key.advance();
        assert_ne!(mac, old_mac);
        *line = format!("{},\"mac\":\"{mac}\"}}\n", &body[..body.len() - 1]).into_bytes();
        prev = Some(mac);
    }
    write_lines(&file, &l);
    let keyless = verify(&f.dir, None, None).unwrap();
    assert!(
        keyless.is_ok(),
        "a consistent rewrite passes the keyless checks"
    );
    let keyed = verify(&f.dir, Some(&f.initial), None).unwrap();
    let failure = keyed.failure.unwrap();
    assert_eq!(
        (failure.line, failure.reason),
        (Some(6), FailureReason::BadMac)
    );
}
