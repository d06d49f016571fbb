//! Calibrating the early-exit gate on a real edge model: labelled prompts in, the local model's
//! answers and confidence signals recorded, then how well each signal tells right answers from
//! wrong ones (AUROC) and which gate keeps the most at the edge for a bounded error rate.
//!
//! The gate is simulated with the router's own [`CommitMonitor`] over the recorded per-token
//! signals, so a chosen gate behaves here exactly as it does in a running node.

use serde::{Deserialize, Serialize};
use tiergate_router::{CommitMonitor, ConfidenceConfig, Verdict};

/// One labelled prompt (a line of `models/calibration/prompts.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationPrompt {
    pub id: String,
    pub category: String,
    pub kind: PromptKind,
    pub prompt: String,
    /// Accepted answers (`attempt` prompts): right when any appears as a whole word.
    #[serde(default)]
    pub answers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// Short questions with a known answer: graded right or wrong.
    Attempt,
    /// Prompts an edge model must not answer: the measure is how many the gate keeps.
    MustNotAttempt,
}

/// One generated token's confidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenSignal {
    pub top1: f32,
    pub entropy: f32,
}

/// The local model's answer to one prompt, with everything the gate can see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationResult {
    pub id: String,
    pub category: String,
    pub kind: PromptKind,
    pub answer: String,
    /// `None` for `must_not_attempt` prompts.
    pub correct: Option<bool>,
    pub prompt_nll: Option<f64>,
    pub tokens: Vec<TokenSignal>,
}

/// Right when any accepted answer appears in `answer` as a whole word, ignoring case.
pub fn grade(answer: &str, accepted: &[String]) -> bool {
    let haystack = answer.to_lowercase();
    accepted
        .iter()
        .any(|a| contains_word(&haystack, &a.to_lowercase()))
}

fn contains_word(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    haystack.match_indices(needle).any(|(start, _)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + needle.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        boundary(before) && boundary(after)
    })
}

/// Summary signals over the first `window` tokens (the commit window), as the gate sees them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowSignals {
    pub mean_top1: f64,
    pub min_top1: f64,
    pub mean_entropy: f64,
}

impl WindowSignals {
    pub fn of(tokens: &[TokenSignal], window: usize) -> Option<WindowSignals> {
        let seen = &tokens[..tokens.len().min(window.max(1))];
        if seen.is_empty() {
            return None;
        }
        let n = seen.len() as f64;
        Some(WindowSignals {
            mean_top1: seen.iter().map(|t| f64::from(t.top1)).sum::<f64>() / n,
            min_top1: seen
                .iter()
                .map(|t| f64::from(t.top1))
                .fold(f64::INFINITY, f64::min),
            mean_entropy: seen.iter().map(|t| f64::from(t.entropy)).sum::<f64>() / n,
        })
    }
}

/// Area under the ROC curve of `score` for telling positives (higher expected) from negatives:
/// the probability that a random positive scores above a random negative (ties count half).
/// `None` without both classes.
pub fn auroc(scored: &[(f64, bool)]) -> Option<f64> {
    let positives = scored.iter().filter(|(_, p)| *p).count();
    let negatives = scored.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Rank-sum (Mann-Whitney U) with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * sorted[i..=j].iter().filter(|(_, p)| *p).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    let u = rank_sum - p * (p + 1.0) / 2.0;
    Some(u / (p * negatives as f64))
}

/// AUROC of each confidence signal for right vs wrong answers (higher = better separation;
/// 0.5 = no better than chance). Lower-is-more-confident signals are negated first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SignalAurocs {
    pub mean_top1: Option<f64>,
    pub min_top1: Option<f64>,
    pub mean_entropy: Option<f64>,
    pub prompt_nll: Option<f64>,
}

pub fn signal_aurocs(results: &[CalibrationResult], window: usize) -> SignalAurocs {
    let graded: Vec<(&CalibrationResult, bool, WindowSignals)> = results
        .iter()
        .filter_map(|r| Some((r, r.correct?, WindowSignals::of(&r.tokens, window)?)))
        .collect();
    let by = |f: &dyn Fn(&CalibrationResult, &WindowSignals) -> Option<f64>| {
        let scored: Vec<(f64, bool)> = graded
            .iter()
            .filter_map(|(r, right, w)| Some((f(r, w)?, *right)))
            .collect();
        auroc(&scored)
    };
    SignalAurocs {
        mean_top1: by(&|_, w| Some(w.mean_top1)),
        min_top1: by(&|_, w| Some(w.min_top1)),
        mean_entropy: by(&|_, w| Some(-w.mean_entropy)),
        prompt_nll: by(&|r, _| r.prompt_nll.filter(|v| v.is_finite()).map(|v| -v)),
    }
}

