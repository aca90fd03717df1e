//! Whether the model runs on a GPU, which one, and why not when it does not.
//!
//! Three steps, each where the sandbox allows it:
//! 1. [`prepare`], on `main` before the sandbox (single-threaded): does the
//!    driver library `libcuda.so.1` load at all (`medgemma_sandbox`'s
//!    `dlopen` probe: touching a CUDA device without it panics on a thread
//!    nobody can catch), do CUDA kernels compile with the libdevice the
//!    package ships ([`kernel_support`]: `CUDA_PATH` names its folder; no
//!    toolkit is ever used), and the driver's environment: `CUDA_DEVICE_ORDER`
//!    (ordinals as `nvidia-smi` numbers them) and `CUDA_CACHE_PATH` under
//!    `sandbox.cache_dir`. Landlock then opens the GPU's device nodes and
//!    driver files only when CUDA is still a candidate.
//! 2. [`select`], on the engine thread: NVML (`libnvidia-ml.so.1`, loaded
//!    at run time) finds the configured GPU and its free memory, and
//!    `medgemma_model::budget` says whether weights + KV cache + work space
//!    fit.
//! 3. `engine::load` then loads in bf16 and warms up (one short prefill and
//!    decode, so the first clinician does not wait for kernel compilation).
//!
//! Any "no" is one sentence with the numbers ("the model needs 9.6 GiB
//! (…) but GPU 0 (NVIDIA L4) has 6.2 GiB free of 22.0 GiB"). With
//! `backend = "auto"` the daemon then runs on the CPU and says so in the log,
//! `/api/status` (`backend.reason`) and `medgemmactl status` (degraded,
//! exit 1). With `backend = "cuda"` it refuses to start (exit 7) with the
//! same sentence: an administrator who wrote "cuda" asked for the GPU, and
//! answers that take minutes on the CPU are an outage that a running daemon
//! would hide; systemd's restart and the journal show it instead.
//!
//! Owns: the GPU decision and the GPU facts shown in the status. Must never:
//! initialise CUDA before [`prepare`] said the driver loads, or log text.

use std::path::{Path, PathBuf};

use medgemma_model::budget::{self, BudgetRequest};
use medgemma_model::config::Gemma3Config;
use medgemma_protocol::config::GpuSelector;
use medgemma_protocol::status::GpuStatus;
use medgemma_sandbox::{DriverMissing, SandboxError};

use crate::config::{ResolvedBackend, Settings};

/// Exit code of `medgemmad serve` when `backend = "cuda"` and no usable GPU.
pub const EXIT_GPU_UNUSABLE: u8 = 7;

/// Why the GPU cannot run the model.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // some variants only arise in CUDA builds
pub enum GpuError {
    /// This build has no CUDA backend.
    #[error("this build has no CUDA support; install a build with CUDA")]
    #[cfg_attr(feature = "cuda", allow(dead_code))] // only a CPU-only build says this
    NotBuilt,
    /// `libcuda.so.1` does not load.
    #[error(transparent)]
    NoDriver(#[from] DriverMissing),
    /// NVML does not answer (driver/library mismatch after an upgrade, no GPU).
    #[error(
        "the NVIDIA driver does not answer through NVML ({reason}); run `nvidia-smi` and `medgemmactl gpu` (after a driver upgrade, reboot)"
    )]
    Nvml {
        /// NVML's error.
        reason: String,
    },
    /// The configured GPU does not exist.
    #[error(
        "{selector} is not there: the driver sees {count} GPU(s); run `nvidia-smi -L` and fix engine.device"
    )]
    NoSuchGpu {
        /// What `engine.device` asked for.
        selector: String,
        /// GPUs the driver sees.
        count: u32,
    },
    /// Not enough free memory.
    #[error(
        "the model needs {need} and {gpu} has only {free} free of {total}; free GPU memory (see `medgemmactl gpu`), lower engine.context_length, or use a larger GPU"
    )]
    DoesNotFit {
        /// The budget, described.
        need: String,
        /// "GPU 0 (NVIDIA L4)".
        gpu: String,
        /// Free memory, e.g. "6.2 GiB".
        free: String,
        /// Total memory.
        total: String,
    },
    /// The model's configuration could not be read to size the budget.
    #[error("cannot read the model configuration to size GPU memory: {0}")]
    ModelConfig(String),
    /// The GPU failed while loading or warming up.
    #[error("{gpu} failed while {stage} ({what}); see the message above and `medgemmactl gpu`")]
    Failed {
        /// Which GPU.
        gpu: String,
        /// "loading the model" or "warming up".
        stage: &'static str,
        /// The error (no text of any request: there is none yet).
        what: String,
    },
    /// CUDA kernels cannot be compiled: NVIDIA's libdevice, which the
    /// package ships, is missing or does not link (no toolkit is used).
    #[error("CUDA kernels cannot be compiled: {0}")]
    NoKernelSupport(String),
    /// The driver's environment could not be set.
    #[error(transparent)]
    Environment(#[from] SandboxError),
}

