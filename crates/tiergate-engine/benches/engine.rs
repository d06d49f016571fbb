//! Greedy decode speed of the engine on a bundled model, through the public API (queue, worker
//! thread, KV cache, confidence, detokenization): decode tokens/s, prefill latency, and the
//! share of time spent outside `Session::run`.
//!
//! `cargo bench -p tiergate-engine --bench engine -- [--model DIR] [--variant fp32|int8]
//!  [--repeat N] [--max-new-tokens N] [--json]`
//! Prompts are the model's `reference.json` cases, so `scripts/bench-engine.py` decodes exactly
//! the same tokens with a plain Python onnxruntime loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tiergate_engine::{
    Engine, EngineConfig, GenerationRequest, ModelVariant, Prompt, SamplingParams,
};

struct Args {
    model: PathBuf,
    variant: ModelVariant,
    repeat: usize,
    max_new_tokens: usize,
    json: bool,
}

fn parse_args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        model: root.join("models/edge"),
        variant: ModelVariant::Fp32,
        repeat: 20,
        max_new_tokens: 64,
        json: false,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--model" => args.model = PathBuf::from(iter.next().expect("--model DIR")),
            "--variant" => {
                args.variant = iter.next().expect("--variant").parse().expect("fp32|int8")
            }
            "--repeat" => args.repeat = iter.next().expect("--repeat N").parse().expect("a number"),
            "--max-new-tokens" => {
                args.max_new_tokens = iter
                    .next()
                    .expect("--max-new-tokens N")
                    .parse()
                    .expect("a number")
            }
            "--json" => args.json = true,
            // `cargo bench` passes `--bench`; other harness flags do not apply.
            _ => {}
        }
    }
    args
}

fn reference_prompts(model: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(model.join("reference.json")).expect("reference.json");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
    reference["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["prompt"].as_str().expect("prompt").to_string())
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args = parse_args();
    let config = EngineConfig {
        model_dir: args.model.clone(),
        variant: args.variant,
        workers: 1,
        intra_op_threads: 1,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&config).expect("load the model");
    let prompts = reference_prompts(&args.model);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut prefill_ms = Vec::new();
    let mut decode_tokens = 0usize;
    let mut decode_time = Duration::ZERO;
    let mut busy_time = Duration::ZERO;
    let mut session_run = Duration::ZERO;
    let mut generations = 0usize;
    // The first pass warms up (allocations, caches) and is not counted.
    for pass in 0..=args.repeat {
        for prompt in &prompts {
            let request = GenerationRequest::new(
                Prompt::user(prompt.as_str()),
                SamplingParams::greedy(args.max_new_tokens),
            );
            let generation = runtime
                .block_on(engine.generate(request))
                .expect("generate");
            if pass == 0 {
                continue;
            }
            let t = generation.timings;
            prefill_ms.push(t.prefill.as_secs_f64() * 1e3);
            decode_tokens += generation.tokens.len().saturating_sub(1);
            decode_time += t.decode;
            busy_time += t.prefill + t.decode;
            session_run += t.session_run;
            generations += 1;
        }
    }
    let tokens_per_second = decode_tokens as f64 / decode_time.as_secs_f64();
    let outside_share = 1.0 - session_run.as_secs_f64() / busy_time.as_secs_f64();
    let prefill = median(&mut prefill_ms);
    let model = engine.model();
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "implementation": "tiergate-engine",
            "model": model.name,
            "variant": model.variant,
            "generations": generations,
            "decode_tokens": decode_tokens,
            "decode_seconds": decode_time.as_secs_f64(),
            "decode_tokens_per_second": tokens_per_second,
            "prefill_ms_median": prefill,
            "outside_session_run_share": outside_share,
        });
        writeln!(out, "{value}").expect("stdout");
    } else {
        writeln!(
            out,
            "{} ({}): {generations} generations, {decode_tokens} decode tokens\n\
             decode {tokens_per_second:.0} tokens/s, prefill median {prefill:.3} ms, \
             outside session.run {:.1}%",
            model.name,
            model.variant,
            outside_share * 100.0
        )
        .expect("stdout");
    }
}
