//! Per-client limits of the chat API, end to end with the scripted engine
//! (`engine.backend = "scripted"`, 20 ms per word): a browser session keeps
//! its share of conversations and of running turns and no more, another
//! client is not affected, and a conversation whose first request never
//! started is freed at once instead of holding a slot for the idle timeout.
//! Needs `--features test-engine`.

#![cfg(feature = "test-engine")]

mod e2e_support;

use bytes::Bytes;
use e2e_support::*;
use http_body_util::Full;
use hyper::StatusCode;
use medgemmad::server::conversations::{MAX_CONVERSATIONS_PER_CLIENT, MAX_RUNNING_PER_CLIENT};
use serde_json::json;

/// A long turn (1000 scripted tokens, 20 s) as `cookie`; its stream after
/// the `conversation` event, and the conversation's id.
async fn long_turn(socket: &std::path::Path, cookie: Option<&str>) -> (Sse, String) {
    let mut req = post_json(
        "/api/chat",
        &json!({"conversation_id": null, "message": "Long", "max_new_tokens": 1000}),
    );
    if let Some(c) = cookie {
        req = with_cookie(req, c);
    }
    let mut sse = Sse::new(send(socket, req).await);
    let first = sse.next().await.expect("conversation event");
    assert_eq!(first.name, "conversation");
    let id = first.json()["conversation_id"].as_str().unwrap().to_owned();
    (sse, id)
}

async fn cancel(socket: &std::path::Path, cookie: Option<&str>, id: &str) {
    let mut req = post_json("/api/chat/cancel", &json!({"conversation_id": id}));
    if let Some(c) = cookie {
        req = with_cookie(req, c);
    }
    let (status, v) = json_of(send(socket, req).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// A short question whose answer has text (the scripted trace takes six
/// tokens), so its conversation shows in the list.
fn new_question() -> serde_json::Value {
    json!({"conversation_id": null, "message": "hi", "max_new_tokens": 8})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_runs_its_share_of_turns_and_keeps_its_share_of_conversations() {
    let d = Server::start(&Setup::default());
    let a = client_cookie(0xa1);
    let b = client_cookie(0xb2);

    // Running turns: A may run MAX_RUNNING_PER_CLIENT at once (one
    // generating, the others queued), not one more; B is not affected.
    let mut running = Vec::new();
    for _ in 0..MAX_RUNNING_PER_CLIENT {
        running.push(long_turn(&d.socket, Some(&a)).await);
    }
    let refused = send(
        &d.socket,
        with_cookie(post_json("/api/chat", &new_question()), &a),
    )
    .await;
    assert_eq!(
        error_code(refused, StatusCode::TOO_MANY_REQUESTS).await,
        "client_limit"
    );
    let (b_sse, b_id) = long_turn(&d.socket, Some(&b)).await;
    // When one of A's turns ends, A may ask again.
    let (sse, id) = running.pop().unwrap();
    cancel(&d.socket, Some(&a), &id).await;
    let _ = sse.collect().await;
    for (sse, id) in running.drain(..) {
        cancel(&d.socket, Some(&a), &id).await;
        let _ = sse.collect().await;
    }
    cancel(&d.socket, Some(&b), &b_id).await;
    let _ = b_sse.collect().await;
    done(&chat_as(&d.socket, &a, new_question()).await);

    // Conversations: A keeps MAX_CONVERSATIONS_PER_CLIENT, the one above is
    // refused with a sentence; B still starts one; deleting one of A's
    // makes room.
    let (_, list) =
        json_of(send(&d.socket, with_cookie(get("/api/conversations"), &a)).await).await;
    let held = list["conversations"].as_array().unwrap().len();
    for _ in held..MAX_CONVERSATIONS_PER_CLIENT {
        done(&chat_as(&d.socket, &a, new_question()).await);
    }
    let resp = send(
        &d.socket,
        with_cookie(post_json("/api/chat", &new_question()), &a),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, v) = json_of(resp).await;
    assert_eq!(v["error"]["code"], "client_limit");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete old conversations"),
        "{v}"
    );
    done(&chat_as(&d.socket, &b, new_question()).await);
    let (_, list) =
        json_of(send(&d.socket, with_cookie(get("/api/conversations"), &a)).await).await;
    let oldest = list["conversations"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let del = with_cookie(
        request("DELETE", &format!("/api/conversations/{oldest}"))
            .header("origin", ORIGIN)
            .body(Full::new(Bytes::new()))
            .unwrap(),
        &a,
    );
    assert_eq!(send(&d.socket, del).await.status(), StatusCode::NO_CONTENT);
    done(&chat_as(&d.socket, &a, new_question()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_whose_request_never_started_is_freed() {
    let d = Server::start(&Setup::default());
    let c = client_cookie(0xc3);
    // The engine runs one turn at a time: this one holds it.
    let (blocker, blocker_id) = long_turn(&d.socket, None).await;
    // C's first question waits in the queue; C stops it there.
    let (waiting, id) = long_turn(&d.socket, Some(&c)).await;
    cancel(&d.socket, Some(&c), &id).await;
    cancel(&d.socket, None, &blocker_id).await;
    let _ = blocker.collect().await;
    let events = waiting.collect().await;
    assert!(
        !events
            .iter()
            .any(|e| e.name == "answer" || e.name == "reasoning"),
        "the cancelled turn never ran: {events:?}"
    );
    // The conversation the client was told of is gone, not kept empty for
    // the idle timeout.
    let resp = send(
        &d.socket,
        with_cookie(get(&format!("/api/conversations/{id}")), &c),
    )
    .await;
    assert_eq!(
        error_code(resp, StatusCode::NOT_FOUND).await,
        "conversation_not_found"
    );
    let (_, status) = json_of(send(&d.socket, get("/api/status")).await).await;
    let count = status["conversations"]["count"].as_u64().unwrap();
    let (_, b) =
        json_of(send(&d.socket, get(&format!("/api/conversations/{blocker_id}"))).await).await;
    let blocker_kept = u64::from(b["error"].is_null());
    assert_eq!(
        count, blocker_kept,
        "only the blocker's conversation may remain"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_regenerate_that_never_started_gives_the_old_answer_back() {
    let d = Server::start(&Setup::default());
    let c = client_cookie(0xc4);
    let first = chat_as(
        &d.socket,
        &c,
        json!({"message": "hi", "max_new_tokens": 20}),
    )
    .await;
    let id = first[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = text(&first, "answer");
    assert!(!answer.is_empty());
    let (blocker, blocker_id) = long_turn(&d.socket, None).await;
    let req = with_cookie(
        post_json(
            "/api/chat",
            &json!({"conversation_id": id, "message": "", "regenerate": true}),
        ),
        &c,
    );
    let mut regen = Sse::new(send(&d.socket, req).await);
    regen.next().await.unwrap();
    cancel(&d.socket, Some(&c), &id).await;
    cancel(&d.socket, None, &blocker_id).await;
    let _ = blocker.collect().await;
    let _ = regen.collect().await;
    let (status, conv) = json_of(
        send(
            &d.socket,
            with_cookie(get(&format!("/api/conversations/{id}")), &c),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{conv}");
    assert_eq!(
        conv["messages"][1]["content"].as_str().unwrap().trim(),
        answer.trim(),
        "{conv}"
    );
}
