//! A conversation's KV cache kept between turns (`ConversationCache`,
//! `Sequence::resume`) on the real Gemma 3 270M GGUF: the next turn
//! prefills only its new tokens, and the tokens it generates are those of a
//! full prefill of the whole conversation; a prompt that does not continue
//! the kept ids falls back to the full prefill.

mod support;

use std::sync::OnceLock;

use medgemma_model::chat::{Message, encode_chat};
use medgemma_model::generate::{ConversationCache, Flow, Generation, Sequence, decode_step};
use medgemma_model::load::{LoadedModel, load_model};
use medgemma_model::sampling::SamplingParams;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        load_model(
            &support::gguf_270m(),
            None,
            &support::test_device(),
            support::test_dtype(),
        )
        .expect("the 270M GGUF loads")
    })
}

/// Runs one turn to the end (greedy, `new` tokens, eos ignored) and returns
/// what it generated, how many prompt tokens came from `kept`, and the cache
/// the conversation keeps.
fn turn(
    kept: Option<ConversationCache>,
    prompt: &[u32],
    new: usize,
    keep_prompt: bool,
) -> (Generation, usize, ConversationCache) {
    let m = model();
    let mut opts = m.default_options(new, SamplingParams::default());
    opts.ignore_eos = true;
    let mut seq = Sequence::resume(&m.model, kept, prompt, opts).expect("the turn starts");
    if keep_prompt {
        seq.keep_prompt_cache();
    }
    let reused = seq.reused_tokens();
    while !seq.is_finished() {
        if seq.is_prefilled() {
            decode_step(&m.model, &mut [&mut seq], |_, _| Flow::Continue).expect("decodes");
        } else {
            // Chunks, as the daemon prefills.
            seq.prefill_chunk(&m.model, 7, &mut |_| Flow::Continue)
                .expect("prefills");
        }
    }
    let (g, kept) = seq.into_conversation();
    (g, reused, kept)
}

#[test]
fn a_kept_answer_cache_prefills_only_the_new_tokens_and_generates_as_a_full_prefill() {
    let tok = model()
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    let first = tok
        .encode_raw("Diabetic nephropathy is a complication of")
        .expect("encodes");
    let (g1, reused, kept) = turn(None, &first, 12, false);
    assert_eq!(reused, 0, "a first turn has nothing to reuse");
    // The cache holds the prompt and every generated token but the last
    // (which was never fed back).
    assert_eq!(kept.len(), first.len() + g1.tokens.len() - 1);

    // The next prompt continues the conversation exactly: prompt, answer,
    // then new text.
    let mut next = first.clone();
    next.extend(&g1.tokens);
    next.extend(
        tok.encode_raw(" What are its first signs?")
            .expect("encodes")[1..]
            .iter(),
    );
    assert!(kept.matches(&next));
    let (resumed, reused, kept2) = turn(Some(kept), &next, 16, false);
    assert_eq!(reused, first.len() + g1.tokens.len() - 1);
    assert_eq!(
        resumed.prompt_tokens,
        next.len() - reused,
        "only the new tokens ran"
    );
    let (full, reused_full, _) = turn(None, &next, 16, false);
    assert_eq!(reused_full, 0);
    assert_eq!(resumed.tokens, full.tokens, "same tokens as a full prefill");
    assert_eq!(kept2.len(), next.len() + resumed.tokens.len() - 1);
}

#[test]
fn a_chat_turn_keeping_its_prompt_cache_serves_the_next_turn_of_the_chat_template() {
    // A thinking turn's answer comes back without its reasoning, so the
    // conversation keeps the cache of the prompt alone; the next turn's
    // prompt (the chat template over the history) begins with that prompt.
    let m = model();
    let tok = m
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    let q1 = "What is diabetic nephropathy?";
    let p1 = encode_chat(tok, &[Message::user(q1)], true).expect("encodes");
    let (g1, _, kept) = turn(None, &p1, 10, true);
    assert_eq!(kept.len(), p1.len(), "the prompt's cache is kept");
    let answer = tok.decode(&g1.tokens).expect("decodes");
    let p2 = encode_chat(
        tok,
        &[
            Message::user(q1),
            Message::assistant(answer),
            Message::user("How is it treated?"),
        ],
        true,
    )
    .expect("encodes");
    assert!(
        p2.starts_with(&p1),
        "the template renders the first prompt as a prefix"
    );
    let (resumed, reused, _) = turn(Some(kept), &p2, 12, false);
    assert_eq!(reused, p1.len());
    let (full, _, _) = turn(None, &p2, 12, false);
    assert_eq!(resumed.tokens, full.tokens, "same tokens as a full prefill");
}

#[test]
fn a_prompt_that_does_not_continue_the_kept_ids_is_prefilled_in_full() {
    let tok = model()
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    let first = tok
        .encode_raw("The kidneys filter the blood")
        .expect("encodes");
    let (g1, _, kept) = turn(None, &first, 6, false);
    // Same length and more, but one earlier id changed: the cache is stale.
    let mut edited = first.clone();
    edited.extend(&g1.tokens);
    edited[2] = edited[2].wrapping_add(1) % 1000 + 100;
    edited.extend(tok.encode_raw(" and").expect("encodes")[1..].iter());
    assert!(!kept.matches(&edited));
    let (resumed, reused, _) = turn(Some(kept.clone()), &edited, 8, false);
    assert_eq!(reused, 0);
    assert_eq!(resumed.prompt_tokens, edited.len());
    let (full, _, _) = turn(None, &edited, 8, false);
    assert_eq!(resumed.tokens, full.tokens);
    // The kept ids alone add nothing to run: also a full prefill.
    let same: Vec<u32> = first
        .iter()
        .chain(&g1.tokens[..g1.tokens.len() - 1])
        .copied()
        .collect();
    assert_eq!(same.len(), kept.len());
    assert!(!kept.matches(&same));
}
