//! `tiergate eval confidence`: calibrates the early-exit gate on a real edge model. Runs the
//! model greedily on labelled prompts (or reads answers recorded before), then reports how well
//! each confidence signal separates right answers from wrong ones (AUROC), the gate that keeps
//! the most at the edge within the error budget, and its curve.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::json;
use tiergate::calibration::{
    self, CalibrationPrompt, CalibrationResult, GateOutcome, PromptKind, TokenSignal,
};
use tiergate_engine::{GenerationRequest, Prompt, SamplingParams};
use tiergate_router::ConfidenceConfig;

use crate::cli::EvalConfidenceArgs;

pub async fn run(args: EvalConfidenceArgs) -> anyhow::Result<()> {
    // Answers recorded before do not say where they were answered.
    let mut answered_on = None;
    let results = match (&args.results, &args.data, &args.model) {
        (Some(path), None, None) => read_jsonl::<CalibrationResult>(path)?,
        (None, Some(data), Some(_)) => {
            answered_on = Some(json!({
                "variant": args.variant.as_str(),
                // int4-fast's answers (and so its gate) depend on it: `router.confidence_by_cpu`.
                "cpu_kind": tiergate_engine::Int8Kernels::detect().as_str(),
            }));
            let prompts = read_jsonl::<CalibrationPrompt>(data)?;
            let results = answer_all(&args, &prompts).await?;
            if let Some(out) = &args.out {
                write_jsonl(out, &results)?;
            }
            results
        }
        _ => anyhow::bail!(
            "give either --results FILE (answers recorded before) or --data FILE with --model DIR"
        ),
    };
    let mut report = report(&results, &args);
    if let Some(answered_on) = answered_on {
        report["answered_on"] = answered_on;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_human(&mut out, &report)?;
    }
    Ok(())
}

async fn answer_all(
    args: &EvalConfidenceArgs,
    prompts: &[CalibrationPrompt],
) -> anyhow::Result<Vec<CalibrationResult>> {
    let model_dir = args
        .model
        .clone()
        .context("--model is required with --data")?;
    let engine = super::generate::load_engine(
        model_dir,
        args.variant.into(),
        args.ort_library.clone(),
        args.threads,
    )
    .await?;
    let mut results = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let prompt = Prompt::user(p.prompt.as_str());
        // Answered as a node answers (unscored unless its gate bounds the prompt NLL, which
        // then runs the lm_head on every prompt position); the NLL comes from its own prefill.
        let request =
            GenerationRequest::new(prompt.clone(), SamplingParams::greedy(args.max_tokens));
        let generation = engine
            .generate(request)
            .await
            .with_context(|| format!("answering {}", p.id))?;
        let score = engine
            .score_prompt(&prompt)
            .await
            .with_context(|| format!("scoring {}", p.id))?;
        let correct = match p.kind {
            PromptKind::Attempt => Some(calibration::grade(&generation.text, &p.answers)),
            PromptKind::MustNotAttempt => None,
        };
        tracing::info!(id = %p.id, n = i + 1, of = prompts.len(), ?correct, "answered");
        results.push(CalibrationResult {
            id: p.id.clone(),
            category: p.category.clone(),
            kind: p.kind,
            answer: generation.text.clone(),
            correct,
            prompt_nll: score.mean_nll,
            tokens: generation
                .tokens
                .iter()
                .map(|t| TokenSignal {
                    top1: t.top1_prob,
                    entropy: t.entropy,
                })
                .collect(),
        });
    }
    Ok(results)
}

fn report(results: &[CalibrationResult], args: &EvalConfidenceArgs) -> serde_json::Value {
    let window = args.window;
    let graded: Vec<bool> = results.iter().filter_map(|r| r.correct).collect();
    let right = graded.iter().filter(|&&c| c).count();
    let chosen = calibration::choose_gate(results, window, args.max_error, args.max_must_not);
    // The curve: the chosen gate with its mean threshold swept, and the same without the
    // prompt-NLL bound, so the NLL's contribution shows.
    let curve = |base: &ConfidenceConfig| -> Vec<GateOutcome> {
        (0..=19)
            .map(|i| {
                let gate = ConfidenceConfig {
                    min_mean_top1: 0.5 + 0.025 * i as f32,
                    ..*base
                };
                calibration::evaluate_gate(&gate, results)
            })
            .collect()
    };
    let (curve_chosen, curve_without_nll) = match &chosen {
        Some(c) => (
            curve(&c.gate),
            curve(&ConfidenceConfig {
                max_prompt_nll: None,
                ..c.gate
            }),
        ),
        None => (Vec::new(), Vec::new()),
    };
    json!({
        "prompts": results.len(),
        "graded": graded.len(),
        "right": right,
        "accuracy": if graded.is_empty() { 0.0 } else { right as f64 / graded.len() as f64 },
        "window": window,
        "auroc_right_vs_wrong": calibration::signal_aurocs(results, window),
        "budget": {"max_error_rate_kept": args.max_error, "max_must_not_kept_share": args.max_must_not},
        "chosen": chosen,
        "curve_chosen": curve_chosen,
        "curve_without_prompt_nll": curve_without_nll,
        "by_category": by_category(results),
    })
}

fn by_category(results: &[CalibrationResult]) -> serde_json::Value {
    let mut categories: Vec<&str> = results.iter().map(|r| r.category.as_str()).collect();
    categories.dedup();
    let rows: Vec<serde_json::Value> = categories
        .iter()
        .map(|&c| {
            let of: Vec<&CalibrationResult> = results.iter().filter(|r| r.category == c).collect();
            let right = of.iter().filter(|r| r.correct == Some(true)).count();
            json!({"category": c, "prompts": of.len(), "right": right})
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn write_human(out: &mut impl Write, report: &serde_json::Value) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} prompts, {} graded, {} right (accuracy {:.3}); window {} tokens",
        report["prompts"],
        report["graded"],
        report["right"],
        report["accuracy"].as_f64().unwrap_or(0.0),
        report["window"]
    )?;
    if let Some(on) = report.get("answered_on") {
        writeln!(
            out,
            "answered by the {} graph on a {} CPU",
            on["variant"].as_str().unwrap_or("?"),
            on["cpu_kind"].as_str().unwrap_or("?")
        )?;
    }
    writeln!(
        out,
        "AUROC right vs wrong: {}",
        report["auroc_right_vs_wrong"]
    )?;
    match report["chosen"].as_object() {
        Some(chosen) => {
            writeln!(out, "chosen gate: {}", chosen["gate"])?;
            writeln!(
                out,
                "  keeps {:.3} of answerable prompts at the edge, {:.3} of those wrong; keeps {:.3} of must-not-attempt prompts",
                chosen["kept_share"].as_f64().unwrap_or(0.0),
                chosen["error_rate_kept"].as_f64().unwrap_or(0.0),
                chosen["must_not_kept_share"].as_f64().unwrap_or(0.0)
            )?;
        }
        None => writeln!(out, "no gate meets the budget {}", report["budget"])?,
    }
    Ok(())
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a valid row", path.display(), n + 1))?,
        );
    }
    Ok(rows)
}

fn write_jsonl(path: &Path, rows: &[CalibrationResult]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
