//! Measures a follow-up question in a long conversation with and without
//! the conversation's kept KV cache (`engine.keep_context`), on the CPU:
//! the first turn prefills a ~2 000-token conversation, the second adds the
//! answer and a short question. Prints the time to first token of each.
//!
//!     MEDGEMMA_ASSETS=... cargo run -p medgemmad --example follow_up [--release]
//!
//! The text is a fixed, synthetic case description (no patient data).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use medgemma_model::backend::{cpu_device, cpu_dtype};
use medgemma_model::chat::Message;
use medgemma_model::generate::Flow;
use medgemma_model::load::load_model;
use medgemma_model::sampling::SamplingParams;
use medgemmad::engine::{ChatRequest, Engine, KeptContext, ModelEngine};

fn main() {
    let dir = std::env::var_os("MEDGEMMA_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/medgemma-assets"));
    let gguf = dir.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    let tok = dir.join("tokenizer/tokenizer.json");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sentence = "The patient, a 58-year-old with type 2 diabetes and hypertension, reports two days of worsening shortness of breath, ankle swelling and orthopnoea; blood pressure 162/94, heart rate 104, oxygen saturation 91% on air, bibasal crackles. ";
    let mut out = std::io::stdout().lock();
    for keep in [false, true] {
        let loaded = load_model(&gguf, Some(&tok), &cpu_device(), cpu_dtype()).expect("loads");
        let mut engine = ModelEngine::new(loaded, 4096, "cpu".into(), "bench".into())
            .expect("engine")
            .with_kept_context(if keep { u64::MAX } else { 0 });
        let slot = KeptContext::new();
        let mut messages = vec![Message::user(format!(
            "{}What is the most likely diagnosis?",
            sentence.repeat(45)
        ))];
        let mut ttft = Vec::new();
        for question in ["Which tests first?", "And the first treatment?"] {
            let req = ChatRequest {
                messages: messages.clone(),
                max_new_tokens: 32,
                sampling: SamplingParams::default(),
                cancel: Arc::new(AtomicBool::new(false)),
                kept: Some(slot.clone()),
                images: Vec::new(),
            };
            let s = engine.chat(&req, &mut |_| Flow::Continue).expect("answers");
            ttft.push((s.prompt_tokens, s.reused_tokens, s.time_to_first_token));
            messages.push(Message::assistant(s.answer.trim()));
            messages.push(Message::user(question));
        }
        for (i, (prompt, reused, t)) in ttft.iter().enumerate() {
            writeln!(
                out,
                "keep_context={keep:<5} turn {} prompt {prompt:>5} tokens, {reused:>5} from the kept cache, time to first token {:.2} s ({threads} threads)",
                i + 1,
                t.as_secs_f64()
            )
            .expect("stdout");
        }
    }
}
