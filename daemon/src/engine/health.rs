//! [`EngineHealth`]: how the GPU has fared, shared between the engine
//! thread (which records each GPU step's outcome) and the status pages
//! (which read it), instead of process-wide statics.
//!
//! Owns: the failure counters and their thresholds. Must never: hold
//! anything of a request (only counts).

use std::sync::atomic::{AtomicUsize, Ordering};

/// GPU failures in a row after which the status says degraded.
pub const FAILURES_DEGRADED: usize = 3;

/// GPU failures in a row after which the engine stops so that the service
/// restarts (a sticky CUDA error fails every later request; a fresh process
/// gets a fresh context).
pub const FAILURES_RESTART: usize = 5;

/// The GPU's record since start.
#[derive(Debug, Default)]
pub struct EngineHealth {
    failures_in_a_row: AtomicUsize,
}

impl EngineHealth {
    /// A GPU step failed.
    pub fn record_failure(&self) {
        self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
    }

    /// A GPU step succeeded.
    pub fn record_success(&self) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
    }

    /// GPU failures in a row now.
    pub fn failures_in_a_row(&self) -> usize {
        self.failures_in_a_row.load(Ordering::Relaxed)
    }

    /// Whether the status should say degraded.
    pub fn degraded(&self) -> bool {
        self.failures_in_a_row() >= FAILURES_DEGRADED
    }

    /// Whether the engine should stop so that the service restarts.
    pub fn must_restart(&self) -> bool {
        self.failures_in_a_row() >= FAILURES_RESTART
    }
}

/// A caught panic as a short sentence for the log and errors: where it
/// happened (the panic hook kept the location), never its message, which
/// may quote request text (the hook already logged the location and thread).
pub fn panic_text(_payload: &(dyn std::any::Any + Send)) -> String {
    crate::log::last_panic_location().map_or_else(
        || "a panic (see the log)".to_owned(),
        |at| format!("a panic at {at} (see the log)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_degrade_then_restart_and_a_success_resets() {
        let h = EngineHealth::default();
        for _ in 0..FAILURES_DEGRADED {
            assert!(!h.degraded());
            h.record_failure();
        }
        assert!(h.degraded() && !h.must_restart());
        h.record_success();
        assert_eq!(h.failures_in_a_row(), 0);
        for _ in 0..FAILURES_RESTART {
            h.record_failure();
        }
        assert!(h.must_restart());
    }
}
