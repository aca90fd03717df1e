//! End-to-end with the real model: `medgemmad serve` on the real Gemma 3
//! 270M GGUF (from `scripts/fetch-assets.sh`) and the real tokenizer, on the
//! CPU. Asserts the protocol whatever the base model says: event order,
//! multi-turn context, cancel on disconnect, context_full, the OpenAI API.
//! Skips with a message when the assets are absent (fails if MEDGEMMA_ASSETS
//! is set and they are missing).

mod e2e_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_support::*;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::json;

/// Loading the 270M model takes seconds; a cold CI machine gets more.
const READY: Duration = Duration::from_secs(300);

/// The daemon on the real 270M on the CPU; `extra_engine` is appended to
/// `[engine]`.
fn real_daemon_with(extra_engine: &str) -> Option<Daemon> {
    let (gguf, tokenizer) = real_model()?;
    Some(Daemon::start(
        &Setup {
            backend: "cpu",
            model_path: Some(gguf),
            tokenizer_path: Some(tokenizer),
            label: "Gemma 3 270M (demo)",
            demo: true,
            context_length: 256,
            queue_length: 4,
            max_new_tokens: 64,
            extra_engine: extra_engine.to_owned(),
            ..Setup::default()
        },
        READY,
    ))
}

fn real_daemon() -> Option<Daemon> {
    real_daemon_with("")
}

