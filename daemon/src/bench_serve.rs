//! `medgemmad bench --serve N`: the engine's own path, as `serve` drives it.
//!
//! The bench's batch rows decode B copies of one prompt in lockstep, so
//! the batch never changes and a decode graph is captured once. A server's
//! batch changes whenever a turn ends and a queued one joins: the new turn's
//! prompt is prefilled between decode steps, and it joins the decode graph
//! by taking over the ended turn's row where its cache fits, else by a new
//! capture. This runs [`ModelEngine`] (the warm-up that turns the graph on,
//! `begin`, `step`) with N turns in flight: their answer lengths are
//! staggered, and a new turn begins as soon as one ends, as the worker
//! admits queued requests, so the batch changes every few steps. It prints
//! the generated tokens per second in all (prefills, text streaming and
//! captures included) and the captures the churn cost, to set beside the
//! bench's batch N.
//!
//! A clinician's answer ends at the model's end-of-turn token, which the
//! engine cannot see coming; the random weights never choose it. So each
//! turn here asks for far more tokens than it gets and is cancelled at its
//! length: an end the engine learns of only when it happens, as with a
//! stop token. Ends at a known length (`--serve-known-ends`: each turn's
//! own token limit) also let the engine leave a batch that is about to
//! change uncaptured (`decode_graph::MIN_RUN`).
//!
//! Owns: its synthetic, non-clinical prompts. Must never: judge (it prints
//! numbers), or read the answers (noise with random weights).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use medgemma_model::chat::Message;
use medgemma_model::gemma3::Gemma3;
use medgemma_model::generate::Flow;
use medgemma_model::load::LoadedModel;
use medgemma_model::sampling::SamplingParams;
use medgemma_model::tokenizer::GemmaTokenizer;

use crate::engine::{ChatRequest, Engine, EngineError, ModelEngine};

/// Turns started per turn in flight: the first N together, then two
/// rounds of replacements joining one by one.
const ROUNDS: usize = 3;

/// The answer lengths of a run with `in_flight` turns of at most `longest`
/// tokens: turn `k` asks for between half and all of `longest`, spread so
/// that the first turns end at different steps and each end lets a new
/// turn join (the batch changes every `longest / 2 / in_flight` steps or
/// so, at least every step when that is under one).
pub fn answer_lengths(in_flight: usize, longest: usize) -> Vec<usize> {
    let half = (longest / 2).max(1);
    (0..in_flight * ROUNDS)
        .map(|k| half + (k % in_flight) * (longest - half) / in_flight.max(1))
        .map(|n| n.max(1))
        .collect()
}

/// Runs `in_flight` turns at a time through an engine over `model` (its
/// weights shared, not copied) until `answer_lengths` is used up; returns
/// the numbers as one JSON object.
pub fn serve_at(
    model: &Gemma3,
    tokenizer: GemmaTokenizer,
    description: medgemma_model::load::ModelDescription,
    in_flight: usize,
    longest: usize,
    known_ends: bool,
    backend: &str,
) -> Result<serde_json::Value, EngineError> {
    let loaded = LoadedModel {
        model: model.clone(),
        tokenizer: Some(tokenizer),
        description,
        load_time: std::time::Duration::ZERO,
    };
    let context = 4096.min(model.config().max_position_embeddings);
    let mut engine = ModelEngine::new(loaded, context, backend.to_owned(), "bench".to_owned())?
        .with_max_batch(in_flight);
    // As `serve` starts: the warm-up compiles the kernels and, on a CubeCL
    // device, turns the decode graph on when it answers as launched.
    let warm_up = engine.warm_up()?;
    let (captures_before, _) = engine.graph_captures();
    let let_go_before = engine.graph_ghosts_let_go();

    let lengths = answer_lengths(in_flight, longest);
    let mut next = lengths.iter().copied().enumerate();
    let mut running = 0usize;
    let (mut generated, mut turns, mut steps) = (0usize, 0usize, 0usize);
    let mut batch_sum = 0usize;
    let mut begin_s = 0.0;
    // Per running turn with an unforeseen end: its cancel flag, its length
    // and the tokens it has had (one from its prompt, one per step).
    let mut ends: HashMap<_, (Arc<AtomicBool>, usize, usize)> = HashMap::new();
    let t0 = Instant::now();
    loop {
        while running < in_flight {
            let Some((k, n)) = next.next() else { break };
            let req = request(k, n, known_ends);
            let t = Instant::now();
            let id = engine.begin(&req, &mut |_| Flow::Continue)?;
            begin_s += t.elapsed().as_secs_f64();
            if !known_ends {
                ends.insert(id, (Arc::clone(&req.cancel), n, 1));
            }
            running += 1;
        }
        if running == 0 {
            break;
        }
        // A turn that has had its length ends in this step, which the
        // engine learns of at the step's start (as it would a stop token
        // chosen at the end of the last one).
        for (cancel, n, had) in ends.values_mut() {
            if *had >= *n {
                cancel.store(true, Ordering::Relaxed);
            }
            *had += 1;
        }
        batch_sum += running;
        steps += 1;
        for (id, outcome) in engine.step(&mut |_, _| Flow::Continue) {
            let summary = outcome?;
            generated += summary.completion_tokens;
            turns += 1;
            running -= 1;
            ends.remove(&id);
        }
    }
    let s = t0.elapsed().as_secs_f64();
    let (captures, hardware) = engine.graph_captures();
    Ok(serde_json::json!({
        "in_flight": in_flight,
        "ends": if known_ends { "known: each turn's token limit" } else { "unforeseen: cancelled at its length, as a stop token ends a turn" },
        "turns": turns,
        "answer_tokens_asked": lengths.iter().sum::<usize>(),
        "generated_tokens": generated,
        "engine_steps": steps,
        "mean_batch": if steps > 0 { batch_sum as f64 / steps as f64 } else { 0.0 },
        "seconds": s,
        "aggregate_tokens_per_s": if s > 0.0 { generated as f64 / s } else { 0.0 },
        // The new turns' prompts, prefilled in `begin` (one chunk: all of
        // these short prompts), as the worker admits them.
        "begin_s": begin_s,
        "aggregate_tokens_per_s_outside_begin": if s > begin_s { generated as f64 / (s - begin_s) } else { 0.0 },
        "warm_up_s": warm_up.as_secs_f64(),
        "decode_graph": engine.graph_on(),
        "hardware_graph": hardware,
        "captures": captures - captures_before,
        // Captures let go because an ended turn's buffers would have pushed
        // the caches past the memory budget (none for short turns).
        "ghosts_let_go": engine.graph_ghosts_let_go() - let_go_before,
        // (Shape, rows) pairs its warm-up routed to the tiled kernel or
        // Burn's matmul (the rest run our skinny kernel; none off a CubeCL
        // device).
        "products_off_skinny": engine
            .product_tuning()
            .iter()
            .filter(|t| t.route != medgemma_model::ProductRoute::Skinny)
            .count(),
        // Weight shapes its warm-up moved off Burn's matmul for prompt
        // chunks (none off a CubeCL device).
        "chunk_shapes_off_burn": engine
            .chunk_tuning()
            .iter()
            .filter(|t| t.route != "burn")
            .count(),
    }))
}

