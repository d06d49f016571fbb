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
//!
//! Every call reports exactly one outcome: a success, a failure, back-pressure (HTTP 429 /
//! RESOURCE_EXHAUSTED: the link works but asks for a pause, so it is held off for the
//! upstream's `Retry-After` without counting as a failure) or a release (the call says nothing
//! about the link: the client cancelled, or its deadline was shorter than the link's own
//! timeouts). A release only gives back a half-open probe slot.

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
    /// How long a link that answered 429 / RESOURCE_EXHAUSTED without a `Retry-After` is
    /// left alone. Back-pressure never counts as a failure.
    #[serde(with = "duration_text")]
    pub rate_limit_hold_off: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    #[serde(with = "duration_text")]
    pub max_hold_off: Duration,
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
            rate_limit_hold_off: Duration::from_secs(1),
            max_hold_off: Duration::from_secs(30),
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
        if self.rate_limit_hold_off > self.max_hold_off {
            return Err(format!(
                "rate_limit_hold_off ({:?}) cannot exceed max_hold_off ({:?})",
                self.rate_limit_hold_off, self.max_hold_off
            ));
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
    /// Milliseconds left of a back-pressure hold-off (429 / RESOURCE_EXHAUSTED); `None` when
    /// the link is not held off.
    pub hold_off_ms: Option<f64>,
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
    /// Back-pressure: no call is admitted before this instant.
    hold_off_until: Option<Instant>,
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
            hold_off_until: None,
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

    /// The upstream asked us to slow down (HTTP 429, gRPC RESOURCE_EXHAUSTED). The link works:
    /// nothing counts against it, but no call is admitted until `retry_after` (or
    /// `rate_limit_hold_off` when the upstream gave none) has passed, capped at `max_hold_off`.
    pub fn record_rate_limited(&mut self, retry_after: Option<Duration>, now: Instant) {
        self.advance(now);
        self.give_back_probe();
        let pause = retry_after
            .unwrap_or(self.config.rate_limit_hold_off)
            .min(self.config.max_hold_off);
        let until = now + pause;
        self.hold_off_until = Some(self.hold_off_until.map_or(until, |old| old.max(until)));
    }

    /// The call's outcome says nothing about the link (the client went away, or its deadline
    /// was shorter than the link's own timeouts). A half-open probe slot it held is given back
    /// so that the next call can probe at once.
    pub fn release(&mut self, now: Instant) {
        self.advance(now);
        self.give_back_probe();
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
        if self.health_check == HealthCheckStatus::NotServing || self.held_off(now) {
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
        if self.health_check == HealthCheckStatus::NotServing || self.held_off(now) {
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

    /// How long until `try_acquire` may admit a call again: zero when it would now, `None` when
    /// only the health check can tell (the peer said NOT_SERVING). The wait a client is told
    /// (`Retry-After`) when no link can take its request.
    pub fn available_in(&self, now: Instant) -> Option<Duration> {
        if self.health_check == HealthCheckStatus::NotServing {
            return None;
        }
        let hold_off = self
            .hold_off_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let breaker = match self.breaker {
            Breaker::Closed => Duration::ZERO,
            Breaker::Open { until } => until.saturating_duration_since(now),
            Breaker::HalfOpen {
                round_started,
                admitted,
            } if admitted >= self.config.half_open_probes => {
                (round_started + self.config.open_duration).saturating_duration_since(now)
            }
            Breaker::HalfOpen { .. } => Duration::ZERO,
        };
        Some(hold_off.max(breaker))
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
            hold_off_ms: self
                .hold_off_until
                .filter(|&until| now < until)
                .map(|until| (until - now).as_secs_f64() * 1000.0),
        }
    }

    /// Whether a back-pressure hold-off is running at `now`.
    pub fn held_off(&self, now: Instant) -> bool {
        self.hold_off_until.is_some_and(|until| now < until)
    }

    /// Frees the probe slot of a half-open call that reported no verdict.
    fn give_back_probe(&mut self) {
        if let Breaker::HalfOpen { admitted, .. } = &mut self.breaker {
            *admitted = admitted.saturating_sub(1);
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

/// Durations in config files as human strings: "250ms", "30s", "1.5s", "5m", "1h", "1h 30m"
/// (humantime's format; the same for the node's config and the upstream client configs).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Far above any sensible setting, far below where `Instant + duration` overflows: such a
    /// typo (found by fuzzing the config loader) used to load and then panic on every request
    /// as its deadline was computed. Checked here, so every config duration is bounded.
    const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    /// Parses a humantime duration ("250ms", "1.5s", "5m", "1h 30m"); a unit is required, and
    /// nothing above 10 years is taken.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let duration = humantime::parse_duration(text).map_err(|e| {
            format!("duration `{text}`: {e} (write it as \"250ms\", \"1.5s\", \"5m\" or \"1h\")")
        })?;
        if duration > MAX {
            return Err(format!("duration `{text}` is longer than 10 years"));
        }
        Ok(duration)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// Written as humantime writes it ("1s 500ms"), which [`parse`] reads back exactly.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }
}

#[cfg(test)]
mod tests;
