//! Link health of one upstream endpoint: latency EWMA, error rate over a window of recent
//! calls, the active health-check status (grpc.health.v1) and a circuit breaker.
//!
//! Pure: no I/O and no clock; callers pass `now`. Callers that share one [`LinkHealth`]
//! between tasks wrap it in a mutex; every method is a few arithmetic steps.
//!
//! Breaker: `Closed` admits every call. Too many failures (consecutive, or a failure rate over
//! the window) open it: `Open` rejects until `open_duration` has passed, then it is `HalfOpen`
//! and admits up to `half_open_probes` probe calls. A probe success closes it (with a fresh
//! window), a probe failure opens it again. Probes that never report back (the caller gave up)
//! are forgotten after another `open_duration`, so a lost probe cannot wedge the breaker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Tuning of one link's health tracking. Every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkHealthConfig {
    /// Weight of the newest latency sample in the EWMA, in (0, 1]; higher forgets faster.
    pub ewma_alpha: f64,
    /// Consecutive failures that open the breaker; 0 disables this trigger.
    pub consecutive_failures: u32,
    /// Failure fraction over the last `window` calls that opens the breaker, in [0, 1];
    /// 0 disables this trigger.
    pub error_rate_threshold: f64,
    /// How many recent calls the error rate is computed over.
    pub window: u32,
    /// Calls the window must hold before the error-rate trigger may fire.
    pub min_calls: u32,
    /// How long an open breaker rejects calls before it admits probes.
    #[serde(with = "duration_text")]
    pub open_duration: Duration,
    /// Probe calls admitted at once while half-open (at least 1).
    pub half_open_probes: u32,
}

impl Default for LinkHealthConfig {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.3,
            consecutive_failures: 5,
            error_rate_threshold: 0.5,
            window: 20,
            min_calls: 10,
            open_duration: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

impl LinkHealthConfig {
    /// Checks the ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err(format!(
                "ewma_alpha must be in (0, 1], got {}",
                self.ewma_alpha
            ));
        }
        if !(0.0..=1.0).contains(&self.error_rate_threshold) {
            return Err(format!(
                "error_rate_threshold must be in [0, 1], got {}",
                self.error_rate_threshold
            ));
        }
        if self.window == 0 {
            return Err("window must be at least 1".to_owned());
        }
        if self.min_calls > self.window {
            return Err(format!(
                "min_calls ({}) cannot exceed window ({})",
                self.min_calls, self.window
            ));
        }
        if self.half_open_probes == 0 {
            return Err("half_open_probes must be at least 1".to_owned());
        }
        if self.open_duration.is_zero() {
            return Err("open_duration must be greater than zero".to_owned());
        }
        Ok(())
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Calls flow.
    Closed,
    /// Calls are rejected until the open duration passes.
    Open,
    /// A limited number of probe calls decide whether to close again.
    HalfOpen,
}

/// What the active health check (grpc.health.v1 Watch) last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckStatus {
    /// No active check, or it has not answered yet: passive observation decides alone.
    Unknown,
    Serving,
    NotServing,
}

/// A point-in-time view of one link, for metrics and `route explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkSnapshot {
    pub state: LinkState,
    /// Whether a call would be admitted now.
    pub available: bool,
    /// Latency EWMA in milliseconds; `None` before the first success.
    pub latency_ewma_ms: Option<f64>,
    /// Failure fraction over the recent-calls window (0 when it is empty).
    pub error_rate: f64,
    /// Calls currently in the window.
    pub window_calls: u32,
    pub health_check: HealthCheckStatus,
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        round_started: Instant,
        admitted: u32,
    },
}

/// Health of one upstream link. See the module docs for the breaker's rules.
#[derive(Debug, Clone)]
pub struct LinkHealth {
    config: LinkHealthConfig,
    breaker: Breaker,
    /// Seconds.
    ewma: Option<f64>,
    /// Recent outcomes, newest last; `true` is a failure.
    window: VecDeque<bool>,
    window_failures: u32,
    consecutive_failures: u32,
    health_check: HealthCheckStatus,
}

