//! The log with accounts in it: login, lockout, logout, account change and
//! token use records chain and verify like any other; an export for one
//! account keeps only its records, each still verifiable with the initial
//! key, the chain checked wherever two kept records are neighbours; a
//! record added to such an export, or one edited, is named.

mod common;

use common::*;
use medgemma_audit::{
    AccountChangeKind, ActorId, Event, FailureReason, LoginMethod, LogoutReason, Outcome,
    export_for, generate_signing_key, signing_public_key, verify,
};

fn id(s: &str) -> ActorId {
    ActorId::new(s).unwrap()
}

/// A day of two users: li logs in and asks, wang fails twice and is locked
/// out, an administrator disables wang, li's token is used, li logs out.
fn day_of_two_users() -> Fixture {
    let f = Fixture::new();
    let mut log = f.open();
    let (li, wang, admin) = (
        id("acct-00000000000000a1"),
        id("acct-00000000000000b2"),
        id("uid-0"),
    );
    let events = vec![
        Event::Login {
            actor: li.clone(),
            method: LoginMethod::Password,
            outcome: Outcome::Ok,
        },
        f.answer(1, "q", "a"),
        Event::Login {
            actor: wang.clone(),
            method: LoginMethod::Password,
            outcome: Outcome::Rejected,
        },
        Event::Login {
            actor: wang.clone(),
            method: LoginMethod::Password,
            outcome: Outcome::Rejected,
        },
        Event::Lockout {
            actor: wang.clone(),
            seconds: 30,
        },
        Event::AccountChange {
            actor: admin,
            account: wang,
            change: AccountChangeKind::Disabled,
        },
        Event::TokenUse {
            actor: li.clone(),
            token: id("tok-0123456789ab"),
        },
        Event::Logout {
            actor: li,
            reason: LogoutReason::Idle,
        },
    ];
    for (i, e) in events.into_iter().enumerate() {
        f.set_time(T0 + 3600 + i as u64);
        let e = match e {
            // The fixture's answers are dr-lee's; make this one li's.
            Event::Answer(mut a) => {
                a.actor = id("acct-00000000000000a1");
                Event::Answer(a)
            }
            other => other,
        };
        log.append(e).unwrap();
    }
    f
}

#[test]
fn account_records_verify_in_the_live_log() {
    let f = day_of_two_users();
    let r = verify(&f.dir, Some(&f.initial), None).unwrap();
    assert!(r.is_ok(), "{:?}", r.failure);
    assert_eq!(r.records, 8);
    let text: String = f
        .files()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for event in ["login", "lockout", "logout", "account_change", "token_use"] {
        assert!(text.contains(&format!("\"event\":\"{event}\"")), "{event}");
    }
}

#[test]
fn an_export_for_one_account_keeps_its_records_and_verifies() {
    let f = day_of_two_users();
    let signing = generate_signing_key().unwrap();
    let public = signing_public_key(&signing).unwrap();
    let out = f.tmp.path().join("wang");
    let wang = id("acct-00000000000000b2");
    let s = export_for(
        &f.dir,
        Fixture::at(T0),
        Fixture::at(T0 + DAY),
        &out,
        &signing,
        Some(&wang),
    )
    .unwrap();
    // Two failed logins, the lockout, and the administrator's change to the account.
    assert_eq!((s.records, s.first_seq, s.last_seq), (4, Some(2), Some(5)));
    let r = verify(&out, Some(&f.initial), Some(&public)).unwrap();
    assert!(r.is_ok(), "{:?}", r.failure);
    assert!(r.checks.filtered && r.checks.macs && r.checks.signature);

    let li = id("acct-00000000000000a1");
    let out_li = f.tmp.path().join("li");
    let s = export_for(
        &f.dir,
        Fixture::at(T0),
        Fixture::at(T0 + DAY),
        &out_li,
        &signing,
        Some(&li),
    )
    .unwrap();
    assert_eq!(s.records, 4, "login, answer, token use, logout");
    let r = verify(&out_li, Some(&f.initial), None).unwrap();
    assert!(
        r.is_ok(),
        "gaps between li's records are expected: {:?}",
        r.failure
    );
}

#[test]
fn a_record_of_someone_else_or_an_edit_in_an_account_export_is_named() {
    let f = day_of_two_users();
    let signing = generate_signing_key().unwrap();
    let wang = id("acct-00000000000000b2");
    let out = f.tmp.path().join("wang");
    export_for(
        &f.dir,
        Fixture::at(T0),
        Fixture::at(T0 + DAY),
        &out,
        &signing,
        Some(&wang),
    )
    .unwrap();
    let exported = files_in(&out)
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-")
        })
        .unwrap();
    let original = lines(&exported);

    // li's token use slipped in after wang's records (hashes not re-signed:
    // verified without the public key, as an intruder would hope).
    let live = lines(&f.files()[0]);
    let mut added = original.clone();
    added.push(live[6].clone());
    write_lines(&exported, &added);
    let r = verify(&out, Some(&f.initial), None).unwrap();
    let fail = r.failure.expect("an added record is detected");
    assert_eq!(
        (fail.line, fail.reason),
        (Some(5), FailureReason::OutsideFilter),
        "{fail}"
    );

    // A lockout of 30 s made to look like 3 s: the MAC no longer matches.
    let mut edited = original.clone();
    edited[2] = edit(&edited[2], "\"seconds\":30", "\"seconds\":3");
    write_lines(&exported, &edited);
    let r = verify(&out, Some(&f.initial), None).unwrap();
    let fail = r.failure.expect("an edit is detected");
    assert_eq!(
        (fail.line, fail.reason),
        (Some(3), FailureReason::BadMac),
        "{fail}"
    );
}
