//! Evaluates the text-feature complexity score on labelled routing data (RouteLLM metrics), and
//! fits the default weights.
//!
//! ```text
//! cargo run -p tiergate-eval --release --example eval_routing -- \
//!     /work/shared/routing-eval/mmlu-dev.csv /work/shared/routing-eval/gsm8k.csv
//! cargo run -p tiergate-eval --release --example eval_routing -- --fit FILES...
//! ```
//!
//! Default mode scores every prompt with `ComplexityConfig::default()` (no prompt NLL: there is
//! no local model for these prompts) and prints APGR, CPT(50%), CPT(80%) per file beside a
//! random score and prompt length alone.
//!
//! `--exclude=SOURCE` drops the rows of one `source` (to see how much one subject carries).
//!
//! `--fit` runs a grouped 5-fold cross-validation of the logistic regression (every MMLU
//! subject, and every fifth of GSM8K, lies wholly in one fold, so no subject is both trained
//! and tested on), prints the out-of-fold figures, then fits on everything and prints the
//! weights to paste into `complexity.rs`.
// A report printer: its output is the point.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs::File;
use std::process::ExitCode;

use tiergate_eval::fit::{self, FitOptions, LogisticModel};
use tiergate_eval::routing::{self as eval, EvalRow, LabelledPrompt, RoutingReport};
use tiergate_router::complexity::{self, ComplexityConfig, TEXT_SIGNAL_NAMES};

const FOLDS: usize = 5;
/// L2 penalty of the fit (cross-validation gave about the same figures from 0.1 to 10).
const L2: f64 = 1.0;
/// Total sample weight of each data set in a fit.
const BALANCE: f64 = 3000.0;

struct Dataset {
    name: String,
    prompts: Vec<LabelledPrompt>,
    signals: Vec<Vec<f64>>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut fit_mode = false;
    let mut paths = Vec::new();
    let mut exclude: Option<String> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--fit" => fit_mode = true,
            // For reporting only: how much of the figure one subject carries.
            x if x.starts_with("--exclude=") => exclude = Some(x["--exclude=".len()..].to_owned()),
            _ => paths.push(arg),
        }
    }
    if paths.is_empty() {
        return Err("usage: eval_routing [--fit] [--exclude=SOURCE] CSV...".into());
    }
    let mut datasets = Vec::new();
    for path in &paths {
        let mut prompts =
            eval::read_labelled_csv(File::open(path).map_err(|e| format!("{path}: {e}"))?)
                .map_err(|e| format!("{path}: {e}"))?;
        if let Some(x) = &exclude {
            prompts.retain(|p| p.source != *x);
        }
        let signals = prompts
            .iter()
            .map(|p| fit::text_signal_row(&p.prompt))
            .collect();
        let name = std::path::Path::new(path)
            .file_stem()
            .map_or(path.clone(), |s| s.to_string_lossy().into_owned());
        datasets.push(Dataset {
            name,
            prompts,
            signals,
        });
    }
    if fit_mode {
        cross_validate(&datasets)
    } else {
        evaluate_default(&datasets)
    }
}

fn print_header() {
    println!(
        "{:<12} {:<28} {:>6} {:>7} {:>7} {:>7}",
        "data", "router", "rows", "APGR", "CPT50", "CPT80"
    );
}

fn print_report(data: &str, router: &str, r: &RoutingReport) {
    println!(
        "{:<12} {:<28} {:>6} {:>7.4} {:>6.0}% {:>6.0}%",
        data,
        router,
        r.rows,
        r.apgr,
        r.cpt50 * 100.0,
        r.cpt80 * 100.0
    );
}

/// SplitMix64 in [0, 1): a reproducible "random router".
fn random_scores(n: usize, mut seed: u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        })
        .collect()
}