/// What a gate does to the calibration set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GateOutcome {
    pub gate: ConfidenceConfig,
    /// Share of `attempt` prompts answered at the edge (committed).
    pub kept_share: f64,
    /// Share of the committed `attempt` answers that are wrong.
    pub error_rate_kept: f64,
    /// Share of all `attempt` prompts answered wrong at the edge (errors the user sees).
    pub wrong_share: f64,
    /// Share of `must_not_attempt` prompts the gate keeps at the edge.
    pub must_not_kept_share: f64,
}

/// Whether the gate commits a recorded answer: the same monitor a node runs.
pub fn commits(gate: &ConfidenceConfig, result: &CalibrationResult) -> bool {
    let mut monitor = CommitMonitor::new(gate);
    let mut verdict = monitor.prompt(result.prompt_nll);
    for token in &result.tokens {
        if verdict.is_final() {
            break;
        }
        verdict = monitor.push(token.top1, token.entropy);
    }
    if !verdict.is_final() {
        verdict = monitor.finish();
    }
    matches!(verdict, Verdict::Commit { .. })
}

pub fn evaluate_gate(gate: &ConfidenceConfig, results: &[CalibrationResult]) -> GateOutcome {
    let mut attempt = 0usize;
    let mut kept = 0usize;
    let mut kept_wrong = 0usize;
    let mut must_not = 0usize;
    let mut must_not_kept = 0usize;
    for result in results {
        let committed = commits(gate, result);
        match (result.kind, result.correct) {
            (PromptKind::Attempt, Some(correct)) => {
                attempt += 1;
                if committed {
                    kept += 1;
                    if !correct {
                        kept_wrong += 1;
                    }
                }
            }
            (PromptKind::Attempt, None) => {}
            (PromptKind::MustNotAttempt, _) => {
                must_not += 1;
                if committed {
                    must_not_kept += 1;
                }
            }
        }
    }
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    GateOutcome {
        gate: *gate,
        kept_share: share(kept, attempt),
        error_rate_kept: share(kept_wrong, kept),
        wrong_share: share(kept_wrong, attempt),
        must_not_kept_share: share(must_not_kept, must_not),
    }
}

/// The grid of gates searched: thresholds on the mean and the single-token floor over the
/// window, and optionally on the prompt NLL. The floor spans the same range as the mean: on
/// SmolLM2 the lowest token separates right from wrong answers best (AUROC 0.65 against the
/// mean's 0.60), and a grid whose floor stopped at 0.5 chose gates right on its edge (0.5 keeps
/// 8 wrong answers on one CPU kind's int4-fast answers where 0.55 keeps 2; docs/routing.md).
pub fn candidate_gates(window: usize) -> Vec<ConfidenceConfig> {
    let mut gates = Vec::new();
    let nll_bounds: Vec<Option<f32>> = std::iter::once(None)
        .chain((0..=12).map(|i| Some(2.0 + 0.5 * i as f32)))
        .collect();
    for &max_prompt_nll in &nll_bounds {
        for floor in (0..=19).map(|i| 0.05 * i as f32) {
            for mean in (0..=19).map(|i| 0.5 + 0.025 * i as f32) {
                gates.push(ConfidenceConfig {
                    commit_window: window,
                    min_mean_top1: mean,
                    min_token_top1: floor,
                    max_mean_entropy: None,
                    max_prompt_nll,
                });
            }
        }
    }
    gates
}

