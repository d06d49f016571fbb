//! Greedy decode speed of the engine through the public API (queue, worker thread, KV cache,
//! confidence, detokenization): decode tokens/s, prefill latency, the share of time spent
//! outside `Session::run`, and the process's resident memory.
//!
//! `cargo bench -p tiergate-engine --bench engine -- [--model DIR] [--variant fp32|int8|int4]
//!  [--threads N] [--spinning 0|1] [--spin-us N] [--arena 0|1] [--share-kv 0|1] [--prompts FILE] [--repeat N] [--max-new-tokens N] [--json]`
//!
//! Prompts are user messages rendered with the model's chat template: from `--prompts FILE` (a
//! JSON array of strings), else the model's `reference.json` cases. With `--json` the output also
//! carries every prompt's token ids and every generation's tokens, so `scripts/bench-engine.py`
//! runs Python onnxruntime and llama.cpp on exactly the same ids for the same number of steps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiergate_engine::memory::MemoryUsage;
use tiergate_engine::{
    Engine, EngineConfig, GenerationRequest, ModelVariant, Prompt, SamplingParams,
};

struct Args {
    model: PathBuf,
    variant: ModelVariant,
    threads: usize,
    spinning: bool,
    spin_duration_us: u32,
    arena: bool,
    share_kv_buffer: bool,
    prompts: Option<PathBuf>,
    repeat: usize,
    max_new_tokens: usize,
    json: bool,
}

fn parse_args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        model: root.join("models/edge"),
        variant: ModelVariant::Fp32,
        threads: 1,
        // The node's defaults, so the columns are the node's (the arena off since a783628).
        spinning: EngineConfig::default().intra_op_spinning,
        spin_duration_us: EngineConfig::default().intra_op_spin_duration_us,
        arena: EngineConfig::default().memory_arena,
        share_kv_buffer: EngineConfig::default().share_kv_buffer,
        prompts: None,
        repeat: 20,
        max_new_tokens: 64,
        json: false,
    };
    let mut iter = std::env::args().skip(1);
    let number = |value: Option<String>, flag: &str| -> usize {
        value
            .unwrap_or_else(|| panic!("{flag} N"))
            .parse()
            .unwrap_or_else(|_| panic!("{flag} takes a number"))
    };
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--model" => args.model = PathBuf::from(iter.next().expect("--model DIR")),
            "--variant" => {
                args.variant = iter
                    .next()
                    .expect("--variant")
                    .parse()
                    .expect("fp32|int8|int4")
            }
            "--threads" => args.threads = number(iter.next(), "--threads"),
            "--spinning" => args.spinning = number(iter.next(), "--spinning") != 0,
            "--spin-us" => {
                args.spin_duration_us =
                    u32::try_from(number(iter.next(), "--spin-us")).expect("--spin-us fits u32")
            }
            "--arena" => args.arena = number(iter.next(), "--arena") != 0,
            "--share-kv" => args.share_kv_buffer = number(iter.next(), "--share-kv") != 0,
            "--prompts" => args.prompts = Some(PathBuf::from(iter.next().expect("--prompts FILE"))),
            "--repeat" => args.repeat = number(iter.next(), "--repeat"),
            "--max-new-tokens" => args.max_new_tokens = number(iter.next(), "--max-new-tokens"),
            "--json" => args.json = true,
            // `cargo bench` passes `--bench`; other harness flags do not apply.
            _ => {}
        }
    }
    args
}

fn load_prompts(args: &Args) -> Vec<String> {
    if let Some(file) = &args.prompts {
        let text = std::fs::read_to_string(file).expect("the prompts file");
        return serde_json::from_str(&text).expect("a JSON array of strings");
    }
    let text = std::fs::read_to_string(args.model.join("reference.json")).expect("reference.json");
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

/// Resident memory of this process (zeros where /proc does not report it).
fn resident_memory() -> MemoryUsage {
    MemoryUsage::current().unwrap_or_default()
}

fn model_file_bytes(model: &Path, variant: ModelVariant) -> u64 {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["kind"] == "model" && f["variant"] == variant.as_str())
        .and_then(|f| f["bytes"].as_u64())
        .unwrap_or(0)
}

fn main() {
    let args = parse_args();
    let config = EngineConfig {
        model_dir: args.model.clone(),
        variant: args.variant.into(),
        workers: 1,
        intra_op_threads: args.threads,
        intra_op_spinning: args.spinning,
        intra_op_spin_duration_us: args.spin_duration_us,
        memory_arena: args.arena,
        share_kv_buffer: args.share_kv_buffer,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&config).expect("load the model");
    let prompts = load_prompts(&args);
    let prompt_ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            engine
                .tokenize(&Prompt::user(p.as_str()))
                .expect("tokenize")
        })
        .collect();
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
    let mut outputs: Vec<Vec<u32>> = Vec::new();
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
                outputs.push(generation.token_ids());
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
    let memory = resident_memory();
    let (rss, rss_peak) = (memory.rss, memory.peak);
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
            "threads": args.threads,
            "intra_op_spinning": args.spinning,
            "intra_op_spin_duration_us": args.spin_duration_us,
            "memory_arena": args.arena,
            "share_kv_buffer": args.share_kv_buffer,
            "generations": generations,
            "decode_tokens": decode_tokens,
            "decode_seconds": decode_time.as_secs_f64(),
            "decode_tokens_per_second": tokens_per_second,
            "prefill_ms_median": prefill,
            "outside_session_run_share": outside_share,
            "rss_bytes": rss,
            "rss_peak_bytes": rss_peak,
            "rss_anonymous_bytes": memory.anonymous,
            "rss_file_bytes": memory.file,
            "model_file_bytes": model_file_bytes(&args.model, args.variant),
            "prompt_ids": prompt_ids,
            "outputs": outputs,
        });
        writeln!(out, "{value}").expect("stdout");
    } else {
        writeln!(
            out,
            "{} ({}, {} threads): {generations} generations, {decode_tokens} decode tokens\n\
             decode {tokens_per_second:.1} tokens/s, prefill median {prefill:.1} ms, \
             outside session.run {:.2}%, RSS {:.0} MB (peak {:.0} MB)",
            model.name,
            model.variant,
            args.threads,
            outside_share * 100.0,
            rss as f64 / 1e6,
            rss_peak as f64 / 1e6,
        )
        .expect("stdout");
    }
}
