//! Building the engine on the engine thread: narrow the thread's seccomp
//! role first, then the configured backend: the CPU; or the GPU (probe the
//! model once, select the GPU, check the memory budget, load in bf16, warm
//! up) with the CPU as the fallback of `backend = "auto"`.
//!
//! Owns: the order in which an engine comes to be, and the fallback
//! decision. Must never: touch CUDA before `gpu::prepare` said the driver
//! loads, or fall back silently (every fallback has its sentence).

use std::path::{Path, PathBuf};
use std::time::Instant;

use medgemma_model::backend;
use medgemma_model::cpu::Activations;
use medgemma_model::load::{self, LoadError};
use medgemma_sandbox::{Role, SandboxError, SeccompMode};

use medgemma_model::budget::{self, CpuBudgetRequest};
use medgemma_model::probe::{ModelFormat, ModelProbe};
use medgemma_model::vision::{VisionConfig, VisionError, VisionTower};
use medgemma_model::weights::CpuWeights;
use medgemma_protocol::config::{CpuActivationsChoice, CpuWeightsChoice, PinMismatch};

use super::gpu::{self, GpuError};
use super::verify::{VerifyError, Verifying};
use super::{Engine, EngineError, ModelEngine};
use crate::config::{BackendDecision, ResolvedBackend, Settings};
use crate::{lockdown, log};

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    /// The model files could not be read or do not make a model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The engine refused the loaded model.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine thread's seccomp role could not be installed.
    #[error("cannot narrow the engine thread's sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// `backend = "cuda"` and the GPU cannot run the model.
    #[error("{}", gpu::refusal(.0))]
    Gpu(#[from] GpuError),
    /// The model's files could not be checked against their pins.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A model file does not match its pin (`model.on_pin_mismatch = "refuse"`).
    #[error("the model is not the one pinned: {0}")]
    PinMismatch(String),
    /// The model's vision tower cannot be loaded.
    #[error(transparent)]
    Vision(#[from] VisionError),
    /// The model does not fit in the memory available on the CPU.
    #[error(
        "the model does not fit in this machine's memory on the CPU: it needs {0}; lower engine.context_length, set engine.cpu_weights = \"q8_0\" for a bf16 model, use a smaller quantized GGUF, or free memory"
    )]
    CpuMemory(String),
}

impl LoadFailure {
    /// Whether this is the GPU refusal (exit 7) rather than a model problem (exit 3).
    pub fn is_gpu_refusal(&self) -> bool {
        matches!(self, Self::Gpu(_))
    }
}

/// Everything the engine thread needs, copied out of the settings.
#[derive(Debug, Clone)]
pub struct EngineJob {
    path: PathBuf,
    tokenizer: Option<PathBuf>,
    context: usize,
    sequences: usize,
    decision: BackendDecision,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU loader's kernel caches
    cache_dir: Option<PathBuf>,
    pins_file: Option<PathBuf>,
    on_pin_mismatch: PinMismatch,
    cpu_weights: CpuWeights,
    cpu_activations: Activations,
    keep_context: bool,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU loader's warm-up
    decode_graph: bool,
}

impl EngineJob {
    /// The job the configuration describes.
    pub fn new(settings: &Settings) -> Self {
        Self {
            path: settings.model.path.clone(),
            tokenizer: settings.model.tokenizer_path.clone(),
            context: settings.engine.context_length,
            sequences: settings.engine.max_concurrent_generations,
            decision: settings.backend.clone(),
            cache_dir: settings.sandbox.cache_dir.clone(),
            pins_file: settings.model.pins_file.clone(),
            on_pin_mismatch: settings.model.on_pin_mismatch,
            cpu_weights: match settings.engine.cpu_weights {
                CpuWeightsChoice::Stored => CpuWeights::AsStored,
                CpuWeightsChoice::Q8_0 => CpuWeights::Q8_0,
                CpuWeightsChoice::F32 => CpuWeights::F32,
            },
            cpu_activations: match settings.engine.cpu_activations {
                CpuActivationsChoice::F32 => Activations::F32,
                CpuActivationsChoice::Q8Prompt => Activations::Q8Prompt,
                CpuActivationsChoice::Q8 => Activations::Q8,
            },
            keep_context: settings.engine.keep_context,
            decode_graph: settings.engine.decode_graph,
        }
    }
}

