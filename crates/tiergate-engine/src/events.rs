//! What callers send to the engine and what comes back.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::prompt::Prompt;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Generation stops (finish reason `deadline`) once this instant has passed.
    pub deadline: Option<Instant>,
    /// Score the prompt: its mean token NLL comes back as `Started::prompt_score`. It costs
    /// the lm_head on every prompt position (a graph with `io.logits_to_keep` otherwise runs it
    /// on the last one only: SmolLM2's int4 prefill takes ~1.4x as long scored).
    pub score_prompt: bool,
}

impl GenerationRequest {
    /// A request that does not score its prompt and has no deadline.
    pub fn new(prompt: Prompt, sampling: SamplingParams) -> Self {
        GenerationRequest {
            prompt,
            sampling,
            deadline: None,
            score_prompt: false,
        }
    }

    /// The same request, scoring its prompt (`Started::prompt_score`).
    pub fn scored(self) -> Self {
        GenerationRequest {
            score_prompt: true,
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model produced its end-of-answer token.
    Eos,
    /// A stop sequence appeared (it is not part of the text).
    Stop,
    /// `max_new_tokens` was reached, or the context is full.
    Length,
    /// The request's deadline passed.
    Deadline,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Deadline => "deadline",
        }
    }
}

/// One generated token with the model's confidence when it chose it (from the raw logits,
/// before temperature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub id: u32,
    /// Text released with this token. Empty while a multi-byte character is incomplete, while
    /// the text could still be the start of a stop sequence, and for special tokens; the
    /// concatenation over all tokens is the answer.
    pub text: String,
    /// Probability of the most likely token at this step.
    pub top1_prob: f32,
    /// Entropy (nats) of the next-token distribution at this step.
    pub entropy: f32,
    /// When the request asked (`SamplingParams::logprobs`): the token's log-probability and
    /// the most likely alternatives, from the model's distribution (raw logits, before
    /// temperature, top-k and top-p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<TokenLogprobs>,
}

/// A token and its log-probability (natural log) at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's own bytes (a piece of a multi-byte character stays incomplete here).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl TokenLogprob {
    /// The bytes as text; an incomplete character shows as U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The chosen token's log-probability and the alternatives asked for, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// Where the time went. `session_run` is the part inside `Session::run`; the rest of
/// prefill + decode is the engine's own overhead (tensors, sampling, detokenization).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// From submission until a worker began its prefill (with `max_batch` > 1, including the
    /// wait behind other prompts in the worker's line).
    pub queue: Duration,
    /// From the prefill's first run to the first token (with `max_batch` > 1 and a long prompt,
    /// including the decode steps run between its pieces).
    pub prefill: Duration,
    pub decode: Duration,
    pub session_run: Duration,
}

impl Timings {
    /// Prefill + decode time not spent inside `Session::run`.
    pub fn outside_session_run(&self) -> Duration {
        (self.prefill + self.decode).saturating_sub(self.session_run)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSummary {
    pub finish_reason: FinishReason,
    pub completion_tokens: usize,
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// The prompt was prefilled. `prompt_score` is its mean negative log-likelihood (nats per
    /// token) when the request asked for it (`score_prompt`); `None` otherwise, for a one-token
    /// prompt, or when the deadline passed before prefill.
    Started {
        prompt_tokens: usize,
        prompt_score: Option<f64>,
    },
    Token(TokenEvent),
    Finished(GenerationSummary),
}

/// A whole generation, collected from the event stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<TokenEvent>,
    pub prompt_tokens: usize,
    pub prompt_score: Option<f64>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

impl Generation {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    /// Decode speed in tokens per second (`None` without decode time).
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let seconds = self.timings.decode.as_secs_f64();
        // The first token comes from the prefill logits; decode produced the rest.
        let decoded = self.tokens.len().saturating_sub(1);
        (seconds > 0.0 && decoded > 0).then(|| decoded as f64 / seconds)
    }
}

/// The prompt alone, prefilled (no generation): what the router asks for Explain.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptScore {
    pub prompt_tokens: usize,
    /// Mean negative log-likelihood of the prompt tokens (nats per token); `None` for one token.
    pub mean_nll: Option<f64>,
    /// Confidence of the model's first answer token (top-1 probability, entropy).
    pub next_top1_prob: f32,
    pub next_entropy: f32,
    pub prefill_time: Duration,
}