impl GpuError {
    /// The exit code when the daemon refuses to start for this reason.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Environment(_) => 6,
            _ => EXIT_GPU_UNUSABLE,
        }
    }
}

/// The sentence for `backend.reason` when `auto` falls back to the CPU.
pub fn fallback_reason(err: &GpuError) -> String {
    format!("engine.backend = \"auto\", but {err}; until then the CPU runs the model (slowly)")
}

/// The refusal when `backend = "cuda"` cannot be honoured.
pub fn refusal(err: &GpuError) -> String {
    format!(
        "engine.backend = \"cuda\" but {err}. Fix that, or set backend = \"auto\" to run on the CPU meanwhile"
    )
}

/// What [`prepare`] found.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Lines for the startup log.
    pub log: Vec<String>,
    /// The driver's library files as the loader resolved them (loaded now,
    /// for the life of the process), and the package's libdevice: Landlock
    /// read rules for the engine.
    pub libraries: Vec<PathBuf>,
}

/// Step 1, on `main` before the sandbox: if CUDA is a candidate, load the
/// driver's libraries (libcuda, NVML, the PTX JIT, NVRTC) wherever the
/// loader finds them (else fall back, or refuse with `cuda`), and set the
/// driver's environment.
pub fn prepare(settings: &mut Settings) -> Result<Prepared, GpuError> {
    let mut out = Prepared::default();
    if settings.backend.backend != ResolvedBackend::Cuda {
        return Ok(out);
    }
    // `cuda` refuses to start; `auto` runs on the CPU and says why.
    let fall_back = |settings: &mut Settings, mut out: Prepared, err: GpuError| {
        if settings.backend.required {
            return Err(err);
        }
        settings.backend.backend = ResolvedBackend::Cpu;
        settings.backend.reason = fallback_reason(&err);
        out.log.push(format!(
            "falling back to the CPU: {}",
            settings.backend.reason
        ));
        Ok(out)
    };
    let preloaded = match medgemma_sandbox::preload_cuda_libraries() {
        Ok(p) => p,
        Err(missing) => return fall_back(settings, out, GpuError::NoDriver(missing)),
    };
    // Kernels compile at run time: NVIDIA's libdevice must be the one the
    // package ships (CUDA_PATH names its folder, whatever the environment
    // said) and must link, checked now, before the sandbox, rather than at
    // the first kernel that calls exp or tanh.
    let libdevice = match kernel_support(medgemma_model::backend::cuda_support_dir()) {
        Ok(file) => file,
        Err(err) => return fall_back(settings, out, err),
    };
    out.log.push(format!(
        "CUDA kernels compile without a toolkit: NVIDIA's libdevice {} links ({}={})",
        libdevice.display(),
        medgemma_model::backend::CUDA_PATH_VAR,
        std::env::var(medgemma_model::backend::CUDA_PATH_VAR).unwrap_or_default()
    ));
    out.log.extend(
        preloaded
            .log_lines()
            .into_iter()
            .map(|l| format!("driver library {l}")),
    );
    out.libraries = preloaded.landlock_read_only();
    out.libraries.push(libdevice);
    out.log.push(format!(
        "the driver's libraries are loaded; {} is checked on the engine thread",
        settings.backend.gpu
    ));
    let log = &mut out.log;
    // Ordinals as nvidia-smi and NVML number GPUs (CUDA's default is
    // "fastest first").
    medgemma_sandbox::set_env_single_threaded("CUDA_DEVICE_ORDER", "PCI_BUS_ID")?;
    match cache_dirs(settings.sandbox.cache_dir.as_deref()) {
        Some(dirs) => {
            medgemma_sandbox::set_env_single_threaded("CUDA_CACHE_PATH", &dirs.driver)?;
            // cubecl's kernel cache (turso) opens a scratch database in the
            // temporary directory for each write; /tmp is not writable under
            // Landlock, the cache directory is.
            if let Some(dir) = settings.sandbox.cache_dir.as_deref() {
                medgemma_sandbox::set_env_single_threaded("TMPDIR", dir)?;
            }
            log.push(format!(
                "GPU kernel caches under {} (driver JIT cache {}, cubecl {})",
                settings
                    .sandbox
                    .cache_dir
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display(),
                dirs.driver.display(),
                dirs.cubecl.display()
            ));
        }
        None => {
            // ~/.nv is not writable under Landlock: keep the driver from trying.
            medgemma_sandbox::set_env_single_threaded("CUDA_CACHE_DISABLE", "1")?;
            log.push(
                "no sandbox.cache_dir: compiled GPU kernels are not kept across restarts (set it, e.g. /var/cache/medgemma)"
                    .to_owned(),
            );
        }
    }
    Ok(out)
}

