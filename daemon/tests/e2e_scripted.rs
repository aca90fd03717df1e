//! End-to-end tests of the HTTP layer with the scripted engine
//! (`engine.backend = "scripted"`: a fixed reasoning trace and answer, 20 ms
//! per word), so event order, cancel, queueing and limits are deterministic.
//! Most run the daemon's server in this process (`server::run` on a real
//! Unix socket); the tests of the log and of SIGTERM start the real binary.
//! Needs `--features test-engine`.

#![cfg(feature = "test-engine")]

mod e2e_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_support::*;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::json;

const READY: Duration = Duration::from_secs(30);

/// The server in this process with the scripted engine.
fn scripted() -> Server {
    Server::start(&Setup::default())
}

/// The real binary (for what needs a process: its log, signals).
fn scripted_daemon() -> Daemon {
    Daemon::start(&Setup::default(), READY)
}

#[tokio::test]
async fn ui_assets_are_served_with_csp_and_content_types() {
    let d = scripted();
    let resp = send(&d.socket, get("/")).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "web/index.html must exist and be embedded"
    );
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        h["content-security-policy"],
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-cache");
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("mgd_client="), "{cookie}");
    for attr in ["SameSite=Strict", "HttpOnly", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let html = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    // Revalidation with the ETag gives 304.
    let etag = h["etag"].clone();
    let again = request("GET", "/")
        .header("if-none-match", etag)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&d.socket, again).await.status(),
        StatusCode::NOT_MODIFIED
    );

    // Every script and style the page references is served with its type.
    for src in html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
    {
        let path = format!("/{}", src.trim_start_matches("./").trim_start_matches('/'));
        let resp = send(&d.socket, get(&path)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(ct, want, "{path}");
    }

    assert_eq!(
        error_code(
            send(&d.socket, get("/nope.php")).await,
            StatusCode::NOT_FOUND
        )
        .await,
        "not_found"
    );
}

#[tokio::test]
async fn chat_streams_conversation_reasoning_answer_done_in_order() {
    let d = scripted();
    let events = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "Hello there", "max_new_tokens": 12, "thinking": true}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names[0], "conversation");
    assert!(
        names.contains(&"reasoning") && names.contains(&"answer"),
        "{names:?}"
    );
    let id = events[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32, "128-bit hex id");
    let done = done(&events);
    for key in [
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
        "time_to_first_token_ms",
        "context_used",
        "context_limit",
        "finish_reason",
        "thinking_unterminated",
    ] {
        assert!(done.get(key).is_some(), "done lacks {key}: {done}");
    }
    assert_eq!(done["completion_tokens"], 12);
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["thinking_unterminated"], false);
    assert_eq!(done["context_limit"], 4096);
    assert_eq!(
        text(&events, "reasoning"),
        "Considering the question step by step."
    );

    // "thinking": true put Google's thinking switch in front of the system
    // message (scripted count: its 6 words); without it no trace is sent.
    let plain = chat(&d.socket, json!({"conversation_id": null, "message": "Hello there", "max_new_tokens": 8, "thinking": false})).await;
    assert!(
        !plain.iter().any(|e| e.name == "reasoning"),
        "no trace asked for, none sent"
    );
    assert_eq!(
        e2e_support::done(&plain)["prompt_tokens"].as_u64().unwrap() + 6,
        done["prompt_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn second_turn_carries_the_first_without_its_reasoning() {
    let d = scripted();
    let first = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "First question", "max_new_tokens": 10}),
    )
    .await;
    let id = first[0].json()["conversation_id"].clone();
    let d1 = done(&first);
    let answer_deltas = first.iter().filter(|e| e.name == "answer").count() as u64;
    let second = chat(
        &d.socket,
        json!({"conversation_id": id, "message": "Second", "max_new_tokens": 10}),
    )
    .await;
    assert_eq!(second[0].json()["conversation_id"], id, "same conversation");
    let d2 = done(&second);
    let (p1, p2) = (
        d1["prompt_tokens"].as_u64().unwrap(),
        d2["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(
        p2 > p1 + answer_deltas,
        "second prompt {p2} must hold the first ({p1}) and its answer ({answer_deltas})"
    );
    // Scripted count: the answer's 4 words + 4 markers, the new message's 1 word + 4 markers.
    // Had the reasoning (6 words) been kept, the difference would be 19.
    assert_eq!(
        p2 - p1,
        13,
        "history holds the answer but not the reasoning"
    );
}

