//! End-to-end with images: `medgemmad serve` on a small
//! `Gemma3ForConditionalGeneration` with a vision tower (the transformers
//! fixture `tests/fixtures/vision_tiny_a` widened to the real vocabulary by
//! `scripts/fixtures/make_vision_chat_model.py`) and the real Gemma 3
//! tokenizer, on the CPU. An image question answers through `/api/chat` and
//! the OpenAI API, both build the same prompt, images stay in a
//! conversation's history, bad images are sentences that echo nothing, and
//! a text-only model refuses images. The answers are noise (random weights):
//! only the protocol and the prompt's token counts are asserted.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use e2e_support::*;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(300);
/// Soft tokens per image of the fixture (`mm_tokens_per_image`).
const PER_IMAGE: u64 = 16;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data_url(name: &str) -> String {
    let bytes = std::fs::read(repo().join("tests/fixtures/vision_images").join(name)).unwrap();
    let mime = if name.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    };
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn oai(body: Value) -> hyper::Request<Full<Bytes>> {
    request("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The OpenAI API's prompt tokens for `messages` (one answer token).
async fn prompt_tokens(socket: &Path, messages: Value) -> u64 {
    let (code, v) =
        json_of(send(socket, oai(json!({"max_tokens": 1, "messages": messages}))).await).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

fn image_part(name: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": data_url(name)}})
}

#[tokio::test(flavor = "multi_thread")]
async fn image_questions_answer_through_the_ui_api_and_the_openai_api() {
    let Some((_, tokenizer)) = real_model() else {
        return;
    };
    let model = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/fixtures/make_vision_chat_model.py"))
        .arg("--out")
        .arg(model.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start(
        &Setup {
            backend: "cpu",
            model_path: Some(model.path().to_path_buf()),
            tokenizer_path: Some(tokenizer),
            label: "Tiny vision fixture",
            max_new_tokens: 8,
            ..Setup::default()
        },
        READY,
    );
    assert!(d.log().contains("vision tower loaded"), "{}", d.log());
    let (_, status) = json_of(send(&d.socket, get("/api/status")).await).await;
    assert_eq!(status["model"]["images"], true, "{status}");

    // The UI's API: an image and a question, streamed as any turn.
    let question = "What does this image show?";
    let events = chat(
        &d.socket,
        json!({"message": question, "images": [data_url("rgb_300x220.png")], "max_new_tokens": 4}),
    )
    .await;
    assert_chat_order(&events);
    let first = done(&events);
    // Without the image the prompt is one image block shorter: its soft
    // tokens, <start_of_image>, <end_of_image> and the blank lines around;
    // the same through the UI's API (with its answer-style preset) and the
    // OpenAI API.
    let text_events = chat(&d.socket, json!({"message": question, "max_new_tokens": 1})).await;
    let ui_text_only = done(&text_events)["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        first["prompt_tokens"].as_u64().unwrap() - ui_text_only,
        PER_IMAGE + 4,
        "{first}"
    );
    let same = prompt_tokens(
        &d.socket,
        json!([{"role": "user", "content": [image_part("rgb_300x220.png"), {"type": "text", "text": question}]}]),
    )
    .await;
    let text_only = prompt_tokens(&d.socket, json!([{"role": "user", "content": question}])).await;
    assert_eq!(same - text_only, PER_IMAGE + 4);
    // Images earlier in a conversation stay in its prompt (OpenAI: the
    // client sends the history; two images, a JPEG among them).
    let history = |with: bool| {
        let mut first: Vec<Value> = Vec::new();
        if with {
            first.push(image_part("rgb_300x220.png"));
            first.push(image_part("photo_444_640x480.jpg"));
        }
        first.push(json!({"type": "text", "text": question}));
        json!([
            {"role": "user", "content": first},
            {"role": "assistant", "content": "A test pattern."},
            {"role": "user", "content": "Anything abnormal?"},
        ])
    };
    let with = prompt_tokens(&d.socket, history(true)).await;
    let without = prompt_tokens(&d.socket, history(false)).await;
    assert_eq!(with - without, 2 * (PER_IMAGE + 4));
    // The UI's follow-up in the same conversation answers.
    let conv = events[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let follow = chat(
        &d.socket,
        json!({"conversation_id": conv, "message": "Anything abnormal?", "max_new_tokens": 2}),
    )
    .await;
    assert_chat_order(&follow);

    // Bad images: a 400 that says what to do and echoes nothing.
    let canary = "CANARY-img-e2e-19";
    let junk = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(format!("Patient {canary} has a rash"))
    );
    for (images, code) in [
        (vec![junk.clone()], "image_invalid"),
        (
            vec!["https://example.org/x.png".to_owned()],
            "image_invalid",
        ),
        (vec![data_url("rgb_300x220.png"); 5], "too_many_images"),
    ] {
        let resp = send(
            &d.socket,
            post_json("/api/chat", &json!({"message": question, "images": images})),
        )
        .await;
        let body = body_bytes(resp).await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(code), "{text}");
        assert!(!text.contains(canary), "{text}");
    }
    let resp = send(
        &d.socket,
        oai(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": junk}}, {"type": "text", "text": "x"}]}]})),
    )
    .await;
    assert_eq!(
        error_code(resp, StatusCode::BAD_REQUEST).await,
        "image_invalid"
    );
    assert!(!d.log().contains(canary), "the log holds the image's bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_only_model_refuses_images_with_a_sentence() {
    let server = Server::start(&Setup::default());
    let (_, status) = json_of(send(&server.socket, get("/api/status")).await).await;
    assert_eq!(status["model"]["images"], false, "{status}");
    let resp = send(
        &server.socket,
        post_json(
            "/api/chat",
            &json!({"message": "What is this?", "images": [data_url("rgb_300x220.png")]}),
        ),
    )
    .await;
    assert_eq!(
        error_code(resp, StatusCode::BAD_REQUEST).await,
        "images_not_supported"
    );
    let resp = send(
        &server.socket,
        oai(json!({"messages": [{"role": "user", "content": [image_part("rgb_300x220.png"), {"type": "text", "text": "x"}]}]})),
    )
    .await;
    assert_eq!(
        error_code(resp, StatusCode::BAD_REQUEST).await,
        "images_not_supported"
    );
}
