//! `tiergate eval routing --data CSV`: how well the complexity signal separates the prompts
//! only a strong model answers (RouteLLM's APGR, CPT(50%), CPT(80%)), beside a random router.

use std::io::Write;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tiergate::config::Config;
use tiergate_eval::routing::{self as eval, EvalRow, RoutingReport};
use tiergate_router::complexity;
use tiergate_router::features::PromptFeatures;

use crate::cli::EvalRoutingArgs;

/// The random router's seed: fixed, so the baseline is the same on every run.
const RANDOM_SEED: u64 = 7;

pub fn routing(args: &EvalRoutingArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let mut reports = Vec::new();
    for path in &args.data {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let prompts =
            eval::read_labelled_csv(file).with_context(|| format!("reading {}", path.display()))?;
        let rows: Vec<EvalRow> = prompts
            .iter()
            .map(|p| EvalRow {
                score: complexity::score(
                    &PromptFeatures::extract(&p.prompt),
                    &config.router.complexity,
                )
                .score,
                weak_correct: p.weak_correct,
                strong_correct: p.strong_correct,
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(RANDOM_SEED);
        let random: Vec<EvalRow> = rows
            .iter()
            .map(|r| EvalRow {
                score: rng.random::<f64>(),
                ..*r
            })
            .collect();
        let name = path.display().to_string();
        reports.push((name, eval::evaluate(&rows)?, eval::evaluate(&random)?));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let value: Vec<_> = reports
            .iter()
            .map(|(name, router, random)| {
                json!({"data": name, "router": summary(router), "random": summary(random)})
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<44} {:>6} {:>8} {:>8} {:>6} {:>7} {:>7} {:>11}",
        "data", "rows", "weak", "strong", "APGR", "CPT50", "CPT80", "random APGR"
    )?;
    for (name, router, random) in &reports {
        writeln!(
            out,
            "{:<44} {:>6} {:>8.3} {:>8.3} {:>6.3} {:>6.0}% {:>6.0}% {:>11.3}",
            name,
            router.rows,
            router.quality_weak,
            router.quality_strong,
            router.apgr,
            router.cpt50 * 100.0,
            router.cpt80 * 100.0,
            random.apgr
        )?;
    }
    Ok(())
}

fn summary(report: &RoutingReport) -> serde_json::Value {
    json!({
        "rows": report.rows,
        "quality_weak": report.quality_weak,
        "quality_strong": report.quality_strong,
        "apgr": report.apgr,
        "cpt50": report.cpt50,
        "cpt80": report.cpt80,
    })
}