#[tokio::test]
async fn cancel_endpoint_stops_generation() {
    let d = scripted();
    let resp = send(
        &d.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "Long", "max_new_tokens": 1000}),
        ),
    )
    .await;
    let mut sse = Sse::new(resp);
    let id = sse.next().await.unwrap().json()["conversation_id"].clone();
    let first_delta = sse.next().await.unwrap();
    assert!(first_delta.name == "reasoning" || first_delta.name == "answer");
    let t0 = Instant::now();
    let (status, v) = json_of(
        send(
            &d.socket,
            post_json("/api/chat/cancel", &json!({"conversation_id": id})),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["cancelled"], true);
    let rest = sse.collect().await;
    let done = done(&rest);
    assert_eq!(done["finish_reason"], "cancelled");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stopped promptly: {:?}",
        t0.elapsed()
    );
    // Nothing runs now: cancelling again is a no-op.
    let (_, v) = json_of(
        send(
            &d.socket,
            post_json("/api/chat/cancel", &json!({"conversation_id": id})),
        )
        .await,
    )
    .await;
    assert_eq!(v["cancelled"], false);
}

#[tokio::test]
async fn closing_the_connection_cancels_and_frees_the_engine() {
    let d = scripted_daemon();
    // 1000 scripted tokens would take 20 s.
    let resp = send(
        &d.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "Long", "max_new_tokens": 1000}),
        ),
    )
    .await;
    let mut sse = Sse::new(resp);
    sse.next().await.unwrap();
    sse.next().await.unwrap();
    drop(sse); // the browser's stop button aborts the fetch
    let t0 = Instant::now();
    let events = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "Short", "max_new_tokens": 3}),
    )
    .await;
    done(&events);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the engine was freed: next answer after {:?}",
        t0.elapsed()
    );
    assert!(
        d.log().contains("finish=Cancelled"),
        "the dropped turn ended as cancelled:\n{}",
        d.log()
    );
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let d = Server::start(&Setup {
        queue_length: 1,
        ..Setup::default()
    });
    let long = || {
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "Long", "max_new_tokens": 1000}),
        )
    };
    // First: running (wait for a delta). Second: waiting in the queue of one.
    let mut running = Sse::new(send(&d.socket, long()).await);
    running.next().await.unwrap();
    running.next().await.unwrap();
    let waiting = send(&d.socket, long()).await;
    assert_eq!(waiting.status(), StatusCode::OK);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = send(&d.socket, long()).await;
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("5".to_owned())
        );
        codes.push(error_code(resp, StatusCode::SERVICE_UNAVAILABLE).await);
    }
    assert_eq!(codes, ["queue_full"; 3]);
    let (_, status) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(status["queue"]["active"], 1);
    assert_eq!(status["queue"]["waiting"], 1);
    assert_eq!(status["queue"]["rejected"], 3);
    // The OpenAI API shares the queue.
    let oai = request("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )))
        .unwrap();
    assert_eq!(
        error_code(send(&d.socket, oai).await, StatusCode::SERVICE_UNAVAILABLE).await,
        "queue_full"
    );
}

#[tokio::test]
async fn wrong_host_is_refused() {
    let d = scripted();
    for host in [
        "evil.example:6006",
        "localhost:6007",
        "localhost",
        "127.0.0.1.evil.example:6006",
    ] {
        let mut req = get("/api/status");
        req.headers_mut().insert("host", host.parse().unwrap());
        assert_eq!(
            error_code(send(&d.socket, req).await, StatusCode::MISDIRECTED_REQUEST).await,
            "host_not_allowed",
            "{host}"
        );
    }
    for host in ["127.0.0.1:6006", "[::1]:6006", "LOCALHOST:6006"] {
        let mut req = get("/api/status");
        req.headers_mut().insert("host", host.parse().unwrap());
        assert_eq!(
            send(&d.socket, req).await.status(),
            StatusCode::OK,
            "{host}"
        );
    }
}

