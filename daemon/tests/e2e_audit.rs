//! The daemon writes the audit log: startup, model load, conversation start,
//! one `answer` record per turn (on disk before `done` is sent), shutdown;
//! it refuses to start without the key file; and canary patient texts sent
//! through both APIs never reach the audit files, the key files or stderr.
//! Needs `--features test-engine` (scripted engine).

#![cfg(feature = "test-engine")]

mod e2e_support;

use std::path::Path;
use std::time::Duration;

use e2e_support::*;
use hyper::StatusCode;
use serde_json::json;

const READY: Duration = Duration::from_secs(30);

/// Fake patient texts: unique strings that must never be stored.
const CANARIES: &[&str] = &[
    "CANARY-7f3a Mrs Jane Canary DOB 1961-02-03 MRN 000731 chest pain",
    "CANARY-91bc metformin 850mg creatinine 2.4 patient Zhang Wei",
    "CANARY-c0de HIV positive, lives at 12 Canary Wharf",
    // The scripted engine panics with this message's text in the panic
    // message (as a string-slicing panic would quote it).
    "PANIC-TEST CANARY-d00d pregnant, 34 weeks, on warfarin",
];

fn records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn events(dir: &Path) -> Vec<String> {
    records(dir)
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect()
}

/// Every file under `dir`, as lossy text.
fn all_files_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_recorded_before_done_and_no_text_is_stored() {
    let mut d = Daemon::start(&Setup::default(), READY);
    let dir = d.dir.path().to_owned();
    assert_eq!(events(&dir), ["startup", "model_load"]);

    // Web UI: a new conversation, then a second turn in it.
    let cookie = format!("mgd_client={}", "ab".repeat(16));
    let mut req = post_json(
        "/api/chat",
        &json!({ "message": CANARIES[0], "max_new_tokens": 5 }),
    );
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let resp = send(&d.socket, req).await;
    let mut sse = Sse::new(resp);
    let first = sse.next().await.unwrap();
    let conv = first.json()["conversation_id"].as_str().unwrap().to_owned();
    let mut last = first;
    while let Some(e) = sse.next().await {
        if e.name == "done" {
            // The record is on disk when `done` arrives.
            let recs = records(&dir);
            let answer = recs
                .iter()
                .rfind(|r| r["event"] == "answer")
                .expect("answer record");
            assert_eq!(answer["conversation"], conv.as_str());
            assert_eq!(answer["actor"], "ab".repeat(16));
            assert_eq!(answer["outcome"], "ok");
            assert_eq!(answer["finish"], "length");
        }
        last = e;
    }
    assert_eq!(last.name, "done");
    let mut req = post_json(
        "/api/chat",
        &json!({ "conversation_id": conv, "message": CANARIES[1], "max_new_tokens": 3 }),
    );
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let events2 = Sse::new(send(&d.socket, req).await).collect().await;
    done(&events2);

    // OpenAI API, non-streamed and streamed.
    let body = json!({ "model": "x", "messages": [{ "role": "user", "content": CANARIES[2] }], "max_tokens": 4 });
    let (status, v) =
        json_of(send(&d.socket, post_json("/v1/chat/completions", &body)).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = send(&d.socket, post_json("/v1/chat/completions", &streamed)).await;
    let _ = Sse::new(resp).collect().await;

    // A refused turn (context full) is recorded too, and its error names no text.
    let long = format!("{} {}", CANARIES[0], "word ".repeat(5000));
    let events3 = chat(&d.socket, json!({ "message": long })).await;
    assert_eq!(events3.last().unwrap().name, "error");
    for e in &events3 {
        for c in CANARIES {
            assert!(!e.data.contains(c), "error output repeats the text");
        }
    }

    // A panic whose message quotes the request: the turn fails with a
    // sentence, and the panic hook logs where, never what.
    let events4 = chat(&d.socket, json!({ "message": CANARIES[3] })).await;
    let last = events4.last().unwrap();
    assert_eq!(last.name, "error");
    assert_eq!(last.json()["code"], "engine_panic", "{}", last.data);
    assert!(
        d.log().contains("internal error (a panic)"),
        "the panic is logged: {}",
        d.log()
    );

    let recs = records(&dir);
    let answers: Vec<_> = recs.iter().filter(|r| r["event"] == "answer").collect();
    assert_eq!(answers.len(), 6, "{recs:#?}");
    assert_eq!(answers[2]["actor"], "api");
    assert_eq!(answers[4]["outcome"], "rejected");
    let starts = recs
        .iter()
        .filter(|r| r["event"] == "conversation_start")
        .count();
    assert_eq!(
        starts, 5,
        "three browser conversations (the panicked one too), two API requests"
    );
    for a in &answers {
        assert_eq!(a["input"].as_str().unwrap().len(), 64);
        assert_eq!(a["output"].as_str().unwrap().len(), 64);
    }
    // Same text, same digest; different texts, different digests.
    assert_ne!(answers[0]["input"], answers[1]["input"]);

    // Shutdown is recorded; the chain verifies with the initial key.
    nix_kill(d.pid());
    d.wait_exit(Duration::from_secs(20));
    assert_eq!(events(&dir).last().unwrap(), "shutdown");
    let initial = std::fs::read_to_string(dir.join("initial-key.txt")).unwrap();
    let key = medgemma_audit::InitialKey::parse(&initial).unwrap();
    let report = medgemma_audit::verify(&dir.join("audit"), Some(&key), None).unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);

    // No canary anywhere: audit files, key files, configuration, stderr.
    let stored = all_files_text(&dir);
    let log = d.log();
    for c in CANARIES {
        let tag = c
            .split_whitespace()
            .find(|w| w.starts_with("CANARY-"))
            .unwrap();
        assert!(!stored.contains(tag), "{tag} stored on disk");
        assert!(!log.contains(tag), "{tag} in the daemon's stderr");
    }
}

