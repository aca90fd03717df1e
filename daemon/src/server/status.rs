//! `GET /api/status`: what this process really is and does, for the UI's
//! status panel and for administrators.
//!
//! The sandbox state is read back from the kernel at each request (never a
//! hopeful "on"); the model path is reduced to its file name.
//!
//! Owns: the status document. Must never: include conversation content or ids.

use std::path::Path;

use hyper::{Response, StatusCode};

use super::AppState;
use super::http::{Body, json};
use super::openai::model_id;

/// What the UI must show next to a demo model's name.
pub const DEMO_NOTICE: &str = "a small demo model, not a medical model";

/// Resident and peak resident memory of this process in bytes (`VmRSS`,
/// `VmHWM` of /proc/self/status, proc(5)).
pub fn memory() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The status document.
pub fn status(state: &AppState) -> Response<Body> {
    let info = state.engine.info();
    let settings = &state.settings;
    let file = Path::new(&info.model.path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (rss, peak) = memory();
    let q = state.engine.queue();
    let doc = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "model": {
            "id": model_id(&settings.model.label),
            "label": settings.model.label,
            "demo": settings.model.demo,
            "notice": settings.model.demo.then_some(DEMO_NOTICE),
            "file": file,
            "format": info.model.format,
            "parameters": info.model.parameters,
            "layers": info.model.layers,
            "hidden_size": info.model.hidden_size,
            "context_limit": info.context_limit,
            "max_new_tokens": settings.engine.max_new_tokens,
            "system_prompt": settings.system_prompt.is_some(),
        },
        // Top level too: the context meter needs it before the first turn.
        "context_limit": info.context_limit,
        "backend": {
            "kind": info.backend,
            "reason": info.backend_reason,
            // On CUDA: which GPU, its memory, the budget and the warm-up.
            "device": crate::gpu::selected().map(crate::gpu::GpuInfo::device),
            "gpu": crate::gpu::selected().map(crate::gpu::GpuInfo::status_json),
            "gpu_failures_in_a_row": crate::gpu::consecutive_failures(),
        },
        "memory": { "rss_bytes": rss, "peak_rss_bytes": peak },
        "queue": {
            "length": q.waiting,
            "capacity": q.capacity,
            "active": q.active,
            // What the engine runs at once (the scripted test double: 1).
            "max_concurrent": state.engine.running(),
            "served": q.served,
            "rejected": q.rejected,
        },
        "conversations": {
            "count": state.conversations.len(),
            "idle_timeout_s": state.conversations.idle_timeout().as_secs(),
        },
        "sandbox": (state.sandbox)(),
    });
    json(StatusCode::OK, &doc)
}
