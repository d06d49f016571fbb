//! A node's lifecycle, the one state that gRPC health, `/readyz`, `tiergate_ready` and the
//! admission gate all read: starting -> serving -> draining -> closing -> stopped.

use std::sync::Arc;

use prometheus::Gauge;
use tokio::sync::watch;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listening, not yet announced as ready.
    Starting,
    /// Ready when its readiness probe agrees (engine workers alive).
    Serving,
    /// Shutting down: reported NOT_SERVING so that watchers move traffic away, yet still
    /// answering requests that arrive before they have.
    Draining,
    /// New requests are refused with a retryable status; in-flight ones finish.
    Closing,
    /// The listeners are closed.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
            Phase::Stopped => "stopped",
        }
    }
}

/// What must hold, besides the phase, for a node to be ready (e.g. engine workers alive).
pub type ReadinessProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The shared lifecycle handle. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    phase: Arc<watch::Sender<Phase>>,
    probe: ReadinessProbe,
    ready_gauge: Gauge,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("phase", &self.phase())
            .finish()
    }
}

impl Lifecycle {
    /// Starts in [`Phase::Starting`]; `ready_gauge` (`tiergate_ready`) follows readiness.
    pub fn new(probe: ReadinessProbe, ready_gauge: Gauge) -> Lifecycle {
        ready_gauge.set(0.0);
        Lifecycle {
            phase: Arc::new(watch::channel(Phase::Starting).0),
            probe,
            ready_gauge,
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `phase`. Phases only move forward: a late `Serving` cannot undo a drain.
    pub fn set(&self, phase: Phase) {
        let moved = self.phase.send_if_modified(|current| {
            let forward = phase as u8 > *current as u8;
            if forward {
                *current = phase;
            }
            forward
        });
        if moved {
            tracing::info!(phase = phase.as_str(), "lifecycle");
        }
        self.is_ready();
    }

    /// Ready: serving and the probe agrees. Keeps `tiergate_ready` in step.
    pub fn is_ready(&self) -> bool {
        let ready = self.phase() == Phase::Serving && (self.probe)();
        self.ready_gauge.set(if ready { 1.0 } else { 0.0 });
        ready
    }

    /// Whether new inference requests are taken (refused from [`Phase::Closing`] on).
    pub fn admits(&self) -> bool {
        matches!(
            self.phase(),
            Phase::Starting | Phase::Serving | Phase::Draining
        )
    }

    /// Notified on every phase change.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn lifecycle(alive: &Arc<AtomicBool>) -> (Lifecycle, Gauge) {
        let gauge = Gauge::new("ready", "ready").unwrap();
        let alive = Arc::clone(alive);
        let probe: ReadinessProbe = Arc::new(move || alive.load(Ordering::SeqCst));
        (Lifecycle::new(probe, gauge.clone()), gauge)
    }

    #[test]
    fn ready_follows_phase_and_probe_and_the_gauge_follows() {
        let alive = Arc::new(AtomicBool::new(true));
        let (lifecycle, gauge) = lifecycle(&alive);
        assert!(!lifecycle.is_ready());
        assert_eq!(gauge.get(), 0.0);
        lifecycle.set(Phase::Serving);
        assert!(lifecycle.is_ready());
        assert_eq!(gauge.get(), 1.0);
        // Workers died: not ready, though the phase says serving.
        alive.store(false, Ordering::SeqCst);
        assert!(!lifecycle.is_ready());
        assert_eq!(gauge.get(), 0.0);
        alive.store(true, Ordering::SeqCst);
        lifecycle.set(Phase::Draining);
        assert!(!lifecycle.is_ready());
        assert_eq!(gauge.get(), 0.0);
        assert!(lifecycle.admits());
        lifecycle.set(Phase::Closing);
        assert!(!lifecycle.admits());
    }

    #[test]
    fn phases_never_move_back() {
        let alive = Arc::new(AtomicBool::new(true));
        let (lifecycle, _) = lifecycle(&alive);
        lifecycle.set(Phase::Draining);
        lifecycle.set(Phase::Serving);
        assert_eq!(lifecycle.phase(), Phase::Draining);
    }
}
