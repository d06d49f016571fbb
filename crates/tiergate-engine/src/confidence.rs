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

/// What one row of logits says about the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TokenStats {
    pub top1_prob: f32,
    /// Entropy (nats) of softmax(logits).
    pub entropy: f32,
    /// ln(sum(exp(logits))): a token's log-probability is its logit minus this.
    pub log_partition: f64,
}

/// Top-1 probability and entropy (nats) of softmax(logits).
pub(crate) fn token_confidence(logits: &[f32]) -> (f32, f32) {
    let stats = token_stats(logits, 0, &mut Vec::new());
    (stats.top1_prob, stats.entropy)
}

/// The statistics of softmax(logits) and, in the same pass, the `top` largest logits into
/// `best` as (token, logit), largest first (the lower id first on ties). `top` 0 leaves `best`
/// empty and costs one comparison per logit.
pub(crate) fn token_stats(logits: &[f32], top: usize, best: &mut Vec<(u32, f32)>) -> TokenStats {
    best.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    // sum(e_i * (l_i - max)) gives the entropy without a second pass of exponentials:
    // H = ln Z' - sum(p_i (l_i - max)), with Z' = sum(e_i), e_i = exp(l_i - max).
    let mut weighted = 0.0f64;
    for (i, &l) in logits.iter().enumerate() {
        let shifted = l - max;
        let e = f64::from(shifted.exp());
        sum += e;
        weighted += e * f64::from(shifted);
        if top > 0 && (best.len() < top || best.last().is_some_and(|&(_, low)| l > low)) {
            // `best` holds at most 20 entries: a shift is cheaper than a heap here.
            let at = best.partition_point(|&(_, kept)| kept >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    let entropy = sum.ln() - weighted / sum;
    TokenStats {
        top1_prob: (1.0 / sum) as f32,
        entropy: entropy.max(0.0) as f32,
        log_partition: f64::from(max) + sum.ln(),
    }
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
    fn top_entries_are_the_largest_in_order_with_log_probabilities() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0, 0.0];
        let mut best = Vec::new();
        let stats = token_stats(&logits, 3, &mut best);
        // Ties keep the lower id first, like argmax.
        assert_eq!(best, vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        // Exponentials are f32: agreement to float precision.
        assert!((stats.log_partition - z.ln()).abs() < 1e-6);
        let (top1, entropy) = token_confidence(&logits);
        assert_eq!((stats.top1_prob, stats.entropy), (top1, entropy));
        // Asking for more than the vocabulary gives all of it; 0 gives nothing.
        token_stats(&logits, 10, &mut best);
        assert_eq!(best.len(), logits.len());
        token_stats(&logits, 0, &mut best);
        assert!(best.is_empty());
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
