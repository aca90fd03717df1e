//! The two status documents, built from one engine snapshot (none while
//! the model loads: the model's numbers and the backend are then absent):
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

use hyper::{HeaderMap, Response, StatusCode};
use medgemma_protocol::config::{AnswerStyle, BackendChoice};
use medgemma_protocol::pins::Pins;
use medgemma_protocol::status::{
    AdminStatus, AuditStatus, BackendStatus, ConversationsStatus, DEMO_NOTICE, Health, HealthState,
    MemoryStatus, ModelFiles, ModelStatus, PublicStatus, QueueStatus,
};

use super::AppState;
use super::auth::User;
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

fn model(state: &AppState, engine: Option<&EngineSnapshot>) -> ModelStatus {
    let settings = &state.settings;
    let info = engine.map(|e| &e.info);
    let file = |path: &Path| {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    ModelStatus {
        id: model_id(&settings.model.label),
        label: settings.model.label.clone(),
        demo: settings.model.demo,
        notice: settings.model.demo.then(|| DEMO_NOTICE.to_owned()),
        file: match info {
            Some(i) => file(Path::new(&i.model.path)),
            None => file(&settings.model.path),
        },
        format: info.map(|i| i.model.format.to_owned()),
        parameters: info.map(|i| i.model.parameters),
        layers: info.map(|i| i.model.layers),
        hidden_size: info.map(|i| i.model.hidden_size),
        context_limit: info.map(|i| i.context_limit),
        max_new_tokens: settings.engine.max_new_tokens,
        system_prompt: settings.system_prompt.is_some(),
        images: info.is_some_and(|i| i.image_size.is_some()),
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

/// The queue: the engine's counters, or an empty queue of the configured
/// size while the model loads.
fn queue(state: &AppState, engine: Option<&EngineSnapshot>) -> QueueStatus {
    engine.map_or(
        QueueStatus {
            waiting: 0,
            capacity: state.settings.engine.queue_length,
            active: 0,
            max_concurrent: state.settings.engine.max_concurrent_generations,
            served: 0,
            rejected: 0,
        },
        |e| e.queue,
    )
}

/// The styles offered and the default, when presets are configured.
fn styles(state: &AppState) -> (Vec<String>, Option<String>) {
    if state.settings.presets.is_empty() {
        return (Vec::new(), None);
    }
    let styles = AnswerStyle::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    (
        styles,
        Some(state.settings.answers.default_style.as_str().to_owned()),
    )
}

/// The `GET /api/status` document for a browser whose user is `user`.
pub fn public_document(state: &AppState, user: Option<&User>) -> PublicStatus {
    let engine = state.engine.handle().map(|e| e.snapshot());
    let (model_state, loading, _) = state.engine.state();
    let (styles, default_style) = styles(state);
    PublicStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.started.elapsed().as_secs(),
        state: model_state,
        loading,
        model: model(state, engine.as_ref()),
        context_limit: engine.as_ref().map(|e| e.info.context_limit),
        backend: engine.as_ref().map(backend),
        memory: memory(),
        queue: queue(state, engine.as_ref()),
        conversations: conversations(state),
        sandbox: (state.sandbox)(),
        styles,
        default_style,
        auth: state.auth.status(user),
        terms: state.terms().status(),
    }
}

/// `GET /api/status`. Reading it does not extend the caller's idle timer.
pub async fn public(
    state: &AppState,
    headers: &HeaderMap,
    peer_uid: Option<u32>,
) -> Response<Body> {
    let user = state
        .auth
        .session_user(&state.audit, headers, peer_uid, false, &state.conversations)
        .await;
    json(StatusCode::OK, &public_document(state, user.as_ref()))
}

/// The `GET /admin/status` document, with the health verdict: degraded when
/// the model failed to load, the CPU runs what `auto` meant for the GPU, the
/// GPU keeps failing, the sandbox falls short, a model file no longer
/// matches its pin, or the accounts file cannot be read.
pub fn admin_document(state: &AppState) -> AdminStatus {
    let engine = state.engine.handle().map(|e| e.snapshot());
    let (model_state, loading, failure) = state.engine.state();
    let settings = &state.settings;
    let pins = Pins::check_sizes(settings.model.pins_file.as_deref());
    let sandbox = (state.sandbox)();
    let accounts = state.auth.admin_status();
    let mut reasons: Vec<String> = Vec::new();
    if let Some(why) = &failure {
        reasons.push(format!("the model could not be loaded: {why}"));
    }
    if let Some(e) = &engine {
        if e.info.backend == "cpu" && settings.engine.backend == BackendChoice::Auto {
            reasons.push(format!("running on the CPU: {}", e.info.backend_reason));
        }
        if e.gpu_degraded {
            reasons.push(format!(
                "the last {} requests failed on the GPU; run medgemmactl gpu and check the kernel log for NVIDIA Xid errors",
                e.gpu_failures_in_a_row
            ));
        }
    }
    if !sandbox.enforced {
        reasons.push("the kernel sandbox is not enforced".to_owned());
    }
    let weights = engine.as_ref().and_then(|e| e.info.weights.as_ref());
    if pins.ok == Some(false) || weights.and_then(|w| w.verified) == Some(false) {
        reasons.push(format!(
            "a model file does not match its pin: {}",
            weights.filter(|w| w.verified == Some(false)).map_or_else(
                || pins.detail.clone().unwrap_or_default(),
                |w| w.detail.clone()
            )
        ));
    }
    if let Some(problem) = &accounts.problem {
        reasons.push(format!("the accounts file cannot be read: {problem}"));
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
        state: model_state,
        loading,
        failure,
        model: model(state, engine.as_ref()),
        model_files: ModelFiles {
            path: settings.model.path.clone(),
            fingerprint: state.audit.model().as_str().to_owned(),
            verified_at_load: weights.and_then(|w| w.verified),
            load_check: weights.map(|w| w.detail.clone()),
            pins,
        },
        backend: engine.as_ref().map(backend),
        memory: memory(),
        sandbox,
        queue: queue(state, engine.as_ref()),
        conversations: conversations(state),
        recent_tokens_per_s: (speed > 0.0).then_some((speed * 10.0).round() / 10.0),
        audit: AuditStatus {
            dir: state.audit.dir().to_owned(),
            chain: state.audit.head(),
        },
        accounts,
        terms: state.terms().status(),
    }
}
