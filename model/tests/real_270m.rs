//! The real Gemma 3 270M GGUF (Q8_0/Q5_0/Q4_K/Q6_K, fetched by
//! `scripts/fetch-assets.sh`) against an independent runtime: transformers'
//! GGUF loader, dequantized to f32 like this engine
//! (`tests/fixtures/gemma3_270m_reference.json`, made by
//! `scripts/fixtures/ref_270m.py`). The tokenizer is the GGUF's own.

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use medgemma_model::gemma3::Logits;
use medgemma_model::generate::{Flow, generate};
use medgemma_model::load::{LoadedModel, load_model};
use medgemma_model::sampling::SamplingParams;
use serde_json::Value;

fn assets() -> PathBuf {
    support::gguf_270m()
}

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        // CPU f32 by default; MEDGEMMA_TEST_DEVICE=cuda / MEDGEMMA_TEST_DTYPE=bf16
        // run it on the GPU (support module).
        load_model(
            &assets(),
            None,
            &support::test_device(),
            support::test_dtype(),
        )
        .expect("the 270M GGUF loads")
    })
}

fn reference() -> Value {
    let p = support::fixtures_dir().join("gemma3_270m_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_continuations_match_transformers_on_every_prompt() {
    let m = model();
    let tok = m
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    let reference = reference();
    for p in reference["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        let prompt = tok.encode_raw(text).unwrap();
        assert_eq!(
            prompt,
            u32s(&p["prompt_ids"]),
            "prompt ids differ for prompt {text:?}"
        );
        let want = u32s(&p["greedy_ids"]);
        let mut opts = m.default_options(want.len(), SamplingParams::default());
        opts.ignore_eos = true;
        let mut cache = m.model.new_cache();
        let out = generate(
            &m.model,
            &mut cache,
            &prompt,
            &opts,
            &AtomicBool::new(false),
            |_| Flow::Continue,
        )
        .unwrap();
        let got_text = tok.decode(&out.tokens).unwrap();
        eprintln!("{text:?} → {got_text:?}");
        assert_eq!(out.tokens, want, "greedy ids differ for prompt {text:?}");
        assert_eq!(got_text, p["text"].as_str().unwrap());
    }
}

#[test]
fn last_position_top5_matches_transformers() {
    let m = model();
    let reference = reference();
    for p in reference["prompts"].as_array().unwrap() {
        let prompt = u32s(&p["prompt_ids"]);
        let logits: Vec<f32> = m
            .model
            .forward(&prompt, &mut m.model.new_cache(), Logits::Last)
            .into_data()
            .try_into_vec()
            .unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        let want_ids = u32s(&p["last_top5"]["ids"]);
        let got_ids: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(got_ids, want_ids);
        for (id, v) in want_ids
            .iter()
            .zip(p["last_top5"]["values"].as_array().unwrap())
        {
            let d = (logits[*id as usize] - v.as_f64().unwrap() as f32).abs();
            // Both dequantize to f32; only summation order differs.
            assert!(d < 2e-3, "logit of {id} differs by {d}");
        }
    }
}

#[test]
fn plausibility_diabetic_nephropathy() {
    let m = model();
    let tok = m.tokenizer.as_ref().unwrap();
    let prompt = tok
        .encode_raw("Diabetic nephropathy is a complication of")
        .unwrap();
    let mut opts = m.default_options(3, SamplingParams::default());
    opts.ignore_eos = true;
    let out = generate(
        &m.model,
        &mut m.model.new_cache(),
        &prompt,
        &opts,
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )
    .unwrap();
    assert_eq!(tok.decode(&out.tokens).unwrap(), " diabetes mellitus.");
}