/// The loader to run on the engine thread (`worker::start`): narrows the
/// thread to its seccomp role (`sandbox`: the role and mode; none without
/// the sandbox), then builds the engine for the job's backend.
pub fn loader(
    job: EngineJob,
    sandbox: Option<(Role, SeccompMode)>,
) -> impl FnOnce() -> Result<Box<dyn Engine>, LoadFailure> + Send + 'static {
    move || {
        // First thing on the engine thread, before the backend starts its
        // own threads (they inherit the engine role).
        if let Some((role, mode)) = sandbox {
            lockdown::narrow_engine_thread(role, mode)?;
        }
        build(job)
    }
}

/// Builds the engine for `job` on the calling thread; meanwhile a thread
/// hashes the model's files and compares them with their pins
/// (`engine::verify`), and the engine carries the result.
pub fn build(job: EngineJob) -> Result<Box<dyn Engine>, LoadFailure> {
    if job.decision.backend == ResolvedBackend::Scripted {
        return backend(&job);
    }
    let mut verifying = Verifying::start(&job.path, job.pins_file.as_deref());
    let mut engine = backend(&job)?;
    let check = verifying.finish()?;
    if check.verified == Some(false) {
        match job.on_pin_mismatch {
            PinMismatch::Refuse => return Err(LoadFailure::PinMismatch(check.detail)),
            PinMismatch::Degraded => log::warn(format_args!(
                "model.on_pin_mismatch = \"degraded\": serving a model that is not the one pinned: {}",
                check.detail
            )),
        }
    } else {
        log::info(format_args!(
            "model files checked: {}; fingerprint {}",
            check.detail, check.fingerprint
        ));
    }
    engine.set_weights(check);
    Ok(engine)
}

/// The engine of the job's backend.
fn backend(job: &EngineJob) -> Result<Box<dyn Engine>, LoadFailure> {
    match job.decision.backend {
        ResolvedBackend::Cuda => {
            let t0 = Instant::now();
            match try_gpu(job) {
                Ok(engine) => {
                    log::info(format_args!(
                        "model loaded and warmed up on the GPU in {:.1} s",
                        t0.elapsed().as_secs_f64()
                    ));
                    Ok(engine)
                }
                Err(e) if job.decision.required => Err(LoadFailure::Gpu(e)),
                Err(e) => {
                    let reason = gpu::fallback_reason(&e);
                    log::warn(format_args!("falling back to the CPU: {reason}"));
                    let decision = BackendDecision {
                        backend: ResolvedBackend::Cpu,
                        reason,
                        ..job.decision.clone()
                    };
                    cpu(job, decision)
                }
            }
        }
        ResolvedBackend::Cpu => {
            let decision = job.decision.clone();
            cpu(job, decision)
        }
        #[cfg(feature = "test-engine")]
        ResolvedBackend::Scripted => {
            Ok(Box::new(super::scripted::ScriptedEngine::new(job.context)))
        }
        #[cfg(not(feature = "test-engine"))]
        ResolvedBackend::Scripted => {
            unreachable!("config::Settings refuses \"scripted\" without the test-engine feature")
        }
    }
}