#[tokio::test(flavor = "multi_thread")]
async fn real_model_chat_order_multi_turn_cancel_and_context_full() {
    let Some(d) = real_daemon() else { return };

    // 1. Event order (whatever the model says).
    let t0 = Instant::now();
    let first = chat(&d.socket, json!({"conversation_id": null, "message": "What is the capital of France?", "max_new_tokens": 12})).await;
    let d1 = done(&first);
    eprintln!("turn 1: {d1} in {:?}", t0.elapsed());
    assert!(d1["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(d1["context_limit"], 256);
    let id = first[0].json()["conversation_id"].clone();

    // 2. Multi-turn: the second prompt holds the first turn and its answer.
    let answer_deltas = first.iter().filter(|e| e.name == "answer").count() as u64;
    let second = chat(
        &d.socket,
        json!({"conversation_id": id, "message": "And of Italy?", "max_new_tokens": 8}),
    )
    .await;
    let d2 = done(&second);
    let (p1, p2) = (
        d1["prompt_tokens"].as_u64().unwrap(),
        d2["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(
        p2 > p1 + answer_deltas,
        "turn 2 prompt {p2} vs turn 1 prompt {p1} + answer {answer_deltas}"
    );

    // 3. Closing the connection mid-answer cancels: the engine is free for the next request.
    let resp = send(&d.socket, post_json("/api/chat", &json!({"conversation_id": null, "message": "Count from one to one hundred.", "max_new_tokens": 64}))).await;
    let mut sse = Sse::new(resp);
    sse.next().await.unwrap(); // conversation
    let first = sse.next().await.unwrap();
    let generating = first.name == "reasoning" || first.name == "answer";
    drop(sse); // the browser's stop button aborts the fetch
    let t0 = Instant::now();
    let quick = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "Hi", "max_new_tokens": 2}),
    )
    .await;
    done(&quick);
    eprintln!(
        "after dropping a 64-token request mid-answer, a 2-token request took {:?}",
        t0.elapsed()
    );
    if generating {
        let log = d.log();
        let cancelled = log
            .lines()
            .find(|l| l.contains("finish=Cancelled"))
            .unwrap_or_else(|| panic!("no cancelled turn:\n{log}"));
        let n: u64 = cancelled
            .split("completion_tokens=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n < 64, "stopped early: {cancelled}");
    }

    // 4. A message that cannot fit is refused before generating.
    let long = "patient history ".repeat(200);
    let events = chat(&d.socket, json!({"conversation_id": null, "message": long})).await;
    assert_eq!(events.len(), 2, "conversation then error");
    assert_eq!(events[1].name, "error");
    assert_eq!(events[1].json()["code"], "context_full");

    // 5. OpenAI API: non-stream, stream, and a malformed conversation as a 400.
    let oai = |body: serde_json::Value| {
        request("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let (code, v) = json_of(send(&d.socket, oai(json!({"model": "gemma-3-270m-demo", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}))).await).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 3);
    let events = Sse::new(send(&d.socket, oai(json!({"stream": true, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}))).await).collect().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let bad = oai(
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
    );
    assert_eq!(
        error_code(send(&d.socket, bad).await, StatusCode::BAD_REQUEST).await,
        "invalid_conversation"
    );

    // 6. Status shows the real model, its file name only.
    let (_, s) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(s["model"]["file"], "gemma-3-270m-q4_k_m.gguf");
    assert_eq!(s["model"]["format"], "gguf");
    assert_eq!(s["backend"]["kind"], "cpu");
    assert!(
        !s.to_string().contains("/medgemma-assets/"),
        "no full paths: {s}"
    );
}

/// Several clinicians at once: with `max_concurrent_generations = 3` three
/// conversations generate together (continuous batching: they share each
/// decode step), and each gets, token for token, the greedy answer it gets
/// alone.
#[tokio::test(flavor = "multi_thread")]
async fn real_model_concurrent_turns_share_decode_steps_and_answer_as_alone() {
    let Some(d) = real_daemon_with("max_concurrent_generations = 3") else {
        return;
    };
    let (_, status) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(status["queue"]["max_concurrent"], 3, "{status}");

    const TOKENS: u64 = 16;
    let prompts = [
        "List ten common symptoms of influenza.",
        "Explain what blood pressure measures.",
        "Name some foods that are rich in iron.",
    ];
    let body = |p: &str| json!({"conversation_id": null, "message": p, "max_new_tokens": TOKENS});
    let said = |events: &[Event]| {
        let d = done(events);
        (
            text(events, "reasoning"),
            text(events, "answer"),
            d["completion_tokens"].as_u64().unwrap(),
        )
    };

    let mut alone = Vec::new();
    for p in prompts {
        alone.push(said(&chat(&d.socket, body(p)).await));
    }

    // Together: each stream records when its first token and its end came.
    let t0 = Instant::now();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let socket = d.socket.clone();
            let req = post_json("/api/chat", &body(p));
            tokio::spawn(async move {
                let mut sse = Sse::new(send(&socket, req).await);
                let (mut events, mut first, mut end) = (Vec::new(), None, None);
                while let Some(e) = sse.next().await {
                    if e.name == "reasoning" || e.name == "answer" {
                        first.get_or_insert_with(|| t0.elapsed());
                    }
                    if e.name == "done" {
                        end = Some(t0.elapsed());
                    }
                    events.push(e);
                }
                assert_chat_order(&events);
                (events, first, end)
            })
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.unwrap());
    }
    for ((events, _, _), want) in together.iter().zip(&alone) {
        assert_eq!(
            &said(events),
            want,
            "the batched answer differs from the answer alone"
        );
    }
    let firsts: Vec<Duration> = together.iter().filter_map(|t| t.1).collect();
    let ends: Vec<Duration> = together.iter().map(|t| t.2.expect("done")).collect();
    eprintln!("together: first tokens at {firsts:?}, ends at {ends:?}");
    // Served one after another, the last stream's first token would come
    // after the first stream's end. Only meaningful when every answer runs
    // for more than a couple of tokens.
    if alone.iter().all(|a| a.2 > 2) {
        let last_first = firsts.iter().max().expect("first tokens");
        let first_end = ends.iter().min().expect("ends");
        assert!(
            last_first < first_end,
            "the three turns did not run at once: first tokens {firsts:?}, ends {ends:?}"
        );
    }
    let log = d.log();
    assert_eq!(
        log.matches("medgemmad: turn ").count(),
        2 * prompts.len(),
        "{log}"
    );
}

/// The model's files are hashed while the model loads and compared with
/// their pins: a match serves and the audit log names the weights by their
/// digests; one altered byte refuses to serve (exit 3) naming the file,
/// unless `model.on_pin_mismatch = "degraded"`, which serves and says so.
#[test]
fn model_files_are_checked_against_their_pins_while_loading() {
    use medgemma_protocol::pins::{Pins, hash_file};
    let Some((gguf, tokenizer)) = real_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gemma-3-270m.gguf");
    std::fs::copy(&gguf, &model).unwrap();
    let pin = hash_file(&model, |_, _| {}).unwrap();
    let pins = dir.path().join("model.pins.json");
    std::fs::write(&pins, Pins::new(model.clone(), vec![pin.clone()]).to_json()).unwrap();
    let setup = Setup {
        backend: "cpu",
        model_path: Some(model.clone()),
        tokenizer_path: Some(tokenizer),
        label: "Gemma 3 270M (demo)",
        context_length: 256,
        max_new_tokens: 8,
        ..Setup::default()
    };
    let config_with = |policy: &str| {
        let d = tempfile::Builder::new()
            .prefix("mgd-pins")
            .tempdir()
            .unwrap();
        let config = write_config(d.path(), &setup);
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[model]\n",
            &format!("[model]\npins_file = {pins:?}\non_pin_mismatch = {policy:?}\n"),
        );
        std::fs::write(&config, text).unwrap();
        (d, config)
    };

    // Pinned and unchanged: served; the log names the weights' fingerprint.
    let (d, config) = config_with("refuse");
    let audit = d.path().join("audit");
    let daemon = Daemon::start_with(d, &config, UNSANDBOXED, READY);
    let expected = medgemmad::engine::verify::fingerprint(&[pin]);
    assert!(
        daemon
            .log()
            .contains("model files checked: 1 files match their pins"),
        "{}",
        daemon.log()
    );
    let records: String = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    drop(daemon);
    assert!(
        records.contains(&format!("\"model\":\"{expected}\"")),
        "model_load names the weights' digest: {records}"
    );

    // One byte altered: refused, the file named, exit 3.
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&model, &bytes).unwrap();
    let (_d, config) = config_with("refuse");
    let text = std::fs::read_to_string(&config).unwrap();
    let (status, log) = run_to_exit(Some(&text), None, READY);
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("gemma-3-270m.gguf does not match its pinned SHA-256"),
        "{log}"
    );

    // The same with "degraded": served, and said.
    let (d, config) = config_with("degraded");
    let daemon = Daemon::start_with(d, &config, UNSANDBOXED, READY);
    assert!(
        daemon
            .log()
            .contains("serving a model that is not the one pinned"),
        "{}",
        daemon.log()
    );
}
