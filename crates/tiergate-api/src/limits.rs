//! Request limits, checked by every front end before a request reaches the router.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::NodeError;
use crate::request::{MAX_TOP_LOGPROBS, Sampling};

/// Limits on what one request may ask for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest `max_tokens` a request may ask for; more is rejected (400), never truncated.
    pub max_new_tokens: u32,
    /// `max_tokens` when a request does not say.
    pub default_max_new_tokens: u32,
    /// Deadline of a request that carries none (HTTP always; gRPC without `grpc-timeout`).
    #[serde(with = "tiergate_router::health::duration_text")]
    pub default_timeout: Duration,
    /// Longest deadline a client may ask for; longer ones are shortened to this.
    #[serde(with = "tiergate_router::health::duration_text")]
    pub max_timeout: Duration,
    /// Largest request body in bytes (HTTP 413 / gRPC message size).
    pub max_body_bytes: usize,
    /// Most messages in one conversation.
    pub max_messages: usize,
    /// Most stop sequences.
    pub max_stop_sequences: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_new_tokens: 512,
            default_max_new_tokens: 64,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            max_messages: 256,
            max_stop_sequences: 4,
        }
    }
}

impl Limits {
    /// Checks sampling parameters; `max_new_tokens == 0` takes the default.
    pub fn check_sampling(&self, mut sampling: Sampling) -> Result<Sampling, NodeError> {
        if sampling.max_new_tokens == 0 {
            sampling.max_new_tokens = self.default_max_new_tokens;
        }
        if sampling.max_new_tokens > self.max_new_tokens {
            return Err(NodeError::InvalidArgument(format!(
                "max_tokens {} exceeds this node's limit of {}",
                sampling.max_new_tokens, self.max_new_tokens
            )));
        }
        if let Some(t) = sampling.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(NodeError::InvalidArgument(format!(
                "temperature {t} is outside [0, 2]"
            )));
        }
        if let Some(p) = sampling.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(NodeError::InvalidArgument(format!(
                "top_p {p} is outside (0, 1]"
            )));
        }
        if let Some(k) = sampling.logprobs
            && k > MAX_TOP_LOGPROBS
        {
            return Err(NodeError::InvalidArgument(format!(
                "top_logprobs {k} is outside [0, {MAX_TOP_LOGPROBS}]"
            )));
        }
        if sampling.stop.len() > self.max_stop_sequences {
            return Err(NodeError::InvalidArgument(format!(
                "{} stop sequences given, at most {} allowed",
                sampling.stop.len(),
                self.max_stop_sequences
            )));
        }
        if sampling.stop.iter().any(String::is_empty) {
            return Err(NodeError::InvalidArgument(
                "a stop sequence is empty".to_owned(),
            ));
        }
        Ok(sampling)
    }

    /// The deadline of a request that arrived at `now` asking for `timeout` (if any).
    pub fn deadline(&self, now: Instant, timeout: Option<Duration>) -> Instant {
        now + timeout
            .unwrap_or(self.default_timeout)
            .min(self.max_timeout)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn zero_max_tokens_takes_the_default_and_the_limit_is_inclusive() {
        let limits = Limits::default();
        let s = limits.check_sampling(Sampling::default()).unwrap();
        assert_eq!(s.max_new_tokens, limits.default_max_new_tokens);
        let at_limit = Sampling {
            max_new_tokens: limits.max_new_tokens,
            ..Sampling::default()
        };
        assert!(limits.check_sampling(at_limit).is_ok());
        let over = Sampling {
            max_new_tokens: limits.max_new_tokens + 1,
            ..Sampling::default()
        };
        let err = limits.check_sampling(over).unwrap_err();
        assert!(matches!(err, NodeError::InvalidArgument(_)));
        assert!(err.to_string().contains("exceeds"));
    }

    #[test]
    fn out_of_range_sampling_is_rejected() {
        let limits = Limits::default();
        for bad in [
            Sampling {
                temperature: Some(-0.1),
                ..Sampling::default()
            },
            Sampling {
                temperature: Some(2.5),
                ..Sampling::default()
            },
            Sampling {
                top_p: Some(0.0),
                ..Sampling::default()
            },
            Sampling {
                top_p: Some(1.5),
                ..Sampling::default()
            },
            Sampling {
                stop: vec![String::new()],
                ..Sampling::default()
            },
            Sampling {
                stop: vec!["a".into(); 5],
                ..Sampling::default()
            },
            Sampling {
                logprobs: Some(MAX_TOP_LOGPROBS + 1),
                ..Sampling::default()
            },
        ] {
            assert!(limits.check_sampling(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deadline_is_capped() {
        let limits = Limits::default();
        let now = Instant::now();
        assert_eq!(limits.deadline(now, None), now + limits.default_timeout);
        assert_eq!(
            limits.deadline(now, Some(Duration::from_secs(100_000))),
            now + limits.max_timeout
        );
    }
}
