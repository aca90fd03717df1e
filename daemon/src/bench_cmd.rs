//! `medgemmad bench`: load time, prefill and decode speed, peak memory.
//!
//! Prints numbers; judges nothing (benchmarks are not tests). The prompt is a
//! fixed id sequence so runs compare across machines and runtimes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::Args;
use medgemma_model::backend;
use medgemma_model::generate::{self, Flow};
use medgemma_model::load::{self, LoadError};
use medgemma_model::sampling::SamplingParams;

/// Arguments of `medgemmad bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] generate::GenerateError),
    /// Output failed.
    #[error("cannot write the results: {0}")]
    Output(std::io::Error),
}

/// Peak resident set size of this process in MiB (`VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One real clinical sentence in Gemma 3 token ids (45 ids, no `<bos>`); the
/// llama.cpp baseline (`scripts/bench/llamacpp_bench.py`) feeds the same ids.
const SENTENCE_IDS: [u32; 45] = [
    12689, 34154, 65723, 128616, 563, 496, 17044, 77645, 529, 15886, 98310, 528, 837, 33086,
    170855, 3284, 11226, 19607, 506, 75143, 9548, 236764, 5830, 531, 63958, 37692, 236764, 496,
    23288, 16670, 528, 165025, 40330, 3136, 532, 236764, 10734, 236764, 1345, 236772, 17585, 29491,
    5933, 236761, 236743,
];

/// A fixed prompt of `n` ids: `<bos>` then the sentence repeated (ids folded
/// into the vocabulary for models with a smaller one).
fn bench_prompt(n: usize, vocab: usize) -> Vec<u32> {
    let mut ids = vec![2u32];
    ids.extend(
        SENTENCE_IDS
            .iter()
            .cycle()
            .take(n.saturating_sub(1))
            .map(|&id| id % vocab as u32),
    );
    ids
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let device = backend::cpu_device();
    let t0 = Instant::now();
    let loaded = load::load_model(&args.model, None, &device, backend::cpu_dtype())?;
    let load_s = t0.elapsed().as_secs_f64();
    let cfg = loaded.model.config();
    let prompt = bench_prompt(args.prompt_tokens, cfg.vocab_size.min(262_144));
    let mut opts = loaded.default_options(args.new_tokens, SamplingParams::default());
    opts.ignore_eos = true;

    // Warm-up: one short pass so first-call allocation is not billed to prefill.
    let _ = generate::generate(
        &loaded.model,
        &mut loaded.model.new_cache(),
        &prompt[..8.min(prompt.len())],
        &{
            let mut o = opts.clone();
            o.max_new_tokens = 2;
            o
        },
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )?;

    let mut cache = loaded.model.new_cache();
    let g = generate::generate(
        &loaded.model,
        &mut cache,
        &prompt,
        &opts,
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )?;
    let result = serde_json::json!({
        "runtime": "medgemmad (burn flex, f32)",
        "model": args.model.display().to_string(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_s": load_s,
        "prompt_tokens": prompt.len(),
        "time_to_first_token_s": g.prefill.as_secs_f64(),
        "prefill_tokens_per_s": g.prefill_tokens_per_s(),
        "new_tokens": g.tokens.len(),
        "decode_tokens_per_s": g.decode_tokens_per_s(),
        "peak_rss_mib": peak_rss_mib(),
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{result}").map_err(BenchError::Output)?;
    } else {
        let s = serde_json::to_string_pretty(&result).map_err(|e| BenchError::Output(e.into()))?;
        writeln!(out, "{s}").map_err(BenchError::Output)?;
    }
    Ok(())
}
