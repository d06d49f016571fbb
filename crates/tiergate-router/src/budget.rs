//! One deadline budget per request, split across the steps of its plan.
//!
//! A step of the plan may fail slowly (an upstream that accepts and never answers). Without a
//! split, the first stalled step eats the whole deadline and the steps after it, the local
//! fallback included, never run. So each step gets until a *commit point*: the time by which
//! it must have produced its first token (a stream) or its whole answer (a unary call). Past
//! it the step has failed and the next one runs. Once a step has committed (text reached the
//! client) it may use the rest of the request's deadline: no later step would run anyway.
//!
//! How long a step may take before committing, with `left` the time to the request's deadline:
//! 1. the later steps keep a reserve each: `local_reserve` for a local step, `upstream_reserve`
//!    for an upstream one; together never more than half of `left`, so a short deadline still
//!    gives the first step a chance;
//! 2. of what is left after the reserves, a step followed by another upstream step takes
//!    `upstream_share`; a step followed only by local steps takes all of it.
//!
//! Pure: no clock; the caller passes the time left.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::duration_text;
use crate::policy::Step;

/// The reserves never take more than this fraction of the time left.
const MAX_RESERVE_FRACTION: f64 = 0.5;

/// How a request's deadline is split across the steps of its plan (`[budget]` in the TOML).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Time kept back for each later local step (the answer of last resort).
    #[serde(with = "duration_text")]
    pub local_reserve: Duration,
    /// Time kept back for each later upstream step.
    #[serde(with = "duration_text")]
    pub upstream_reserve: Duration,
    /// Share, in (0, 1], of the unreserved time an upstream step may wait for its first token
    /// when another upstream step follows it.
    pub upstream_share: f64,
}

impl Default for BudgetConfig {
    /// With the default 30 s deadline and a plan regional -> cloud -> local, a regional that
    /// never answers costs at most 14 s (and its own first-token timeout caps it sooner); the
    /// cloud still has at least 14 s and the local fallback at least 1 s.
    fn default() -> Self {
        BudgetConfig {
            local_reserve: Duration::from_secs(1),
            upstream_reserve: Duration::from_secs(1),
            upstream_share: 0.5,
        }
    }
}

impl BudgetConfig {
    /// Checks the ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.upstream_share > 0.0 && self.upstream_share <= 1.0) {
            return Err(format!(
                "upstream_share must be in (0, 1], got {}",
                self.upstream_share
            ));
        }
        Ok(())
    }

    /// How long step `index` of `plan` may take to commit, with `left` until the deadline.
    /// The last step (and any step followed by nothing that could answer) gets all of `left`.
    pub fn step_budget(&self, plan: &[Step], index: usize, left: Duration) -> Duration {
        let later = plan.get(index + 1..).unwrap_or(&[]);
        if later.is_empty() {
            return left;
        }
        let reserve: Duration = later
            .iter()
            .map(|step| match step {
                Step::Local { .. } => self.local_reserve,
                Step::Upstream(_) => self.upstream_reserve,
            })
            .sum();
        let reserve = reserve.min(left.mul_f64(MAX_RESERVE_FRACTION));
        let usable = left.saturating_sub(reserve);
        let upstream_follows = later.iter().any(|s| matches!(s, Step::Upstream(_)));
        let share = if upstream_follows {
            self.upstream_share.clamp(f64::MIN_POSITIVE, 1.0)
        } else {
            1.0
        };
        usable.mul_f64(share)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tier::Tier;

    const LOCAL: Step = Step::Local { gated: false };
    const GATED: Step = Step::Local { gated: true };
    const REGIONAL: Step = Step::Upstream(Tier::Regional);
    const CLOUD: Step = Step::Upstream(Tier::Cloud);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_last_step_gets_everything_left() {
        let config = BudgetConfig::default();
        assert_eq!(config.step_budget(&[LOCAL], 0, secs(30.0)), secs(30.0));
        assert_eq!(config.step_budget(&[CLOUD, LOCAL], 1, secs(3.0)), secs(3.0));
    }

    #[test]
    fn a_stalled_first_tier_leaves_time_for_the_rest_of_the_plan() {
        let config = BudgetConfig::default();
        let plan = [REGIONAL, CLOUD, LOCAL];
        // 30 s: 2 s reserved for cloud and local, half of the other 28 s for regional.
        let regional = config.step_budget(&plan, 0, secs(30.0));
        assert_eq!(regional, secs(14.0));
        // Regional stalled for all of it: the cloud has the rest but the local reserve.
        let cloud = config.step_budget(&plan, 1, secs(16.0));
        assert_eq!(cloud, secs(15.0));
        // The local fallback keeps at least its reserve.
        assert_eq!(config.step_budget(&plan, 2, secs(1.0)), secs(1.0));
    }

    #[test]
    fn reserves_never_take_more_than_half_of_a_short_deadline() {
        let config = BudgetConfig::default();
        let plan = [GATED, REGIONAL, CLOUD, LOCAL];
        // 3 s reserved would be everything; half is kept, the gated step gets half of the rest.
        let gated = config.step_budget(&plan, 0, secs(2.0));
        assert_eq!(gated, secs(0.5));
        // A 15 ms client deadline still lets the first step try, briefly.
        let tiny = config.step_budget(&[REGIONAL, CLOUD, LOCAL], 0, Duration::from_millis(15));
        assert!(
            tiny > Duration::ZERO && tiny < Duration::from_millis(15),
            "{tiny:?}"
        );
    }

    #[test]
    fn the_share_is_configurable_and_checked() {
        let config = BudgetConfig {
            upstream_share: 1.0,
            ..BudgetConfig::default()
        };
        assert_eq!(
            config.step_budget(&[CLOUD, REGIONAL, LOCAL], 0, secs(30.0)),
            secs(28.0)
        );
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            let config = BudgetConfig {
                upstream_share: bad,
                ..BudgetConfig::default()
            };
            assert!(config.validate().unwrap_err().contains("upstream_share"));
        }
    }
}
