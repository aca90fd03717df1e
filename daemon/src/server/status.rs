//! The two status documents, built from one engine snapshot:
//! `GET /api/status` ([`PublicStatus`], the UI's status panel) and
//! `GET /admin/status` on the admin socket ([`AdminStatus`], `medgemmactl
//! status`, with the health verdict). Their types live in
//! `medgemma_protocol::status`, which `medgemmactl` reads.
//!
//! The sandbox state is read back from the kernel at each request (never a
//! hopeful "on"); the public document shows the model's file name, never
//! its path.
//!
//! Owns: the status documents' content and the health verdict. Must never:
//! include conversation content or ids.

use std::path::Path;
use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};
use medgemma_protocol::config::BackendChoice;
use medgemma_protocol::pins::Pins;
use medgemma_protocol::status::{
    AdminStatus, AuditStatus, BackendStatus, ConversationsStatus, DEMO_NOTICE, Health, HealthState,
    MemoryStatus, ModelFiles, ModelStatus, PublicStatus,
};

use super::AppState;
use super::http::{Body, json};
use super::openai::model_id;
use crate::engine::EngineSnapshot;

/// Resident and peak resident memory of this process (`VmRSS`, `VmHWM` of
/// /proc/self/status, proc(5)).
pub fn memory() -> MemoryStatus {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return MemoryStatus {
            rss_bytes: None,
            peak_rss_bytes: None,
        };
    };
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    MemoryStatus {
        rss_bytes: field("VmRSS:"),
        peak_rss_bytes: field("VmHWM:"),
    }
}

fn model(state: &AppState, engine: &EngineSnapshot) -> ModelStatus {
    let settings = &state.settings;
    let info = &engine.info;
    ModelStatus {
        id: model_id(&settings.model.label),
        label: settings.model.label.clone(),
        demo: settings.model.demo,
        notice: settings.model.demo.then(|| DEMO_NOTICE.to_owned()),
        file: Path::new(&info.model.path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: info.model.format.to_owned(),
        parameters: info.model.parameters,
        layers: info.model.layers,
        hidden_size: info.model.hidden_size,
        context_limit: info.context_limit,
        max_new_tokens: settings.engine.max_new_tokens,
        system_prompt: settings.system_prompt.is_some(),
    }
}

fn backend(engine: &EngineSnapshot) -> BackendStatus {
    let info = &engine.info;
    BackendStatus {
        kind: info.backend.clone(),
        reason: info.backend_reason.clone(),
        device: info.gpu.as_ref().map(|g| g.device()),
        gpu: info.gpu.clone(),
        gpu_failures_in_a_row: engine.gpu_failures_in_a_row,
    }
}

fn conversations(state: &AppState) -> ConversationsStatus {
    ConversationsStatus {
        count: state.conversations.len(),
        idle_timeout_s: state.conversations.idle_timeout().as_secs(),
    }
}

/// The `GET /api/status` document.
pub fn public_document(state: &AppState) -> PublicStatus {
    let engine = state.engine.snapshot();
    PublicStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.started.elapsed().as_secs(),
        model: model(state, &engine),
        context_limit: engine.info.context_limit,
        backend: backend(&engine),
        memory: memory(),
        queue: engine.queue,
        conversations: conversations(state),
        sandbox: (state.sandbox)(),
    }
}

/// `GET /api/status`.
pub fn public(state: &AppState) -> Response<Body> {
    json(StatusCode::OK, &public_document(state))
}

/// The `GET /admin/status` document, with the health verdict: degraded when
/// the CPU runs what `auto` meant for the GPU, the GPU keeps failing, the
/// sandbox falls short, or a model file no longer matches its pin.
pub fn admin_document(state: &AppState) -> AdminStatus {
    let engine = state.engine.snapshot();
    let settings = &state.settings;
    let pins = Pins::check_sizes(settings.model.pins_file.as_deref());
    let sandbox = (state.sandbox)();
    let mut reasons: Vec<String> = Vec::new();
    if engine.info.backend == "cpu" && settings.engine.backend == BackendChoice::Auto {
        reasons.push(format!(
            "running on the CPU: {}",
            engine.info.backend_reason
        ));
    }
    if engine.gpu_degraded {
        reasons.push(format!(
            "the last {} requests failed on the GPU; run medgemmactl gpu and check the kernel log for NVIDIA Xid errors",
            engine.gpu_failures_in_a_row
        ));
    }
    if !sandbox.enforced {
        reasons.push("the kernel sandbox is not enforced".to_owned());
    }
    let weights = engine.info.weights.as_ref();
    if pins.ok == Some(false) || weights.and_then(|w| w.verified) == Some(false) {
        reasons.push(format!(
            "a model file does not match its pin: {}",
            weights.filter(|w| w.verified == Some(false)).map_or_else(
                || pins.detail.clone().unwrap_or_default(),
                |w| w.detail.clone()
            )
        ));
    }
    let speed = f64::from_bits(state.recent_tokens_per_s.load(Ordering::Relaxed));
    AdminStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_s: state.started.elapsed().as_secs(),
        health: Health {
            status: if reasons.is_empty() {
                HealthState::Healthy
            } else {
                HealthState::Degraded
            },
            reasons,
        },
        model: model(state, &engine),
        model_files: ModelFiles {
            path: settings.model.path.clone(),
            fingerprint: state.audit.model().as_str().to_owned(),
            verified_at_load: weights.and_then(|w| w.verified),
            load_check: weights.map(|w| w.detail.clone()),
            pins,
        },
        backend: backend(&engine),
        memory: memory(),
        sandbox,
        queue: engine.queue,
        conversations: conversations(state),
        recent_tokens_per_s: (speed > 0.0).then_some((speed * 10.0).round() / 10.0),
        audit: AuditStatus {
            dir: state.audit.dir().to_owned(),
            chain: state.audit.head(),
        },
    }
}
