//! Routing evaluation as defined for RouteLLM (arXiv 2406.18665): given, per prompt, a router
//! score and whether a weak and a strong model answered correctly, how much of the quality gap
//! between the two does the router recover for a given share of strong-model calls?
//!
//! - PGR(c): send the share `c` of prompts with the highest score to the strong model, the rest
//!   to the weak one; `PGR = (quality - quality_weak) / (quality_strong - quality_weak)`.
//! - APGR: the mean of PGR over `c = 0%, 1%, ..., 100%`. A random router scores 0.5.
//! - CPT(x): the smallest `c` on that grid at which PGR reaches `x`.
//!
//! Ties and fractions, deterministically: the cut at share `c` sends `c * n` prompts up, which
//! may be a fraction of a prompt and may fall inside a block of equal scores. Prompts with equal
//! scores form one block, and a block cut by the boundary contributes in proportion to the part
//! sent up (each prompt of the block is sent up with the same probability). That is the
//! expected value under random tie-breaking, so it does not depend on row order, and a constant
//! score gives exactly `PGR(c) = c` (APGR 0.5).

use std::io::Read;

use serde::Serialize;

use tiergate_router::complexity::{self, ComplexityConfig};
use tiergate_router::features::PromptFeatures;

/// Router score and correctness labels of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalRow {
    pub score: f64,
    pub weak_correct: bool,
    pub strong_correct: bool,
}

/// One labelled prompt from an evaluation CSV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelledPrompt {
    pub prompt: String,
    pub weak_correct: bool,
    pub strong_correct: bool,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no rows to evaluate")]
    Empty,
    #[error("row {index}: score {score} is not a finite number")]
    BadScore { index: usize, score: f64 },
    #[error(
        "the strong model is not better than the weak one on this data \
         (quality strong {strong:.4}, weak {weak:.4}): PGR is undefined"
    )]
    NoQualityGap { strong: f64, weak: f64 },
    #[error("strong-call share {0} is outside [0, 1]")]
    BadShare(f64),
    #[error("CSV line {line}: {message}")]
    Csv { line: u64, message: String },
}

/// The PGR curve and the summary figures of one router on one data set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingReport {
    pub rows: usize,
    /// Fraction answered correctly by the weak model alone.
    pub quality_weak: f64,
    /// Fraction answered correctly by the strong model alone.
    pub quality_strong: f64,
    pub apgr: f64,
    /// Smallest strong-call share (0.00 ..= 1.00) at which PGR reaches 50%.
    pub cpt50: f64,
    /// Smallest strong-call share at which PGR reaches 80%.
    pub cpt80: f64,
    /// PGR at `c = i / 100` for `i = 0..=100`.
    pub pgr: Vec<f64>,
}

/// Rows sorted by score, highest first, grouped into blocks of equal scores, with the strong
/// minus weak gain summed per block.
struct Blocks {
    /// (prompts in block, sum over the block of strong_correct - weak_correct)
    blocks: Vec<(usize, f64)>,
    n: usize,
    quality_weak: f64,
    quality_strong: f64,
}

impl Blocks {
    fn new(rows: &[EvalRow]) -> Result<Blocks, EvalError> {
        if rows.is_empty() {
            return Err(EvalError::Empty);
        }
        if let Some((index, row)) = rows.iter().enumerate().find(|(_, r)| !r.score.is_finite()) {
            return Err(EvalError::BadScore {
                index,
                score: row.score,
            });
        }
        let mut sorted: Vec<&EvalRow> = rows.iter().collect();
        sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut blocks: Vec<(usize, f64)> = Vec::new();
        let mut last: Option<f64> = None;
        for row in sorted {
            let gain =
                f64::from(u8::from(row.strong_correct)) - f64::from(u8::from(row.weak_correct));
            match (last, blocks.last_mut()) {
                (Some(s), Some(block)) if s == row.score => {
                    block.0 += 1;
                    block.1 += gain;
                }
                _ => blocks.push((1, gain)),
            }
            last = Some(row.score);
        }
        let n = rows.len();
        let count =
            |f: fn(&EvalRow) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n as f64;
        Ok(Blocks {
            blocks,
            n,
            quality_weak: count(|r| r.weak_correct),
            quality_strong: count(|r| r.strong_correct),
        })
    }

