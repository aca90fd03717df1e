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
use medgemma_model::load::{self, LoadError};
use medgemma_sandbox::{Role, SandboxError, SeccompMode};

use medgemma_protocol::config::PinMismatch;

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

/// Loads the model on the CPU.
fn cpu(job: &EngineJob, decision: BackendDecision) -> Result<Box<dyn Engine>, LoadFailure> {
    log::info(format_args!(
        "loading model {} on the CPU",
        file_name(&job.path)
    ));
    let t0 = Instant::now();
    let loaded = load::load_model(
        &job.path,
        job.tokenizer.as_deref(),
        &backend::cpu_device(),
        backend::cpu_dtype(),
    )?;
    log::info(format_args!(
        "model loaded in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let engine = ModelEngine::new(loaded, job.context, "cpu".to_owned(), decision.reason)?
        .with_max_batch(job.sequences);
    Ok(Box::new(engine))
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

    use medgemma_model::budget::{self, BudgetRequest};
    use medgemma_model::probe::ModelProbe;

    use super::health::{EngineHealth, panic_text};

    let probe = ModelProbe::open(&job.path).map_err(|e| GpuError::ModelConfig(e.to_string()))?;
    let context = job.context.min(probe.config.max_position_embeddings);
    let req = BudgetRequest::new(context, job.sequences.max(1), backend::cuda_dtype());
    let mut info = gpu::select(&job.decision.gpu, &probe.config, &req)?;
    let name = format!("GPU {} ({})", info.index, info.name);
    if let Some(dirs) = gpu::cache_dirs(job.cache_dir.as_deref())
        && !backend::set_cubecl_cache_dir(&dirs.cubecl)
    {
        log::warn(format_args!(
            "gpu: cubecl was configured before the daemon could set its cache root; kernel caches go to its default place"
        ));
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
        .on_gpu(health, info.clone());
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
