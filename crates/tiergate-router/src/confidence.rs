//! Early exit: judge the local model's confidence over its first `commit_window` tokens.
//!
//! The executor feeds every generated token's top-1 probability and entropy to a
//! [`CommitMonitor`] and holds the tokens back (no streaming) while the verdict is
//! [`Verdict::Pending`]. On [`Verdict::Commit`] it releases them and streams the rest without
//! asking again; on [`Verdict::Abandon`] it stops the local generation and escalates.
//! Verdicts are final: once committed or abandoned, later tokens do not change them.
//! [`CommitGate`] does the holding back too, for a streaming executor.

use serde::{Deserialize, Serialize};

use crate::complexity::InvalidConfig;

/// Thresholds of the early-exit check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfidenceConfig {
    /// Tokens judged before the answer is committed. 0 commits at once (no gate).
    pub commit_window: usize,
    /// The mean top-1 probability over the window must reach this, in `[0, 1]`.
    pub min_mean_top1: f32,
    /// Any single token in the window below this abandons at once, in `[0, 1]`.
    pub min_token_top1: f32,
    /// When set, the mean entropy (nats) over the window must not exceed this.
    pub max_mean_entropy: Option<f32>,
    /// When set, a prompt whose mean token NLL under the local model (nats, from the local
    /// generation's own prefill) exceeds this is abandoned before its first token: the model
    /// is too surprised by the question to be trusted with the answer.
    pub max_prompt_nll: Option<f32>,
}

impl Default for ConfidenceConfig {
    /// Window and mean threshold as measured on the trained edge model (models/edge/eval.json:
    /// mean top-1 over the first 8 tokens >= 0.9 accepts 98.2% of held-out in-domain prompts and
    /// 2.6% of out-of-domain ones; 0.5 would accept 92.9% of out-of-domain ones). The
    /// single-token floor abandons an answer with one clearly lost token (seen on wrong
    /// arithmetic, e.g. a 0.39 digit in an otherwise certain answer).
    fn default() -> Self {
        ConfidenceConfig {
            commit_window: 8,
            min_mean_top1: 0.9,
            min_token_top1: 0.2,
            max_mean_entropy: None,
            max_prompt_nll: None,
        }
    }
}

impl ConfidenceConfig {
    /// Checks that the probabilities are in `[0, 1]` and the entropy bound is not negative.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        for (field, value) in [
            ("confidence.min_mean_top1", self.min_mean_top1),
            ("confidence.min_token_top1", self.min_token_top1),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidConfig::new(
                    field,
                    format!("must be a probability in [0, 1], got {value}"),
                ));
            }
        }
        for (field, bound) in [
            ("confidence.max_mean_entropy", self.max_mean_entropy),
            ("confidence.max_prompt_nll", self.max_prompt_nll),
        ] {
            if let Some(e) = bound
                && !(e.is_finite() && e >= 0.0)
            {
                return Err(InvalidConfig::new(
                    field,
                    format!("must be a finite number >= 0, got {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// The monitor's judgement so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The window is not full yet: keep generating, hold the tokens back.
    Pending,
    /// Confidence held over the window (or the answer ended inside it with confidence held):
    /// release the tokens, keep the answer at this tier.
    Commit {
        /// Mean top-1 probability over the judged tokens (1.0 when no token was judged).
        mean_top1: f32,
        /// Tokens judged.
        tokens: usize,
    },
    /// Confidence dropped inside the window (or the prompt surprised the model): stop and
    /// escalate.
    Abandon {
        /// Mean top-1 probability over the tokens seen up to and including `at_token`.
        mean_top1: f32,
        /// 0-based index of the token that decided it (0 for the prompt check).
        at_token: usize,
        cause: AbandonCause,
    },
}

/// Which check abandoned a local answer. Few values: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonCause {
    /// The prompt's NLL exceeded `max_prompt_nll`.
    PromptNll,
    /// One token fell below `min_token_top1`.
    TokenFloor,
    /// The mean top-1 over the window missed `min_mean_top1` (or could no longer reach it).
    MeanTop1,
    /// The mean entropy over the window exceeded `max_mean_entropy`.
    Entropy,
}

impl AbandonCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PromptNll => "prompt_nll",
            Self::TokenFloor => "token_floor",
            Self::MeanTop1 => "mean_top1",
            Self::Entropy => "entropy",
        }
    }
}