/// Loads the model on the CPU, after its memory budget: weights as
/// `engine.cpu_weights` keeps them, KV caches for the context and each
/// concurrent answer (one more for the kept conversation caches when
/// `engine.keep_context` is on), work space, against `MemAvailable`.
/// Fewer concurrent answers run when fewer fit; none fitting is a refusal.
fn cpu(job: &EngineJob, decision: BackendDecision) -> Result<Box<dyn Engine>, LoadFailure> {
    log::info(format_args!(
        "loading model {} on the CPU",
        file_name(&job.path)
    ));
    let t0 = Instant::now();
    let probe = ModelProbe::open(&job.path).map_err(LoadError::from)?;
    let context = job.context.min(probe.config.max_position_embeddings);
    // Read once: the budget counts the tower, and it is loaded after the decoder.
    let vision = vision_config(&job.path)?;
    let vision_bytes = vision.as_ref().map_or(0, |v| {
        v.parameter_count() * budget::dtype_bytes(backend::cpu_dtype())
    });
    let plan = cpu_plan(&probe, job, context, vision_bytes, budget::mem_available())?;
    let cfg = probe.config.clone();
    medgemma_model::cpu::set_activations(job.cpu_activations);
    log::info(format_args!(
        "CPU activations: {}",
        job.cpu_activations.name()
    ));
    let loaded = load::load_probed(
        probe,
        job.tokenizer.as_deref(),
        &backend::cpu_device(),
        backend::cpu_dtype(),
        job.cpu_weights,
    )?;
    log::info(format_args!(
        "model loaded in {:.1} s; CPU memory budget {}",
        t0.elapsed().as_secs_f64(),
        plan.described
    ));
    let kept_cap = if plan.keep {
        budget::kv_cache_bytes(&cfg, context, 1, backend::cpu_dtype())
    } else {
        0
    };
    let reason = format!("{}; memory: {}", decision.reason, plan.described);
    let mut engine = ModelEngine::new(loaded, context, "cpu".to_owned(), reason)?
        .with_max_batch(plan.sequences)
        .with_kept_context(kept_cap);
    if let Some(tower) = vision_tower(
        job,
        vision.as_ref(),
        &backend::cpu_device(),
        backend::cpu_dtype(),
    )? {
        engine = engine.with_vision(tower);
    }
    Ok(Box::new(engine))
}

/// The vision configuration of a model directory, if it has one (a GGUF
/// file holds the text decoder only).
fn vision_config(path: &Path) -> Result<Option<VisionConfig>, VisionError> {
    if !path.is_dir() {
        return Ok(None);
    }
    Ok(VisionConfig::from_file(&path.join("config.json"))?)
}

/// Loads the model's vision tower onto `device`, when it has one (`config`,
/// from [`vision_config`]).
fn vision_tower(
    job: &EngineJob,
    config: Option<&VisionConfig>,
    device: &medgemma_model::burn::tensor::Device,
    dtype: budget::DType,
) -> Result<Option<VisionTower>, VisionError> {
    if config.is_none() {
        return Ok(None);
    }
    let t0 = Instant::now();
    let tower = VisionTower::load(&job.path, device, dtype)?;
    log::info(format_args!(
        "vision tower loaded in {:.1} s ({} layers, {}×{} pixels per image): images are read",
        t0.elapsed().as_secs_f64(),
        tower.config().num_layers,
        tower.config().image_size,
        tower.config().image_size
    ));
    Ok(Some(tower))
}

/// What the CPU budget allows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuPlan {
    /// Concurrent answers.
    sequences: usize,
    /// Whether conversations keep their caches between turns.
    keep: bool,
    /// The budget in words, for the log and the status.
    described: String,
}

/// The CPU budget of `job` (plus `vision_bytes` for a vision tower) against
/// `available` bytes (`None`: unknown, so the configuration is taken as it
/// is, and the log says so).
fn cpu_plan(
    probe: &ModelProbe,
    job: &EngineJob,
    context: usize,
    vision_bytes: u64,
    available: Option<u64>,
) -> Result<CpuPlan, LoadFailure> {
    let (weight_bytes, held) = match (probe.format, job.cpu_weights) {
        // The files' bytes: what reading them in place maps (a checkpoint's
        // vision tower included, so this errs on the safe side).
        (ModelFormat::Gguf, _) => (probe.bytes, "GGUF as stored"),
        (_, CpuWeights::AsStored) => (probe.bytes, "as stored"),
        (_, mode) => (
            budget::safetensors_weight_bytes(&probe.config, mode, budget::DType::BF16),
            if mode == CpuWeights::Q8_0 {
                "q8_0"
            } else {
                "f32"
            },
        ),
    };
    let weight_bytes = weight_bytes + vision_bytes;
    let wanted = job.sequences.max(1) + usize::from(job.keep_context);
    let req = CpuBudgetRequest::new(context, wanted, weight_bytes, held);
    let Some(available) = available else {
        return Ok(CpuPlan {
            sequences: job.sequences.max(1),
            keep: job.keep_context,
            described: format!(
                "{} (available memory unknown: /proc/meminfo unreadable)",
                budget::gib(budget::estimate_cpu(&probe.config, &req).total())
            ),
        });
    };
    let fit = budget::cpu_sequences_that_fit(&probe.config, &req, available);
    if fit == 0 {
        let one = CpuBudgetRequest::new(context, 1, weight_bytes, held);
        return Err(LoadFailure::CpuMemory(
            budget::estimate_cpu(&probe.config, &one).describe_cpu(&one, available),
        ));
    }
    // The kept caches give way first, then concurrent answers.
    let keep = job.keep_context && fit >= 2;
    let sequences = (fit - usize::from(keep)).min(job.sequences.max(1));
    let used = CpuBudgetRequest::new(context, sequences + usize::from(keep), weight_bytes, held);
    let mut described = budget::estimate_cpu(&probe.config, &used).describe_cpu(&used, available);
    if keep {
        described.push_str(" (one sequence's KV cache is for kept conversations)");
    }
    if sequences < job.sequences.max(1) {
        log::warn(format_args!(
            "cpu: {sequences} of engine.max_concurrent_generations = {} fit in memory",
            job.sequences
        ));
        described.push_str(&format!(
            "; {sequences} of {} concurrent answers fit",
            job.sequences
        ));
    }
    if job.keep_context && !keep {
        described.push_str("; no memory left to keep conversations between turns");
    }
    Ok(CpuPlan {
        sequences,
        keep,
        described,
    })
}

