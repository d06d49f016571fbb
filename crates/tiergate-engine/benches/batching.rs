//! Continuous batching: aggregate and per-stream decode tokens/s with N concurrent streams on
//! one worker (`max_batch` = the largest N), the largest N again with every waiting prompt
//! prefilled whole before the next step (`prefill_per_step` 0), and the same N streams with
//! batching off. For the rows whose prefills never overlap a decode step (one stream, whole
//! prompts first, batching off) also the share of the wall time spent prefilling and the
//! aggregate over the rest: what the batched decode steps alone deliver.
//!
//! `--join-prompt N` adds the stall measurement: three streams decoding, then a prompt of about
//! N tokens joins their worker; the longest gap between two tokens of a running stream while it
//! is prefilled, with `prefill_per_step` and with 0 (whole prompt first), in the same run.
//!
//! `cargo bench -p tiergate-engine --bench batching -- [--model DIR] [--variant int4]
//!  [--threads N] [--streams 1,2,4,8] [--max-new-tokens N] [--share-kv 0|1]
//!  [--prefill-per-step N] [--join-prompt N] [--json]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "batching/join_stall.rs"]
mod join_stall;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use futures::future::join_all;
use tiergate_engine::{
    Engine, EngineConfig, GenerationRequest, ModelVariant, Prompt, SamplingParams,
};

const PROMPTS: [&str; 8] = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue.",
    "Give advice to a new gardener.",
    "Describe a busy market in the morning.",
    "Explain what a computer network is.",
];

struct Args {
    model: PathBuf,
    variant: ModelVariant,
    threads: usize,
    streams: Vec<usize>,
    max_new_tokens: usize,
    share_kv_buffer: bool,
    prefill_per_step: usize,
    join_prompt: Option<usize>,
    json: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/edge"),
        variant: ModelVariant::Int4,
        threads: 2,
        streams: vec![1, 2, 4, 8],
        max_new_tokens: 64,
        share_kv_buffer: EngineConfig::default().share_kv_buffer,
        prefill_per_step: EngineConfig::default().prefill_per_step,
        join_prompt: None,
        json: false,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--model" => args.model = PathBuf::from(iter.next().expect("--model DIR")),
            "--variant" => args.variant = iter.next().expect("--variant").parse().expect("variant"),
            "--threads" => args.threads = iter.next().expect("N").parse().expect("number"),
            "--streams" => {
                args.streams = iter
                    .next()
                    .expect("--streams 1,2,4,8")
                    .split(',')
                    .map(|s| s.parse().expect("number"))
                    .collect()
            }
            "--max-new-tokens" => {
                args.max_new_tokens = iter.next().expect("N").parse().expect("number")
            }
            "--share-kv" => {
                args.share_kv_buffer = iter.next().expect("0|1").parse::<u8>().expect("0|1") != 0
            }
            "--prefill-per-step" => {
                args.prefill_per_step = iter.next().expect("N").parse().expect("number")
            }
            "--join-prompt" => {
                args.join_prompt = Some(iter.next().expect("N").parse().expect("number"))
            }
            "--json" => args.json = true,
            _ => {}
        }
    }
    args
}

struct Row {
    streams: usize,
    batched: bool,
    prefill_per_step: usize,
    tokens: usize,
    seconds: f64,
    per_stream: f64,
    /// Summed prefill time (each prompt's, from its first piece to its first token). When no
    /// prefill overlaps a decode step, this much of the wall time decoded nothing.
    prefill_seconds: f64,
}

impl Row {
    /// Whether the prefills ran while nothing decoded, so `prefill_seconds` is time that decoded
    /// nothing: one stream, whole prompts first, or batching off.
    fn prefills_apart(&self) -> bool {
        self.streams == 1 || self.prefill_per_step == 0 || !self.batched
    }

    /// Tokens from decode steps (each stream's first token comes from its prefill) per second of
    /// wall time not spent prefilling.
    fn decode_aggregate(&self) -> Option<f64> {
        let decoded = self.tokens.saturating_sub(self.streams) as f64;
        self.prefills_apart()
            .then(|| decoded / (self.seconds - self.prefill_seconds).max(f64::EPSILON))
    }

    fn prefill_share(&self) -> Option<f64> {
        self.prefills_apart()
            .then(|| self.prefill_seconds / self.seconds)
    }
}

