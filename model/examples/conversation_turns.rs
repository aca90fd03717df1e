//! Time to the first token of a follow-up question in a long conversation,
//! with the conversation's KV cache kept from the previous turn
//! (`Sequence::resume`) and without (a full prefill of the whole
//! conversation). Prints numbers, judges nothing.
//!
//! ```text
//! cargo run --release -p medgemma-model --example conversation_turns -- \
//!     [--model GGUF] [--context-tokens 2000] [--answer-tokens 48]
//! ```
//!
//! The first turn is a user message of about `--context-tokens` tokens (a
//! clinical sentence repeated) answered greedily; the second asks a short
//! question. Both runs of the second turn must give the same tokens; the
//! example says whether they do. Threads: rayon's pool (`RAYON_NUM_THREADS`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Instant;

use medgemma_model::backend::{cpu_device, cpu_dtype};
use medgemma_model::chat::{Message, encode_chat};
use medgemma_model::generate::{
    ConversationCache, Flow, Generation, PREFILL_CHUNK, Sequence, decode_step,
};
use medgemma_model::load::{LoadedModel, load_model};
use medgemma_model::sampling::SamplingParams;

const SENTENCE: &str = "Diabetic nephropathy is a chronic complication of diabetes mellitus in which \
persistent hyperglycaemia damages the glomeruli, leading to albuminuria, a progressive decline in \
glomerular filtration rate and, eventually, end-stage kidney disease. ";

/// One turn as the daemon runs it: chunked prefill, then greedy decode.
fn turn(
    m: &LoadedModel,
    kept: Option<ConversationCache>,
    prompt: &[u32],
    new: usize,
) -> (Generation, usize, ConversationCache) {
    let mut opts = m.default_options(new, SamplingParams::default());
    opts.ignore_eos = true;
    let mut seq = Sequence::resume(&m.model, kept, prompt, opts).expect("the turn starts");
    let reused = seq.reused_tokens();
    while !seq.is_finished() {
        if seq.is_prefilled() {
            decode_step(&m.model, &mut [&mut seq], |_, _| Flow::Continue).expect("decodes");
        } else {
            seq.prefill_chunk(&m.model, PREFILL_CHUNK, &mut |_| Flow::Continue)
                .expect("prefills");
        }
    }
    let (g, kept) = seq.into_conversation();
    (g, reused, kept)
}

fn main() {
    let assets = std::env::var_os("MEDGEMMA_ASSETS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medgemma-assets"))
        })
        .unwrap_or_default();
    let mut model = assets.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    let (mut context, mut answer) = (2000usize, 48usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()),
            "--context-tokens" => context = value().parse().expect("a number"),
            "--answer-tokens" => answer = value().parse().expect("a number"),
            other => panic!("unknown argument {other}"),
        }
    }
    let m = load_model(&model, None, &cpu_device(), cpu_dtype()).expect("the model loads");
    let tok = m
        .tokenizer
        .as_ref()
        .expect("the model carries its tokenizer");

    // A first user message of about `context` tokens.
    let per_sentence = tok.encode_raw(SENTENCE).expect("encodes").len().max(1);
    let question1 = format!(
        "{}Summarise the patient's risk.",
        SENTENCE.repeat(context.saturating_sub(40) / per_sentence)
    );
    let p1 = encode_chat(tok, &[Message::user(question1.clone())], true).expect("encodes");
    let t = Instant::now();
    let (g1, _, kept) = turn(&m, None, &p1, answer);
    let first_turn = t.elapsed().as_secs_f64();
    let answer_text = tok.decode(&g1.tokens).expect("decodes");
    let p2 = encode_chat(
        tok,
        &[
            Message::user(question1),
            Message::assistant(answer_text),
            Message::user("What should be checked at the next visit?"),
        ],
        true,
    )
    .expect("encodes");

    let matches = kept.matches(&p2);
    let (resumed, reused, _) = turn(&m, Some(kept), &p2, 16);
    let (full, _, _) = turn(&m, None, &p2, 16);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": model.display().to_string(),
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "first_turn_prompt_tokens": p1.len(),
            "first_turn_s": first_turn,
            "second_turn_prompt_tokens": p2.len(),
            "kept_cache_matches": matches,
            "kept_tokens_reused": reused,
            "time_to_first_token_kept_cache_s": resumed.prefill.as_secs_f64(),
            "time_to_first_token_full_prefill_s": full.prefill.as_secs_f64(),
            "same_tokens": resumed.tokens == full.tokens,
        }))
        .unwrap_or_default()
    );
}