    /// Quality when the top `share` of prompts go to the strong model.
    fn quality_at(&self, share: f64) -> f64 {
        let mut up = share * self.n as f64;
        let mut gain = 0.0;
        for &(size, block_gain) in &self.blocks {
            if up <= 0.0 {
                break;
            }
            let size = size as f64;
            let taken = up.min(size);
            gain += block_gain * taken / size;
            up -= taken;
        }
        self.quality_weak + gain / self.n as f64
    }

    fn pgr_at(&self, share: f64) -> Result<f64, EvalError> {
        let gap = self.quality_strong - self.quality_weak;
        if gap <= 0.0 {
            return Err(EvalError::NoQualityGap {
                strong: self.quality_strong,
                weak: self.quality_weak,
            });
        }
        Ok((self.quality_at(share) - self.quality_weak) / gap)
    }
}

/// PGR when the share `strong_share` (in `[0, 1]`) of highest-scored prompts go to the strong model.
pub fn pgr_at(rows: &[EvalRow], strong_share: f64) -> Result<f64, EvalError> {
    if !(0.0..=1.0).contains(&strong_share) {
        return Err(EvalError::BadShare(strong_share));
    }
    Blocks::new(rows)?.pgr_at(strong_share)
}

/// The PGR curve on the 1% grid, APGR, CPT(50%) and CPT(80%).
pub fn evaluate(rows: &[EvalRow]) -> Result<RoutingReport, EvalError> {
    let blocks = Blocks::new(rows)?;
    let pgr = (0..=100)
        .map(|i| blocks.pgr_at(f64::from(i) / 100.0))
        .collect::<Result<Vec<f64>, _>>()?;
    let apgr = pgr.iter().sum::<f64>() / pgr.len() as f64;
    // PGR(100%) is exactly 1, so both thresholds are always reached; the tolerance absorbs
    // rounding in the running sums.
    let cpt = |x: f64| {
        pgr.iter()
            .position(|&p| p >= x - 1e-9)
            .map_or(1.0, |i| i as f64 / 100.0)
    };
    Ok(RoutingReport {
        rows: blocks.n,
        quality_weak: blocks.quality_weak,
        quality_strong: blocks.quality_strong,
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        pgr,
    })
}

