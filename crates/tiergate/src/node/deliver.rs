//! The last part of a walk: a committed answer on its way to the client. `Routed` first, then
//! what the step held back before it committed, then the rest of the attempt as it comes;
//! `Done` carries the whole answer, which is counted and offered to the response cache.

use std::time::Duration;

use futures::StreamExt;

use super::attempt::{AttemptEvent, AttemptStream, AttemptSummary};
use super::executor::{Sender, Walk};
use super::{Answer, NodeError, RoutingInfo, StreamEvent};

impl Walk<'_> {
    /// Sends `Routed`, the held events, then the rest of the attempt. Returns the number of
    /// deltas passed on.
    pub(super) async fn stream_answer(
        &self,
        routing: RoutingInfo,
        held: Vec<AttemptEvent>,
        rest: AttemptStream,
        tx: &Sender,
    ) -> u64 {
        if tx
            .send(Ok(StreamEvent::Routed(routing.clone())))
            .await
            .is_err()
        {
            return 0;
        }
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut deltas = 0_u64;
        let mut first_token_at: Option<Duration> = None;
        let mut events = futures::stream::iter(held.into_iter().map(Ok)).chain(rest);
        while let Some(event) = events.next().await {
            match event {
                Ok(AttemptEvent::Delta {
                    text: piece,
                    logprobs: tokens,
                    ..
                }) => {
                    deltas += 1;
                    first_token_at.get_or_insert_with(|| self.started.elapsed());
                    if piece.is_empty() && tokens.is_empty() {
                        continue;
                    }
                    text.push_str(&piece);
                    // A whole answer gets them all in `Done`; a stream sends them with the text.
                    let sent = if self.whole_answer {
                        logprobs.extend(tokens);
                        Vec::new()
                    } else {
                        tokens
                    };
                    let delta = StreamEvent::Delta {
                        text: piece,
                        logprobs: sent,
                    };
                    if tx.send(Ok(delta)).await.is_err() {
                        return deltas;
                    }
                }
                Ok(AttemptEvent::UpstreamRouted(_) | AttemptEvent::LocalPrefilled { .. }) => {}
                Ok(AttemptEvent::Done(summary)) => {
                    let mut answer = self.answer(routing, text, summary, first_token_at);
                    answer.logprobs = logprobs;
                    self.record_answer(&answer);
                    if let Some(cache) = self.cache {
                        cache.answered(&answer);
                    }
                    let _ = tx.send(Ok(StreamEvent::Done(answer))).await;
                    return deltas;
                }
                Err(err) => {
                    // Text may have reached the client: the answer cannot move to another tier.
                    self.metrics
                        .requests
                        .with_label_values(&[
                            routing.tier.as_str(),
                            &routing.reason,
                            err.as_label(),
                        ])
                        .inc();
                    let _ = tx.send(Err(err)).await;
                    return deltas;
                }
            }
        }
        let err = NodeError::Upstream(format!(
            "{} ended without finishing the answer",
            routing.tier
        ));
        let _ = tx.send(Err(err)).await;
        deltas
    }

    fn answer(
        &self,
        routing: RoutingInfo,
        text: String,
        summary: AttemptSummary,
        first_token: Option<Duration>,
    ) -> Answer {
        let total_time = self.started.elapsed();
        Answer {
            text,
            routing,
            usage: summary.usage,
            finish_reason: summary.finish_reason,
            model: summary.model,
            logprobs: Vec::new(),
            time_to_first_token: first_token.unwrap_or(total_time),
            total_time,
        }
    }

    fn record_answer(&self, answer: &Answer) {
        let tier = answer.routing.tier.as_str();
        self.metrics
            .requests
            .with_label_values(&[tier, &answer.routing.reason, "ok"])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[tier])
            .observe(answer.total_time.as_secs_f64());
        self.metrics
            .time_to_first_token
            .with_label_values(&[tier])
            .observe(answer.time_to_first_token.as_secs_f64());
        // The device budget monitor and the report read the same figures over a window.
        self.metrics
            .performance
            .record(answer.total_time, answer.usage.completion_tokens);
    }
}
