//! One attempt at one tier, whatever the tier: a stream of text deltas that ends in a summary.
//! The executor walks the routing plan over attempts without knowing where each one runs.

use futures::stream::BoxStream;

use super::{FinishReason, NodeError, RoutingInfo, Usage};
use tiergate_api::TokenLogprob;

/// What an attempt yields.
#[derive(Debug, Clone)]
pub enum AttemptEvent {
    /// The local model read the prompt: its mean token NLL (nats) from the prefill, when the
    /// prompt had more than one token. Sent before the first delta.
    LocalPrefilled { prompt_nll: Option<f64> },
    /// New text, with the token's confidence when the local engine made it, and the tokens'
    /// log-probabilities when the request asked (a token may come with empty text).
    Delta {
        text: String,
        confidence: Option<TokenConfidence>,
        logprobs: Vec<TokenLogprob>,
    },
    /// An upstream tiergate node settled where it answers (sent before its first delta).
    UpstreamRouted(RoutingInfo),
    /// The attempt ended.
    Done(AttemptSummary),
}

/// The local model's confidence in one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenConfidence {
    pub top1_prob: f32,
    pub entropy: f32,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptSummary {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub model: String,
}

/// A started attempt. Dropping it cancels the work behind it.
pub type AttemptStream = BoxStream<'static, Result<AttemptEvent, NodeError>>;