/// Points `CUDA_PATH` at `dir` (the package's kernel support folder) and
/// asks `medgemma_model::backend::cuda_kernel_support` whether kernels that
/// need libdevice compile with it (in a CUDA build: a probe kernel compiled to
/// PTX on the CPU); `Ok` is the libdevice file. On `main`, single-threaded.
pub fn kernel_support(dir: Option<PathBuf>) -> Result<PathBuf, GpuError> {
    let dir = dir.ok_or_else(|| {
        GpuError::NoKernelSupport(
            "the path of this executable cannot be read, so its CUDA kernel support folder (../lib/medgemma/cuda) cannot be found; run the installed /usr/sbin/medgemmad".to_owned(),
        )
    })?;
    medgemma_sandbox::set_env_single_threaded(medgemma_model::backend::CUDA_PATH_VAR, &dir)?;
    check_kernel_support(&dir)
}

/// [`kernel_support`] without touching the environment.
fn check_kernel_support(dir: &Path) -> Result<PathBuf, GpuError> {
    medgemma_model::backend::cuda_kernel_support(dir).map_err(GpuError::NoKernelSupport)?;
    Ok(dir.join(medgemma_model::backend::LIBDEVICE_REL))
}

/// Where the GPU caches go under `sandbox.cache_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDirs {
    /// `CUDA_CACHE_PATH`: the driver's PTX → SASS JIT cache.
    pub driver: PathBuf,
    /// cubecl's cache root (autotune results; `<root>/<environment>.db`).
    pub cubecl: PathBuf,
}

/// The cache directories under `cache_dir` (none without one).
pub fn cache_dirs(cache_dir: Option<&Path>) -> Option<CacheDirs> {
    let dir = cache_dir?;
    Some(CacheDirs {
        driver: dir.join("nv-compute-cache"),
        cubecl: dir.join("cubecl"),
    })
}

/// What NVML says about one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFacts {
    /// Ordinal.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Installed memory.
    pub total: u64,
    /// Free memory now.
    pub free: u64,
}

