//! Live performance over the last requests a node answered: the latency percentiles the budget
//! monitor compares with the latency budget, and the tokens per second the report shows. Fed
//! where answers are counted in metrics (`tiergate_request_duration_seconds`), from the same
//! figures.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// The default number of recent requests kept (`device.latency_window`).
pub const DEFAULT_WINDOW: usize = 100;

/// One answered request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    seconds: f64,
    completion_tokens: u32,
}

/// A window of the last answered requests.
#[derive(Debug)]
pub struct Performance {
    window: usize,
    samples: Mutex<VecDeque<Sample>>,
}

/// What the window says, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerformanceSnapshot {
    /// Answered requests in the window.
    pub requests: usize,
    pub latency_p50_seconds: Option<f64>,
    pub latency_p95_seconds: Option<f64>,
    /// Completion tokens over the time of the requests that made them (whole requests, time to
    /// first token included).
    pub tokens_per_second: Option<f64>,
}

impl Default for Performance {
    fn default() -> Self {
        Performance::new(DEFAULT_WINDOW)
    }
}

impl Performance {
    pub fn new(window: usize) -> Self {
        let window = window.max(1);
        Performance {
            window,
            samples: Mutex::new(VecDeque::with_capacity(window)),
        }
    }

    /// Records one answered request.
    pub fn record(&self, duration: Duration, completion_tokens: u32) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == self.window {
            samples.pop_front();
        }
        samples.push_back(Sample {
            seconds: duration.as_secs_f64(),
            completion_tokens,
        });
    }

    /// The `q` quantile (0..=1) of the window's latencies, nearest rank; `None` when empty.
    pub fn latency_percentile(&self, q: f64) -> Option<f64> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seconds: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
        drop(samples);
        nearest_rank(&mut seconds, q)
    }

    pub fn snapshot(&self) -> PerformanceSnapshot {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let mut seconds: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
        let total_seconds: f64 = seconds.iter().sum();
        let tokens: u64 = samples.iter().map(|s| u64::from(s.completion_tokens)).sum();
        PerformanceSnapshot {
            requests: samples.len(),
            latency_p50_seconds: nearest_rank(&mut seconds, 0.5),
            latency_p95_seconds: nearest_rank(&mut seconds, 0.95),
            tokens_per_second: (total_seconds > 0.0).then(|| tokens as f64 / total_seconds),
        }
    }
}

/// Nearest-rank quantile: the smallest value with at least `q` of the values at or below it.
fn nearest_rank(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
    values.get(rank.clamp(1, values.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_last_requests_only() {
        let performance = Performance::new(20);
        assert_eq!(performance.latency_percentile(0.95), None);
        // 100 slow requests, then 20 fast ones: the window holds only the fast ones.
        for _ in 0..100 {
            performance.record(Duration::from_secs(9), 1);
        }
        for ms in 1..=20 {
            performance.record(Duration::from_millis(ms * 10), 10);
        }
        let p95 = performance.latency_percentile(0.95).unwrap_or_default();
        assert!((p95 - 0.19).abs() < 1e-9, "{p95}");
        let snapshot = performance.snapshot();
        assert_eq!(snapshot.requests, 20);
        assert!((snapshot.latency_p50_seconds.unwrap_or_default() - 0.10).abs() < 1e-9);
        // 200 tokens over 2.1 s.
        let tps = snapshot.tokens_per_second.unwrap_or_default();
        assert!((tps - 200.0 / 2.1).abs() < 1e-6, "{tps}");
    }
}