#[cfg(not(feature = "cuda"))]
fn try_gpu(_job: &EngineJob) -> Result<Box<dyn Engine>, GpuError> {
    Err(GpuError::NotBuilt)
}

/// Selects the GPU, checks the budget, loads in bf16 and warms up.
#[cfg(feature = "cuda")]
fn try_gpu(job: &EngineJob) -> Result<Box<dyn Engine>, GpuError> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;

    use medgemma_model::budget::BudgetRequest;

    use super::health::{EngineHealth, panic_text};

    let probe = ModelProbe::open(&job.path).map_err(|e| GpuError::ModelConfig(e.to_string()))?;
    let context = job.context.min(probe.config.max_position_embeddings);
    // One more full-context KV cache for the kept conversations.
    let wanted = job.sequences.max(1) + usize::from(job.keep_context);
    let req = BudgetRequest::new(context, wanted, backend::cuda_dtype());
    let mut info = gpu::select(&job.decision.gpu, &probe.config, &req)?;
    let keep = job.keep_context && info.sequences >= 2;
    if keep {
        info.sequences -= 1;
    }
    if job.keep_context {
        info.sequences_configured = job.sequences.max(1);
    }
    let kept_cap = if keep {
        budget::kv_cache_bytes(&probe.config, context, 1, backend::cuda_dtype())
    } else {
        0
    };
    let name = format!("GPU {} ({})", info.index, info.name);
    if let Some(dirs) = gpu::cache_dirs(job.cache_dir.as_deref()) {
        if backend::set_cubecl_cache_dir(&dirs.cubecl) {
            log::info(format_args!(
                "gpu: compiled kernels are kept in {}; the next start of this binary loads them instead of compiling",
                backend::cubecl_cache_file().display()
            ));
        } else {
            log::warn(format_args!(
                "gpu: cubecl was configured before the daemon could set its cache root; kernel caches go to its default place"
            ));
        }
    }
    let failed = |stage: &'static str, what: String| GpuError::Failed {
        gpu: name.clone(),
        stage,
        what,
    };
    let device = backend::cuda_device(info.index as usize);
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        load::load_probed(
            probe,
            job.tokenizer.as_deref(),
            &device,
            backend::cuda_dtype(),
            medgemma_model::weights::CpuWeights::default(),
        )
    }))
    .map_err(|p| failed("loading the model", panic_text(p.as_ref())))?
    .map_err(|e| failed("loading the model", e.to_string()))?;
    let mut reason = format!(
        "{}: {name} has {} free and the model needs {}",
        job.decision.reason,
        budget::gib(info.memory_free_at_start_bytes),
        info.budget
    );
    if let Some(note) = gpu::concurrency_note(&info) {
        log::warn(format_args!("gpu: {note}"));
        reason.push_str("; ");
        reason.push_str(&note);
    }
    let health = Arc::new(EngineHealth::default());
    // On the GPU before the warm-up, so a failing kernel is caught as a GPU failure.
    let mut engine = ModelEngine::new(loaded, context, "cuda".to_owned(), reason)
        .map_err(|e| failed("starting the engine", e.to_string()))?
        .with_max_batch(info.sequences)
        .with_kept_context(kept_cap)
        .with_decode_graph(job.decode_graph)
        .on_gpu(health, info.clone());
    let tower = catch_unwind(AssertUnwindSafe(|| {
        vision_config(&job.path)
            .and_then(|v| vision_tower(job, v.as_ref(), &device, backend::cuda_dtype()))
    }))
    .map_err(|p| failed("loading the vision tower", panic_text(p.as_ref())))?
    .map_err(|e| failed("loading the vision tower", e.to_string()))?;
    if let Some(tower) = tower {
        engine = engine.with_vision(tower);
    }
    let warm = engine
        .warm_up()
        .map_err(|e| failed("warming up", e.to_string()))?;
    info.warm_up_s = Some(warm.as_secs_f64());
    info.set_memory_used(gpu::used_memory(info.index));
    log::info(format_args!(
        "gpu: {} ready; warm-up {:.1} s; {} in use on the GPU",
        info.device(),
        warm.as_secs_f64(),
        info.memory_used_bytes.map_or("?".to_owned(), budget::gib)
    ));
    engine.set_gpu_status(info);
    Ok(Box::new(engine))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use medgemma_protocol::config::GpuSelector;

    fn job(path: PathBuf, sequences: usize, keep_context: bool) -> EngineJob {
        EngineJob {
            path,
            tokenizer: None,
            context: 8192,
            sequences,
            decision: BackendDecision {
                backend: ResolvedBackend::Cpu,
                reason: "test".into(),
                gpu: GpuSelector::Index(0),
                required: false,
            },
            cache_dir: None,
            pins_file: None,
            on_pin_mismatch: PinMismatch::Refuse,
            cpu_weights: CpuWeights::AsStored,
            cpu_activations: Activations::F32,
            keep_context,
            decode_graph: true,
        }
    }

    /// The CPU budget of the real 270M GGUF: plenty of memory runs what is
    /// configured plus the kept caches; less gives way (kept caches first,
    /// then concurrency); too little is a refusal that says what to change.
    #[test]
    fn the_cpu_budget_gives_way_then_refuses_with_a_sentence() {
        let Some((gguf, _)) = super::super::test_270m_files() else {
            return;
        };
        let probe = ModelProbe::open(&gguf).unwrap();
        let j = job(gguf, 4, true);
        let need = |n: usize| {
            let req = CpuBudgetRequest::new(8192, n, probe.bytes, "GGUF as stored");
            budget::estimate_cpu(&probe.config, &req).total()
        };
        let plenty = cpu_plan(&probe, &j, 8192, 0, Some(64 << 30)).unwrap();
        assert_eq!(
            (plenty.sequences, plenty.keep),
            (4, true),
            "{}",
            plenty.described
        );
        assert!(
            plenty.described.contains("kept conversations"),
            "{}",
            plenty.described
        );
        // Room for four sequences' KV: three answers and the kept caches.
        let four = cpu_plan(&probe, &j, 8192, 0, Some(need(4))).unwrap();
        assert_eq!((four.sequences, four.keep), (3, true), "{}", four.described);
        assert!(four.described.contains("3 of 4"), "{}", four.described);
        // Room for one: one answer, nothing kept.
        let one = cpu_plan(&probe, &j, 8192, 0, Some(need(1))).unwrap();
        assert_eq!((one.sequences, one.keep), (1, false), "{}", one.described);
        assert!(
            one.described.contains("no memory left to keep"),
            "{}",
            one.described
        );
        // Unknown memory: the configuration as it is.
        let unknown = cpu_plan(&probe, &j, 8192, 0, None).unwrap();
        assert_eq!((unknown.sequences, unknown.keep), (4, true));
        // Too little for one.
        let e = cpu_plan(&probe, &j, 8192, 0, Some(need(1) / 2)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LoadFailure::CpuMemory(_)), "{text}");
        assert!(text.contains("engine.context_length"), "{text}");
        assert!(text.contains("available"), "{text}");
    }
}
