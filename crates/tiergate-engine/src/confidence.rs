//! Confidence signals from raw logits (before temperature): per-token top-1 probability and
//! entropy, and the prompt's mean negative log-likelihood.
//!
//! This runs over the whole vocabulary for every token and every prompt position: exponentials
//! are f32, sums are accumulated in f64, and the entropy needs no second pass.

/// Log of the softmax normaliser: ln(sum(exp(logits))).
fn log_partition(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(max) + sum.ln()
}

/// Top-1 probability and entropy (nats) of softmax(logits).
pub(crate) fn token_confidence(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    // sum(e_i * (l_i - max)) gives the entropy without a second pass of exponentials:
    // H = ln Z' - sum(p_i (l_i - max)), with Z' = sum(e_i), e_i = exp(l_i - max).
    let mut weighted = 0.0f64;
    for &l in logits {
        let shifted = l - max;
        let e = f64::from(shifted.exp());
        sum += e;
        weighted += e * f64::from(shifted);
    }
    let entropy = sum.ln() - weighted / sum;
    let top1 = 1.0 / sum;
    (top1 as f32, entropy.max(0.0) as f32)
}

/// Mean negative log-likelihood (nats per token) of `ids[1..]`, where row `i` of `logits`
/// (`vocab` wide) predicts `ids[i + 1]`. `None` when there is nothing to predict (one token).
#[cfg(test)]
pub(crate) fn prompt_nll(logits: &[f32], vocab: usize, ids: &[u32]) -> Option<f64> {
    if ids.len() < 2 {
        return None;
    }
    nll_sum(logits, vocab, ids).map(|total| total / (ids.len() - 1) as f64)
}

/// The summed negative log-likelihood of `ids[1..]` under the same rows (a chunk's share of a
/// prompt's NLL); 0 when `ids` predicts nothing, `None` when a row or id is out of range.
pub(crate) fn nll_sum(logits: &[f32], vocab: usize, ids: &[u32]) -> Option<f64> {
    if vocab == 0 {
        return None;
    }
    let mut total = 0.0f64;
    for (position, next) in ids.iter().skip(1).enumerate() {
        let row = logits.get(position * vocab..(position + 1) * vocab)?;
        let target = *row.get(*next as usize)? as f64;
        total += log_partition(row) - target;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_have_maximal_entropy() {
        let (top1, entropy) = token_confidence(&[1.0; 4]);
        assert!((top1 - 0.25).abs() < 1e-6);
        assert!((entropy - 4f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn peaked_logits_are_confident() {
        let (top1, entropy) = token_confidence(&[30.0, 0.0, 0.0]);
        assert!(top1 > 0.999_999);
        assert!(entropy < 1e-6);
    }

    #[test]
    fn nll_matches_hand_computation() {
        // Two rows over a vocab of 2; ids [0, 1, 0].
        let logits = [0.0, 0.0, 2.0, 0.0];
        let nll = prompt_nll(&logits, 2, &[0, 1, 0]).unwrap_or(f64::NAN);
        let expected = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((nll - expected).abs() < 1e-9);
        assert_eq!(prompt_nll(&logits, 2, &[0]), None);
    }
}
