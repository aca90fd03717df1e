//! The status documents: `GET /api/status` on the UI socket
//! ([`PublicStatus`], for the browser) and `GET /admin/status` on the admin
//! socket ([`AdminStatus`], for `medgemmactl status`). Both are built by the
//! daemon from one engine snapshot and share their parts, so a key has one
//! name in both.
//!
//! Owns: the shape and the key names of the documents. Must never: have a
//! field for conversation content or ids (only counts), or for a full model
//! path in the public document.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pins::PinCheck;

/// What the UI must show next to a demo model's name.
pub const DEMO_NOTICE: &str = "a small demo model, not a medical model";

/// `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicStatus {
    /// The daemon's version.
    pub version: String,
    /// Seconds since serving began.
    pub uptime_s: u64,
    /// The model as clinicians see it.
    pub model: ModelStatus,
    /// The context limit in tokens (top level too: the context meter needs it
    /// before the first turn).
    pub context_limit: usize,
    /// Where the model runs and why.
    pub backend: BackendStatus,
    /// This process's memory.
    pub memory: MemoryStatus,
    /// The engine's queue.
    pub queue: QueueStatus,
    /// Conversations in memory.
    pub conversations: ConversationsStatus,
    /// The sandbox as the kernel enforces it, read at the time of the request.
    pub sandbox: SandboxStatus,
}

/// `GET /admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// The daemon's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since serving began.
    pub uptime_s: u64,
    /// Healthy, or degraded with the reasons.
    pub health: Health,
    /// The model as clinicians see it.
    pub model: ModelStatus,
    /// The model's files: path, fingerprint, pins.
    pub model_files: ModelFiles,
    /// Where the model runs and why.
    pub backend: BackendStatus,
    /// This process's memory.
    pub memory: MemoryStatus,
    /// The sandbox as the kernel enforces it.
    pub sandbox: SandboxStatus,
    /// The engine's queue.
    pub queue: QueueStatus,
    /// Conversations in memory.
    pub conversations: ConversationsStatus,
    /// Decode speed of the last finished answer.
    pub recent_tokens_per_s: Option<f64>,
    /// The audit log.
    pub audit: AuditStatus,
}

/// The health verdict of the admin status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The verdict.
    pub status: HealthState,
    /// One sentence per reason for "degraded".
    pub reasons: Vec<String>,
}

/// Healthy or degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Everything as configured.
    Healthy,
    /// Serving, but not as configured (see the reasons).
    Degraded,
}

/// The model, as shown to clinicians (no path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// The OpenAI API's model id (from the label).
    pub id: String,
    /// `model.label`.
    pub label: String,
    /// `model.demo`.
    pub demo: bool,
    /// [`DEMO_NOTICE`] for a demo model.
    pub notice: Option<String>,
    /// The model's file or directory name (never the full path).
    pub file: String,
    /// "safetensors" or "gguf" (or "test" for the scripted double).
    pub format: String,
    /// Text-decoder parameters.
    pub parameters: u64,
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Context limit in tokens.
    pub context_limit: usize,
    /// Upper bound of the tokens of one answer.
    pub max_new_tokens: usize,
    /// Whether a system prompt is configured.
    pub system_prompt: bool,
}

/// The model's files, for administrators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFiles {
    /// `model.path`.
    pub path: PathBuf,
    /// The model fingerprint recorded in the audit log: SHA-256 over the
    /// model files' digests, taken while they loaded.
    pub fingerprint: String,
    /// The files hashed while loading matched their pins (`None`: no pins).
    pub verified_at_load: Option<bool>,
    /// What that check found, in a sentence.
    pub load_check: Option<String>,
    /// The pinned sizes compared with the files now.
    pub pins: PinCheck,
}

/// Where the model runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// "cpu", "cuda" (or "test").
    pub kind: String,
    /// Why, in one sentence.
    pub reason: String,
    /// On CUDA: "GPU 0: NVIDIA H200 (GPU-…)".
    pub device: Option<String>,
    /// On CUDA: the GPU, its memory, the budget and the warm-up.
    pub gpu: Option<GpuStatus>,
    /// Requests that failed on the GPU in a row.
    pub gpu_failures_in_a_row: usize,
}