impl Verdict {
    /// Whether the verdict is final (committed or abandoned).
    pub fn is_final(&self) -> bool {
        !matches!(self, Verdict::Pending)
    }
}

/// Judges one local generation, one token at a time. Pure and allocation-free.
#[derive(Debug, Clone)]
pub struct CommitMonitor {
    config: ConfidenceConfig,
    tokens: usize,
    sum_top1: f64,
    sum_entropy: f64,
    verdict: Verdict,
}

impl CommitMonitor {
    /// A monitor for a new generation. With `commit_window == 0` it is committed from the start.
    pub fn new(config: &ConfidenceConfig) -> CommitMonitor {
        let verdict = if config.commit_window == 0 {
            Verdict::Commit {
                mean_top1: 1.0,
                tokens: 0,
            }
        } else {
            Verdict::Pending
        };
        CommitMonitor {
            config: *config,
            tokens: 0,
            sum_top1: 0.0,
            sum_entropy: 0.0,
            verdict,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Tokens judged so far (at most `commit_window`).
    pub fn tokens_judged(&self) -> usize {
        self.tokens
    }

    /// Feeds the prompt's mean token NLL (nats) before the first token; `None` or a non-finite
    /// value (the prompt had a single token) passes. No effect once the verdict is final.
    pub fn prompt(&mut self, prompt_nll: Option<f64>) -> Verdict {
        if self.verdict.is_final() {
            return self.verdict;
        }
        if let (Some(max), Some(nll)) = (self.config.max_prompt_nll, prompt_nll)
            && nll.is_finite()
            && nll > f64::from(max)
        {
            self.verdict = Verdict::Abandon {
                mean_top1: self.mean_top1(),
                at_token: 0,
                cause: AbandonCause::PromptNll,
            };
        }
        self.verdict
    }

    /// Feeds the next generated token: its top-1 probability and the entropy (nats) of its
    /// distribution. A NaN probability counts as 0 (no confidence). After a final verdict
    /// this only returns it again.
    pub fn push(&mut self, top1_prob: f32, entropy: f32) -> Verdict {
        if self.verdict.is_final() {
            return self.verdict;
        }
        let top1 = if top1_prob.is_nan() {
            0.0
        } else {
            top1_prob.clamp(0.0, 1.0)
        };
        let at_token = self.tokens;
        self.tokens += 1;
        self.sum_top1 += f64::from(top1);
        self.sum_entropy += f64::from(if entropy.is_nan() {
            f32::INFINITY
        } else {
            entropy
        });
        let window = self.config.commit_window;
        let mean = self.mean_top1();
        // One token below the floor abandons; so does a mean that can no longer reach the
        // threshold even if every remaining token of the window had probability 1.
        let best_reachable = (self.sum_top1 + (window - self.tokens) as f64) / window as f64;
        let cause = if top1 < self.config.min_token_top1 {
            Some(AbandonCause::TokenFloor)
        } else if best_reachable < f64::from(self.config.min_mean_top1) {
            Some(AbandonCause::MeanTop1)
        } else {
            None
        };
        if let Some(cause) = cause {
            self.verdict = Verdict::Abandon {
                mean_top1: mean,
                at_token,
                cause,
            };
        } else if self.tokens == window {
            self.verdict = self.judge_window(at_token);
        }
        self.verdict
    }

    /// The generation ended (EOS, stop sequence, length limit) before the window filled:
    /// judge it on the tokens it had. No effect once the verdict is final.
    pub fn finish(&mut self) -> Verdict {
        if self.verdict.is_final() {
            return self.verdict;
        }
        self.verdict = if self.tokens == 0 {
            Verdict::Commit {
                mean_top1: 1.0,
                tokens: 0,
            }
        } else {
            self.judge_window(self.tokens - 1)
        };
        self.verdict
    }

    fn mean_top1(&self) -> f32 {
        if self.tokens == 0 {
            1.0
        } else {
            (self.sum_top1 / self.tokens as f64) as f32
        }
    }

    fn judge_window(&self, last_token: usize) -> Verdict {
        let mean_top1 = self.mean_top1();
        let mean_entropy = self.sum_entropy / self.tokens as f64;
        let too_uncertain = self
            .config
            .max_mean_entropy
            .is_some_and(|max| mean_entropy > f64::from(max));
        let cause = if mean_top1 < self.config.min_mean_top1 {
            Some(AbandonCause::MeanTop1)
        } else if too_uncertain {
            Some(AbandonCause::Entropy)
        } else {
            None
        };
        if let Some(cause) = cause {
            Verdict::Abandon {
                mean_top1,
                at_token: last_token,
                cause,
            }
        } else {
            Verdict::Commit {
                mean_top1,
                tokens: self.tokens,
            }
        }
    }
}

/// What to do with the tokens after a [`CommitGate::push`] or [`CommitGate::finish`].
#[derive(Debug, Clone, PartialEq)]
pub enum GateAction<T> {
    /// Keep generating; the token is held back.
    Hold,
    /// Send these tokens to the client now (all the held ones at the commit, then each new one).
    Release(Vec<T>),
    /// The attempt is abandoned: these held tokens are dropped (never shown) and the request
    /// escalates.
    Abandon { discarded: Vec<T>, verdict: Verdict },
}

/// A [`CommitMonitor`] that also holds the tokens back until the commit, so a streaming
/// executor never shows the client a local answer it may still abandon.
#[derive(Debug, Clone)]
pub struct CommitGate<T> {
    monitor: CommitMonitor,
    held: Vec<T>,
}

impl<T> CommitGate<T> {
    pub fn new(config: &ConfidenceConfig) -> CommitGate<T> {
        CommitGate {
            monitor: CommitMonitor::new(config),
            held: Vec::with_capacity(config.commit_window),
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.monitor.verdict()
    }

    /// Feeds the prompt's NLL before the first token (see [`CommitMonitor::prompt`]).
    pub fn prompt(&mut self, prompt_nll: Option<f64>) -> Verdict {
        self.monitor.prompt(prompt_nll)
    }

    /// Feeds one generated token with its top-1 probability and entropy.
    pub fn push(&mut self, token: T, top1_prob: f32, entropy: f32) -> GateAction<T> {
        match self.monitor.verdict() {
            Verdict::Commit { .. } => return GateAction::Release(vec![token]),
            verdict @ Verdict::Abandon { .. } => {
                return GateAction::Abandon {
                    discarded: vec![token],
                    verdict,
                };
            }
            Verdict::Pending => {}
        }
        self.held.push(token);
        let verdict = self.monitor.push(top1_prob, entropy);
        self.settle(verdict)
    }

    /// The generation ended: release or drop what is held, judged on the tokens seen.
    pub fn finish(&mut self) -> GateAction<T> {
        let verdict = self.monitor.finish();
        self.settle(verdict)
    }

    fn settle(&mut self, verdict: Verdict) -> GateAction<T> {
        match verdict {
            Verdict::Pending => GateAction::Hold,
            Verdict::Commit { .. } => GateAction::Release(std::mem::take(&mut self.held)),
            Verdict::Abandon { .. } => GateAction::Abandon {
                discarded: std::mem::take(&mut self.held),
                verdict,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(window: usize) -> ConfidenceConfig {
        ConfidenceConfig {
            commit_window: window,
            min_mean_top1: 0.6,
            min_token_top1: 0.1,
            max_mean_entropy: None,
            max_prompt_nll: None,
        }
    }

    #[test]
    fn window_zero_commits_before_any_token() {
        let mut m = CommitMonitor::new(&config(0));
        let committed = Verdict::Commit {
            mean_top1: 1.0,
            tokens: 0,
        };
        assert_eq!(m.verdict(), committed);
        assert_eq!(m.push(0.0, 9.0), committed, "final verdicts do not change");
        assert_eq!(m.finish(), committed);
    }

    #[test]
    fn window_one_is_decided_by_the_first_token() {
        let mut m = CommitMonitor::new(&config(1));
        assert_eq!(m.verdict(), Verdict::Pending);
        assert_eq!(
            m.push(0.7, 0.5),
            Verdict::Commit {
                mean_top1: 0.7,
                tokens: 1
            }
        );
        let mut m = CommitMonitor::new(&config(1));
        assert_eq!(
            m.push(0.5, 0.5),
            Verdict::Abandon {
                mean_top1: 0.5,
                at_token: 0,
                cause: AbandonCause::MeanTop1,
            }
        );
    }

    #[test]
    fn pending_until_the_window_fills_then_commits() {
        let mut m = CommitMonitor::new(&config(3));
        assert_eq!(m.push(0.9, 0.1), Verdict::Pending);
        assert_eq!(m.push(0.9, 0.1), Verdict::Pending);
        let v = m.push(0.6, 0.1);
        assert!(
            matches!(v, Verdict::Commit { tokens: 3, mean_top1 } if (mean_top1 - 0.8).abs() < 1e-6)
        );
        assert_eq!(
            m.push(0.0, 9.0),
            v,
            "after the commit the monitor stops judging"
        );
        assert_eq!(m.tokens_judged(), 3);
    }

    #[test]
    fn a_single_low_token_abandons_at_once() {
        let mut m = CommitMonitor::new(&config(8));
        m.push(0.99, 0.0);
        let v = m.push(0.05, 3.0);
        assert!(matches!(v, Verdict::Abandon { at_token: 1, .. }), "{v:?}");
        assert_eq!(m.push(0.99, 0.0), v);
        assert_eq!(m.finish(), v);
    }

    #[test]
    fn abandons_as_soon_as_the_mean_cannot_be_reached() {
        // Window 4, mean must reach 0.6 (sum 2.4): after two tokens of 0.15 the best possible
        // sum is 0.3 + 2 = 2.3.
        let mut m = CommitMonitor::new(&config(4));
        assert_eq!(m.push(0.15, 1.0), Verdict::Pending);
        assert!(matches!(
            m.push(0.15, 1.0),
            Verdict::Abandon { at_token: 1, .. }
        ));
    }

    #[test]
    fn eos_before_the_window_is_judged_on_the_tokens_it_had() {
        let mut m = CommitMonitor::new(&config(8));
        m.push(0.9, 0.1);
        m.push(0.8, 0.1);
        assert!(matches!(m.finish(), Verdict::Commit { tokens: 2, .. }));

        let mut m = CommitMonitor::new(&config(8));
        m.push(0.9, 0.1);
        m.push(0.2, 0.1);
        assert!(matches!(m.finish(), Verdict::Abandon { at_token: 1, .. }));

        let mut m = CommitMonitor::new(&config(8));
        assert!(matches!(m.finish(), Verdict::Commit { tokens: 0, .. }));
    }

    #[test]
    fn entropy_bound_applies_at_the_window_end() {
        let mut c = config(2);
        c.max_mean_entropy = Some(1.0);
        let mut m = CommitMonitor::new(&c);
        m.push(0.9, 1.5);
        assert!(matches!(
            m.push(0.9, 1.0),
            Verdict::Abandon { at_token: 1, .. }
        ));
        let mut m = CommitMonitor::new(&c);
        m.push(0.9, 1.0);
        assert!(matches!(m.push(0.9, 0.9), Verdict::Commit { .. }));
    }

    #[test]
    fn nan_probability_counts_as_no_confidence() {
        let mut m = CommitMonitor::new(&config(4));
        assert!(matches!(
            m.push(f32::NAN, 0.0),
            Verdict::Abandon { at_token: 0, .. }
        ));
    }

    #[test]
    fn validate_rejects_out_of_range_thresholds() {
        ConfidenceConfig::default().validate().unwrap();
        let c = ConfidenceConfig {
            min_mean_top1: 1.5,
            ..ConfidenceConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "confidence.min_mean_top1");
        let c = ConfidenceConfig {
            max_mean_entropy: Some(-1.0),
            ..ConfidenceConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().field,
            "confidence.max_mean_entropy"
        );
    }

    #[test]
    fn gate_holds_tokens_until_the_commit_then_streams() {
        let mut gate = CommitGate::new(&config(3));
        assert_eq!(gate.push("a", 0.9, 0.1), GateAction::Hold);
        assert_eq!(gate.push("b", 0.9, 0.1), GateAction::Hold);
        assert_eq!(
            gate.push("c", 0.9, 0.1),
            GateAction::Release(vec!["a", "b", "c"])
        );
        assert_eq!(gate.push("d", 0.01, 9.0), GateAction::Release(vec!["d"]));
        assert_eq!(gate.finish(), GateAction::Release(vec![]));
    }

    #[test]
    fn gate_drops_held_tokens_on_abandon() {
        let mut gate = CommitGate::new(&config(4));
        assert_eq!(gate.push(1, 0.9, 0.1), GateAction::Hold);
        let action = gate.push(2, 0.01, 3.0);
        assert!(
            matches!(&action, GateAction::Abandon { discarded, verdict: Verdict::Abandon { at_token: 1, .. } } if discarded == &vec![1, 2]),
            "{action:?}"
        );
        assert!(matches!(gate.push(3, 0.9, 0.1), GateAction::Abandon { .. }));
    }

    #[test]
    fn gate_with_window_zero_streams_from_the_first_token() {
        let mut gate = CommitGate::new(&config(0));
        assert_eq!(gate.push('x', 0.0, 0.0), GateAction::Release(vec!['x']));
    }

    #[test]
    fn gate_releases_a_short_confident_answer_at_eos() {
        let mut gate = CommitGate::new(&config(8));
        assert_eq!(gate.push("hi", 0.95, 0.1), GateAction::Hold);
        assert_eq!(gate.finish(), GateAction::Release(vec!["hi"]));
    }

    #[test]
    fn verdict_serializes_with_a_tag() {
        let json = serde_json::to_string(&Verdict::Abandon {
            mean_top1: 0.25,
            at_token: 3,
            cause: AbandonCause::TokenFloor,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"verdict":"abandon","mean_top1":0.25,"at_token":3,"cause":"token_floor"}"#
        );
    }

    #[test]
    fn a_surprising_prompt_is_abandoned_before_its_first_token() {
        let bounded = ConfidenceConfig {
            max_prompt_nll: Some(4.0),
            ..config(4)
        };
        let mut m = CommitMonitor::new(&bounded);
        assert!(matches!(
            m.prompt(Some(4.5)),
            Verdict::Abandon {
                at_token: 0,
                cause: AbandonCause::PromptNll,
                ..
            }
        ));
        // Final: a confident token afterwards does not revive it.
        assert!(matches!(m.push(1.0, 0.0), Verdict::Abandon { .. }));

        // At the bound, unknown, or not finite: the tokens decide.
        for nll in [Some(4.0), None, Some(f64::NAN), Some(f64::INFINITY)] {
            let mut m = CommitMonitor::new(&bounded);
            assert_eq!(m.prompt(nll), Verdict::Pending, "{nll:?}");
        }
        // Without a bound the prompt never abandons.
        let mut m = CommitMonitor::new(&config(4));
        assert_eq!(m.prompt(Some(100.0)), Verdict::Pending);
    }

    #[test]
    fn abandon_names_the_check_that_decided_it() {
        let mut m = CommitMonitor::new(&config(4));
        assert!(matches!(
            m.push(0.05, 0.1),
            Verdict::Abandon {
                cause: AbandonCause::TokenFloor,
                ..
            }
        ));
        let mut m = CommitMonitor::new(&config(2));
        m.push(0.3, 0.1);
        assert!(matches!(
            m.push(0.3, 0.1),
            Verdict::Abandon {
                cause: AbandonCause::MeanTop1,
                ..
            }
        ));
        let mut m = CommitMonitor::new(&ConfidenceConfig {
            max_mean_entropy: Some(0.5),
            ..config(1)
        });
        assert!(matches!(
            m.push(0.9, 2.0),
            Verdict::Abandon {
                cause: AbandonCause::Entropy,
                ..
            }
        ));
    }
}
