//! The walk's hedged upstream step: the call to one tier runs alone for its hedge delay; if it
//! has no first token by then, the plan's next upstream step starts too, and the first call to
//! give a first token wins. Dropping the loser cancels its call (its link is not blamed). Kept
//! apart from `executor.rs`, which runs plain steps; the delays live in `hedge.rs`.

use std::future::Future;
use std::time::Duration;

use tiergate_router::tier::Tier;
use tiergate_router::{Step, StepResult};

use super::NodeError;
use super::executor::{Opened, TierStarter, Walk};

/// The hedge of one step: the next step's tier, its place in the plan, and when it starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hedge {
    tier: Tier,
    index: usize,
    delay: Duration,
}

/// How a hedged step ended.
pub(super) enum Raced {
    /// The step's own call: it answered, or failed before the hedge started (or with none).
    Primary(Result<Opened, NodeError>),
    /// The hedge answered first, from this tier.
    Hedge(Tier, Opened),
    /// Both calls failed; the hedge's tier and the last error.
    BothFailed(Tier, NodeError),
}

impl Walk<'_> {
    /// The hedge of step `index` (of `tier`): the next step, if it is an upstream step and
    /// `[hedge]` gives `tier` a delay.
    pub(super) fn hedge_of(&self, index: usize, tier: Tier) -> Option<Hedge> {
        let next = index + 1;
        let Some(Step::Upstream(next_tier)) = self.decision.plan.get(next).copied() else {
            return None;
        };
        let delay = self.hedging.delay(tier)?;
        Some(Hedge {
            tier: next_tier,
            index: next,
            delay,
        })
    }

    /// Runs `primary`; after the hedge delay without a first token, starts the hedge too.
    pub(super) async fn race_with_hedge(
        &self,
        tiers: &dyn TierStarter,
        primary: impl Future<Output = Result<Opened, NodeError>>,
        hedge: Hedge,
        before: &[StepResult],
    ) -> Raced {
        tokio::pin!(primary);
        tokio::select! {
            opened = &mut primary => return Raced::Primary(opened),
            () = tokio::time::sleep(hedge.delay) => {}
        }
        if !self.retry_allowed(hedge.tier, "hedges") {
            return Raced::Primary(primary.await);
        }
        let mut hedged_before = before.to_vec();
        hedged_before.push(StepResult::UpstreamFailed);
        let request = self.forwarded_request(&hedged_before);
        let second = self.open_upstream(tiers, hedge.tier, request, self.commit_point(hedge.index));
        tokio::pin!(second);
        let count = |outcome: &str| {
            self.metrics
                .upstream_hedges
                .with_label_values(&[hedge.tier.as_str(), outcome])
                .inc();
        };
        tokio::select! {
            opened = &mut primary => match opened {
                Ok(opened) => {
                    count("lost");
                    Raced::Primary(Ok(opened))
                }
                Err(_) => match second.await {
                    Ok(opened) => {
                        count("won");
                        Raced::Hedge(hedge.tier, opened)
                    }
                    Err(err) => {
                        count("failed");
                        Raced::BothFailed(hedge.tier, err)
                    }
                },
            },
            opened = &mut second => match opened {
                Ok(opened) => {
                    count("won");
                    Raced::Hedge(hedge.tier, opened)
                }
                Err(_) => match primary.await {
                    Ok(opened) => {
                        count("lost");
                        Raced::Primary(Ok(opened))
                    }
                    Err(err) => {
                        count("failed");
                        Raced::BothFailed(hedge.tier, err)
                    }
                },
            },
        }
    }
}