/// The threshold `t` such that routing `score >= t` upstream sends the share `strong_share` of
/// these scores up: the `ceil(share * n)`-th highest score (ties at the threshold all go up, so
/// the real share can be larger). Share 0 gives a threshold just above the highest score.
pub fn calibrate(scores: &[f64], strong_share: f64) -> Result<f64, EvalError> {
    if !(0.0..=1.0).contains(&strong_share) {
        return Err(EvalError::BadShare(strong_share));
    }
    if scores.is_empty() {
        return Err(EvalError::Empty);
    }
    if let Some((index, &score)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(EvalError::BadScore { index, score });
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (strong_share * sorted.len() as f64).ceil() as usize;
    Ok(match k {
        0 => sorted[0].next_up(),
        k => sorted[k.min(sorted.len()) - 1],
    })
}

/// Pairs labelled prompts with router scores (same order) into evaluation rows.
pub fn rows_from_scores(prompts: &[LabelledPrompt], scores: &[f64]) -> Vec<EvalRow> {
    prompts
        .iter()
        .zip(scores)
        .map(|(p, &score)| EvalRow {
            score,
            weak_correct: p.weak_correct,
            strong_correct: p.strong_correct,
        })
        .collect()
}

/// Scores labelled prompts with the complexity score.
pub fn score_labelled(prompts: &[LabelledPrompt], config: &ComplexityConfig) -> Vec<EvalRow> {
    let scores: Vec<f64> = prompts
        .iter()
        .map(|p| complexity::score(&PromptFeatures::extract(&p.prompt), config).score)
        .collect();
    rows_from_scores(prompts, &scores)
}

/// Reads `prompt,weak_correct,strong_correct,source` rows (header required, booleans
/// `True`/`False`/`true`/`false`/`1`/`0`). Errors name the line.
pub fn read_labelled_csv<R: Read>(reader: R) -> Result<Vec<LabelledPrompt>, EvalError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let header_error = |message: String| EvalError::Csv { line: 1, message };
    let headers = csv
        .headers()
        .map_err(|e| header_error(e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| header_error(format!("missing column {name:?} (have {headers:?})")))
    };
    let (prompt, weak, strong, source) = (
        column("prompt")?,
        column("weak_correct")?,
        column("strong_correct")?,
        column("source")?,
    );
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record.map_err(|e| EvalError::Csv {
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or_default();
        let boolean = |i: usize, name: &str| match field(i).trim() {
            "True" | "true" | "1" => Ok(true),
            "False" | "false" | "0" => Ok(false),
            other => Err(EvalError::Csv {
                line,
                message: format!("{name} must be True or False, got {other:?}"),
            }),
        };
        rows.push(LabelledPrompt {
            prompt: field(prompt).to_owned(),
            weak_correct: boolean(weak, "weak_correct")?,
            strong_correct: boolean(strong, "strong_correct")?,
            source: field(source).to_owned(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Deterministic pseudo-random numbers in [0, 1) (SplitMix64), so tests need no crate.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    /// Weak right 60%, strong right 85%, independent of any score.
    fn synthetic(n: usize, seed: &mut u64) -> Vec<(bool, bool)> {
        (0..n)
            .map(|_| {
                let strong = uniform(seed) < 0.85;
                let weak = if strong {
                    uniform(seed) < 0.65
                } else {
                    uniform(seed) < 0.3
                };
                (weak, strong)
            })
            .collect()
    }

    fn row(score: f64, weak: bool, strong: bool) -> EvalRow {
        EvalRow {
            score,
            weak_correct: weak,
            strong_correct: strong,
        }
    }

    #[test]
    fn random_scores_give_apgr_near_one_half() {
        let mut seed = 7;
        let labels = synthetic(20_000, &mut seed);
        let rows: Vec<EvalRow> = labels
            .iter()
            .map(|&(w, s)| row(uniform(&mut seed), w, s))
            .collect();
        let report = evaluate(&rows).unwrap();
        assert!((report.apgr - 0.5).abs() < 0.02, "apgr {}", report.apgr);
        assert!((report.cpt50 - 0.5).abs() < 0.05, "cpt50 {}", report.cpt50);
    }

    #[test]
    fn oracle_scores_give_apgr_near_one() {
        let mut seed = 11;
        let rows: Vec<EvalRow> = synthetic(5_000, &mut seed)
            .into_iter()
            .map(|(w, s)| row(f64::from(u8::from(s)) - f64::from(u8::from(w)), w, s))
            .collect();
        let report = evaluate(&rows).unwrap();
        // The oracle passes 100% of the gap as soon as every (weak wrong, strong right) prompt
        // is up, and more before the prompts only the weak model gets right come down.
        assert!(report.apgr > 0.95, "apgr {}", report.apgr);
        assert!(report.cpt80 < 0.3, "cpt80 {}", report.cpt80);
    }

    #[test]
    fn constant_score_is_exactly_the_diagonal() {
        let rows = vec![
            row(1.0, true, true),
            row(1.0, false, true),
            row(1.0, false, false),
        ];
        let report = evaluate(&rows).unwrap();
        for (i, p) in report.pgr.iter().enumerate() {
            assert!((p - i as f64 / 100.0).abs() < 1e-12);
        }
        assert!((report.apgr - 0.5).abs() < 1e-12);
        assert_eq!(report.cpt50, 0.5);
        assert_eq!(report.cpt80, 0.8);
    }

    #[test]
    fn row_order_does_not_matter_with_ties() {
        let a = vec![
            row(0.5, true, true),
            row(0.5, false, true),
            row(0.9, true, false),
            row(0.1, false, true),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(evaluate(&a).unwrap(), evaluate(&b).unwrap());
    }

    #[test]
    fn pgr_endpoints_and_hand_computed_middle() {
        // Weak right on 1 of 4, strong right on 3 of 4: gap 0.5.
        let rows = vec![
            row(0.9, false, true),
            row(0.8, false, true),
            row(0.2, true, false),
            row(0.1, false, true),
        ];
        assert_eq!(pgr_at(&rows, 0.0).unwrap(), 0.0);
        assert!((pgr_at(&rows, 1.0).unwrap() - 1.0).abs() < 1e-12);
        // Top half up: quality = (1 + 1 + 1 + 0) / 4 = 0.75, PGR = (0.75 - 0.25) / 0.5 = 1.
        assert!((pgr_at(&rows, 0.5).unwrap() - 1.0).abs() < 1e-12);
        // Top quarter up: quality 0.5, PGR 0.5.
        assert!((pgr_at(&rows, 0.25).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn errors_at_the_limits() {
        assert!(matches!(evaluate(&[]), Err(EvalError::Empty)));
        assert!(matches!(
            evaluate(&[row(f64::NAN, true, true)]),
            Err(EvalError::BadScore { index: 0, .. })
        ));
        assert!(matches!(
            evaluate(&[row(0.1, true, true), row(0.2, false, false)]),
            Err(EvalError::NoQualityGap { .. })
        ));
        assert!(matches!(
            pgr_at(&[row(0.1, false, true)], 1.5),
            Err(EvalError::BadShare(_))
        ));
    }

    #[test]
    fn calibrate_sends_the_asked_share_up() {
        let scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        for share in [0.0, 0.01, 0.2, 0.5, 0.999, 1.0] {
            let t = calibrate(&scores, share).unwrap();
            let up = scores.iter().filter(|&&s| s >= t).count();
            assert_eq!(
                up,
                (share * 100.0).ceil() as usize,
                "share {share} threshold {t}"
            );
        }
        assert!(calibrate(&[], 0.5).is_err());
        assert!(calibrate(&[0.1], -0.1).is_err());
        assert!(calibrate(&[f64::INFINITY], 0.5).is_err());
    }

    #[test]
    fn score_labelled_ranks_by_the_text_score() {
        let prompts = read_labelled_csv(
            "prompt,weak_correct,strong_correct,source\nhi,True,True,x\n\"Which of these, \
             if any, follows? Explain step by step, comparing Smith and Jones in 1987 and 1992 \
             under the Treaty of Paris.\",False,True,x\n"
                .as_bytes(),
        )
        .unwrap();
        let rows = score_labelled(&prompts, &ComplexityConfig::default());
        assert!(rows[1].score > rows[0].score);
        assert!(!rows[1].weak_correct && rows[1].strong_correct);
        // Sending the top half up sends exactly the hard prompt: all of the gap.
        assert!((pgr_at(&rows, 0.5).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn csv_reads_quoted_multiline_prompts() {
        let data = "prompt,weak_correct,strong_correct,source\n\
                    \"two\nlines, with comma\",True,False,mmlu/x\n\
                    plain,false,true,gsm8k\n";
        let rows = read_labelled_csv(data.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].prompt, "two\nlines, with comma");
        assert!(rows[0].weak_correct && !rows[0].strong_correct);
        assert_eq!(rows[1].source, "gsm8k");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let bad_bool =
            "prompt,weak_correct,strong_correct,source\nok,True,True,a\n\"x\ny\",True,maybe,b\n";
        let err = read_labelled_csv(bad_bool.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("strong_correct") && err.contains("maybe"),
            "{err}"
        );

        let short_row = "prompt,weak_correct,strong_correct,source\nok,True,True,a\nbad,True\n";
        let err = read_labelled_csv(short_row.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");

        let missing = "prompt,weak,strong_correct,source\n";
        let err = read_labelled_csv(missing.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("weak_correct"),
            "{err}"
        );
    }
}
