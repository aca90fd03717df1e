//! `medgemmad bench`: load time, time to first token, decode speed at several
//! batch sizes, peak memory, the device's measured bandwidth and how close
//! decoding comes to it.
//!
//! Prints numbers; judges nothing (benchmarks are not tests). The prompt is a
//! fixed id sequence so runs compare across machines and runtimes.
//! `scripts/bench-270m.sh` reads `load_s`, `prompt_tokens`, `new_tokens`,
//! `threads`, `prefill_tokens_per_s`, `decode_tokens_per_s` and
//! `peak_rss_mib` from the `--json` line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, ValueEnum};
use medgemma_model::backend;
use medgemma_model::burn::tensor::{DType, Device, Tensor};
use medgemma_model::config::Gemma3Config;
use medgemma_model::gemma3::{Gemma3, Logits};
use medgemma_model::generate::{self, Flow, GenerateOptions};
use medgemma_model::kv_cache::KvCache;
use medgemma_model::load::{self, LoadError};
use medgemma_model::sampling::{SamplingParams, argmax};
use medgemma_model::tokenizer::GemmaTokenizer;
use medgemma_model::vision::{ImagePrefill, VisionConfig, VisionTower};

/// Which device the benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// Burn `flex` on the CPU, f32.
    Cpu,
    /// burn-cuda on GPU 0, bf16 (needs a build with the `cuda` feature).
    Cuda,
}