/// The GPU the model runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// Ordinal (PCI bus order, as `nvidia-smi`).
    pub index: u32,
    /// Product name.
    pub name: String,
    /// GPU UUID.
    pub uuid: String,
    /// Installed memory.
    pub memory_total_bytes: u64,
    /// Installed memory in MiB (what the UI shows).
    pub memory_total_mib: u64,
    /// Free memory before the model loaded.
    pub memory_free_at_start_bytes: u64,
    /// Memory in use on the whole GPU after the warm-up (all processes).
    pub memory_used_bytes: Option<u64>,
    /// The same in MiB.
    pub memory_used_mib: Option<u64>,
    /// What the budget said the model needs.
    pub budget_bytes: u64,
    /// The budget, described.
    pub budget: String,
    /// Seconds the warm-up took (kernel compilation).
    pub warm_up_s: Option<f64>,
    /// Conversations generated at once (fewer than configured when only
    /// fewer KV caches fit).
    pub sequences: usize,
    /// `engine.max_concurrent_generations`.
    pub sequences_configured: usize,
}

impl GpuStatus {
    /// "GPU 0: NVIDIA H200 (GPU-…)".
    pub fn device(&self) -> String {
        format!("GPU {}: {} ({})", self.index, self.name, self.uuid)
    }

    /// Records the memory in use after the warm-up (bytes and MiB).
    pub fn set_memory_used(&mut self, bytes: Option<u64>) {
        self.memory_used_bytes = bytes;
        self.memory_used_mib = bytes.map(|b| b >> 20);
    }
}

/// Resident memory of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// `VmRSS`.
    pub rss_bytes: Option<u64>,
    /// `VmHWM`.
    pub peak_rss_bytes: Option<u64>,
}

/// The engine's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Requests queued and not started.
    pub waiting: usize,
    /// Room in the queue besides the running requests.
    pub capacity: usize,
    /// Requests generating now.
    pub active: usize,
    /// Requests the engine generates at once.
    pub max_concurrent: usize,
    /// Requests finished since start.
    pub served: usize,
    /// Requests refused because the queue was full.
    pub rejected: usize,
}

/// Conversations held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationsStatus {
    /// How many.
    pub count: usize,
    /// Seconds after its last turn before one is forgotten.
    pub idle_timeout_s: u64,
}

/// The sandbox as the kernel enforces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// True only when nothing falls short of the full lockdown.
    pub enforced: bool,
    /// `--insecure-no-sandbox`.
    pub insecure_no_sandbox: bool,
    /// One sentence per shortfall.
    pub problems: Vec<String>,
    /// Lines for people: the privilege drop, Landlock (its ABI and what it
    /// does not enforce at that ABI, with what covers it), seccomp.
    pub summary: Vec<String>,
    /// Landlock as applied (none without the sandbox).
    pub landlock: Option<LandlockStatus>,
    /// The kernel's view (`medgemma-sandbox`'s state read back from
    /// `/proc`: ids, capabilities, seccomp and Landlock reports), with
    /// Landlock's rules reduced to their number.
    #[serde(flatten)]
    pub kernel: serde_json::Map<String, serde_json::Value>,
}

/// Landlock as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockStatus {
    /// The kernel's Landlock ABI.
    pub kernel_abi: i32,
    /// The ABI whose rights are enforced.
    pub enforced_abi: i32,
    /// `sandbox.min_landlock_abi`.
    pub required_abi: i32,
    /// The kernel reported full enforcement.
    pub fully_enforced: bool,
    /// Rules (paths are not shown).
    pub rules: usize,
    /// The rights this ABI lacks, each with what covers it.
    pub not_enforced: Vec<LandlockGap>,
}

/// A Landlock right the enforced ABI lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockGap {
    /// The right, e.g. `Truncate`.
    pub right: String,
    /// The ABI that introduced it.
    pub since_abi: i32,
    /// What it guards.
    pub guards: String,
    /// What covers it instead.
    pub covered_by: String,
}

/// The audit log, for administrators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// The log directory.
    pub dir: PathBuf,
    /// The chain's end.
    pub chain: ChainHead,
}

/// The end of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// MAC of the last record (hex).
    pub head: String,
    /// The boot id of this run.
    pub boot_id: String,
    /// Torn tails cut off when the log was opened.
    pub recovered_cuts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_detail_is_flattened_and_read_back() {
        let mut kernel = serde_json::Map::new();
        kernel.insert("seccomp_filters".into(), 3.into());
        let s = SandboxStatus {
            enforced: true,
            insecure_no_sandbox: false,
            problems: vec![],
            summary: vec!["Landlock ABI 7 enforced".into()],
            landlock: None,
            kernel,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["seccomp_filters"], 3);
        assert_eq!(v["enforced"], true);
        let back: SandboxStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
