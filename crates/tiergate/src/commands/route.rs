//! `tiergate route explain PROMPT` and `tiergate route calibrate --data CSV --strong-share S`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tiergate::config::Config;
use tiergate::http::parse_constraint;
use tiergate::node::{Forwarding, Input, Message, NodeApi, NodeRequest, Role, Sampling};
use tiergate::serve::build_node;
use tiergate_eval::routing as eval;
use tiergate_router::complexity;
use tiergate_router::features::PromptFeatures;

use crate::cli::{RouteCalibrateArgs, RouteExplainArgs};

/// The same decision the Explain RPC returns, from the same code, on a node built from the
/// config but not listening. Upstreams count as reachable until a call says otherwise.
pub async fn explain(args: RouteExplainArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let constraint = parse_constraint(&args.constraint)?;
    let (node, _metrics) = build_node(&config).await?;
    let request = NodeRequest {
        input: Input::Chat(vec![Message {
            role: Role::User,
            content: args.prompt.clone(),
        }]),
        sampling: node.limits().check_sampling(Sampling::default())?,
        constraint,
        forwarding: Forwarding::default(),
        deadline: node.limits().deadline(Instant::now(), None),
        arrived: Instant::now(),
        request_id: String::new(),
        tenant: None,
        trace: tiergate_upstream::TraceContext::fresh(),
    };
    let explanation = node.explain(request).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&explanation.decision)?
        )?;
    } else {
        let r = &explanation.routing;
        writeln!(out, "tier:       {}", r.tier)?;
        writeln!(out, "reason:     {}", r.reason)?;
        writeln!(out, "complexity: {:.3}", r.complexity)?;
        writeln!(out, "degraded:   {}", r.degraded)?;
        writeln!(out, "plan:       {}", explanation.decision["plan"])?;
    }
    Ok(())
}

/// Scores every prompt of the CSV with the configured complexity weights and prints the
/// threshold that sends `strong_share` of them up.
pub fn calibrate(args: &RouteCalibrateArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let file = std::fs::File::open(&args.data)
        .with_context(|| format!("opening {}", args.data.display()))?;
    let prompts = eval::read_labelled_csv(file)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let scores: Vec<f64> = prompts
        .iter()
        .map(|p| {
            complexity::score(
                &PromptFeatures::extract(&p.prompt),
                &config.router.complexity,
            )
            .score
        })
        .collect();
    let threshold = eval::calibrate(&scores, args.strong_share)?;
    let sent_up = scores.iter().filter(|&&s| s >= threshold).count();
    let actual_share = sent_up as f64 / scores.len() as f64;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "data": args.data,
            "rows": scores.len(),
            "strong_share": args.strong_share,
            "threshold": threshold,
            "actual_share": actual_share,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "threshold {threshold:.4} sends {sent_up} of {} prompts ({:.1}%) up",
            scores.len(),
            actual_share * 100.0
        )?;
        writeln!(out, "[router]\nlocal_max_complexity = {threshold:.4}")?;
    }
    Ok(())
}