/// Runs `streams` generations at once on `engine` (loaded with `prefill_per_step`); total
/// tokens, wall seconds, mean per-stream tokens/s.
fn run(
    runtime: &tokio::runtime::Runtime,
    (engine, prefill_per_step): (&Engine, usize),
    streams: usize,
    max: usize,
) -> Row {
    let started = Instant::now();
    let results = runtime.block_on(join_all((0..streams).map(|i| {
        let engine = engine.clone();
        async move {
            let request = GenerationRequest::new(
                Prompt::user(PROMPTS[i % PROMPTS.len()]),
                SamplingParams::greedy(max),
            );
            let begun = Instant::now();
            let generation = engine.generate(request).await.expect("generate");
            (
                generation.tokens.len(),
                begun.elapsed().as_secs_f64(),
                generation.timings.prefill.as_secs_f64(),
            )
        }
    })));
    let seconds = started.elapsed().as_secs_f64();
    let tokens = results.iter().map(|r| r.0).sum();
    let per_stream = results.iter().map(|r| r.0 as f64 / r.1).sum::<f64>() / results.len() as f64;
    Row {
        streams,
        batched: true,
        prefill_per_step,
        tokens,
        seconds,
        per_stream,
        prefill_seconds: results.iter().map(|r| r.2).sum(),
    }
}

fn main() {
    let args = parse_args();
    let largest = args.streams.iter().copied().max().unwrap_or(1);
    let load = |max_batch: usize, prefill_per_step: usize| {
        Engine::load(&EngineConfig {
            model_dir: args.model.clone(),
            variant: args.variant.into(),
            workers: 1,
            intra_op_threads: args.threads,
            queue_capacity: 64,
            max_batch,
            share_kv_buffer: args.share_kv_buffer,
            prefill_per_step,
            ..EngineConfig::default()
        })
        .expect("load the model")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let budget = args.prefill_per_step;
    let batched = load(largest, budget);
    run(&runtime, (&batched, budget), 2, 8); // warm-up
    let mut rows: Vec<Row> = args
        .streams
        .iter()
        .map(|&n| run(&runtime, (&batched, budget), n, args.max_new_tokens))
        .collect();
    drop(batched);
    if budget > 0 && largest > 1 {
        let whole_first = load(largest, 0);
        rows.push(run(
            &runtime,
            (&whole_first, 0),
            largest,
            args.max_new_tokens,
        ));
    }
    // The stall a long prompt causes, with the budget and whole first, in the same run.
    let join_stalls = args.join_prompt.filter(|_| budget > 0).map(|tokens| {
        let batch = largest.max(join_stall::MAX_BATCH);
        let with_budget = join_stall::measure(&runtime, &load(batch, budget), tokens);
        let whole_first = join_stall::measure(&runtime, &load(batch, 0), tokens);
        (with_budget, whole_first)
    });
    let unbatched = load(1, budget);
    let mut row = run(&runtime, (&unbatched, budget), largest, args.max_new_tokens);
    row.batched = false;
    rows.push(row);

    let mut out = std::io::stdout().lock();
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "streams": r.streams,
                "batched": r.batched,
                "prefill_per_step": r.prefill_per_step,
                "tokens": r.tokens,
                "seconds": r.seconds,
                "aggregate_tokens_per_second": r.tokens as f64 / r.seconds,
                "per_stream_tokens_per_second": r.per_stream,
                "prefill_share": r.prefill_share(),
                "decode_aggregate_tokens_per_second": r.decode_aggregate(),
            })
        })
        .collect();
    if args.json {
        let value = serde_json::json!({
            "variant": args.variant,
            "threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
            "rows": json_rows,
            "join_stall": join_stalls.as_ref().map(|pair| join_stall::json(budget, pair)),
        });
        writeln!(out, "{value}").expect("stdout");
    } else {
        for r in &rows {
            let mode = match (r.batched, r.prefill_per_step) {
                (false, _) => " (batching off)".to_string(),
                (true, 0) => " (whole prompts first)".to_string(),
                (true, n) => format!(" (prefill {n} per step)"),
            };
            let apart = match (r.prefill_share(), r.decode_aggregate()) {
                (Some(share), Some(decode)) => format!(
                    ", prefills {:.0}% of the wall time, decode-only aggregate {decode:.1} tok/s",
                    100.0 * share
                ),
                _ => String::new(),
            };
            writeln!(
                out,
                "{} streams{mode}: {} tokens in {:.2} s, aggregate {:.1} tok/s, per stream {:.1} \
                 tok/s{apart}",
                r.streams,
                r.tokens,
                r.seconds,
                r.tokens as f64 / r.seconds,
                r.per_stream,
            )
            .expect("stdout");
        }
        if let Some(pair) = &join_stalls {
            join_stall::write_text(&mut out, budget, pair).expect("stdout");
        }
    }
}