#[tokio::test]
async fn cross_origin_and_cookie_without_origin_are_refused() {
    let d = scripted();
    let body = json!({"conversation_id": null, "message": "hi", "max_new_tokens": 2});
    let with = |origin: Option<&str>, cookie: Option<&str>, site: Option<&str>| {
        let mut b = request("POST", "/api/chat").header("content-type", "application/json");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    };
    let refused = [
        with(Some("http://evil.example"), None, None),
        with(Some("null"), None, None),
        with(Some("http://localhost:6007"), None, None),
        with(
            None,
            Some("mgd_client=0123456789abcdef0123456789abcdef"),
            None,
        ),
        with(Some(ORIGIN), None, Some("cross-site")),
    ];
    for req in refused {
        assert_eq!(
            error_code(send(&d.socket, req).await, StatusCode::FORBIDDEN).await,
            "origin_not_allowed"
        );
    }
    // Same-origin browser request, and a program with neither Origin nor cookie.
    for req in [
        with(
            Some(ORIGIN),
            Some("mgd_client=0123456789abcdef0123456789abcdef"),
            Some("same-origin"),
        ),
        with(None, None, None),
    ] {
        let events = Sse::new(send(&d.socket, req).await).collect().await;
        assert_chat_order(&events);
    }
    // DELETE is state-changing too.
    let del = request(
        "DELETE",
        "/api/conversations/0123456789abcdef0123456789abcdef",
    )
    .header("origin", "http://evil.example")
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(send(&d.socket, del).await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let d = scripted();
    let raw = |ct: &str, body: Vec<u8>| {
        request("POST", "/api/chat")
            .header("origin", ORIGIN)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let big = json!({"conversation_id": null, "message": "x ".repeat(150 * 1024)})
        .to_string()
        .into_bytes();
    let cases: Vec<(hyper::Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            raw("application/json", big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            raw("application/json", b"{\"message\": ".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw("application/json", b"[1,2]".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw("application/json", br#"{"conversation_id": null}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": null, "message": "hi", "extra": 1}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw(
                "text/plain",
                br#"{"conversation_id": null, "message": "hi"}"#.to_vec(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": null, "message": "   "}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": null, "message": "hi", "max_new_tokens": 100000}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": null, "message": "hi", "temperature": -1}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": "0123456789abcdef0123456789abcdef", "message": "hi"}"#
                    .to_vec(),
            ),
            StatusCode::NOT_FOUND,
            "conversation_not_found",
        ),
        (
            raw(
                "application/json",
                br#"{"conversation_id": "../../etc", "message": "hi"}"#.to_vec(),
            ),
            StatusCode::NOT_FOUND,
            "conversation_not_found",
        ),
    ];
    for (req, status, code) in cases {
        assert_eq!(error_code(send(&d.socket, req).await, status).await, code);
    }
    // A body just under the limit is read whole (then refused as too long for the context).
    let near = json!({"conversation_id": null, "message": "x ".repeat(120 * 1024)})
        .to_string()
        .into_bytes();
    assert!(near.len() < 256 * 1024);
    let events = Sse::new(send(&d.socket, raw("application/json", near)).await)
        .collect()
        .await;
    assert_eq!(events.last().unwrap().json()["code"], "context_full");
    // An error never quotes the request.
    let resp = send(
        &d.socket,
        raw(
            "application/json",
            br#"{"conversation_id": null, "message": 42, "temperature": "Jane Doe"}"#.to_vec(),
        ),
    )
    .await;
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(!body.contains("Jane"), "{body}");
    // Wrong method.
    let resp = send(&d.socket, get("/api/chat")).await;
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(
        error_code(resp, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
}

#[tokio::test]
async fn context_full_is_reported_before_generating() {
    let d = Server::start(&Setup {
        context_length: 64,
        max_new_tokens: 8,
        styles: false,
        ..Setup::default()
    });
    let long = "word ".repeat(80);
    let events = chat(&d.socket, json!({"conversation_id": null, "message": long})).await;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["conversation", "error"], "nothing generated");
    let err = events[1].json();
    assert_eq!(err["code"], "context_full");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("start a new conversation"),
        "{err}"
    );

    // A conversation that grows until it no longer fits is refused the same way.
    let first = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "word ".repeat(20)}),
    )
    .await;
    let id = first[0].json()["conversation_id"].clone();
    done(&first);
    let mut refused = false;
    for _ in 0..6 {
        let events = chat(
            &d.socket,
            json!({"conversation_id": id, "message": "word ".repeat(10)}),
        )
        .await;
        if events.last().unwrap().name == "error" {
            assert_eq!(events.last().unwrap().json()["code"], "context_full");
            refused = true;
            break;
        }
    }
    assert!(refused, "the conversation was never refused");
}

#[tokio::test]
async fn deleted_and_idle_conversations_are_gone() {
    let d = Server::start(&Setup {
        idle_timeout_secs: 1,
        ..Setup::default()
    });
    let events = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "hi", "max_new_tokens": 2}),
    )
    .await;
    let id = events[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let del = request("DELETE", &format!("/api/conversations/{id}"))
        .header("origin", ORIGIN)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&d.socket, del).await.status(), StatusCode::NO_CONTENT);
    let again = post_json(
        "/api/chat",
        &json!({"conversation_id": id, "message": "hi"}),
    );
    assert_eq!(
        error_code(send(&d.socket, again).await, StatusCode::NOT_FOUND).await,
        "conversation_not_found"
    );

    let events = chat(
        &d.socket,
        json!({"conversation_id": null, "message": "hi", "max_new_tokens": 2}),
    )
    .await;
    let id = events[0].json()["conversation_id"].clone();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = post_json(
        "/api/chat",
        &json!({"conversation_id": id, "message": "hi"}),
    );
    assert_eq!(
        error_code(send(&d.socket, again).await, StatusCode::NOT_FOUND).await,
        "conversation_not_found"
    );
    let (_, status) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(status["conversations"]["count"], 0);
}

