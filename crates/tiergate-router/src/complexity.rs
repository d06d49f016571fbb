//! Prompt complexity: a logistic score in `[0, 1]` over normalised text signals of the
//! request's last user turn.
//!
//! `score = sigmoid(bias + sum_i weight_i * signal_i)`
//!
//! Every text signal is a count squashed into `[0, 1]` (see [`TextSignals`]). The score is
//! computed the same way for every prompt, so it ranks prompts on one scale. The local model's
//! surprise at the prompt (its NLL) is not part of it: that is a check of the local attempt
//! (`confidence.max_prompt_nll`), taken from the attempt's own prefill. The default weights were
//! fitted by logistic regression on the routing-evaluation data (see `docs/routing.md`).

use serde::{Deserialize, Serialize};

use crate::features::PromptFeatures;

/// Number of text signals.
pub const TEXT_SIGNAL_COUNT: usize = 16;

/// Names of the text signals, in the order of [`TextSignals::values`] and [`TextWeights`].
pub const TEXT_SIGNAL_NAMES: [&str; TEXT_SIGNAL_COUNT] = [
    "length",
    "sentences",
    "questions",
    "numbers",
    "math_operators",
    "math_words",
    "code",
    "multi_step",
    "negation",
    "structure",
    "answer_choices",
    "long_words",
    "word_length",
    "non_ascii",
    "capitalized",
    "digit_share",
];

/// The text features squashed into `[0, 1]`, in [`TEXT_SIGNAL_NAMES`] order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextSignals {
    pub values: [f64; TEXT_SIGNAL_COUNT],
}

/// `x / (x + half)`: 0 at 0, 0.5 at `half`, towards 1 for large counts.
fn saturate(x: u32, half: f64) -> f64 {
    let x = f64::from(x);
    x / (x + half)
}

impl TextSignals {
    pub fn from_features(f: &PromptFeatures) -> TextSignals {
        let words = f64::from(f.words.max(1));
        let values = [
            // ln(1 + words) / ln(1 + 1000): 1 word ~0.1, 30 ~0.5, 1000+ = 1.
            ((1.0 + f64::from(f.words)).ln() / 1001f64.ln()).min(1.0),
            saturate(f.sentences, 4.0),
            saturate(f.questions, 1.0),
            saturate(f.numbers, 4.0),
            saturate(f.math_operators, 2.0),
            saturate(f.math_words, 2.0),
            saturate(f.code_markers, 3.0),
            saturate(f.multi_step_cues, 2.0),
            saturate(f.negation_cues, 1.0),
            saturate(f.lines.saturating_sub(1) + f.list_items, 4.0),
            saturate(f.answer_choices, 2.0),
            (f64::from(f.long_words) / words).min(1.0),
            ((f64::from(f.mean_word_len) - 3.0) / 5.0).clamp(0.0, 1.0),
            f64::from(f.non_ascii_share).clamp(0.0, 1.0),
            (f64::from(f.capitalized_words) / words).min(1.0),
            // 10% digits or more saturates.
            (10.0 * f64::from(f.digits) / f64::from(f.chars.max(1))).min(1.0),
        ];
        TextSignals { values }
    }
}

/// One weight per text signal (logit units per unit of signal). Unknown names are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextWeights {
    pub length: f64,
    pub sentences: f64,
    pub questions: f64,
    pub numbers: f64,
    pub math_operators: f64,
    pub math_words: f64,
    pub code: f64,
    pub multi_step: f64,
    pub negation: f64,
    pub structure: f64,
    pub answer_choices: f64,
    pub long_words: f64,
    pub word_length: f64,
    pub non_ascii: f64,
    pub capitalized: f64,
    pub digit_share: f64,
}

impl TextWeights {
    /// The weights in [`TEXT_SIGNAL_NAMES`] order.
    pub fn to_array(&self) -> [f64; TEXT_SIGNAL_COUNT] {
        [
            self.length,
            self.sentences,
            self.questions,
            self.numbers,
            self.math_operators,
            self.math_words,
            self.code,
            self.multi_step,
            self.negation,
            self.structure,
            self.answer_choices,
            self.long_words,
            self.word_length,
            self.non_ascii,
            self.capitalized,
            self.digit_share,
        ]
    }

    /// Weights from an array in [`TEXT_SIGNAL_NAMES`] order (e.g. a fitted classifier).
    pub fn from_array(w: [f64; TEXT_SIGNAL_COUNT]) -> TextWeights {
        TextWeights {
            length: w[0],
            sentences: w[1],
            questions: w[2],
            numbers: w[3],
            math_operators: w[4],
            math_words: w[5],
            code: w[6],
            multi_step: w[7],
            negation: w[8],
            structure: w[9],
            answer_choices: w[10],
            long_words: w[11],
            word_length: w[12],
            non_ascii: w[13],
            capitalized: w[14],
            digit_share: w[15],
        }
    }
}

impl Default for TextWeights {
    /// Fitted by `cargo run -p tiergate-router --release --example eval_routing -- --fit`
    /// (L2-regularised logistic regression on shared/routing-eval, see docs/routing.md).
    fn default() -> Self {
        TextWeights::from_array(DEFAULT_TEXT_WEIGHTS)
    }
}