impl LinkHealth {
    /// A closed, unobserved link. Out-of-range config values are clamped to the nearest valid
    /// one; call [`LinkHealthConfig::validate`] at start-up to report them instead.
    pub fn new(mut config: LinkHealthConfig) -> Self {
        if !(config.ewma_alpha > 0.0 && config.ewma_alpha <= 1.0) {
            config.ewma_alpha = LinkHealthConfig::default().ewma_alpha;
        }
        config.error_rate_threshold = config.error_rate_threshold.clamp(0.0, 1.0);
        config.window = config.window.max(1);
        config.min_calls = config.min_calls.min(config.window);
        config.half_open_probes = config.half_open_probes.max(1);
        Self {
            window: VecDeque::with_capacity(config.window as usize),
            config,
            breaker: Breaker::Closed,
            ewma: None,
            window_failures: 0,
            consecutive_failures: 0,
            health_check: HealthCheckStatus::Unknown,
        }
    }

    /// The config in force (after clamping).
    pub fn config(&self) -> &LinkHealthConfig {
        &self.config
    }

    /// A call succeeded after `latency`.
    pub fn record_success(&mut self, latency: Duration, now: Instant) {
        self.advance(now);
        let sample = latency.as_secs_f64();
        let alpha = self.config.ewma_alpha;
        self.ewma = Some(match self.ewma {
            None => sample,
            Some(old) => alpha * sample + (1.0 - alpha) * old,
        });
        self.consecutive_failures = 0;
        match self.breaker {
            Breaker::HalfOpen { .. } => {
                // The probe got through: start over with a clean slate so the failures
                // that opened the breaker cannot trip it again at once.
                self.breaker = Breaker::Closed;
                self.window.clear();
                self.window_failures = 0;
                self.push_outcome(false);
            }
            // A call admitted before the breaker opened: it counts, but cannot close it early.
            Breaker::Open { .. } | Breaker::Closed => self.push_outcome(false),
        }
    }

    /// A call failed in a way that says something about the link (connect error, timeout,
    /// server error, rate limiting, garbage on the wire).
    pub fn record_failure(&mut self, now: Instant) {
        self.advance(now);
        self.push_outcome(true);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.breaker {
            Breaker::Closed => {
                if self.tripped() {
                    self.open(now);
                }
            }
            Breaker::HalfOpen { .. } => self.open(now),
            // Late results of calls admitted before opening do not extend the open period.
            Breaker::Open { .. } => {}
        }
    }

    /// The active health check's latest answer.
    pub fn set_health_check(&mut self, serving: bool) {
        self.health_check = if serving {
            HealthCheckStatus::Serving
        } else {
            HealthCheckStatus::NotServing
        };
    }

    /// Forget the active health check (the peer does not implement one): passive observation
    /// decides alone.
    pub fn clear_health_check(&mut self) {
        self.health_check = HealthCheckStatus::Unknown;
    }

    pub fn health_check(&self) -> HealthCheckStatus {
        self.health_check
    }

