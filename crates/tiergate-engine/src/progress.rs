//! Whether the engine's workers are moving. A worker stuck in a forward pass that does not
//! return (a read from a stalled disk under the weights file, a starved CPU) looks alive: its
//! thread exists. What tells it from an idle or a busy worker is time since the last sign of
//! progress while there is work: a node reads it for readiness, so that a load balancer, or an
//! edge node watching gRPC health, stops sending work to an engine that does none.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The last sign of progress, and the work in the pool that waits on it.
#[derive(Debug)]
pub(crate) struct Progress {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last_beat_ms: AtomicU64,
    /// The longest forward pass so far, in milliseconds.
    longest_pass_ms: AtomicU64,
    /// Jobs a worker has taken and not finished (a batching worker's members and line).
    pub(crate) held: AtomicUsize,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            epoch: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            longest_pass_ms: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        }
    }
}

impl Progress {
    /// Something moved: a worker took a job or ended a forward pass, or work arrived at an
    /// idle pool (the clock starts then, not at the last job hours ago).
    pub(crate) fn beat(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A forward pass ended after `took`: a beat, and the longest pass so far.
    pub(crate) fn pass_ended(&self, took: Duration) {
        let took = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.longest_pass_ms.fetch_max(took, Ordering::Relaxed);
        self.beat();
    }

    /// The longest forward pass so far: how late the engine may notice a deadline.
    pub(crate) fn longest_pass(&self) -> Duration {
        Duration::from_millis(self.longest_pass_ms.load(Ordering::Relaxed))
    }

    /// How long the pool has had work (`queued` jobs not yet taken, or jobs held) without a
    /// beat; `None` while it has none, however long ago the last beat was.
    pub(crate) fn stalled_for(&self, queued: usize) -> Option<Duration> {
        if !self.has_work(queued) {
            return None;
        }
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// Whether the pool has work: `queued` jobs not yet taken, or jobs held. A job arriving at a
    /// pool without any beats (its clock starts then).
    pub(crate) fn has_work(&self, queued: usize) -> bool {
        queued > 0 || self.held.load(Ordering::SeqCst) > 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_idle_pool_is_never_stalled_and_work_starts_the_clock() {
        let progress = Progress::default();
        assert_eq!(progress.stalled_for(0), None);
        std::thread::sleep(Duration::from_millis(30));
        // Work arrives at the idle pool: its arrival beats, so the wait counts from now.
        assert!(!progress.has_work(0));
        progress.beat();
        assert!(progress.stalled_for(1).unwrap() < Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        let waited = progress.stalled_for(1).unwrap();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        // A worker takes it and holds it: still work, still counting until the next beat.
        progress.held.fetch_add(1, Ordering::SeqCst);
        assert!(progress.has_work(0));
        assert!(progress.stalled_for(0).unwrap() >= Duration::from_millis(30));
        progress.beat();
        assert!(progress.stalled_for(0).unwrap() < Duration::from_millis(20));
        progress.held.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(progress.stalled_for(0), None);
    }

    #[test]
    fn a_pass_beats_and_the_longest_one_is_kept() {
        let progress = Progress::default();
        assert_eq!(progress.longest_pass(), Duration::ZERO);
        progress.pass_ended(Duration::from_millis(40));
        progress.pass_ended(Duration::from_millis(15));
        assert_eq!(progress.longest_pass(), Duration::from_millis(40));
        assert!(progress.stalled_for(1).unwrap() < Duration::from_millis(20));
    }
}
