//! The CPU memory budget (`budget::estimate_cpu`) against what the real
//! Gemma 3 270M GGUF takes: the weights counted are the file's tensors as
//! stored, and a 512-token prompt plus a few decoded tokens peak (this
//! process's `VmHWM`) below the estimate. One test per binary, so no other
//! test's memory counts in the peak.

mod support;

use std::sync::atomic::AtomicBool;

use medgemma_model::budget::{self, CpuBudgetRequest};
use medgemma_model::generate::{Flow, generate};
use medgemma_model::gguf::GgufFile;
use medgemma_model::load::load_model;
use medgemma_model::sampling::SamplingParams;

/// This process's peak resident set in bytes (`VmHWM`, proc(5)).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    kib * 1024
}

#[test]
fn the_270m_runs_a_512_token_prompt_within_its_cpu_budget() {
    let path = support::gguf_270m();
    let file = GgufFile::open(&path).expect("opens");
    let weights = budget::gguf_weight_bytes(&file);
    let file_len = std::fs::metadata(&path).expect("stat").len();
    // Every tensor's bytes, and nothing else: the rest of the file is the
    // header (the 262 144-piece vocabulary is most of it).
    assert!(
        weights < file_len && weights > file_len - (16 << 20),
        "{weights} of {file_len}"
    );
    drop(file);

    let m = load_model(&path, None, &support::test_device(), support::test_dtype()).expect("loads");
    let cfg = m.model.config().clone();
    let prompt: Vec<u32> = std::iter::once(2)
        .chain((0..511).map(|i| 1000 + (i * 37) % 5000))
        .collect();
    let mut opts = m.default_options(8, SamplingParams::default());
    opts.ignore_eos = true;
    let g = generate(
        &m.model,
        &mut m.model.new_cache(),
        &prompt,
        &opts,
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )
    .expect("generates");
    assert_eq!(g.tokens.len(), 8);
    let peak = peak_rss();
    // One pass over the whole prompt, as `generate` runs it.
    let mut req = CpuBudgetRequest::new(prompt.len() + 8, 1, weights, "GGUF as stored");
    req.prefill_tokens = prompt.len();
    let estimate = budget::estimate_cpu(&cfg, &req);
    assert!(
        peak <= estimate.total(),
        "peak RSS {} above the estimate {}",
        budget::gib(peak),
        estimate.describe_cpu(&req, budget::mem_available().unwrap_or(0))
    );
    // Weights kept as stored: the peak is far below the f32 model's size
    // (1.07 GB of f32 matrices for the 270M).
    assert!(
        peak < budget::weight_bytes(&cfg, budget::DType::F32),
        "{peak}"
    );
}