    /// Asks to make one call now. `true` admits it (and, when half-open, takes a probe slot);
    /// the caller must then report it with `record_success` or `record_failure`.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.health_check == HealthCheckStatus::NotServing {
            return false;
        }
        self.advance(now);
        let open_duration = self.config.open_duration;
        let probes = self.config.half_open_probes;
        match &mut self.breaker {
            Breaker::Closed => true,
            Breaker::Open { .. } => false,
            Breaker::HalfOpen {
                round_started,
                admitted,
            } => {
                if now >= *round_started + open_duration {
                    // The earlier probes never reported back: start a new round.
                    *round_started = now;
                    *admitted = 0;
                }
                if *admitted < probes {
                    *admitted += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The breaker's state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> LinkState {
        match self.breaker {
            Breaker::Closed => LinkState::Closed,
            Breaker::Open { until } if now >= until => LinkState::HalfOpen,
            Breaker::Open { .. } => LinkState::Open,
            Breaker::HalfOpen { .. } => LinkState::HalfOpen,
        }
    }

    /// Whether `try_acquire(now)` would admit a call, without taking a probe slot.
    pub fn is_available(&self, now: Instant) -> bool {
        if self.health_check == HealthCheckStatus::NotServing {
            return false;
        }
        match self.breaker {
            Breaker::Closed => true,
            Breaker::Open { until } => now >= until,
            Breaker::HalfOpen {
                round_started,
                admitted,
            } => {
                admitted < self.config.half_open_probes
                    || now >= round_started + self.config.open_duration
            }
        }
    }

    /// Latency EWMA of successful calls; `None` before the first one.
    pub fn latency_ewma(&self) -> Option<Duration> {
        self.ewma.and_then(|s| Duration::try_from_secs_f64(s).ok())
    }

    /// Failure fraction over the recent-calls window (0 when empty).
    pub fn error_rate(&self) -> f64 {
        if self.window.is_empty() {
            0.0
        } else {
            f64::from(self.window_failures) / self.window.len() as f64
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn snapshot(&self, now: Instant) -> LinkSnapshot {
        LinkSnapshot {
            state: self.state(now),
            available: self.is_available(now),
            latency_ewma_ms: self.ewma.map(|s| s * 1000.0),
            error_rate: self.error_rate(),
            window_calls: u32::try_from(self.window.len()).unwrap_or(u32::MAX),
            health_check: self.health_check,
            consecutive_failures: self.consecutive_failures,
        }
    }

    /// Moves an open breaker whose time is up to half-open.
    fn advance(&mut self, now: Instant) {
        if let Breaker::Open { until } = self.breaker
            && now >= until
        {
            self.breaker = Breaker::HalfOpen {
                round_started: now,
                admitted: 0,
            };
        }
    }

    fn open(&mut self, now: Instant) {
        self.breaker = Breaker::Open {
            until: now + self.config.open_duration,
        };
    }

    fn push_outcome(&mut self, failed: bool) {
        if self.window.len() >= self.config.window as usize
            && let Some(oldest) = self.window.pop_front()
            && oldest
        {
            self.window_failures -= 1;
        }
        self.window.push_back(failed);
        if failed {
            self.window_failures += 1;
        }
    }

    fn tripped(&self) -> bool {
        let by_streak = self.config.consecutive_failures > 0
            && self.consecutive_failures >= self.config.consecutive_failures;
        let by_rate = self.config.error_rate_threshold > 0.0
            && self.window.len() >= (self.config.min_calls.max(1) as usize)
            && self.error_rate() >= self.config.error_rate_threshold;
        by_streak || by_rate
    }
}

/// Durations in config files as human strings: "250ms", "30s", "1.5s", "5m", "1h"
/// (the same format as the node's config; shared with the upstream client configs).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses "250ms", "30s", "1.5s", "5m", "1h".
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("duration `{text}` does not start with a number"))?;
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "duration `{text}` has unknown unit `{unit}` (ms, s, m, h)"
                ));
            }
        };
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("duration `{text}`: {e}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", duration.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const OPEN: Duration = Duration::from_secs(10);

    /// Streak trigger only, so each test controls exactly what opens the breaker.
    fn streak_config(failures: u32) -> LinkHealthConfig {
        LinkHealthConfig {
            ewma_alpha: 0.5,
            consecutive_failures: failures,
            error_rate_threshold: 0.0,
            window: 10,
            min_calls: 0,
            open_duration: OPEN,
            half_open_probes: 1,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Opens a streak-3 link at `t0` and returns it.
    fn opened_at(t0: Instant) -> LinkHealth {
        let mut link = LinkHealth::new(streak_config(3));
        for _ in 0..3 {
            assert!(link.try_acquire(t0));
            link.record_failure(t0);
        }
        assert_eq!(link.state(t0), LinkState::Open);
        link
    }

    #[test]
    fn a_new_link_is_closed_available_and_unobserved() {
        let now = Instant::now();
        let mut link = LinkHealth::new(LinkHealthConfig::default());
        assert_eq!(link.state(now), LinkState::Closed);
        assert!(link.is_available(now));
        assert!(link.try_acquire(now));
        assert_eq!(link.latency_ewma(), None);
        assert_eq!(link.error_rate(), 0.0);
        assert_eq!(link.health_check(), HealthCheckStatus::Unknown);
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_alpha() {
        let now = Instant::now();
        let mut link = LinkHealth::new(streak_config(3));
        link.record_success(ms(100), now);
        assert_eq!(link.latency_ewma(), Some(ms(100)));
        link.record_success(ms(300), now);
        // 0.5 * 300 + 0.5 * 100
        let ewma = link.latency_ewma().unwrap().as_secs_f64();
        assert!((ewma - 0.200).abs() < 1e-9, "{ewma}");
        link.record_success(ms(200), now);
        let ewma = link.latency_ewma().unwrap().as_secs_f64();
        assert!((ewma - 0.200).abs() < 1e-9, "{ewma}");
    }

    #[test]
    fn consecutive_failures_open_the_breaker_exactly_at_the_threshold() {
        let now = Instant::now();
        let mut link = LinkHealth::new(streak_config(3));
        link.record_failure(now);
        link.record_failure(now);
        assert_eq!(link.state(now), LinkState::Closed);
        assert_eq!(link.consecutive_failures(), 2);
        link.record_failure(now);
        assert_eq!(link.state(now), LinkState::Open);
        assert!(!link.is_available(now));
        assert!(!link.try_acquire(now));
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let now = Instant::now();
        let mut link = LinkHealth::new(streak_config(3));
        link.record_failure(now);
        link.record_failure(now);
        link.record_success(ms(10), now);
        assert_eq!(link.consecutive_failures(), 0);
        link.record_failure(now);
        link.record_failure(now);
        assert_eq!(link.state(now), LinkState::Closed);
    }

    #[test]
    fn error_rate_over_the_window_opens_after_min_calls() {
        let now = Instant::now();
        let config = LinkHealthConfig {
            consecutive_failures: 0,
            error_rate_threshold: 0.5,
            window: 4,
            min_calls: 4,
            ..streak_config(0)
        };
        let mut link = LinkHealth::new(config);
        // F S F: rate 2/3 but only 3 calls: below min_calls.
        link.record_failure(now);
        link.record_success(ms(1), now);
        link.record_failure(now);
        assert_eq!(link.state(now), LinkState::Closed);
        assert!((link.error_rate() - 2.0 / 3.0).abs() < 1e-9);
        // S: 4 calls, rate 0.5 is reached only by a failure (successes never trip).
        link.record_success(ms(1), now);
        assert_eq!(link.state(now), LinkState::Closed);
        // F: window slides to S F S F: 2/4 = 0.5 >= threshold.
        link.record_failure(now);
        assert_eq!(link.error_rate(), 0.5);
        assert_eq!(link.snapshot(now).window_calls, 4);
        assert_eq!(link.state(now), LinkState::Open);
    }

    #[test]
    fn the_window_forgets_old_failures() {
        let now = Instant::now();
        let config = LinkHealthConfig {
            consecutive_failures: 0,
            error_rate_threshold: 0.9,
            window: 3,
            min_calls: 1,
            ..streak_config(0)
        };
        let mut link = LinkHealth::new(config);
        link.record_success(ms(1), now);
        link.record_failure(now);
        for _ in 0..3 {
            link.record_success(ms(1), now);
        }
        assert_eq!(link.error_rate(), 0.0);
        assert_eq!(link.snapshot(now).window_calls, 3);
    }

    #[test]
    fn open_rejects_until_the_open_duration_passes_then_half_open_admits_probes() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        let almost = t0 + OPEN - ms(1);
        assert_eq!(link.state(almost), LinkState::Open);
        assert!(!link.is_available(almost));
        assert!(!link.try_acquire(almost));

        let later = t0 + OPEN;
        assert_eq!(link.state(later), LinkState::HalfOpen);
        assert!(link.is_available(later));
        assert!(link.try_acquire(later), "the probe is admitted");
        assert!(!link.is_available(later), "only one probe at a time");
        assert!(!link.try_acquire(later));
    }

    #[test]
    fn a_probe_success_closes_with_a_fresh_window() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        let later = t0 + OPEN;
        assert!(link.try_acquire(later));
        link.record_success(ms(20), later);
        assert_eq!(link.state(later), LinkState::Closed);
        assert_eq!(link.consecutive_failures(), 0);
        assert_eq!(link.error_rate(), 0.0);
        assert!(link.try_acquire(later));
        assert!(link.try_acquire(later));
        // Fresh streak: two more failures do not re-open a streak-3 breaker.
        link.record_failure(later);
        link.record_failure(later);
        assert_eq!(link.state(later), LinkState::Closed);
    }

    #[test]
    fn a_probe_failure_reopens_for_another_full_period() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        let probe_time = t0 + OPEN + ms(500);
        assert!(link.try_acquire(probe_time));
        link.record_failure(probe_time);
        assert_eq!(link.state(probe_time), LinkState::Open);
        assert!(!link.try_acquire(probe_time + OPEN - ms(1)));
        assert_eq!(link.state(probe_time + OPEN), LinkState::HalfOpen);
        assert!(link.try_acquire(probe_time + OPEN));
    }

    #[test]
    fn half_open_admits_up_to_the_probe_count() {
        let t0 = Instant::now();
        let mut link = LinkHealth::new(LinkHealthConfig {
            half_open_probes: 3,
            ..streak_config(1)
        });
        link.record_failure(t0);
        let later = t0 + OPEN;
        assert!(link.try_acquire(later));
        assert!(link.try_acquire(later));
        assert!(link.is_available(later));
        assert!(link.try_acquire(later));
        assert!(!link.is_available(later));
        assert!(!link.try_acquire(later));
    }

    #[test]
    fn probes_that_never_report_are_forgotten_after_another_period() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        let probe_time = t0 + OPEN;
        assert!(link.try_acquire(probe_time));
        // The probe's caller gave up and never reported.
        assert!(!link.try_acquire(probe_time + OPEN - ms(1)));
        assert!(link.is_available(probe_time + OPEN));
        assert!(
            link.try_acquire(probe_time + OPEN),
            "a new probe round starts"
        );
    }

    #[test]
    fn late_results_while_open_neither_close_nor_extend_it() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        link.record_success(ms(5), t0 + ms(1));
        assert_eq!(link.state(t0 + ms(1)), LinkState::Open);
        link.record_failure(t0 + OPEN - ms(1));
        assert_eq!(link.state(t0 + OPEN), LinkState::HalfOpen, "not extended");
    }

    #[test]
    fn a_result_after_the_open_period_acts_as_a_probe() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        link.record_success(ms(5), t0 + OPEN);
        assert_eq!(link.state(t0 + OPEN), LinkState::Closed);

        let mut link = opened_at(t0);
        link.record_failure(t0 + OPEN);
        assert_eq!(link.state(t0 + OPEN), LinkState::Open);
    }

    #[test]
    fn not_serving_health_check_rejects_and_serving_restores() {
        let now = Instant::now();
        let mut link = LinkHealth::new(streak_config(3));
        link.set_health_check(false);
        assert_eq!(link.health_check(), HealthCheckStatus::NotServing);
        assert!(!link.is_available(now));
        assert!(!link.try_acquire(now));
        // The breaker itself is untouched by the health check.
        assert_eq!(link.state(now), LinkState::Closed);
        link.set_health_check(true);
        assert!(link.is_available(now));
        assert!(link.try_acquire(now));
        link.set_health_check(false);
        link.clear_health_check();
        assert_eq!(link.health_check(), HealthCheckStatus::Unknown);
        assert!(link.try_acquire(now));
    }

    #[test]
    fn serving_does_not_override_an_open_breaker() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        link.set_health_check(true);
        assert!(!link.is_available(t0));
        assert!(!link.try_acquire(t0));
    }

    #[test]
    fn not_serving_does_not_consume_a_probe_slot() {
        let t0 = Instant::now();
        let mut link = opened_at(t0);
        link.set_health_check(false);
        assert!(!link.try_acquire(t0 + OPEN));
        link.set_health_check(true);
        assert!(link.try_acquire(t0 + OPEN));
    }

    #[test]
    fn disabled_triggers_never_open() {
        let now = Instant::now();
        let mut link = LinkHealth::new(LinkHealthConfig {
            consecutive_failures: 0,
            error_rate_threshold: 0.0,
            ..streak_config(0)
        });
        for _ in 0..100 {
            link.record_failure(now);
        }
        assert_eq!(link.state(now), LinkState::Closed);
        assert_eq!(link.error_rate(), 1.0);
    }

    #[test]
    fn snapshot_reports_every_field_and_serializes() {
        let t0 = Instant::now();
        let mut link = LinkHealth::new(streak_config(2));
        link.record_success(ms(40), t0);
        link.record_failure(t0);
        link.set_health_check(true);
        let snap = link.snapshot(t0);
        assert_eq!(snap.state, LinkState::Closed);
        assert!(snap.available);
        assert_eq!(snap.latency_ewma_ms, Some(40.0));
        assert_eq!(snap.error_rate, 0.5);
        assert_eq!(snap.window_calls, 2);
        assert_eq!(snap.health_check, HealthCheckStatus::Serving);
        assert_eq!(snap.consecutive_failures, 1);
        link.record_failure(t0);
        let json = serde_json::to_value(link.snapshot(t0)).unwrap();
        assert_eq!(json["state"], "open");
        assert_eq!(json["available"], false);
        assert_eq!(json["health_check"], "serving");
        assert_eq!(json["consecutive_failures"], 2);
        assert_eq!(
            serde_json::to_value(link.snapshot(t0 + OPEN)).unwrap()["state"],
            "half_open"
        );
    }

    #[test]
    fn config_parses_from_toml_with_defaults_and_rejects_unknown_fields() {
        let config: LinkHealthConfig =
            toml::from_str("consecutive_failures = 2\nopen_duration = \"250ms\"\n").unwrap();
        assert_eq!(config.consecutive_failures, 2);
        assert_eq!(config.open_duration, ms(250));
        assert_eq!(config.window, LinkHealthConfig::default().window);
        assert!(config.validate().is_ok());

        let err = toml::from_str::<LinkHealthConfig>("consecutive_failure = 2\n").unwrap_err();
        assert!(err.to_string().contains("consecutive_failure"), "{err}");
        let err = toml::from_str::<LinkHealthConfig>("open_duration = \"5\"\n").unwrap_err();
        assert!(err.to_string().contains("unit"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases = [
            (
                LinkHealthConfig {
                    ewma_alpha: 0.0,
                    ..Default::default()
                },
                "ewma_alpha",
            ),
            (
                LinkHealthConfig {
                    ewma_alpha: 1.5,
                    ..Default::default()
                },
                "ewma_alpha",
            ),
            (
                LinkHealthConfig {
                    error_rate_threshold: 1.5,
                    ..Default::default()
                },
                "error_rate_threshold",
            ),
            (
                LinkHealthConfig {
                    window: 0,
                    ..Default::default()
                },
                "window",
            ),
            (
                LinkHealthConfig {
                    min_calls: 50,
                    ..Default::default()
                },
                "min_calls",
            ),
            (
                LinkHealthConfig {
                    half_open_probes: 0,
                    ..Default::default()
                },
                "half_open_probes",
            ),
            (
                LinkHealthConfig {
                    open_duration: Duration::ZERO,
                    ..Default::default()
                },
                "open_duration",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn new_clamps_out_of_range_values() {
        let link = LinkHealth::new(LinkHealthConfig {
            ewma_alpha: -1.0,
            window: 0,
            min_calls: 9,
            half_open_probes: 0,
            ..Default::default()
        });
        let config = link.config();
        assert!(config.validate().is_ok(), "{config:?}");
    }

    #[test]
    fn durations_parse_units_and_reject_the_rest() {
        use duration_text::parse;
        assert_eq!(parse("250ms").unwrap(), ms(250));
        assert_eq!(parse("1.5s").unwrap(), ms(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "10", "s", "10 parsecs", "-1s", "1e999s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
