//! What the clinician's UI needs from the daemon (issue 16), in-process
//! with the scripted engine: the model's loading state, answer styles in
//! both languages, regenerate and edit-and-resend, the conversation list,
//! a conversation's messages, its audited export, and the terms found in
//! the question and the answer. Needs `--features test-engine`.

#![cfg(feature = "test-engine")]

mod e2e_support;

use std::time::Duration;

use e2e_support::*;
use hyper::StatusCode;
use medgemma_protocol::terms::{TermEntry, write_table};
use serde_json::json;

fn prompt_tokens(events: &[Event]) -> u64 {
    done(events)["prompt_tokens"].as_u64().unwrap()
}

fn conversation_id(events: &[Event]) -> String {
    events[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The scripted engine counts one token per whitespace-separated word of
/// each message (plus markers), so the preset in the system prompt shows in
/// the prompt's size.
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn preset(name: &str) -> String {
    std::fs::read_to_string(styles_dir().join(name))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_chat_while_the_model_loads_then_when_ready() {
    let (s, slot) = Server::start_loading(&Setup::default());
    let (status, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "loading", "{v}");
    assert_eq!(v["loading"]["stage"], "starting the engine");
    assert!(
        v["backend"].is_null() && v["context_limit"].is_null(),
        "{v}"
    );
    assert_eq!(v["model"]["label"], "Scripted test engine");
    // The UI is served meanwhile.
    assert_eq!(send(&s.socket, get("/")).await.status(), StatusCode::OK);
    let resp = send(
        &s.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "hello"}),
        ),
    )
    .await;
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(
        error_code(resp, StatusCode::SERVICE_UNAVAILABLE).await,
        "loading"
    );
    let api = post_json(
        "/v1/chat/completions",
        &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        error_code(send(&s.socket, api).await, StatusCode::SERVICE_UNAVAILABLE).await,
        "loading"
    );

    slot.ready(s.engine());
    let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(v["loading"].is_null());
    assert_eq!(v["context_limit"], 4096);
    let events = chat(
        &s.socket,
        json!({"conversation_id": null, "message": "hello", "max_new_tokens": 8}),
    )
    .await;
    done(&events);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_failed_to_load_is_a_state_and_an_error_code() {
    let (s, slot) = Server::start_loading(&Setup::default());
    slot.failed("the model file is damaged".to_owned());
    let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        !v.to_string().contains("damaged"),
        "the reason is for administrators: {v}"
    );
    let resp = send(
        &s.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "hello"}),
        ),
    )
    .await;
    assert_eq!(
        error_code(resp, StatusCode::SERVICE_UNAVAILABLE).await,
        "model_failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn styles_and_language_pick_the_preset_and_the_style_stays_with_the_conversation() {
    let s = Server::start(&Setup::default());
    let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(v["styles"], json!(["structured", "brief"]), "{v}");
    assert_eq!(v["default_style"], "structured");
    let cookie = client_cookie(1);
    let ask = |style: serde_json::Value, language: &str| {
        json!({"conversation_id": null, "message": "What is pneumonia?", "max_new_tokens": 8,
               "thinking": false, "style": style, "language": language})
    };
    let structured_en =
        prompt_tokens(&chat_as(&s.socket, &cookie, ask(json!("structured"), "en")).await);
    let brief_en = prompt_tokens(&chat_as(&s.socket, &cookie, ask(json!("brief"), "en")).await);
    let structured_zh =
        prompt_tokens(&chat_as(&s.socket, &cookie, ask(json!("structured"), "zh")).await);
    let default = prompt_tokens(&chat_as(&s.socket, &cookie, ask(json!(null), "en")).await);
    // The system prompt is the preset of the style in the UI's language.
    assert_eq!(
        structured_en - brief_en,
        words(&preset("structured.en.txt")) - words(&preset("brief.en.txt"))
    );
    assert_eq!(
        structured_en as i64 - structured_zh as i64,
        words(&preset("structured.en.txt")) as i64 - words(&preset("structured.zh.txt")) as i64
    );
    assert_eq!(default, structured_en, "no style: the configured default");

    // The style is kept per conversation and shown in the list and the conversation.
    let first = chat_as(&s.socket, &cookie, ask(json!("brief"), "en")).await;
    let id = conversation_id(&first);
    let next = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": id, "message": "And in children?", "max_new_tokens": 8, "style": null}),
    )
    .await;
    done(&next);
    let (_, doc) = json_of(
        send(
            &s.socket,
            with_cookie(get(&format!("/api/conversations/{id}")), &cookie),
        )
        .await,
    )
    .await;
    assert_eq!(doc["style"], "brief", "{doc}");
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &cookie)).await).await;
    let item = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["style"], "brief");
    assert_eq!(item["turns"], 2);

    let bad = send(
        &s.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "x", "style": "poetic"}),
        ),
    )
    .await;
    assert_eq!(
        error_code(bad, StatusCode::BAD_REQUEST).await,
        "invalid_json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn regenerate_and_replace_last_rewrite_the_last_turn_only() {
    let s = Server::start(&Setup {
        styles: false,
        ..Setup::default()
    });
    let cookie = client_cookie(2);
    let first = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": null, "message": "one two", "max_new_tokens": 8, "thinking": true}),
    )
    .await;
    let id = conversation_id(&first);
    let second = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": id, "message": "three four five", "max_new_tokens": 8, "thinking": true}),
    )
    .await;
    let p2 = prompt_tokens(&second);

    // Regenerate: the same prompt as the second turn (its old answer is not history).
    let again = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": id, "message": "", "regenerate": true, "max_new_tokens": 8, "thinking": true}),
    )
    .await;
    assert_eq!(prompt_tokens(&again), p2);
    let (_, doc) = json_of(
        send(
            &s.socket,
            with_cookie(get(&format!("/api/conversations/{id}")), &cookie),
        )
        .await,
    )
    .await;
    let messages = doc["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{doc}");
    assert_eq!(messages[2]["content"], "three four five");
    assert_eq!(
        messages[3]["reasoning"], "Considering the question step by step.",
        "the reasoning is kept to show, apart from the answer"
    );

    // Replace: the last question and its answer give way to the new one.
    let edited = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": id, "message": "six", "replace_last": true, "max_new_tokens": 8, "thinking": true}),
    )
    .await;
    assert_eq!(prompt_tokens(&edited), p2 - 2, "one word instead of three");
    let (_, doc) = json_of(
        send(
            &s.socket,
            with_cookie(get(&format!("/api/conversations/{id}")), &cookie),
        )
        .await,
    )
    .await;
    let messages = doc["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{doc}");
    assert_eq!(messages[2]["content"], "six");

    for (body, code) in [
        (
            json!({"conversation_id": id, "message": "", "regenerate": true, "replace_last": true}),
            "invalid_request",
        ),
        (
            json!({"conversation_id": null, "message": "", "regenerate": true}),
            "invalid_request",
        ),
        (
            json!({"conversation_id": id, "message": " "}),
            "invalid_request",
        ),
    ] {
        let resp = send(
            &s.socket,
            with_cookie(post_json("/api/chat", &body), &cookie),
        )
        .await;
        assert_eq!(
            error_code(resp, StatusCode::BAD_REQUEST).await,
            code,
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_shows_only_the_callers_conversations_and_export_is_audited() {
    let s = Server::start(&Setup::default());
    let (alice, bob) = (client_cookie(3), client_cookie(4));
    let a1 = conversation_id(
        &chat_as(&s.socket, &alice, json!({"conversation_id": null, "message": "First question about pneumonia", "max_new_tokens": 8})).await,
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a2 = conversation_id(
        &chat_as(
            &s.socket,
            &alice,
            json!({"conversation_id": null, "message": "Second question", "max_new_tokens": 8}),
        )
        .await,
    );
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &alice)).await).await;
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a2.as_str(), a1.as_str()], "newest first: {list}");
    assert_eq!(
        list["conversations"][1]["title"],
        "First question about pneumonia"
    );
    let (_, none) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &bob)).await).await;
    assert_eq!(none, json!({"conversations": []}));

    // Another browser can neither read, export, cancel nor delete it.
    let get_a1 = with_cookie(get(&format!("/api/conversations/{a1}")), &bob);
    assert_eq!(
        error_code(send(&s.socket, get_a1).await, StatusCode::NOT_FOUND).await,
        "conversation_not_found"
    );
    let export = |cookie: &str| {
        with_cookie(
            post_json(
                &format!("/api/conversations/{a1}/export"),
                &json!({"format": "markdown"}),
            ),
            cookie,
        )
    };
    assert_eq!(
        error_code(send(&s.socket, export(&bob)).await, StatusCode::NOT_FOUND).await,
        "conversation_not_found"
    );

    let before = std::fs::read_dir(s.dir.path().join("audit"))
        .unwrap()
        .count();
    assert!(before > 0);
    let (status, doc) = json_of(send(&s.socket, export(&alice)).await).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let md = doc["markdown"].as_str().unwrap();
    assert!(md.starts_with("# MedGemma conversation"), "{md}");
    assert!(md.contains("## Question 1\n\nFirst question about pneumonia"));
    assert!(md.contains("## Answer 1\n\nThis is"), "{md}");
    assert!(md.contains("Not a medical device."));
    // The export is a record of its own: kind, conversation, actor; no text.
    let records = audit_records(&s.dir.path().join("audit"));
    let export_rec = records
        .iter()
        .rfind(|r| r["event"] == "export")
        .expect("an export record");
    assert_eq!(export_rec["kind"], "conversation");
    assert_eq!(export_rec["conversation"], a1.as_str());
    assert_eq!(export_rec["actor"], "03".repeat(16));
    assert!(!records.iter().any(|r| r.to_string().contains("pneumonia")));
    let bad = with_cookie(
        post_json(
            &format!("/api/conversations/{a1}/export"),
            &json!({"format": "pdf"}),
        ),
        &alice,
    );
    assert_eq!(
        error_code(send(&s.socket, bad).await, StatusCode::BAD_REQUEST).await,
        "invalid_json"
    );

    // Deleted: gone from the list and the address.
    let del = with_cookie(
        request("DELETE", &format!("/api/conversations/{a1}"))
            .header("origin", ORIGIN)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
        &alice,
    );
    assert_eq!(send(&s.socket, del).await.status(), StatusCode::NO_CONTENT);
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &alice)).await).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}

fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-")
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn terms_of_the_question_and_answer_come_with_done_and_the_conversation() {
    let terms = tempfile::tempdir().unwrap();
    let entry = |phrase: &str, preferred: &str, code: &str, system: &str| TermEntry {
        phrase: phrase.into(),
        preferred: preferred.into(),
        code: code.into(),
        system: system.into(),
    };
    write_table(
        &terms.path().join("icd10.tsv"),
        &[],
        &[
            entry(
                "acute myocardial infarction",
                "Acute myocardial infarction, unspecified",
                "I21.9",
                "ICD-10-CM",
            ),
            entry("急性心肌梗死", "急性心肌梗死", "I21.900", "ICD-10"),
            // A phrase of the scripted answer ("This is a scripted answer.").
            entry("scripted answer", "Scripted answer", "X00", "TEST"),
        ],
    )
    .unwrap();
    write_table(
        &terms.path().join("synonyms.tsv"),
        &[],
        &[
            entry("heart attack", "", "I21.9", "ICD-10-CM"),
            entry("心梗", "", "I21.900", "ICD-10"),
        ],
    )
    .unwrap();
    let s = Server::start(&Setup {
        terms_dir: Some(terms.path().to_owned()),
        ..Setup::default()
    });
    // Loaded in the background at startup.
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
        if v["terms"]["phrases"] == 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cookie = client_cookie(5);
    let events = chat_as(
        &s.socket,
        &cookie,
        json!({"conversation_id": null, "message": "Crushing chest pain: a Heart Attack? 是心梗吗？", "max_new_tokens": 12}),
    )
    .await;
    let found = done(&events)["terms"].clone();
    let phrases: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phrase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phrases,
        ["Heart Attack", "心梗", "scripted answer"],
        "{found}"
    );
    assert_eq!(
        found[0]["preferred"],
        "Acute myocardial infarction, unspecified"
    );
    assert_eq!(found[0]["code"], "I21.9");
    assert_eq!(found[1]["preferred"], "急性心肌梗死");
    let id = conversation_id(&events);
    let (_, doc) = json_of(
        send(
            &s.socket,
            with_cookie(get(&format!("/api/conversations/{id}")), &cookie),
        )
        .await,
    )
    .await;
    assert_eq!(doc["messages"][1]["terms"], found);

    // The OpenAI API returns them in its extension field.
    let (status, v) = json_of(
        send(
            &s.socket,
            post_json(
                "/v1/chat/completions",
                &json!({"model": "x", "max_tokens": 12, "messages": [{"role": "user", "content": "acute myocardial infarction"}]}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["terms"][0]["code"], "I21.9",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_terminology_nothing_is_found_and_nothing_fails() {
    let s = Server::start(&Setup {
        terms_dir: Some("/nonexistent/terms".into()),
        ..Setup::default()
    });
    let events = chat(
        &s.socket,
        json!({"conversation_id": null, "message": "heart attack?", "max_new_tokens": 8}),
    )
    .await;
    assert_eq!(done(&events)["terms"], json!([]));
    let (status, v) = json_of(
        send(
            &s.socket,
            post_json(
                "/v1/chat/completions",
                &json!({"model": "x", "max_tokens": 2, "messages": [{"role": "user", "content": "heart attack"}]}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["choices"][0]["message"].get("terms").is_none(), "{v}");
}