fn evaluate_default(datasets: &[Dataset]) -> Result<(), Box<dyn std::error::Error>> {
    let config = ComplexityConfig::default();
    print_header();
    let mut all_scores = Vec::new();
    for d in datasets {
        let scored = eval::score_labelled(&d.prompts, &config);
        let scores: Vec<f64> = scored.iter().map(|r| r.score).collect();
        print_report(
            &d.name,
            "complexity (default)",
            &eval::evaluate(&eval::rows_from_scores(&d.prompts, &scores))?,
        );
        all_scores.extend_from_slice(&scores);
        let random = random_scores(d.prompts.len(), 42);
        print_report(
            &d.name,
            "random (seed 42)",
            &eval::evaluate(&eval::rows_from_scores(&d.prompts, &random))?,
        );
        let length: Vec<f64> = d
            .prompts
            .iter()
            .map(|p| p.prompt.chars().count() as f64)
            .collect();
        print_report(
            &d.name,
            "prompt length",
            &eval::evaluate(&eval::rows_from_scores(&d.prompts, &length))?,
        );
    }
    println!("\nthresholds that send a share of all these prompts up (eval::calibrate):");
    for share in [0.99, 0.8, 0.5, 0.2, 0.01] {
        println!(
            "  {:>3.0}% up: score >= {:.4}",
            share * 100.0,
            eval::calibrate(&all_scores, share)?
        );
    }
    Ok(())
}

/// Fold of a prompt: MMLU subjects (the `source` column) and GSM8K fifths are kept whole.
fn fold_of(prompt: &LabelledPrompt, index: usize, groups: &BTreeMap<String, usize>) -> usize {
    let key = group_key(prompt, index);
    groups.get(&key).copied().unwrap_or(0) % FOLDS
}

fn group_key(prompt: &LabelledPrompt, index: usize) -> String {
    if prompt.source.starts_with("mmlu/") {
        prompt.source.clone()
    } else {
        format!("{}#{}", prompt.source, index % FOLDS)
    }
}

/// Training target: the strong-minus-weak gain mapped onto [0, 1] (0, 0.5, 1), which is what
/// PGR rewards: a prompt only the strong model gets right should rank high, one only the weak
/// model gets right should rank low, and the rest in between.
fn target(p: &LabelledPrompt) -> f64 {
    (f64::from(u8::from(p.strong_correct)) - f64::from(u8::from(p.weak_correct)) + 1.0) / 2.0
}

fn predict(model: &LogisticModel, x: &[f64]) -> f64 {
    let z = model.bias + model.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
    complexity::sigmoid(z)
}

/// Fits on the rows `keep` selects; every data set weighs the same in total, so the larger
/// one does not decide alone what "complex" means.
fn fit_where(
    datasets: &[Dataset],
    keep: impl Fn(&LabelledPrompt, usize) -> bool,
) -> Result<LogisticModel, fit::FitError> {
    let (mut xs, mut ys, mut ws) = (Vec::new(), Vec::new(), Vec::new());
    for d in datasets {
        let chosen: Vec<usize> = (0..d.prompts.len())
            .filter(|&i| keep(&d.prompts[i], i))
            .collect();
        let weight = BALANCE / chosen.len().max(1) as f64;
        for i in chosen {
            xs.push(d.signals[i].clone());
            ys.push(target(&d.prompts[i]));
            ws.push(weight);
        }
    }
    fit::fit_logistic(
        &xs,
        &ys,
        Some(&ws),
        &FitOptions {
            l2: L2,
            max_iterations: 50,
        },
    )
}

/// Adds a fold's PGR curve weighted by rows * quality gap.
fn add_weighted_curve(sums: &mut (Vec<f64>, f64), r: &RoutingReport) {
    let weight = r.rows as f64 * (r.quality_strong - r.quality_weak);
    for (sum, p) in sums.0.iter_mut().zip(&r.pgr) {
        *sum += weight * p;
    }
    sums.1 += weight;
}

/// The report of a gap-weighted sum of fold curves (qualities are per fold, so left out).
fn weighted_report(d: &Dataset, (curve, total): &(Vec<f64>, f64)) -> RoutingReport {
    let pgr: Vec<f64> = curve.iter().map(|p| p / total).collect();
    let cpt = |x: f64| {
        pgr.iter()
            .position(|&p| p >= x - 1e-9)
            .map_or(1.0, |i| i as f64 / 100.0)
    };
    RoutingReport {
        rows: d.prompts.len(),
        quality_weak: f64::NAN,
        quality_strong: f64::NAN,
        apgr: pgr.iter().sum::<f64>() / pgr.len() as f64,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        pgr,
    }
}