/// See [`TextWeights::default`]. Grouped 5-fold cross-validation of this fit (no MMLU subject
/// in both training and test): out-of-fold APGR 0.686 on MMLU, 0.612 on GSM8K (docs/routing.md).
const DEFAULT_TEXT_WEIGHTS: [f64; TEXT_SIGNAL_COUNT] = [
    0.7229,  // length
    0.3151,  // sentences
    -0.0831, // questions
    0.4816,  // numbers
    -0.2057, // math_operators
    0.0205,  // math_words
    -0.1858, // code
    0.1172,  // multi_step
    0.2729,  // negation
    -0.9250, // structure
    0.1758,  // answer_choices
    -0.2584, // long_words
    -0.0644, // word_length
    0.1015,  // non_ascii
    0.7977,  // capitalized
    -0.5768, // digit_share
];
/// Logit offset fitted together with [`DEFAULT_TEXT_WEIGHTS`].
const DEFAULT_BIAS: f64 = -0.1619;

/// How the prompt NLL (nats per token) is mapped onto `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplexityConfig {
    /// Logit offset: the score of a prompt with every signal at 0 is `sigmoid(bias)`.
    pub bias: f64,
    /// Logit weight per text signal (the tiny classifier; defaults fitted, see docs/routing.md).
    pub weights: TextWeights,
}

impl Default for ComplexityConfig {
    fn default() -> Self {
        ComplexityConfig {
            bias: DEFAULT_BIAS,
            weights: TextWeights::default(),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidConfig {
    pub field: String,
    pub problem: String,
}

impl InvalidConfig {
    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> InvalidConfig {
        InvalidConfig {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl ComplexityConfig {
    /// Checks that every number is finite and the NLL range is not empty.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if !self.bias.is_finite() {
            return Err(InvalidConfig::new(
                "complexity.bias",
                "must be a finite number",
            ));
        }
        for (name, w) in TEXT_SIGNAL_NAMES.iter().zip(self.weights.to_array()) {
            if !w.is_finite() {
                return Err(InvalidConfig::new(
                    format!("complexity.weights.{name}"),
                    "must be a finite number",
                ));
            }
        }
        Ok(())
    }
}

/// One term of the score: what the signal was and how much it moved the logit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    pub name: &'static str,
    /// The signal in `[0, 1]`; `None` when it was not available (no prompt NLL).
    pub value: Option<f64>,
    /// Weighted contribution to the logit.
    pub contribution: f64,
}

/// The complexity of one prompt and how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComplexityScore {
    /// In `[0, 1]`; higher means the prompt more likely needs a stronger tier.
    pub score: f64,
    /// `bias + sum of contributions`; `score = sigmoid(logit)`.
    pub logit: f64,
    pub bias: f64,
    pub components: Vec<Component>,
}

/// Scores a prompt (the text of the request's last user turn) from its text alone, the same
/// way for every prompt, so scores rank prompts on one scale.
pub fn score(features: &PromptFeatures, config: &ComplexityConfig) -> ComplexityScore {
    let signals = TextSignals::from_features(features);
    let mut components = Vec::with_capacity(TEXT_SIGNAL_COUNT);
    let mut logit = config.bias;
    for ((name, value), weight) in TEXT_SIGNAL_NAMES
        .iter()
        .zip(signals.values)
        .zip(config.weights.to_array())
    {
        let contribution = weight * value;
        logit += contribution;
        components.push(Component {
            name,
            value: Some(value),
            contribution,
        });
    }
    ComplexityScore {
        score: sigmoid(logit),
        logit,
        bias: config.bias,
        components,
    }
}

/// The logistic function, kept inside `[0, 1]` for any input (NaN maps to 0.5).
pub fn sigmoid(z: f64) -> f64 {
    if z.is_nan() {
        0.5
    } else {
        1.0 / (1.0 + (-z).exp())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn flat_config(weight: f64) -> ComplexityConfig {
        ComplexityConfig {
            bias: 0.0,
            weights: TextWeights::from_array([weight; TEXT_SIGNAL_COUNT]),
        }
    }

    #[test]
    fn default_config_is_valid() {
        ComplexityConfig::default().validate().unwrap();
    }

    #[test]
    fn zero_weights_give_one_half_and_name_every_component() {
        let s = score(&PromptFeatures::extract("hello"), &flat_config(0.0));
        assert_eq!(s.score, 0.5);
        assert_eq!(s.components.len(), TEXT_SIGNAL_COUNT);
        let names: Vec<&str> = s.components.iter().map(|c| c.name).collect();
        assert_eq!(names, TEXT_SIGNAL_NAMES);
    }

    #[test]
    fn logit_is_bias_plus_contributions() {
        let config = ComplexityConfig::default();
        let s = score(
            &PromptFeatures::extract("Explain why 3 + 4 = 7, step by step."),
            &config,
        );
        let sum: f64 = s.components.iter().map(|c| c.contribution).sum();
        assert!((s.logit - (s.bias + sum)).abs() < 1e-12);
        assert!((s.score - sigmoid(s.logit)).abs() < 1e-12);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = ComplexityConfig::default();
        c.weights.numbers = f64::NAN;
        assert_eq!(
            c.validate().unwrap_err().field,
            "complexity.weights.numbers"
        );
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = toml::from_str::<ComplexityConfig>("[weights]\nlenght = 1.0\n").unwrap_err();
        assert!(err.to_string().contains("lenght"), "{err}");
        let c: ComplexityConfig = toml::from_str("bias = -1.5\n").unwrap();
        assert_eq!(c.bias, -1.5);
        assert_eq!(c.weights, TextWeights::default());
        // The NLL term is gone from the score; an old config that sets it is told so.
        let err = toml::from_str::<ComplexityConfig>("[nll]\nweight = 1.0\n").unwrap_err();
        assert!(err.to_string().contains("nll"), "{err}");
    }

    #[test]
    fn sigmoid_stays_in_range() {
        assert_eq!(sigmoid(f64::INFINITY), 1.0);
        assert_eq!(sigmoid(f64::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid(f64::NAN), 0.5);
    }
}