#[tokio::test]
async fn status_reports_model_backend_memory_queue_and_sandbox() {
    let d = scripted();
    let (code, s) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["model"]["label"], "Scripted test engine");
    assert_eq!(s["model"]["demo"], true);
    assert_eq!(
        s["model"]["notice"],
        "a small demo model, not a medical model"
    );
    assert_eq!(s["backend"]["kind"], "scripted");
    assert_eq!(s["context_limit"], 4096);
    assert!(s["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["queue"]["capacity"], 4);
    // These tests run with --insecure-no-sandbox (e2e_support::UNSANDBOXED);
    // e2e_sandbox.rs checks the enforced state.
    assert_eq!(s["sandbox"]["enforced"], false);
    assert_eq!(s["sandbox"]["insecure_no_sandbox"], true);
}

#[tokio::test]
async fn openai_api_streams_and_answers_with_reasoning_content() {
    let d = scripted();
    let (_, models) = json_of(send(&d.socket, get("/v1/models")).await).await;
    let id = models["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "scripted-test-engine");
    let body = |stream: bool| {
        request("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({
                    "model": id, "stream": stream, "max_tokens": 9,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                })
                .to_string(),
            )))
            .unwrap()
    };
    let (code, v) = json_of(send(&d.socket, body(false)).await).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        "Considering the question step by step."
    );
    assert_eq!(v["choices"][0]["message"]["content"], "This is a");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 9);

    let events = Sse::new(send(&d.socket, body(true)).await).collect().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(Event::json).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(content, "This is a ");
    assert_eq!(reasoning, "Considering the question step by step.");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length")
    );
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 9
    );
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_removes_the_socket() {
    let mut d = scripted_daemon();
    let resp = send(
        &d.socket,
        post_json(
            "/api/chat",
            &json!({"conversation_id": null, "message": "Long", "max_new_tokens": 1000}),
        ),
    )
    .await;
    let mut sse = Sse::new(resp);
    sse.next().await.unwrap();
    let t0 = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // The running turn is cancelled and its stream ends properly.
    let rest = sse.collect().await;
    assert_eq!(done(&rest)["finish_reason"], "cancelled");
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(!d.socket.exists(), "socket file removed");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    // medgemmad's MAX_CONNECTIONS.
    const MAX_CONNECTIONS: usize = 64;
    let d = scripted();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(tokio::net::UnixStream::connect(&d.socket).await.unwrap());
    }
    // Give the server time to accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = tokio::spawn({
        let socket = d.socket.clone();
        async move { send(&socket, get("/api/status")).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !extra.is_finished(),
        "the connection beyond the limit waits in the backlog"
    );
    idle.pop();
    let status = tokio::time::timeout(Duration::from_secs(5), extra)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}