fn cross_validate(datasets: &[Dataset]) -> Result<(), Box<dyn std::error::Error>> {
    // Groups are numbered in sorted order and dealt round-robin onto folds.
    let mut groups = BTreeMap::new();
    for d in datasets {
        for (i, p) in d.prompts.iter().enumerate() {
            groups.entry(group_key(p, i)).or_insert(0);
        }
    }
    for (n, v) in groups.values_mut().enumerate() {
        *v = n;
    }
    let mut out_of_fold: Vec<Vec<f64>> = datasets
        .iter()
        .map(|d| vec![0.0; d.prompts.len()])
        .collect();
    // Per data set: the PGR curves of the held-out folds, each routed by its own model,
    // summed with weight rows * quality gap (the gain there is to recover in that fold), so a
    // fold where the two models are nearly equal does not swing the figure.
    // The same for prompt length alone, as the baseline to beat.
    let mut per_fold = vec![(vec![0.0f64; 101], 0.0f64); datasets.len()];
    let mut per_fold_length = per_fold.clone();
    for fold in 0..FOLDS {
        let model = fit_where(datasets, |p, i| fold_of(p, i, &groups) != fold)?;
        for (((d, oof), sums), length_sums) in datasets
            .iter()
            .zip(&mut out_of_fold)
            .zip(&mut per_fold)
            .zip(&mut per_fold_length)
        {
            let (mut held_out, mut held_out_length) = (Vec::new(), Vec::new());
            for (i, p) in d.prompts.iter().enumerate() {
                if fold_of(p, i, &groups) == fold {
                    oof[i] = predict(&model, &d.signals[i]);
                    let row = |score| EvalRow {
                        score,
                        weak_correct: p.weak_correct,
                        strong_correct: p.strong_correct,
                    };
                    held_out.push(row(oof[i]));
                    held_out_length.push(row(p.prompt.chars().count() as f64));
                }
            }
            add_weighted_curve(sums, &eval::evaluate(&held_out)?);
            add_weighted_curve(length_sums, &eval::evaluate(&held_out_length)?);
        }
    }
    println!("held-out folds, each routed by the model fitted on the other folds (gap-weighted):");
    print_header();
    for ((d, model), length) in datasets.iter().zip(&per_fold).zip(&per_fold_length) {
        print_report(
            &d.name,
            "logistic (per-fold routing)",
            &weighted_report(d, model),
        );
        print_report(
            &d.name,
            "length (per-fold routing)",
            &weighted_report(d, length),
        );
    }
    println!();
    println!("the same out-of-fold scores pooled into one ranking per data set, L2 = {L2}:");
    print_header();
    for (d, oof) in datasets.iter().zip(&out_of_fold) {
        print_report(
            &d.name,
            "logistic (out-of-fold)",
            &eval::evaluate(&eval::rows_from_scores(&d.prompts, oof))?,
        );
        for (s, name) in TEXT_SIGNAL_NAMES.iter().enumerate() {
            let single: Vec<f64> = d.signals.iter().map(|x| x[s]).collect();
            print_report(
                &d.name,
                &format!("  signal {name}"),
                &eval::evaluate(&eval::rows_from_scores(&d.prompts, &single))?,
            );
        }
    }
    let model = fit_where(datasets, |_, _| true)?;
    println!("\nfitted on all rows:");
    println!("const DEFAULT_BIAS: f64 = {:.4};", model.bias);
    println!("const DEFAULT_TEXT_WEIGHTS: [f64; TEXT_SIGNAL_COUNT] = [");
    for (name, w) in TEXT_SIGNAL_NAMES.iter().zip(&model.weights) {
        println!("    {w:.4}, // {name}");
    }
    println!("];");
    Ok(())
}
