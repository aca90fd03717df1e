//! The engine as the server sees it while the daemon runs: loading (the UI
//! and `/api/status` are served, chat answers 503 `loading`), ready (an
//! [`EngineHandle`]), or failed to load (503 `model_failed`, the reason in
//! the admin status).
//!
//! `serve_cmd` starts the engine thread, starts serving with a loading
//! slot, and fills it when the thread reports; tests hand [`server::run`]
//! an engine that is already ready.
//!
//! Owns: the model's state and loading progress. Must never: hand out a
//! handle before the engine reported ready.
//!
//! [`server::run`]: super::run

use std::sync::{Arc, RwLock, RwLockReadGuard};

use medgemma_protocol::status::{LoadingStatus, ModelState};

use super::http::ApiError;
use crate::engine::EngineHandle;

/// Seconds a client is told to wait while the model loads.
pub const LOADING_RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug)]
enum Slot {
    Loading {
        stage: String,
        progress: Option<f64>,
    },
    Ready(EngineHandle),
    Failed(String),
}

/// The engine's state, shared by every request.
#[derive(Debug)]
pub struct EngineSlot {
    slot: RwLock<Slot>,
}

impl From<EngineHandle> for EngineSlot {
    fn from(engine: EngineHandle) -> Self {
        Self {
            slot: RwLock::new(Slot::Ready(engine)),
        }
    }
}

impl EngineSlot {
    /// A slot whose engine is loading, at its first stage.
    pub fn loading(stage: &str) -> Self {
        Self {
            slot: RwLock::new(Slot::Loading {
                stage: stage.to_owned(),
                progress: Some(0.0),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Slot> {
        // Every update is one assignment: a poisoned lock holds a whole value.
        self.slot.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, slot: Slot) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = slot;
    }

    /// Reports a loading stage and the share of the stages done (0 to 1).
    pub fn stage(&self, stage: &str, progress: Option<f64>) {
        if matches!(*self.read(), Slot::Loading { .. }) {
            self.set(Slot::Loading {
                stage: stage.to_owned(),
                progress,
            });
        }
    }

    /// The engine is ready.
    pub fn ready(&self, engine: EngineHandle) {
        self.set(Slot::Ready(engine));
    }

    /// The engine could not be loaded; `reason` is for administrators.
    pub fn failed(&self, reason: String) {
        self.set(Slot::Failed(reason));
    }

    /// The engine, when ready.
    pub fn handle(&self) -> Option<EngineHandle> {
        match &*self.read() {
            Slot::Ready(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// The engine, or the error a chat request gets while there is none.
    pub fn require(&self) -> Result<EngineHandle, ApiError> {
        match &*self.read() {
            Slot::Ready(e) => Ok(e.clone()),
            Slot::Loading { .. } => Err(ApiError::unavailable(
                "loading",
                "The model is still loading; try again in a few seconds.",
                LOADING_RETRY_AFTER_SECS,
            )),
            Slot::Failed(_) => Err(ApiError::new(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                "model_failed",
                "The model could not be loaded, so the appliance cannot answer; tell the administrator (medgemmactl status shows why).",
            )),
        }
    }

    /// The state, the loading stage and the failure reason, read together.
    pub fn state(&self) -> (ModelState, Option<LoadingStatus>, Option<String>) {
        match &*self.read() {
            Slot::Loading { stage, progress } => (
                ModelState::Loading,
                Some(LoadingStatus {
                    stage: stage.clone(),
                    progress: *progress,
                }),
                None,
            ),
            Slot::Ready(_) => (ModelState::Ready, None, None),
            Slot::Failed(reason) => (ModelState::Failed, None, Some(reason.clone())),
        }
    }
}

/// What [`super::run`] accepts as its engine: a ready one, or a shared slot.
#[derive(Debug)]
pub struct EngineArg(pub Arc<EngineSlot>);

impl From<EngineHandle> for EngineArg {
    fn from(engine: EngineHandle) -> Self {
        Self(Arc::new(EngineSlot::from(engine)))
    }
}

impl From<Arc<EngineSlot>> for EngineArg {
    fn from(slot: Arc<EngineSlot>) -> Self {
        Self(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_and_failed_slots_refuse_with_their_codes() {
        let slot = EngineSlot::loading("starting");
        assert_eq!(slot.require().unwrap_err().code, "loading");
        assert_eq!(slot.require().unwrap_err().retry_after, Some(5));
        slot.stage("loading the weights", Some(0.5));
        let (state, loading, _) = slot.state();
        assert_eq!(state, ModelState::Loading);
        assert_eq!(loading.unwrap().stage, "loading the weights");
        slot.failed("the file is damaged".into());
        assert_eq!(slot.require().unwrap_err().code, "model_failed");
        // A late stage report does not hide the failure.
        slot.stage("x", None);
        assert_eq!(slot.state().0, ModelState::Failed);
    }
}