/// Turn `k`'s request: a short fixed question (so the run measures the
/// decode under churn more than prefill) for `n` tokens: its limit where
/// the ends are known, else a limit it never meets (it is cancelled).
fn request(k: usize, n: usize, known_ends: bool) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(format!(
            "Benchmark turn {k}: name three colours of the rainbow."
        ))],
        max_new_tokens: if known_ends { n } else { 4 * n + 64 },
        sampling: SamplingParams::default(),
        cancel: Arc::new(AtomicBool::new(false)),
        kept: None,
        images: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use medgemma_model::backend::{cpu_device, cpu_dtype};
    use medgemma_model::load::load_model;

    use super::{answer_lengths, serve_at};
    use crate::engine::test_270m_files;

    /// The real 270M and tokenizer through the engine on the CPU: every
    /// turn is answered, turns overlap in the batch, and a new one joins as
    /// one ends (more turns than fit at once).
    #[test]
    fn serve_runs_every_turn_through_the_engine_with_the_real_270m() {
        let Some((gguf, tok)) = test_270m_files() else {
            return;
        };
        let loaded = load_model(&gguf, Some(&tok), &cpu_device(), cpu_dtype()).expect("loads");
        let tokenizer = loaded.tokenizer.clone().expect("a tokenizer");
        let r = serve_at(
            &loaded.model,
            tokenizer,
            loaded.description.clone(),
            2,
            6,
            false,
            "cpu",
        )
        .expect("the serve bench runs");
        let asked = answer_lengths(2, 6).iter().sum::<usize>() as u64;
        assert_eq!(r["turns"], 6, "{r}");
        assert_eq!(r["answer_tokens_asked"], asked, "{r}");
        let generated = r["generated_tokens"].as_u64().expect("a count");
        // At least one token a turn, and no turn past its length.
        assert!((6..=asked).contains(&generated), "{r}");
        let mean = r["mean_batch"].as_f64().expect("a mean");
        assert!(mean > 1.0 && mean <= 2.0, "two turns share steps: {r}");
        // Fewer steps than the turns one after another would take.
        assert!(
            r["engine_steps"].as_u64().expect("steps") < generated,
            "{r}"
        );
        assert!(r["aggregate_tokens_per_s"].as_f64().expect("a rate") > 0.0);
        // No CubeCL device: no graph, no capture.
        assert_eq!(r["decode_graph"], false, "{r}");
        assert_eq!(r["captures"], 0, "{r}");
        assert_eq!(r["ghosts_let_go"], 0, "{r}");

        // Ends the engine knows ahead: the same turns, each at its limit.
        let tokenizer = loaded.tokenizer.clone().expect("a tokenizer");
        let known = serve_at(
            &loaded.model,
            tokenizer,
            loaded.description,
            2,
            6,
            true,
            "cpu",
        )
        .expect("the serve bench runs");
        assert_eq!(known["turns"], 6, "{known}");
        assert!(known["ends"].as_str().expect("said").starts_with("known"));
        let g = known["generated_tokens"].as_u64().expect("a count");
        assert!(
            (6..=asked).contains(&g),
            "no turn runs past its limit: {known}"
        );
    }

    #[test]
    fn answer_lengths_are_staggered_between_half_and_all() {
        let l = answer_lengths(4, 64);
        assert_eq!(l.len(), 12);
        assert_eq!(&l[..4], &[32, 40, 48, 56]);
        assert_eq!(&l[4..8], &l[..4], "each round repeats the spread");
        assert_eq!(answer_lengths(1, 1), vec![1; 3]);
        assert!(answer_lengths(32, 8).iter().all(|&n| (4..8).contains(&n)));
    }
}