/// Arguments of `medgemmad bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory or .gguf file.
    #[arg(
        long,
        required_unless_present_any = ["random_4b", "kernels"],
        conflicts_with = "random_4b"
    )]
    model: Option<PathBuf>,
    /// The MedGemma 4B text decoder's exact shapes with random weights made
    /// on the device (no checkpoint needed; the tokens are noise).
    #[arg(long)]
    random_4b: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = BenchBackend::Cpu)]
    backend: BenchBackend,
    /// Decode batch sizes to measure, comma-separated (sequences decoded together).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt (per sequence, at every batch size).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Size of the buffer the bandwidth probe streams through, in MiB.
    #[arg(long, default_value_t = 1024)]
    bandwidth_mib: usize,
    /// Print one JSON object on one line.
    #[arg(long)]
    json: bool,
    /// Instead of the model, micro-benchmark our decode kernels at the 4B
    /// shapes (rows = the --batch sizes) against the plain Burn ops and
    /// their bandwidth floor (a build with the `cuda` feature).
    #[arg(long, conflicts_with = "model")]
    kernels: bool,
    /// Also time images: one 896×896 image through a vision tower of
    /// MedGemma's real shapes (random weights) and the time to first token
    /// of that image plus a 100-token question through the model.
    #[arg(long)]
    image: bool,
    /// Also run the engine as `serve` does, with N turns in flight
    /// (comma-separated N to measure several): the warm-up that turns the
    /// decode graph on, staggered answers of up to --new-tokens, a new turn
    /// joining as each ends. Prints the tokens per second in all and the
    /// graph captures the changing batch cost, beside the batch rows.
    #[arg(long, value_delimiter = ',', conflicts_with = "kernels")]
    serve: Vec<usize>,
    /// With --serve: each turn ends at its own token limit, which the
    /// engine knows ahead, instead of unforeseen (cancelled at its length,
    /// as a stop token ends a clinician's answer).
    #[arg(long, requires = "serve")]
    serve_known_ends: bool,
    /// The tokenizer.json that --serve renders its prompts with, for
    /// --random-4b (a --model brings its own).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
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
    /// `--backend cuda` on a binary without CUDA.
    #[cfg(not(feature = "cuda"))]
    #[error(
        "this medgemmad was built without CUDA support, so --backend cuda cannot run; build it with the `cuda` feature (scripts/build-release.sh) or use --backend cpu"
    )]
    NoCudaBuild,
    /// The CUDA driver is not there.
    #[cfg(feature = "cuda")]
    #[error("--backend cuda needs the NVIDIA driver: {0}")]
    NoDriver(String),
    /// The kernels cannot be compiled (libdevice missing or unusable).
    #[cfg(feature = "cuda")]
    #[error("--backend cuda cannot compile its kernels: {0}")]
    NoKernelSupport(String),
    /// `--kernels` where our kernels do not run.
    #[error(
        "--kernels measures this build's own CUDA kernels: use --backend cuda on a build with the `cuda` feature, without MEDGEMMA_PLAIN_BURN"
    )]
    NoKernels,
    /// The engine of `--serve` failed.
    #[error("the engine failed during --serve: {0}")]
    Engine(#[from] crate::engine::EngineError),
    /// A batch size of zero or an empty prompt.
    #[error("invalid benchmark arguments: {0}")]
    Args(String),
    /// The device failed while running.
    #[error("the compute device failed: {0}")]
    Device(String),
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

/// The device and compute dtype for `--backend`.
fn device_for(backend: BenchBackend) -> Result<(Device, DType, &'static str), BenchError> {
    match backend {
        BenchBackend::Cpu => Ok((
            backend::cpu_device(),
            backend::cpu_dtype(),
            "burn flex, f32",
        )),
        BenchBackend::Cuda => cuda_device(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<(Device, DType, &'static str), BenchError> {
    // The kernels' libdevice: the one shipped beside this binary, whatever
    // CUDA_PATH said (a server with only the driver has no toolkit).
    let support = backend::cuda_support_dir().ok_or_else(|| {
        BenchError::NoKernelSupport("the path of this executable cannot be read".into())
    })?;
    medgemma_sandbox::set_env_single_threaded(backend::CUDA_PATH_VAR, &support)
        .map_err(|e| BenchError::NoKernelSupport(e.to_string()))?;
    backend::cuda_kernel_support(&support).map_err(BenchError::NoKernelSupport)?;
    // Touching a CUDA device without a driver panics on a background thread.
    medgemma_sandbox::probe_cuda_driver().map_err(|e| BenchError::NoDriver(e.to_string()))?;
    Ok((
        backend::cuda_device(0),
        backend::cuda_dtype(),
        "burn cuda, bf16",
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<(Device, DType, &'static str), BenchError> {
    Err(BenchError::NoCudaBuild)
}

fn sync(device: &Device) -> Result<(), BenchError> {
    device
        .sync()
        .map_err(|e| BenchError::Device(format!("{e:?}")))
}

/// Bytes of one element of `dtype` (the weights' and the cache's).
fn dtype_bytes(dtype: DType) -> u64 {
    match dtype {
        DType::F64 => 8,
        DType::F16 | DType::BF16 => 2,
        _ => 4,
    }
}

/// Largest memory the device's allocator has reserved, sampled after each phase.
#[derive(Debug, Default)]
struct DeviceMemory {
    peak_reserved: Option<u64>,
    peak_in_use: Option<u64>,
}

impl DeviceMemory {
    fn sample(&mut self, device: &Device) {
        if let Some(u) = device.memory_pool_usage() {
            self.peak_reserved = Some(self.peak_reserved.unwrap_or(0).max(u.bytes_reserved));
            self.peak_in_use = Some(self.peak_in_use.unwrap_or(0).max(u.bytes_in_use));
        }
    }
}

/// Streams through a `mib`-MiB f32 buffer with an in-place add (`b += a`:
/// reads a and b, writes b) and returns the best of five runs in bytes/s,
/// counting the 3 × size bytes moved. Each run ends with a device sync.
fn measure_bandwidth(device: &Device, mib: usize) -> Result<f64, BenchError> {
    let n = (mib.max(1) << 20) / 4;
    let a = Tensor::<1>::ones([n], (device, DType::F32));
    let mut b = Tensor::<1>::zeros([n], (device, DType::F32));
    sync(device)?;
    b = b + a.clone(); // first touch, not timed
    sync(device)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        b = b + a.clone();
        sync(device)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    // Read one value back so nothing above can be skipped.
    let _ = b.narrow(0, 0, 1).into_data();
    Ok(3.0 * (n as f64) * 4.0 / best)
}

/// Key/value bytes one decode step reads for one sequence whose cache is `cache`.
fn kv_bytes_read(cfg: &Gemma3Config, cache: &KvCache, bytes: u64) -> u64 {
    let per_key = 2 * (cfg.num_key_value_heads * cfg.head_dim) as u64 * bytes;
    cache
        .cached_per_layer()
        .iter()
        .map(|&n| (n as u64 + 1) * per_key)
        .sum()
}

/// `logits` read back to the host.
fn read_back(logits: Tensor<2>) -> Result<Vec<f32>, BenchError> {
    logits.into_data().try_into_vec().map_err(|e| {
        BenchError::Generate(generate::GenerateError::Readback {
            why: format!("{e:?}"),
        })
    })
}

/// Each row's argmax of `b` rows of logits read back.
fn greedy_rows(rows: &[f32], b: usize) -> Vec<u32> {
    let v = rows.len() / b.max(1);
    (0..b).map(|i| argmax(&rows[i * v..(i + 1) * v])).collect()
}

/// Reads `logits: [B, V]` back and sets `tokens[i]` to row `i`'s argmax.
fn greedy_next(logits: Tensor<2>, tokens: &mut [u32]) -> Result<(), BenchError> {
    let next = greedy_rows(&read_back(logits)?, tokens.len());
    tokens.copy_from_slice(&next);
    Ok(())
}

/// Decode speed with `batch` sequences sharing each step, all continuing a
/// prefilled `base` cache; one untimed step first (shapes, autotune).
fn decode_at_batch(
    model: &Gemma3,
    base: &KvCache,
    first: u32,
    batch: usize,
    steps: usize,
) -> Result<serde_json::Value, BenchError> {
    let mut caches: Vec<KvCache> = (0..batch).map(|_| base.clone()).collect();
    let mut tokens = vec![first; batch];
    let mut step = |tokens: &mut Vec<u32>| -> Result<(), BenchError> {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        greedy_next(model.forward_batch(tokens, &mut refs), tokens)
    };
    step(&mut tokens)?;
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut tokens)?;
    }
    let s = t.elapsed().as_secs_f64();
    let per_seq = if s > 0.0 { steps as f64 / s } else { 0.0 };
    Ok(serde_json::json!({
        "batch": batch,
        "steps": steps,
        "step_ms": if steps > 0 { s * 1e3 / steps as f64 } else { 0.0 },
        "per_sequence_tokens_per_s": per_seq,
        "aggregate_tokens_per_s": per_seq * batch as f64,
    }))
}

/// [`decode_at_batch`] with the step captured as one graph
/// (`DecodeGraph`: a CUDA graph replayed per token) and room reserved for
/// every step, so the untimed first step is the only capture. `None` where
/// the graph does not apply.
#[cfg(feature = "cuda")]
fn decode_graph_at_batch(
    model: &Gemma3,
    base: &KvCache,
    first: u32,
    batch: usize,
    steps: usize,
) -> Result<Option<serde_json::Value>, BenchError> {
    use medgemma_model::decode_graph::DecodeGraph;
    // Fidelity first, on a card where a replay really replays: the graph's
    // first three steps (its capture and two replays) against
    // `forward_batch` from copies of the same caches, each fed the
    // launched path's greedy tokens.
    let mut checked: Vec<KvCache> = (0..batch).map(|_| base.clone()).collect();
    let mut launched = checked.clone();
    let (mut max_diff, mut same_tokens) = (0f32, true);
    {
        let Some(mut graph) = DecodeGraph::new(model, 3) else {
            return Ok(None);
        };
        let mut tokens = vec![first; batch];
        for _ in 0..3 {
            let mut refs: Vec<&mut KvCache> = checked.iter_mut().collect();
            let Some(got) = graph.step(&mut refs, &tokens) else {
                return Ok(None);
            };
            let got = read_back(got)?;
            let mut refs: Vec<&mut KvCache> = launched.iter_mut().collect();
            let want = read_back(model.forward_batch(&tokens, &mut refs))?;
            let next = greedy_rows(&want, batch);
            same_tokens &= greedy_rows(&got, batch) == next;
            max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(max_diff, f32::max);
            tokens = next;
        }
    }
    drop((checked, launched));

    let mut caches: Vec<KvCache> = (0..batch).map(|_| base.clone()).collect();
    let Some(mut graph) = DecodeGraph::new(model, steps + 2) else {
        return Ok(None);
    };
    let mut tokens = vec![first; batch];
    let mut step = |tokens: &mut Vec<u32>| -> Result<(), BenchError> {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = graph.step(&mut refs, tokens).ok_or_else(|| {
            BenchError::Args(format!("the decode graph does not cover batch {batch}"))
        })?;
        greedy_next(logits, tokens)
    };
    let t = Instant::now();
    step(&mut tokens)?;
    let capture_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut tokens)?;
    }
    let s = t.elapsed().as_secs_f64();
    let per_seq = if s > 0.0 { steps as f64 / s } else { 0.0 };
    Ok(Some(serde_json::json!({
        "hardware_graph": graph.is_hardware(),
        "graph_refused": graph.refused(),
        "captures": graph.captures(),
        "max_abs_diff_vs_launched": max_diff,
        "same_greedy_tokens_as_launched": same_tokens,
        "capture_ms": capture_s * 1e3,
        "step_ms": if steps > 0 { s * 1e3 / steps as f64 } else { 0.0 },
        "per_sequence_tokens_per_s": per_seq,
        "aggregate_tokens_per_s": per_seq * batch as f64,
    })))
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    if args.batch.contains(&0) {
        return Err(BenchError::Args("a batch size must be at least 1".into()));
    }
    if args.prompt_tokens == 0 {
        return Err(BenchError::Args(
            "--prompt-tokens must be at least 1".into(),
        ));
    }
    if args.serve.contains(&0) {
        return Err(BenchError::Args(
            "--serve needs at least 1 turn in flight".into(),
        ));
    }
    // Before the device work, so a wrong path fails at once.
    let mut serve_tokenizer = match (&args.tokenizer, args.serve.is_empty()) {
        (Some(path), false) => Some(
            GemmaTokenizer::from_file(path)
                .map_err(|e| BenchError::Args(format!("--tokenizer {}: {e}", path.display())))?,
        ),
        (None, false) if args.model.is_none() => {
            return Err(BenchError::Args(
                "--serve with --random-4b needs --tokenizer PATH (a tokenizer.json, such as the Gemma 3 one from scripts/fetch-assets.sh)".into(),
            ));
        }
        _ => None,
    };
    let (device, dtype, runtime) = device_for(args.backend)?;
    if args.kernels {
        return run_kernels(&args, &device, dtype, runtime);
    }
    let mut device_memory = DeviceMemory::default();

    let t0 = Instant::now();
    let (mut model, opts, model_name, description) = if let Some(path) = &args.model {
        let loaded = load::load_model(path, None, &device, dtype)?;
        let mut opts = loaded.default_options(args.new_tokens, SamplingParams::default());
        opts.ignore_eos = true;
        if serve_tokenizer.is_none() && !args.serve.is_empty() {
            serve_tokenizer = Some(loaded.tokenizer.ok_or_else(|| {
                BenchError::Args(format!(
                    "--serve needs a tokenizer: {} has none; give --tokenizer PATH",
                    path.display()
                ))
            })?);
        }
        (
            loaded.model,
            opts,
            path.display().to_string(),
            loaded.description,
        )
    } else {
        let cfg = Gemma3Config::medgemma_4b();
        let model = Gemma3::random(&cfg, &device, dtype, 0);
        let opts = GenerateOptions {
            max_new_tokens: args.new_tokens,
            sampling: SamplingParams::default(),
            stop_ids: cfg.eos_token_ids.clone(),
            ignore_eos: true,
            context_limit: cfg.max_position_embeddings,
            valid_vocab: cfg.vocab_size.min(262_144),
            suppressed: Vec::new(),
        };
        let description = load::ModelDescription {
            path: PathBuf::from("random-4b"),
            format: "random",
            layers: cfg.num_layers(),
            hidden_size: cfg.hidden_size,
            parameters: load::parameter_count(&cfg),
        };
        (
            model,
            opts,
            "random MedGemma 4B shapes".to_owned(),
            description,
        )
    };
    sync(&device)?;
    let load_s = t0.elapsed().as_secs_f64();
    device_memory.sample(&device);
    // Each decode product's route, and each prompt-chunk product's matmul
    // routine, timed on the device as the daemon's warm-up does, so that
    // the bench runs what `serve` runs (nothing off a CubeCL device).
    let t_tune = Instant::now();
    let products = model.tune_products();
    let tune_s = t_tune.elapsed().as_secs_f64();
    let t_chunk = Instant::now();
    let chunk_products = model.tune_chunk_products();
    let chunk_tune_s = t_chunk.elapsed().as_secs_f64();
    let cfg = model.config().clone();
    let prompt = bench_prompt(args.prompt_tokens, cfg.vocab_size.min(262_144));

    // Warm-up so first-call allocation is not billed to prefill: a short pass
    // on the CPU; on the GPU the whole prompt, so kernel compilation and
    // autotuning for the prompt's shapes are not billed either.
    let warm = match args.backend {
        BenchBackend::Cpu => 8.min(prompt.len()),
        BenchBackend::Cuda => prompt.len(),
    };
    let _ = generate::generate(
        &model,
        &mut model.new_cache(),
        &prompt[..warm],
        &{
            let mut o = opts.clone();
            o.max_new_tokens = 2;
            o
        },
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )?;

    // One sequence, as the server runs a single conversation. Every token is
    // read back to the host, so the times include the device's work.
    let mut cache = model.new_cache();
    let g = generate::generate(
        &model,
        &mut cache,
        &prompt,
        &opts,
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )?;
    device_memory.sample(&device);
    drop(cache);

    // Decode at each batch size, every sequence continuing the same prompt.
    let mut base = model.new_cache();
    let first = {
        let row: Vec<f32> = model
            .forward(&prompt, &mut base, Logits::Last)
            .into_data()
            .try_into_vec()
            .map_err(|e| {
                BenchError::Generate(generate::GenerateError::Readback {
                    why: format!("{e:?}"),
                })
            })?;
        argmax(&row)
    };
    let elem = dtype_bytes(dtype);
    let weight_bytes = load::parameter_count(&cfg) * elem;
    let kv_bytes = kv_bytes_read(&cfg, &base, elem);
    let mut batches = Vec::new();
    for &b in &args.batch {
        #[allow(unused_mut)]
        let mut row = decode_at_batch(&model, &base, first, b, args.new_tokens.max(1))?;
        #[cfg(feature = "cuda")]
        if backend::own_kernels() {
            let graph = decode_graph_at_batch(&model, &base, first, b, args.new_tokens.max(1))?;
            row["graph"] = graph.unwrap_or(serde_json::Value::Null);
        }
        batches.push(row);
        device_memory.sample(&device);
    }
    let mut serve = Vec::new();
    if let Some(tokenizer) = serve_tokenizer {
        for &n in &args.serve {
            let mut row = crate::bench_serve::serve_at(
                &model,
                tokenizer.clone(),
                description.clone(),
                n,
                args.new_tokens.max(1),
                args.serve_known_ends,
                runtime,
            )?;
            // The bench's own batch N, where measured: through the graph
            // where it ran, else launched.
            if let Some(b) = batches
                .iter()
                .find(|r| r["batch"].as_u64() == Some(n as u64))
            {
                let bench = b["graph"]["aggregate_tokens_per_s"]
                    .as_f64()
                    .or_else(|| b["aggregate_tokens_per_s"].as_f64());
                if let (Some(bench), Some(got)) = (bench, row["aggregate_tokens_per_s"].as_f64()) {
                    row["bench_batch_tokens_per_s"] = bench.into();
                    row["fraction_of_bench"] = (got / bench).into();
                }
            }
            serve.push(row);
            device_memory.sample(&device);
        }
    }
    let image = if args.image {
        Some(image_timing(&model, &device, dtype, args.backend)?)
    } else {
        None
    };
    // Peak memory of the model's runs, before the bandwidth probe's buffers.
    let peak_rss = peak_rss_mib();
    drop(base);
    drop(model);
    device.memory_cleanup();
    let bandwidth = measure_bandwidth(&device, args.bandwidth_mib)?;
    let mut batch1_tps = None;
    for r in &mut batches {
        let b = r["batch"].as_u64().unwrap_or(1);
        let tps = r["per_sequence_tokens_per_s"].as_f64().unwrap_or(0.0);
        let bytes = weight_bytes + b * kv_bytes;
        let achieved = tps * bytes as f64;
        r["bytes_per_step"] = bytes.into();
        r["achieved_bytes_per_s"] = achieved.into();
        r["bandwidth_fraction"] = (achieved / bandwidth).into();
        if b == 1 {
            batch1_tps = Some(tps);
        }
    }
    // Batch 1 from the sweep when measured, else the single-sequence run.
    let b1_tps = batch1_tps.unwrap_or_else(|| g.decode_tokens_per_s());
    let b1_bytes = weight_bytes + kv_bytes;

    let result = serde_json::json!({
        "runtime": format!("medgemmad ({runtime})"),
        "kernels": if backend::own_kernels() { "medgemma" } else { "plain burn" },
        "model": model_name,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_s": load_s,
        "prompt_tokens": prompt.len(),
        "time_to_first_token_s": g.prefill.as_secs_f64(),
        "prefill_tokens_per_s": g.prefill_tokens_per_s(),
        "new_tokens": g.tokens.len(),
        "decode_tokens_per_s": g.decode_tokens_per_s(),
        "batches": batches,
        "products": products,
        "products_tuning_s": tune_s,
        "chunk_products": chunk_products,
        "chunk_products_tuning_s": chunk_tune_s,
        "serve": serve,
        "weight_bytes": weight_bytes,
        "kv_bytes_read_per_sequence_step": kv_bytes,
        "bytes_per_step_batch1": b1_bytes,
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_probe": format!("best of 5 in-place f32 adds over {} MiB (3 x size bytes each), synced", args.bandwidth_mib),
        "bandwidth_fraction_batch1": b1_tps * b1_bytes as f64 / bandwidth,
        "peak_rss_mib": peak_rss,
        "image": image,
        "device_memory": match device_memory.peak_reserved {
            Some(r) => serde_json::json!({
                "source": "cubecl memory pool (Device::memory_pool_usage), sampled after load and each run",
                "peak_reserved_mib": r as f64 / 1048576.0,
                "peak_in_use_mib": device_memory.peak_in_use.unwrap_or(0) as f64 / 1048576.0,
            }),
            None => serde_json::Value::Null,
        },
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

/// `--image`: the encode time of one 896×896 image through a tower of the
/// real shapes (random weights, projecting to this model's width) and the
/// time to first token of that image plus a 100-token question (encode,
/// image prefill with bidirectional image blocks, first token read back).
/// On the GPU one untimed encode first compiles the kernels.
fn image_timing(
    model: &Gemma3,
    device: &Device,
    dtype: DType,
    backend: BenchBackend,
) -> Result<serde_json::Value, BenchError> {
    let cfg = model.config();
    let mut vcfg = VisionConfig::medgemma_4b();
    vcfg.text_hidden_size = cfg.hidden_size;
    let tower = VisionTower::random(&vcfg, device, dtype, 7);
    // A smooth 1024×768 pattern, resized and normalised as a photo would be.
    let (w, h) = (1024usize, 768usize);
    let img = medgemma_model::image::RgbImage {
        width: w,
        height: h,
        pixels: (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    [
                        (x % 256) as u8,
                        (y % 256) as u8,
                        ((x / 7 + y / 5) % 256) as u8,
                    ]
                })
            })
            .collect(),
    };
    let failed = |e: medgemma_model::vision::VisionError| BenchError::Device(e.to_string());
    let encode = |pv| -> Result<Tensor<2>, BenchError> {
        let rows = tower.encode(&[pv]).map_err(failed)?;
        let _ = rows.clone().into_data(); // wait for the device
        Ok(rows)
    };
    if backend == BenchBackend::Cuda {
        encode(medgemma_model::image::to_pixel_values(
            &img,
            vcfg.image_size,
        ))?;
    }
    let t0 = Instant::now();
    let rows = encode(medgemma_model::image::to_pixel_values(
        &img,
        vcfg.image_size,
    ))?;
    let encode_s = t0.elapsed().as_secs_f64();
    // <bos>, the image block, then 100 question tokens (the chat template's
    // turn markers do not change the cost).
    let marks = vcfg.image_tokens();
    let mut ids = vec![cfg.bos_token_id, marks.start];
    ids.extend(std::iter::repeat_n(marks.soft, marks.per_image));
    ids.push(marks.end);
    ids.extend(
        bench_prompt(101, cfg.vocab_size.min(262_144))
            .into_iter()
            .skip(1),
    );
    let t1 = Instant::now();
    let mut cache = model.new_cache();
    let mut pre = ImagePrefill::new(ids.clone(), rows, vcfg.image_token_index).map_err(failed)?;
    pre.run(model, &mut cache, generate::PREFILL_CHUNK);
    let last = pre.last_token().unwrap_or(cfg.bos_token_id);
    let row: Vec<f32> = model
        .forward(&[last], &mut cache, Logits::Last)
        .into_data()
        .try_into_vec()
        .map_err(|e| BenchError::Device(format!("{e:?}")))?;
    let _first = argmax(&row);
    let prefill_s = t1.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "tower": format!("SigLIP {} layers, width {}, {:.0}M parameters (random)", vcfg.num_layers, vcfg.hidden_size, vcfg.parameter_count() as f64 / 1e6),
        "image_pixels": format!("{w}x{h} resized to {0}x{0}", vcfg.image_size),
        "encode_s": encode_s,
        "prompt_tokens": ids.len(),
        "image_prefill_and_first_token_s": prefill_s,
        "time_to_first_token_s": encode_s + prefill_s,
    }))
}

