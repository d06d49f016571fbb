//! Confidence signals from raw logits (before temperature): per-token top-1 probability and
//! entropy, and the prompt's mean negative log-likelihood.
//!
//! This runs over the whole vocabulary (49,152 logits for SmolLM2) for every token and every
//! prompt position, so it is written to vectorise: the exponential is a polynomial, not a libm
//! call, and the sums run in eight f32 lanes per 256-logit block, each block's total added in
//! f64. With libm's `expf` and one f64 sum it was 2-2.5% of a decode step on the int4-fast graph
//! (docs/benchmarks.md).

mod avx2;

/// Logits per block: each of the eight lanes adds 32 terms in f32 before the block's total
/// goes into the f64 sums, which bounds the rounding to a few units in the 7th digit.
const BLOCK: usize = 256;
const LANES: usize = 8;

/// `e^x` for `x <= 0` (what softmax needs after subtracting the maximum), relative error below
/// 1e-7 (Cody-Waite range reduction, Cephes' degree-6 polynomial for `e^r` on |r| <= ln2/2).
/// Below -87 it returns `e^-87` (1.6e-38: nothing next to the maximum's 1), so the exponent bits
/// never underflow; NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HIGH is exact for the n that occur here.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = if x < -87.0 { -87.0 } else { x };
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    // Cephes' coefficients of (e^r - 1 - r) / r^2, highest degree first.
    let p = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ]
    .into_iter()
    .fold(0.0f32, |acc, c| acc * r + c);
    let e_r = p * r * r + r + 1.0;
    // 2^n from n's bits: n in [-126, 0], so n + 127 is a valid biased exponent.
    let two_to_n = f32::from_bits(
        rounded
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    e_r * two_to_n
}

/// The largest logit (NaNs skipped, as `f32::max` does; -inf for an empty row).
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            *lane = if l > *lane { l } else { *lane };
        }
    }
    rest.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `sum(e_i)` and `sum(e_i * (l_i - max))` with `e_i = exp(l_i - max)`, compiled for AVX2
/// where the CPU has it (the same sums bit for bit).
fn exp_sums(logits: &[f32], max: f32) -> (f64, f64) {
    avx2::exp_sums(logits, max).unwrap_or_else(|| exp_sums_portable(logits, max))
}

/// [`exp_sums`] for any CPU. Each exponential goes straight into its lane's sums (logit `i`
/// of a block into lane `i % 8`): no block buffer to write and read back, 25% less time per
/// row than with one, the same sums bit for bit.
#[inline(always)]
fn exp_sums_portable(logits: &[f32], max: f32) -> (f64, f64) {
    let mut sum = 0.0f64;
    let mut weighted = 0.0f64;
    for block in logits.chunks(BLOCK) {
        let mut sums = [0.0f32; LANES];
        let mut weighted_sums = [0.0f32; LANES];
        let mut add = |lane: usize, l: f32| {
            let shifted = l - max;
            let e = exp_nonpositive(shifted);
            sums[lane] += e;
            weighted_sums[lane] += e * shifted;
        };
        // Whole lanes-wide chunks, then the rest: `chunks(LANES)` alone vectorises worse.
        let chunks = block.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (lane, &l) in chunk.iter().enumerate() {
                add(lane, l);
            }
        }
        for (lane, &l) in rest.iter().enumerate() {
            add(lane, l);
        }
        sum += sums.iter().map(|&s| f64::from(s)).sum::<f64>();
        weighted += weighted_sums.iter().map(|&s| f64::from(s)).sum::<f64>();
    }
    (sum, weighted)
}

