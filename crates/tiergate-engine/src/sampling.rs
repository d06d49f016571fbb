//! Choosing the next token: greedy (temperature 0) or sampled with temperature, top-k, top-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::confidence::max_logit;
use crate::error::EngineError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Upper bound on generated tokens (the EOS token counts). 0 only scores the prompt.
    pub max_new_tokens: usize,
    /// 0 is greedy decoding; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables the filter.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches top_p; 1.0 disables the filter.
    pub top_p: f32,
    /// Makes sampling reproducible; `None` draws a seed from the OS.
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these; the text excludes it.
    pub stop: Vec<String>,
    /// `Some(k)`: every token reports its log-probability and the k most likely alternatives
    /// (0..=`MAX_TOP_LOGPROBS`); `None` reports none and skips the work.
    pub logprobs: Option<usize>,
}

/// The most alternatives a token reports (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            max_new_tokens,
            ..SamplingParams::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        let invalid = |m: String| Err(EngineError::InvalidSampling(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return invalid(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                self.logprobs.unwrap_or_default()
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop sequences must not be empty".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: StdRng,
    /// Scratch space reused across steps: (token, scaled logit or probability).
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub(crate) fn new(params: &SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            rng,
            candidates: Vec::new(),
        }
    }

    pub(crate) fn next_token(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        let inverse_temperature = 1.0 / self.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inverse_temperature)),
        );
        let descending = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if self.top_k > 0 && self.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(self.top_k - 1, descending);
            self.candidates.truncate(self.top_k);
        }
        if self.top_p < 1.0 {
            self.candidates.sort_unstable_by(descending);
        }
        // Softmax over the candidates (max subtracted for stability).
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for candidate in &mut self.candidates {
            candidate.1 = (candidate.1 - max).exp();
            total += candidate.1;
        }
        if self.top_p < 1.0 {
            let mut cumulative = 0.0f32;
            let mut keep = self.candidates.len();
            for (i, candidate) in self.candidates.iter().enumerate() {
                cumulative += candidate.1 / total;
                if cumulative >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| c.1).sum();
        }
        let mut threshold = self.rng.random::<f32>() * total;
        for candidate in &self.candidates {
            threshold -= candidate.1;
            if threshold <= 0.0 {
                return candidate.0;
            }
        }
        // Rounding left a sliver of mass: the last candidate takes it.
        self.candidates
            .last()
            .map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// Logits per block of the search for the largest one in [`argmax`].
const ARGMAX_BLOCK: usize = 64;

/// Index of the largest logit; the first one on ties (like numpy's argmax). NaNs are never
/// chosen; a row of NaNs gives 0.
///
/// Every greedy token runs this over the whole vocabulary, so it is two passes that vectorise
/// (the maximum in eight lanes, then the first block holding it, without an early exit inside
/// the block) rather than one loop that carries the best index from element to element:
/// 4-12 us instead of 27-61 us for 49,152 logits, in isolation (docs/benchmarks.md).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let max = max_logit(logits);
    let mut offset = 0;
    for block in logits.chunks(ARGMAX_BLOCK) {
        if block.iter().fold(false, |found, &l| found | (l == max))
            && let Some(i) = block.iter().position(|&l| l == max)
        {
            return (offset + i) as u32;
        }
        offset += block.len();
    }
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    /// The plain loop `argmax` replaced, as the reference.
    fn argmax_by_loop(logits: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, &value) in logits.iter().enumerate() {
            if value > logits[best] || logits[best].is_nan() {
                best = i;
            }
        }
        best as u32
    }

    #[test]
    fn argmax_finds_the_first_maximum_anywhere_in_a_vocabulary_sized_row() {
        let vocab = 49_152;
        let row: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919 % 1000) as f32).sin() * 10.0)
            .collect();
        for at in [0, 1, 63, 64, 65, 24_999, vocab - 2, vocab - 1] {
            let mut logits = row.clone();
            logits[at] = 50.0;
            assert_eq!(argmax(&logits), at as u32);
            assert_eq!(argmax(&logits), argmax_by_loop(&logits));
            // A tie later on keeps the first.
            let later = (at + 100).min(vocab - 1);
            logits[later] = 50.0;
            assert_eq!(argmax(&logits), at as u32);
        }
        assert_eq!(argmax(&row), argmax_by_loop(&row));
    }

    #[test]
    fn argmax_skips_nans_and_handles_rows_without_a_finite_logit() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0, f32::NAN]), 2);
        assert_eq!(argmax(&[f32::NAN; 3]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[1.0, f32::INFINITY, f32::INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut sampler = Sampler::new(&SamplingParams::greedy(1));
        assert_eq!(sampler.next_token(&[0.0, 0.5, 2.0]), 2);
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let logits = [5.0, 4.9, 4.8, 0.0, 0.0, 0.0];
        let mut sampler = Sampler::new(&params(5.0, 2, 1.0, 7));
        for _ in 0..500 {
            assert!(sampler.next_token(&logits) < 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut sampler = Sampler::new(&params(1.0, 0, 0.8, 3));
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sampler.next_token(&logits) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0);
        assert_eq!(seen[2] + seen[3], 0);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(&params(1.0, 0, 1.0, seed));
            (0..40)
                .map(|_| sampler.next_token(&logits))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(11), draw(11));
        assert_ne!(draw(11), draw(12));
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(params(-1.0, 0, 1.0, 0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0, 0).validate().is_err());
        assert!(params(1.0, 0, 0.0, 0).validate().is_err());
        assert!(params(1.0, 0, 1.5, 0).validate().is_err());
        let empty_stop = SamplingParams {
            stop: vec![String::new()],
            ..SamplingParams::default()
        };
        assert!(empty_stop.validate().is_err());
        let too_many = SamplingParams {
            logprobs: Some(MAX_TOP_LOGPROBS + 1),
            ..SamplingParams::default()
        };
        assert!(too_many.validate().is_err());
    }
}