/// `--kernels`: each decode kernel against the Burn ops it replaces and its
/// bandwidth floor, at the 4B shapes, one JSON object (`kernels`: rows).
#[cfg(feature = "cuda")]
fn run_kernels(
    args: &BenchArgs,
    device: &Device,
    dtype: DType,
    runtime: &str,
) -> Result<(), BenchError> {
    use medgemma_model::kernels::bench::{BenchShapes, micro_benchmarks};
    let bandwidth = measure_bandwidth(device, args.bandwidth_mib)?;
    let rows = micro_benchmarks(
        device,
        dtype,
        &BenchShapes::medgemma_4b(),
        &args.batch,
        bandwidth,
        20,
    )
    .ok_or(BenchError::NoKernels)?;
    let result = serde_json::json!({
        "runtime": format!("medgemmad ({runtime})"),
        "bandwidth_bytes_per_s": bandwidth,
        "kernels": rows,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{result}").map_err(BenchError::Output)
}

#[cfg(not(feature = "cuda"))]
fn run_kernels(_: &BenchArgs, _: &Device, _: DType, _: &str) -> Result<(), BenchError> {
    Err(BenchError::NoKernels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn model_or_random_4b_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from(["x", "--model", "m.gguf", "--random-4b"]).is_err());
        let c = Cli::try_parse_from(["x", "--random-4b", "--batch", "1,8,32"]).unwrap();
        assert_eq!(c.bench.batch, vec![1, 8, 32]);
        assert_eq!(c.bench.backend, BenchBackend::Cpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_sentence() {
        let c = Cli::try_parse_from(["x", "--random-4b", "--backend", "cuda"]).unwrap();
        let e = run(c.bench).unwrap_err().to_string();
        assert!(e.contains("built without CUDA support"), "{e}");
        assert!(e.contains("--backend cpu"), "{e}");
    }

    #[test]
    fn serve_needs_turns_and_a_tokenizer_for_random_weights() {
        let c = Cli::try_parse_from(["x", "--random-4b", "--serve", "8,0"]).unwrap();
        let e = run(c.bench).unwrap_err().to_string();
        assert!(e.contains("--serve needs at least 1 turn"), "{e}");
        let c = Cli::try_parse_from(["x", "--random-4b", "--serve", "8"]).unwrap();
        let e = run(c.bench).unwrap_err().to_string();
        assert!(e.contains("needs --tokenizer PATH"), "{e}");
        let c = Cli::try_parse_from([
            "x",
            "--random-4b",
            "--serve",
            "8",
            "--tokenizer",
            "/nonexistent/tokenizer.json",
        ])
        .unwrap();
        let e = run(c.bench).unwrap_err().to_string();
        assert!(e.contains("--tokenizer /nonexistent/tokenizer.json"), "{e}");
        assert!(Cli::try_parse_from(["x", "--kernels", "--serve", "8"]).is_err());
    }

    #[test]
    fn bandwidth_probe_reports_a_positive_rate() {
        let bw = measure_bandwidth(&backend::cpu_device(), 8).unwrap();
        assert!(bw.is_finite() && bw > 1e6, "{bw}");
    }
}