/// Log of the softmax normaliser: ln(sum(exp(logits))).
fn log_partition(logits: &[f32]) -> f64 {
    let max = max_logit(logits);
    let (sum, _) = exp_sums(logits, max);
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

/// The statistics of softmax(logits) and the `top` largest logits into `best` as (token,
/// logit), largest first (the lower id first on ties). `top` 0 leaves `best` empty and skips
/// that pass.
pub(crate) fn token_stats(logits: &[f32], top: usize, best: &mut Vec<(u32, f32)>) -> TokenStats {
    let max = max_logit(logits);
    // sum(e_i * (l_i - max)) gives the entropy without a second pass of exponentials:
    // H = ln Z' - sum(p_i (l_i - max)), with Z' = sum(e_i), e_i = exp(l_i - max).
    let (sum, weighted) = exp_sums(logits, max);
    top_logits(logits, top, best);
    let entropy = sum.ln() - weighted / sum;
    TokenStats {
        top1_prob: (1.0 / sum) as f32,
        entropy: entropy.max(0.0) as f32,
        log_partition: f64::from(max) + sum.ln(),
    }
}

/// The `top` largest logits, largest first, the lower id first on ties.
fn top_logits(logits: &[f32], top: usize, best: &mut Vec<(u32, f32)>) {
    best.clear();
    if top == 0 {
        return;
    }
    for (i, &l) in logits.iter().enumerate() {
        if best.len() < top || best.last().is_some_and(|&(_, low)| l > low) {
            // `best` holds at most 20 entries: a shift is cheaper than a heap here.
            let at = best.partition_point(|&(_, kept)| kept >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
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
    fn the_avx2_pass_gives_the_portable_sums_bit_for_bit() {
        // A vocabulary-sized row and lengths that leave partial blocks and partial lanes.
        let row: Vec<f32> = (0..49_152)
            .map(|i| ((i * 7919 % 1000) as f32 * 0.37).sin() * 12.0)
            .collect();
        for len in [0, 1, 7, 9, 255, 257, 1000, row.len()] {
            let logits = &row[..len];
            let max = max_logit(logits);
            let portable = exp_sums_portable(logits, max);
            let dispatched = exp_sums(logits, max);
            assert_eq!(portable.0.to_bits(), dispatched.0.to_bits(), "{len}");
            assert_eq!(portable.1.to_bits(), dispatched.1.to_bits(), "{len}");
            if let Some(avx2) = avx2::exp_sums(logits, max) {
                assert_eq!(avx2, dispatched);
            }
        }
    }

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

    /// The f64 reference the fast path is held to.
    fn exact_stats(logits: &[f32]) -> (f64, f64, f64) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        let weighted: f64 = logits
            .iter()
            .map(|&l| (l as f64 - max).exp() * (l as f64 - max))
            .sum();
        (1.0 / sum, sum.ln() - weighted / sum, max + sum.ln())
    }

    #[test]
    fn the_polynomial_exponential_is_within_a_unit_in_the_seventh_digit() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x >= -87.0 {
            let exact = f64::from(x).exp();
            let relative = ((f64::from(exp_nonpositive(x)) - exact) / exact).abs();
            worst = worst.max(relative);
            x -= 0.000_37;
        }
        assert!(worst < 1.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        // Far below the maximum: a negligible positive term, never a NaN or an underflow.
        let floor = exp_nonpositive(f32::NEG_INFINITY);
        assert!(floor > 0.0 && floor < 2e-38, "{floor:e}");
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn a_vocabulary_wide_row_matches_the_f64_reference() {
        // 49,152 logits like a real model's: most far below a few large ones; a length that
        // is not a multiple of the block exercises the remainders.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut logits: Vec<f32> = (0..49_157)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / 16_777_216.0 * 24.0 - 12.0
            })
            .collect();
        logits[31_337] = 21.5;
        logits[7] = 19.0;
        let (top1, entropy, log_z) = exact_stats(&logits);
        let stats = token_stats(&logits, 2, &mut Vec::new());
        assert!((f64::from(stats.top1_prob) - top1).abs() / top1 < 1e-6);
        assert!((f64::from(stats.entropy) - entropy).abs() < 1e-5);
        assert!((stats.log_partition - log_z).abs() < 1e-6);
        assert!((log_partition(&logits) - log_z).abs() < 1e-6);
        let mut best = Vec::new();
        token_stats(&logits, 2, &mut best);
        assert_eq!(best, vec![(31_337, 21.5), (7, 19.0)]);
    }

    #[test]
    fn a_nan_logit_makes_the_statistics_nan_not_a_confident_number() {
        let stats = token_stats(&[1.0, f32::NAN, 0.5], 0, &mut Vec::new());
        assert!(stats.top1_prob.is_nan() && stats.log_partition.is_nan());
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