/// The budget against the GPU's free memory (pure; [`select`] feeds it NVML).
/// When the configured concurrency does not fit but fewer conversations do,
/// the GPU still runs the model with as many as fit (the CPU would be far
/// slower for everyone); not even one is [`GpuError::DoesNotFit`].
pub fn check_fit(
    facts: GpuFacts,
    model: &Gemma3Config,
    req: &BudgetRequest,
) -> Result<GpuStatus, GpuError> {
    let n = budget::sequences_that_fit(model, req, facts.free);
    let fitted = BudgetRequest {
        sequences: n.max(1),
        ..*req
    };
    let budget = budget::estimate(model, &fitted);
    if n == 0 {
        return Err(GpuError::DoesNotFit {
            need: budget.describe(&fitted),
            gpu: format!("GPU {} ({})", facts.index, facts.name),
            free: budget::gib(facts.free),
            total: budget::gib(facts.total),
        });
    }
    Ok(GpuStatus {
        index: facts.index,
        name: facts.name,
        uuid: facts.uuid,
        memory_total_bytes: facts.total,
        memory_total_mib: facts.total >> 20,
        memory_free_at_start_bytes: facts.free,
        memory_used_bytes: None,
        memory_used_mib: None,
        budget_bytes: budget.total(),
        budget: budget.describe(&fitted),
        warm_up_s: None,
        sequences: n,
        sequences_configured: req.sequences.max(1),
    })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
/// Why fewer conversations run at once than configured, if they do.
pub fn concurrency_note(gpu: &GpuStatus) -> Option<String> {
    (gpu.sequences < gpu.sequences_configured).then(|| {
        format!(
            "the GPU's free memory holds KV caches for {} of the {} concurrent generations configured (engine.max_concurrent_generations); {} run at once",
            gpu.sequences, gpu.sequences_configured, gpu.sequences
        )
    })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
/// Step 2, on the engine thread: the configured GPU through NVML, and
/// whether the model fits in its free memory.
pub fn select(
    selector: &GpuSelector,
    model: &Gemma3Config,
    req: &BudgetRequest,
) -> Result<GpuStatus, GpuError> {
    let facts = query(selector)?;
    check_fit(facts, model, req)
}

/// NVML's view of the GPU `selector` names.
pub fn query(selector: &GpuSelector) -> Result<GpuFacts, GpuError> {
    use nvml_wrapper::Nvml;
    let nvml_err = |e: nvml_wrapper::error::NvmlError| GpuError::Nvml {
        reason: e.to_string(),
    };
    let nvml = Nvml::init().map_err(nvml_err)?;
    let count = nvml.device_count().map_err(nvml_err)?;
    let device = match selector {
        GpuSelector::Index(i) if *i < count => nvml.device_by_index(*i).map_err(nvml_err)?,
        GpuSelector::Index(_) => {
            return Err(GpuError::NoSuchGpu {
                selector: selector.to_string(),
                count,
            });
        }
        GpuSelector::Uuid(u) => nvml.device_by_uuid(u.as_str()).map_err(|e| match e {
            nvml_wrapper::error::NvmlError::NotFound => GpuError::NoSuchGpu {
                selector: selector.to_string(),
                count,
            },
            other => nvml_err(other),
        })?,
    };
    let mem = device.memory_info().map_err(nvml_err)?;
    Ok(GpuFacts {
        index: device.index().map_err(nvml_err)?,
        name: device.name().unwrap_or_else(|_| "unknown GPU".to_owned()),
        uuid: device.uuid().unwrap_or_default(),
        total: mem.total,
        free: mem.free,
    })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by the CUDA loader
/// Memory in use on GPU `index` now (all processes), when NVML answers.
pub fn used_memory(index: u32) -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let d = nvml.device_by_index(index).ok()?;
    d.memory_info().ok().map(|m| m.used)
}

#[cfg(test)]
mod tests {
    use medgemma_model::budget::DType;

    use super::*;

    fn l4(free_gib: u64) -> GpuFacts {
        GpuFacts {
            index: 0,
            name: "NVIDIA L4".to_owned(),
            uuid: "GPU-5b1a9e4c-0d3f-4e2a-9c1b-7a6d5e4f3a2b".to_owned(),
            total: 24 << 30,
            free: free_gib << 30,
        }
    }

    /// A server whose package lost its libdevice (or a binary run outside
    /// the package) is told before the sandbox, in one sentence: `auto` runs
    /// on the CPU, `cuda` refuses to start with exit 7.
    #[test]
    fn missing_libdevice_is_a_sentence_before_any_kernel() {
        let empty = tempfile::tempdir().unwrap();
        let err = check_kernel_support(empty.path()).unwrap_err();
        let reason = fallback_reason(&err);
        assert!(
            reason.starts_with("engine.backend = \"auto\", but CUDA kernels cannot be compiled: NVIDIA's libdevice ("),
            "{reason}"
        );
        assert!(
            reason.contains("nvvm/libdevice/libdevice.10.bc"),
            "{reason}"
        );
        assert!(
            reason.contains("reinstall the medgemma package"),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "{reason}");
        assert_eq!(err.exit_code(), EXIT_GPU_UNUSABLE);
        assert!(
            refusal(&err)
                .starts_with("engine.backend = \"cuda\" but CUDA kernels cannot be compiled")
        );
    }

    #[test]
    fn a_gpu_too_small_is_a_sentence_with_the_numbers() {
        let req = BudgetRequest::new(8192, 1, DType::BF16);
        let m = Gemma3Config::medgemma_4b();
        let err = check_fit(l4(6), &m, &req).unwrap_err();
        assert_eq!(
            fallback_reason(&err),
            "engine.backend = \"auto\", but the model needs 9.6 GiB (weights 7.2 GiB bf16, KV cache 0.3 GiB for 8192 tokens × 1 sequence, work space 2.1 GiB) and GPU 0 (NVIDIA L4) has only 6.0 GiB free of 24.0 GiB; free GPU memory (see `medgemmactl gpu`), lower engine.context_length, or use a larger GPU; until then the CPU runs the model (slowly)"
        );
        assert_eq!(err.exit_code(), EXIT_GPU_UNUSABLE);
        let ok = check_fit(l4(20), &m, &req).unwrap();
        assert_eq!(ok.budget_bytes, 10_311_842_150);
        assert_eq!(ok.memory_free_at_start_bytes, 20 << 30);
        assert_eq!(ok.memory_total_mib, 24 * 1024);
        assert_eq!(concurrency_note(&ok), None);
    }

    #[test]
    fn a_gpu_that_holds_fewer_conversations_runs_fewer_at_once() {
        let m = Gemma3Config::medgemma_4b();
        let req = BudgetRequest::new(8192, 32, DType::BF16);
        let ok = check_fit(l4(12), &m, &req).unwrap();
        assert!((2..32).contains(&ok.sequences), "{}", ok.sequences);
        assert!(ok.budget_bytes <= 12 << 30);
        assert!(
            ok.budget
                .contains(&format!("8192 tokens × {} sequences", ok.sequences)),
            "{}",
            ok.budget
        );
        let note = concurrency_note(&ok).unwrap();
        assert!(
            note.starts_with(&format!(
                "the GPU's free memory holds KV caches for {} of the 32 concurrent generations configured",
                ok.sequences
            )),
            "{note}"
        );
        assert_eq!(ok.sequences_configured, 32);
        // Not even one: the error describes the budget of one.
        let err = check_fit(l4(6), &m, &req).unwrap_err();
        assert!(
            fallback_reason(&err).contains("for 8192 tokens × 1 sequence,"),
            "{}",
            fallback_reason(&err)
        );
    }

    #[test]
    fn no_driver_falls_back_with_the_loader_reason() {
        let missing = medgemma_sandbox::probe_library("libcuda-absent-for-test.so.1").unwrap_err();
        let reason = fallback_reason(&GpuError::NoDriver(missing));
        assert!(
            reason.starts_with(
                "engine.backend = \"auto\", but the NVIDIA driver library libcuda-absent-for-test.so.1 cannot be loaded ("
            ),
            "{reason}"
        );
        assert!(
            reason.ends_with("until then the CPU runs the model (slowly)"),
            "{reason}"
        );
        let refused = refusal(&GpuError::NotBuilt);
        assert_eq!(
            refused,
            "engine.backend = \"cuda\" but this build has no CUDA support; install a build with CUDA. Fix that, or set backend = \"auto\" to run on the CPU meanwhile"
        );
    }

    #[test]
    fn caches_live_under_the_configured_directory() {
        assert_eq!(cache_dirs(None), None);
        let d = cache_dirs(Some(Path::new("/var/cache/medgemma"))).unwrap();
        assert_eq!(d.driver, Path::new("/var/cache/medgemma/nv-compute-cache"));
        assert_eq!(d.cubecl, Path::new("/var/cache/medgemma/cubecl"));
    }

    #[test]
    fn without_nvml_the_query_says_so() {
        // CI machines have no NVIDIA driver; a GPU machine answers instead.
        match query(&GpuSelector::Index(0)) {
            Err(GpuError::Nvml { reason }) => assert!(!reason.is_empty()),
            Err(GpuError::NoSuchGpu { count, .. }) => assert_eq!(count, 0),
            Err(other) => panic!("unexpected: {other}"),
            Ok(facts) => assert!(facts.total > 0),
        }
    }
}
