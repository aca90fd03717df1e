//! No text: conversation text passed to the log never reaches a file, not
//! the log, not the key file, not an export, and not an error message.

mod common;

use common::*;
use medgemma_audit::{
    ActorId, ConversationId, Event, ExportKind, ModelFingerprint, Outcome, ShutdownReason,
    SoftwareVersion, export, generate_signing_key, verify,
};

const CANARY: &str = "CANARY-7f3a Jane Doe DOB 1961-04-12 chest pain since Tuesday";

#[test]
fn canary_never_reaches_disk() {
    let f = Fixture::new();
    let mut log = f.open();
    log.append(Event::Startup {
        software: SoftwareVersion::parse("0.1.0").unwrap(),
    })
    .unwrap();
    log.append(Event::ConversationStart {
        actor: ActorId::new("dr-lee").unwrap(),
        conversation: ConversationId::new("c1").unwrap(),
        model: ModelFingerprint::new("medgemma").unwrap(),
    })
    .unwrap();
    for i in 0..5 {
        log.append(f.answer(i, CANARY, &format!("{CANARY} answer {i}")))
            .unwrap();
        log.append(f.answer(i, &CANARY[..20], &CANARY[7..]))
            .unwrap();
    }
    log.append(Event::Export {
        actor: ActorId::new("admin").unwrap(),
        kind: ExportKind::Conversation,
        conversation: Some(ConversationId::new("c1").unwrap()),
        outcome: Outcome::Ok,
    })
    .unwrap();
    log.append(Event::Shutdown {
        reason: ShutdownReason::Requested,
    })
    .unwrap();
    drop(log);

    // The canary cannot become an identifier, and the error does not echo it.
    for err in [
        ActorId::new(CANARY).unwrap_err(),
        ConversationId::new(CANARY).unwrap_err(),
        ModelFingerprint::new(CANARY).unwrap_err(),
    ] {
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains("CANARY") && !msg.contains("Jane"), "{msg}");
    }

    let out = f.tmp.path().join("export");
    export(
        &f.dir,
        Fixture::at(T0 - DAY),
        Fixture::at(T0 + DAY),
        &out,
        &generate_signing_key().unwrap(),
    )
    .unwrap();
    assert!(verify(&f.dir, Some(&f.initial), None).unwrap().is_ok());

    let needles: Vec<Vec<u8>> = vec![
        CANARY.as_bytes().to_vec(),
        b"CANARY".to_vec(),
        b"Jane".to_vec(),
        b"chest".to_vec(),
        CANARY.to_lowercase().into_bytes(),
        hex::encode(CANARY).into_bytes(),
        hex::encode(&CANARY[..8]).into_bytes(),
    ];
    let files = all_bytes(f.tmp.path());
    assert!(
        files.len() >= 5,
        "log, key and export files are all scanned"
    );
    for (path, bytes) in files {
        for needle in &needles {
            assert!(
                !contains(&bytes, needle),
                "text found in {}",
                path.display()
            );
        }
    }
}
