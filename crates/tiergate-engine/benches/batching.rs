//! Continuous batching: aggregate and per-stream decode tokens/s with N concurrent streams on
//! one worker (`max_batch` = the largest N), and the same N streams with batching off. Also the
//! share of the wall time the worker spent prefilling (one prompt after the other), and the
//! aggregate over the rest: what the batched decode steps alone deliver.
//!
//! `cargo bench -p tiergate-engine --bench batching -- [--model DIR] [--variant int4]
//!  [--threads N] [--streams 1,2,4,8] [--max-new-tokens N] [--share-kv 0|1] [--json]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
            "--json" => args.json = true,
            _ => {}
        }
    }
    args
}

struct Row {
    streams: usize,
    batched: bool,
    tokens: usize,
    seconds: f64,
    per_stream: f64,
    /// Summed prefill time: the worker prefills one prompt at a time, so this much of the wall
    /// time decoded nothing.
    prefill_seconds: f64,
}

impl Row {
    /// Tokens from decode steps (each stream's first token comes from its prefill) per second of
    /// wall time not spent prefilling.
    fn decode_aggregate(&self) -> f64 {
        let decoded = self.tokens.saturating_sub(self.streams) as f64;
        decoded / (self.seconds - self.prefill_seconds).max(f64::EPSILON)
    }
}

/// Runs `streams` generations at once; total tokens, wall seconds, mean per-stream tokens/s.
fn run(runtime: &tokio::runtime::Runtime, engine: &Engine, streams: usize, max: usize) -> Row {
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
        tokens,
        seconds,
        per_stream,
        prefill_seconds: results.iter().map(|r| r.2).sum(),
    }
}

fn main() {
    let args = parse_args();
    let largest = args.streams.iter().copied().max().unwrap_or(1);
    let load = |max_batch: usize| {
        Engine::load(&EngineConfig {
            model_dir: args.model.clone(),
            variant: args.variant.into(),
            workers: 1,
            intra_op_threads: args.threads,
            queue_capacity: 64,
            max_batch,
            share_kv_buffer: args.share_kv_buffer,
            ..EngineConfig::default()
        })
        .expect("load the model")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let batched = load(largest);
    run(&runtime, &batched, 2, 8); // warm-up
    let mut rows: Vec<Row> = args
        .streams
        .iter()
        .map(|&n| run(&runtime, &batched, n, args.max_new_tokens))
        .collect();
    drop(batched);
    let unbatched = load(1);
    let mut row = run(&runtime, &unbatched, largest, args.max_new_tokens);
    row.batched = false;
    rows.push(row);

    let mut out = std::io::stdout().lock();
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "streams": r.streams,
                "batched": r.batched,
                "tokens": r.tokens,
                "seconds": r.seconds,
                "aggregate_tokens_per_second": r.tokens as f64 / r.seconds,
                "per_stream_tokens_per_second": r.per_stream,
                "prefill_seconds": r.prefill_seconds,
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
        });
        writeln!(out, "{value}").expect("stdout");
    } else {
        for r in &rows {
            writeln!(
                out,
                "{} streams{}: {} tokens in {:.2} s, aggregate {:.1} tok/s, per stream {:.1} tok/s, \
                 prefills {:.0}% of the wall time, decode-only aggregate {:.1} tok/s",
                r.streams,
                if r.batched { "" } else { " (batching off)" },
                r.tokens,
                r.seconds,
                r.tokens as f64 / r.seconds,
                r.per_stream,
                100.0 * r.prefill_seconds / r.seconds,
                r.decode_aggregate()
            )
            .expect("stdout");
        }
    }
}
