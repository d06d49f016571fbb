//! The retry budget: how much extra load a node may send upstream when calls fail.
//!
//! A retry is any upstream attempt a request makes after one of its upstream attempts failed
//! (before any token reached the client: a failure after that ends the answer). Retries are
//! what turn an upstream's bad minute into an overload: when every request fails over, every
//! request costs two calls. As in Finagle's `RetryBudget`, retries within a sliding window may
//! not exceed `ratio` of the requests in it, plus a small reserve (`min_per_second`) so that a
//! quiet node can still fail over. Requests that find the budget empty skip the remaining
//! upstream steps and take the plan's local answer of last resort, or fail.
//!
//! Time is passed in; the caller holds the budget behind a lock.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::health::duration_text;

/// `[retry]` in the node's config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request over the window (0.2: one extra call per five requests).
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic, so that a quiet node still fails over.
    pub min_per_second: f64,
    /// How far back requests and retries are counted. Whole seconds (rounded up, at least 1 s).
    #[serde(with = "duration_text")]
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        // Finagle's defaults, but for the reserve: LLM calls are long, a few per second is plenty.
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 2.0,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudgetConfig {
    /// Reports values that make no sense (negative ratios, a zero window).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ratio >= 0.0 && self.ratio.is_finite()) {
            return Err(format!("ratio must be >= 0, got {}", self.ratio));
        }
        if !(self.min_per_second >= 0.0 && self.min_per_second.is_finite()) {
            return Err(format!(
                "min_per_second must be >= 0, got {}",
                self.min_per_second
            ));
        }
        if self.window.is_zero() || self.window > Duration::from_secs(3600) {
            return Err(format!("window must be in (0, 1h], got {:?}", self.window));
        }
        Ok(())
    }
}

/// One second of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Seconds since the budget was made; which second this slot counts now.
    second: u64,
    requests: u64,
    retries: u64,
}

/// Counts requests and retries over a sliding window of whole seconds.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    origin: Instant,
    slots: Vec<Slot>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig, now: Instant) -> Self {
        let seconds = config.window.as_secs() + u64::from(config.window.subsec_nanos() > 0);
        let slots = usize::try_from(seconds.max(1)).unwrap_or(1);
        RetryBudget {
            config,
            origin: now,
            slots: vec![Slot::default(); slots],
        }
    }

    /// A request that may call upstream began: it earns the budget `ratio` retries.
    pub fn deposit(&mut self, now: Instant) {
        self.slot(now).requests += 1;
    }

    /// Asks for one retry; `true` takes it from the budget.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let window = self.slots.len() as f64;
        let allowed = self.config.ratio * requests as f64 + self.config.min_per_second * window;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now).retries += 1;
        true
    }

    /// Retries the budget would grant now (rounded down), for metrics and explain.
    pub fn available(&self, now: Instant) -> u64 {
        let (requests, retries) = self.totals(now);
        let window = self.slots.len() as f64;
        let allowed = self.config.ratio * requests as f64 + self.config.min_per_second * window;
        // Truncation is the rounding wanted: a part of a retry is no retry.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let allowed = allowed.max(0.0).floor() as u64;
        allowed.saturating_sub(retries)
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The slot of `now`'s second, emptied if it last counted an older second.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = self.second(now);
        let len = self.slots.len() as u64;
        let index = usize::try_from(second % len).unwrap_or(0);
        let slot = &mut self.slots[index];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }

    /// Requests and retries counted in the window ending at `now`.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let second = self.second(now);
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(|slot| slot.second + len > second && slot.second <= second)
            .fold((0, 0), |(requests, retries), slot| {
                (requests + slot.requests, retries + slot.retries)
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn budget(ratio: f64, min_per_second: f64) -> (RetryBudget, Instant) {
        let now = Instant::now();
        let config = RetryBudgetConfig {
            ratio,
            min_per_second,
            window: Duration::from_secs(10),
        };
        (RetryBudget::new(config, now), now)
    }

    #[test]
    fn retries_never_exceed_the_ratio_of_requests() {
        let (mut budget, now) = budget(0.5, 0.0);
        let mut granted = 0;
        for _ in 0..20 {
            budget.deposit(now);
            if budget.try_withdraw(now) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
        assert_eq!(budget.available(now), 0);
    }

    #[test]
    fn the_reserve_lets_a_quiet_node_fail_over() {
        let (mut budget, now) = budget(0.0, 1.0);
        // Ten seconds' worth of reserve, then nothing until the window moves on.
        assert_eq!(budget.available(now), 10);
        for _ in 0..10 {
            assert!(budget.try_withdraw(now));
        }
        assert!(!budget.try_withdraw(now));
        assert!(!budget.try_withdraw(now + Duration::from_secs(9)));
        // The first second's retries left the window.
        assert!(budget.try_withdraw(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_zero_budget_grants_nothing() {
        let (mut budget, now) = budget(0.0, 0.0);
        for _ in 0..100 {
            budget.deposit(now);
        }
        assert!(!budget.try_withdraw(now));
    }

    #[test]
    fn old_requests_stop_earning_retries() {
        let (mut budget, now) = budget(1.0, 0.0);
        for _ in 0..5 {
            budget.deposit(now);
        }
        assert_eq!(budget.available(now + Duration::from_secs(9)), 5);
        assert_eq!(budget.available(now + Duration::from_secs(10)), 0);
        assert!(!budget.try_withdraw(now + Duration::from_secs(30)));
    }

    #[test]
    fn nonsense_is_refused() {
        let bad = |ratio: f64, min: f64, window: Duration| {
            RetryBudgetConfig {
                ratio,
                min_per_second: min,
                window,
            }
            .validate()
        };
        assert!(bad(-0.1, 1.0, Duration::from_secs(1)).is_err());
        assert!(bad(0.1, f64::NAN, Duration::from_secs(1)).is_err());
        assert!(bad(0.1, 1.0, Duration::ZERO).is_err());
        assert!(RetryBudgetConfig::default().validate().is_ok());
    }
}
