//! Hedged upstream steps (`[hedge]`): when an upstream step has not produced its first token
//! after a delay near that tier's p95 time to first token, the next upstream step of the plan
//! starts too; the first good answer wins and the other call is cancelled (a cancelled call
//! says nothing of its link). A hedge is extra load, so it draws on the retry budget.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tiergate_router::tier::Tier;

/// First-token latencies kept per tier for the p95.
const SAMPLES: usize = 128;
/// Samples needed before a `p95` delay is trusted; until then the step is not hedged.
const MIN_SAMPLES: usize = 20;

/// When to hedge a step of one tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// After this long without a first token.
    Fixed(Duration),
    /// After the tier's p95 time to first token over its recent successful calls.
    P95,
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "p95" {
            return Ok(HedgeDelay::P95);
        }
        crate::config::duration::parse(&text)
            .map(HedgeDelay::Fixed)
            .map_err(|e| serde::de::Error::custom(format!("{e} (or \"p95\")")))
    }
}

/// `[hedge]`: per upstream tier, when its step is hedged by the next upstream step. Unset (the
/// default): never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    pub regional: Option<HedgeDelay>,
    pub cloud: Option<HedgeDelay>,
}

impl HedgeConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (tier, delay) in [("regional", self.regional), ("cloud", self.cloud)] {
            if let Some(HedgeDelay::Fixed(delay)) = delay
                && delay.is_zero()
            {
                return Err(format!("{tier}: a hedge delay of 0 doubles every call"));
            }
        }
        Ok(())
    }

    fn delay_of(&self, tier: Tier) -> Option<HedgeDelay> {
        match tier {
            Tier::Regional => self.regional,
            Tier::Cloud => self.cloud,
            Tier::Edge => None,
        }
    }
}

/// The node's hedging: its config and each tier's recent times to first token.
#[derive(Debug, Default)]
pub struct Hedging {
    config: HedgeConfig,
    /// Regional, then cloud.
    latencies: [Mutex<VecDeque<Duration>>; 2],
}

impl Hedging {
    pub fn new(config: HedgeConfig) -> Self {
        Hedging {
            config,
            latencies: Default::default(),
        }
    }

    /// How long a step of `tier` runs alone before it is hedged; `None`: not hedged.
    pub fn delay(&self, tier: Tier) -> Option<Duration> {
        match self.config.delay_of(tier)? {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::P95 => self.p95(tier),
        }
    }

    /// Records the time to first token of a successful call to `tier`.
    pub fn record(&self, tier: Tier, first_token: Duration) {
        let Some(samples) = self.samples(tier) else {
            return;
        };
        let mut samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(first_token);
    }

    fn p95(&self, tier: Tier) -> Option<Duration> {
        let samples = self.samples(tier)?;
        let mut sorted: Vec<Duration> = samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if sorted.len() < MIN_SAMPLES {
            return None;
        }
        sorted.sort_unstable();
        // Nearest rank: the smallest sample at or above 95 % of them.
        let rank = (sorted.len() * 95).div_ceil(100);
        sorted.get(rank.saturating_sub(1)).copied()
    }

    fn samples(&self, tier: Tier) -> Option<&Mutex<VecDeque<Duration>>> {
        match tier {
            Tier::Regional => Some(&self.latencies[0]),
            Tier::Cloud => Some(&self.latencies[1]),
            Tier::Edge => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_p95_and_durations_and_refuses_the_rest() {
        let config: HedgeConfig = toml::from_str("regional = \"p95\"\ncloud = \"250ms\"").unwrap();
        assert_eq!(config.regional, Some(HedgeDelay::P95));
        assert_eq!(config.cloud, Some(HedgeDelay::Fixed(ms(250))));
        assert!(toml::from_str::<HedgeConfig>("cloud = \"p99\"").is_err());
        assert!(toml::from_str::<HedgeConfig>("edge = \"1s\"").is_err());
        let zero: HedgeConfig = toml::from_str("cloud = \"0ms\"").unwrap();
        assert!(zero.validate().is_err());
        assert_eq!(HedgeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn p95_waits_for_enough_samples_then_follows_the_recent_ones() {
        let hedging = Hedging::new(HedgeConfig {
            regional: Some(HedgeDelay::P95),
            cloud: None,
        });
        for i in 1..MIN_SAMPLES as u64 {
            hedging.record(Tier::Regional, ms(i * 10));
        }
        assert_eq!(hedging.delay(Tier::Regional), None, "too few samples");
        // 1..=128 ms (the window's worth, pushing the first samples out): the nearest-rank
        // p95 is the 122nd.
        for i in 1..=SAMPLES as u64 {
            hedging.record(Tier::Regional, ms(i));
        }
        assert_eq!(hedging.delay(Tier::Regional), Some(ms(122)));
        // Only the last 128 count: a slower regime takes over.
        for _ in 0..SAMPLES {
            hedging.record(Tier::Regional, ms(400));
        }
        assert_eq!(hedging.delay(Tier::Regional), Some(ms(400)));
        assert_eq!(hedging.delay(Tier::Cloud), None, "not configured");
        assert_eq!(hedging.delay(Tier::Edge), None);
    }
}