fn nix_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn refuses_to_start_without_the_audit_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Setup::default());
    std::fs::remove_file(dir.path().join("audit-key/current")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let (status, log) = run_to_exit(Some(&text), None, Duration::from_secs(20));
    assert_eq!(status.code(), Some(5), "{log}");
    assert!(log.contains("medgemmactl setup"), "{log}");
}

/// The same canary check once with the real Gemma 3 270M (skips without the
/// assets of `scripts/fetch-assets.sh`): the model echoes and paraphrases,
/// so the answer digests are of real text, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn real_model_answers_are_recorded_without_text() {
    let Some((gguf, tokenizer)) = real_model() else {
        return;
    };
    let setup = Setup {
        backend: "cpu",
        model_path: Some(gguf),
        tokenizer_path: Some(tokenizer),
        label: "Gemma 3 270M (demo)",
        demo: true,
        context_length: 256,
        max_new_tokens: 16,
        ..Setup::default()
    };
    let d = Daemon::start(&setup, Duration::from_secs(120));
    let dir = d.dir.path().to_owned();
    let prompt = format!("Repeat exactly: {}", CANARIES[0]);
    let events = chat(
        &d.socket,
        json!({ "message": prompt, "max_new_tokens": 16 }),
    )
    .await;
    done(&events);
    let recs = records(&dir);
    let answer = recs
        .iter()
        .rfind(|r| r["event"] == "answer")
        .expect("answer");
    assert_eq!(answer["outcome"], "ok");
    assert!(answer["tokens_out"].as_u64().unwrap() > 0);
    let stored = all_files_text(&dir);
    let log = d.log();
    for c in CANARIES {
        let tag = c
            .split_whitespace()
            .find(|w| w.starts_with("CANARY-"))
            .unwrap();
        assert!(!stored.contains(tag) && !log.contains(tag), "{tag} leaked");
    }
}

/// Retention runs at start: files older than `audit.retention_days` are
/// deleted after a `retention` record names them, and the chain still
/// verifies with the initial key (a verifier tells retention from
/// tampering).
#[test]
fn retention_deletes_expired_files_at_start_and_the_chain_verifies() {
    use std::time::SystemTime;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Setup::default());
    // A day of records written 200 days ago.
    let past = SystemTime::now() - Duration::from_secs(200 * 86_400);
    let options = medgemma_audit::AuditOptions {
        clock: medgemma_audit::Clock::from_fn(move || past),
        ..medgemma_audit::AuditOptions::default()
    };
    let audit = dir.path().join("audit");
    let mut log =
        medgemma_audit::AuditLog::open(&audit, &dir.path().join("audit-key/current"), options)
            .unwrap();
    log.append(medgemma_audit::Event::Shutdown {
        reason: medgemma_audit::ShutdownReason::Signal,
    })
    .unwrap();
    drop(log);
    let old: Vec<_> = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");

    let root = dir.path().to_owned();
    let mut d = Daemon::start_with(dir, &config, UNSANDBOXED, Duration::from_secs(30));
    assert!(
        d.log()
            .contains("audit retention: deleted 1 file(s) older than 180 days"),
        "{}",
        d.log()
    );
    assert!(!old[0].exists(), "the expired file is gone");
    nix_kill(d.pid());
    d.wait_exit(Duration::from_secs(20));
    let kinds = events(&root);
    assert!(kinds.contains(&"retention".to_owned()), "{kinds:?}");
    let initial = std::fs::read_to_string(root.join("initial-key.txt")).unwrap();
    let key = medgemma_audit::InitialKey::parse(&initial).unwrap();
    let report = medgemma_audit::verify(&audit, Some(&key), None).unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
}
