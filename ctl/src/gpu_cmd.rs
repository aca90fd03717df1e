//! `medgemmactl gpu`: the NVIDIA GPUs as the driver sees them, through NVML
//! (`libnvidia-ml.so.1`, loaded at run time: this binary needs no driver to
//! build or start), and whether the configured model fits with its KV cache.
//!
//! Exit codes: 0 a GPU that can hold the model, 1 GPUs but none with enough
//! free memory, 2 no NVIDIA driver or no GPU (the daemon runs on the CPU).

use std::path::Path;

use clap::Args;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;

use medgemma_model::config::Gemma3Config;
use medgemma_model::probe::ModelProbe;

use crate::daemon_config::DaemonConfig;
use crate::{EXIT_DEGRADED, EXIT_DOWN, EXIT_OK, Report};

/// `gpu`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// Context length the KV cache is sized for (default: engine.context_length of the configuration).
    #[arg(long)]
    context: Option<u64>,
}

/// What the CPU fallback means, for people.
pub const CPU_FALLBACK: &str = "Without an NVIDIA driver the daemon runs the model on the CPU: it works, but answers come at a few tokens per second with the 4B model. Install the NVIDIA driver (and reboot) to use a GPU; then run medgemmactl gpu again.";

/// Bytes the model needs on the GPU: the same budget the daemon checks
/// before it loads on CUDA (`medgemma_model::budget`: bf16 weights, the KV
/// cache for `context` tokens, work space and margin), so both give the
/// same answer.
pub fn model_need(model: &Gemma3Config, context: u64) -> (u64, String) {
    use medgemma_model::budget::{self, BudgetRequest, DType};
    let context = usize::try_from(context)
        .unwrap_or(usize::MAX)
        .min(model.max_position_embeddings);
    let req = BudgetRequest::new(context, 1, DType::BF16);
    let b = budget::estimate(model, &req);
    (b.total(), b.describe(&req))
}

/// The configured model's Gemma 3 configuration, if the model can be probed.
pub fn model_config(cfg: &DaemonConfig) -> Option<Gemma3Config> {
    ModelProbe::open(cfg.model_path()?).ok().map(|p| p.config)
}

/// `engine.max_concurrent_generations`' upper bound (from the configuration schema).
fn max_at_once() -> usize {
    medgemma_protocol::config::maximum("engine.max_concurrent_generations")
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(1)
}

/// Runs `gpu`.
pub fn run(config: &Path, a: &GpuArgs) -> Report {
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => c,
        Err(e) => return Report::error(e.to_string()),
    };
    let model = model_config(&cfg);
    let context = a.context.unwrap_or(cfg.context_length() as u64);
    let need = model.as_ref().map(|m| model_need(m, context));
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return Report {
                code: EXIT_DOWN,
                text: format!(
                    "no NVIDIA driver: NVML (libnvidia-ml.so.1) cannot be used ({e}).\n{CPU_FALLBACK}"
                ),
                json: serde_json::json!({
                    "driver": null, "gpus": [], "error": e.to_string(),
                    "fallback": "cpu", "explanation": CPU_FALLBACK,
                }),
            };
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let cuda = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let count = nvml.device_count().unwrap_or(0);
    let mut gpus = Vec::new();
    let mut text = format!(
        "driver {}, CUDA {}; {count} GPU(s)\n",
        driver.as_deref().unwrap_or("?"),
        cuda.as_deref().unwrap_or("?")
    );
    let mut fits_any = false;
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        let mem = d.memory_info().ok();
        let procs: Vec<serde_json::Value> = d
            .running_compute_processes()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                };
                serde_json::json!({ "pid": p.pid, "name": process_name(p.pid), "used_bytes": used })
            })
            .collect();
        let free = mem.as_ref().map(|m| m.free);
        let fits = match (&need, free) {
            (Some((n, _)), Some(f)) => Some(f >= *n),
            _ => None,
        };
        // How many conversations the daemon would run at once here (it cuts
        // engine.max_concurrent_generations to this at start).
        let at_once = match (&model, free) {
            (Some(mc), Some(f)) => {
                use medgemma_model::budget::{BudgetRequest, DType, sequences_that_fit};
                let context = usize::try_from(context)
                    .unwrap_or(usize::MAX)
                    .min(mc.max_position_embeddings);
                let req = BudgetRequest::new(context, max_at_once(), DType::BF16);
                Some(sequences_that_fit(mc, &req, f))
            }
            _ => None,
        };
        fits_any |= fits.unwrap_or(false);
        let name = d.name().unwrap_or_default();
        let temp = d.temperature(TemperatureSensor::Gpu).ok();
        let power = d.power_usage().ok();
        let ecc = d.is_ecc_enabled().ok().map(|e| e.currently_enabled);
        text.push_str(&format!(
            "GPU {i}: {name} {}\n  memory {} MiB free of {} MiB; {} C; {} W; ECC {}\n",
            d.uuid().unwrap_or_default(),
            free.map_or(0, |f| f >> 20),
            mem.as_ref().map_or(0, |m| m.total >> 20),
            temp.map_or("?".to_owned(), |t| t.to_string()),
            power.map_or("?".to_owned(), |p| format!("{:.0}", f64::from(p) / 1000.0)),
            match ecc {
                Some(true) => "on",
                Some(false) => "off",
                None => "n/a",
            },
        ));
        for p in &procs {
            text.push_str(&format!(
                "  process {} ({}) uses {} MiB\n",
                p["pid"],
                p["name"].as_str().unwrap_or("?"),
                p["used_bytes"].as_u64().map_or(0, |b| b >> 20)
            ));
        }
        match (fits, at_once) {
            (Some(true), Some(n)) if n > 0 => text.push_str(&format!(
                "  the model fits, with room for {n}{} conversations at once (engine.max_concurrent_generations)\n",
                if n == max_at_once() { " (the most allowed)" } else { "" }
            )),
            (Some(true), _) => text.push_str("  the model fits\n"),
            (Some(false), _) => text.push_str("  the model does NOT fit in the free memory\n"),
            (None, _) => {}
        }
        gpus.push(serde_json::json!({
            "index": i, "name": name, "uuid": d.uuid().ok(),
            "memory_total_bytes": mem.as_ref().map(|m| m.total),
            "memory_free_bytes": free,
            "temperature_c": temp, "power_mw": power, "ecc_enabled": ecc,
            "processes": procs, "model_fits": fits, "conversations_at_once": at_once,
        }));
    }
    if let Some((_, why)) = &need {
        text.push_str(&format!("model needs {why}\n"));
    }
    let code = if count == 0 {
        text.push_str(CPU_FALLBACK);
        EXIT_DOWN
    } else if need.is_some() && !fits_any {
        EXIT_DEGRADED
    } else {
        EXIT_OK
    };
    Report {
        code,
        text,
        json: serde_json::json!({
            "driver": driver, "cuda": cuda, "gpus": gpus,
            "model_need_bytes": need.as_ref().map(|n| n.0),
        }),
    }
}

/// The command name of a process (`/proc/PID/comm`).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}