/// The gate that keeps the most `attempt` prompts at the edge while its error rate among kept
/// answers stays at or below `max_error` and it keeps at most `max_must_not` of the
/// `must_not_attempt` prompts. Ties go to the gate with fewer wrong answers, then to the one
/// that keeps fewer must-not prompts (a stricter mean threshold that costs no kept answer is
/// taken), then to the simplest one (the grid lists no NLL bound first, lower floors and lower
/// means first), so a check that changes nothing on the data is not switched on.
pub fn choose_gate(
    results: &[CalibrationResult],
    window: usize,
    max_error: f64,
    max_must_not: f64,
) -> Option<GateOutcome> {
    let mut best: Option<GateOutcome> = None;
    for gate in candidate_gates(window) {
        let o = evaluate_gate(&gate, results);
        if o.error_rate_kept > max_error || o.must_not_kept_share > max_must_not {
            continue;
        }
        if o.kept_share <= 0.0 {
            continue;
        }
        let better = best.as_ref().is_none_or(|b| {
            let fewer_must_not =
                o.wrong_share == b.wrong_share && o.must_not_kept_share < b.must_not_kept_share;
            o.kept_share > b.kept_share
                || (o.kept_share == b.kept_share
                    && (o.wrong_share < b.wrong_share || fewer_must_not))
        });
        if better {
            best = Some(o);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn result(
        kind: PromptKind,
        correct: Option<bool>,
        top1: &[f32],
        nll: f64,
    ) -> CalibrationResult {
        CalibrationResult {
            id: "x".into(),
            category: "c".into(),
            kind,
            answer: String::new(),
            correct,
            prompt_nll: Some(nll),
            tokens: top1
                .iter()
                .map(|&top1| TokenSignal {
                    top1,
                    entropy: 1.0 - top1,
                })
                .collect(),
        }
    }

    #[test]
    fn grading_wants_a_whole_word_in_any_case() {
        let paris = vec!["Paris".to_owned()];
        assert!(grade("The capital of France is Paris.", &paris));
        assert!(grade("PARIS", &paris));
        assert!(!grade("Parisian food", &paris));
        assert!(!grade("Lyon", &paris));
        let twelve = vec!["12".to_owned()];
        assert!(grade("7 + 5 = 12", &twelve));
        assert!(!grade("7 + 5 = 125", &twelve));
        assert!(grade("Bogotá is the capital", &["Bogotá".to_owned()]));
        assert!(!grade("anything", &[String::new()]));
    }

    #[test]
    fn auroc_is_one_for_perfect_separation_half_for_ties_and_none_without_both_classes() {
        assert_eq!(auroc(&[(0.9, true), (0.8, true), (0.1, false)]), Some(1.0));
        assert_eq!(auroc(&[(0.1, true), (0.9, false)]), Some(0.0));
        assert_eq!(auroc(&[(0.5, true), (0.5, false)]), Some(0.5));
        assert_eq!(auroc(&[(0.5, true)]), None);
        // One swapped pair out of four.
        let v = auroc(&[(0.9, true), (0.3, true), (0.5, false), (0.1, false)]).unwrap();
        assert!((v - 0.75).abs() < 1e-12);
    }

    #[test]
    fn gate_outcome_counts_kept_wrong_and_must_not() {
        let results = vec![
            result(PromptKind::Attempt, Some(true), &[0.99, 0.98], 2.0),
            result(PromptKind::Attempt, Some(false), &[0.95, 0.6], 2.0),
            result(PromptKind::Attempt, Some(false), &[0.3, 0.2], 2.0),
            result(PromptKind::MustNotAttempt, None, &[0.97, 0.97], 6.0),
        ];
        let gate = ConfidenceConfig {
            commit_window: 2,
            min_mean_top1: 0.7,
            min_token_top1: 0.1,
            max_mean_entropy: None,
            max_prompt_nll: None,
        };
        let o = evaluate_gate(&gate, &results);
        assert!((o.kept_share - 2.0 / 3.0).abs() < 1e-12);
        assert!((o.error_rate_kept - 0.5).abs() < 1e-12);
        assert!((o.must_not_kept_share - 1.0).abs() < 1e-12);

        // The NLL bound drops the surprising must-not prompt; a higher floor drops the wrong one.
        let stricter = ConfidenceConfig {
            min_token_top1: 0.7,
            max_prompt_nll: Some(4.0),
            ..gate
        };
        let o = evaluate_gate(&stricter, &results);
        assert!((o.kept_share - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(o.error_rate_kept, 0.0);
        assert_eq!(o.must_not_kept_share, 0.0);

        let chosen = choose_gate(&results, 2, 0.0, 0.0).unwrap();
        assert_eq!(chosen.error_rate_kept, 0.0);
        assert!((chosen.kept_share - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn among_gates_keeping_the_same_answers_the_one_keeping_fewer_must_not_prompts_wins() {
        // Every mean threshold up to 0.9 keeps the same two right answers; the must-not prompt's
        // mean is 0.8, so thresholds above it keep it out at no cost.
        let results = vec![
            result(PromptKind::Attempt, Some(true), &[0.95, 0.95], 2.0),
            result(PromptKind::Attempt, Some(true), &[0.92, 0.92], 2.0),
            result(PromptKind::MustNotAttempt, None, &[0.8, 0.8], 2.0),
        ];
        let chosen = choose_gate(&results, 2, 0.1, 1.0).unwrap();
        assert_eq!(chosen.kept_share, 1.0);
        assert_eq!(chosen.must_not_kept_share, 0.0);
        // The lowest mean that does so (the simplest of the tied gates): 0.825, floor 0.
        assert!(
            (chosen.gate.min_mean_top1 - 0.825).abs() < 1e-6,
            "{chosen:?}"
        );
        assert_eq!(chosen.gate.min_token_top1, 0.0);
        assert_eq!(chosen.gate.max_prompt_nll, None);
    }

    #[test]
    fn aurocs_read_the_window_only() {
        // Right answers are confident in the window; the wrong one only later.
        let results = vec![
            result(PromptKind::Attempt, Some(true), &[0.9, 0.9, 0.1], 2.0),
            result(PromptKind::Attempt, Some(false), &[0.5, 0.5, 0.99], 5.0),
        ];
        let a = signal_aurocs(&results, 2);
        assert_eq!(a.mean_top1, Some(1.0));
        assert_eq!(a.min_top1, Some(1.0));
        assert_eq!(a.mean_entropy, Some(1.0));
        assert_eq!(a.prompt_nll, Some(1.0));
    }
}
