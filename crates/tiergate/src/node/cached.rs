//! The walk's one hook into the response cache: before a step, serve a stored upstream answer
//! instead when the step would give a degraded local answer (or, in `always` mode, before the
//! first step). Kept apart from `executor.rs`, which only runs steps.

use futures::StreamExt;
use tiergate_router::{Reason, Step, StepResult};

use super::attempt::{AttemptEvent, AttemptSummary};
use super::executor::{Walk, add_tiers};
use super::{CacheStatus, RoutingInfo, StreamEvent};
use crate::node::NodeError;

type Sender = tokio::sync::mpsc::Sender<Result<StreamEvent, NodeError>>;

impl Walk<'_> {
    /// Streams the stored answer for this request if one should replace step `index`; true
    /// when it did (the walk is over).
    pub(super) async fn serve_cached(
        &self,
        index: usize,
        step: Step,
        before: &[StepResult],
        tx: &Sender,
    ) -> bool {
        let Some(cache) = self.cache else {
            return false;
        };
        // The router names the outcome: would a local answer here be a degraded one?
        let local_would_be_degraded = matches!(step, Step::Local { gated: false }) && {
            let mut results = before.to_vec();
            results.push(StepResult::LocalAnswered);
            self.decision
                .outcome(&results)
                .is_ok_and(|outcome| outcome.degraded)
        };
        let Some((hit, degraded)) = cache.hit(local_would_be_degraded, index == 0) else {
            return false;
        };
        let mut tiers_tried = Vec::new();
        add_tiers(&mut tiers_tried, self.tiers_of_steps(index));
        let routing = RoutingInfo {
            tier: hit.tier,
            reason: Reason::CacheHit.as_str().to_owned(),
            complexity: self.decision.complexity.score,
            local_confidence: None,
            degraded,
            node: self.node_name.to_owned(),
            tiers_tried,
            cache: Some(CacheStatus::Hit),
        };
        let held = vec![
            AttemptEvent::Delta {
                text: hit.text.clone(),
                confidence: None,
                // A request asking for logprobs never reaches the cache (`RequestCache::new`).
                logprobs: Vec::new(),
            },
            AttemptEvent::Done(AttemptSummary {
                finish_reason: hit.finish_reason(),
                usage: hit.usage(),
                model: hit.model.clone(),
            }),
        ];
        self.stream_answer(routing, held, futures::stream::empty().boxed(), tx)
            .await;
        true
    }
}
