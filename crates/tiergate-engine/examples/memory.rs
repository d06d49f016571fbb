//! Where the engine's resident memory goes, stage by stage (Linux: /proc/self/smaps_rollup and
//! /proc/self/smaps): process start, each step of `Engine::load`, the first prefill, one
//! generation, a run of requests; then the largest mappings.
//!
//! `cargo run --release -p tiergate-engine --example memory -- [--model DIR] [--variant int4]
//!  [--workers N] [--threads N] [--requests N] [--max-new-tokens N] [--temperature T]
//!  [--long-prompt WORDS] [--prefill-chunk N] [--trim 0|1] [--idle-trim 0|1] [--json]`
//!
//! `--trim 0` turns off `EngineConfig::trim_heap_after_load`, `--idle-trim 0`
//! `trim_heap_when_idle`, `--prefill-chunk 0` prefills every
//! prompt in one run (the two before/after comparisons of docs/benchmarks.md). The model defaults to
//! `TIERGATE_REAL_MODEL`, else `models/edge`. `--temperature` above 0 samples the requests (a
//! seed per request) so a long run reads many different embedding rows, as a node's does. docs/benchmarks.md ("Memory (RSS)") has the numbers.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use tiergate_engine::memory::{MemoryUsage, resident_by_mapping};
use tiergate_engine::{
    Engine, EngineConfig, GenerationRequest, Manifest, ModelVariant, Prompt, SamplingParams,
};

struct Args {
    model: PathBuf,
    variant: ModelVariant,
    workers: usize,
    threads: usize,
    requests: usize,
    max_new_tokens: usize,
    trim: bool,
    idle_trim: bool,
    temperature: f32,
    long_prompt: usize,
    prefill_chunk: usize,
    json: bool,
}

fn parse_args() -> Args {
    let model = std::env::var_os("TIERGATE_REAL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/edge"));
    let mut args = Args {
        model,
        variant: ModelVariant::Int4,
        workers: 1,
        threads: 1,
        requests: 8,
        max_new_tokens: 64,
        trim: true,
        idle_trim: true,
        temperature: 0.0,
        long_prompt: 0,
        prefill_chunk: EngineConfig::default().prefill_chunk,
        json: false,
    };
    let mut iter = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> usize {
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} takes a number"))
    };
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--model" => args.model = PathBuf::from(iter.next().expect("--model DIR")),
            "--variant" => {
                args.variant = iter
                    .next()
                    .expect("--variant")
                    .parse()
                    .expect("fp32|int8|int4|int4-fast")
            }
            "--workers" => args.workers = number("--workers", iter.next()),
            "--threads" => args.threads = number("--threads", iter.next()),
            "--requests" => args.requests = number("--requests", iter.next()),
            "--max-new-tokens" => args.max_new_tokens = number("--max-new-tokens", iter.next()),
            "--trim" => args.trim = number("--trim", iter.next()) != 0,
            "--idle-trim" => args.idle_trim = number("--idle-trim", iter.next()) != 0,
            "--temperature" => {
                args.temperature = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--temperature takes a number")
            }
            "--long-prompt" => args.long_prompt = number("--long-prompt", iter.next()),
            "--prefill-chunk" => args.prefill_chunk = number("--prefill-chunk", iter.next()),
            "--json" => args.json = true,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
    "How do I reverse a list in Python?",
    "Summarise the plot of Romeo and Juliet.",
    "What should I pack for a week of hiking in the mountains?",
    "Translate 'good morning, how are you?' into Spanish and German.",
];

fn main() {
    let mut stages: Vec<(String, MemoryUsage)> = Vec::new();
    let record = |stages: &mut Vec<(String, MemoryUsage)>, stage: &str| {
        let usage = MemoryUsage::current().expect("/proc/self (Linux only)");
        stages.push((stage.to_string(), usage));
    };
    record(&mut stages, "process start");
    let args = parse_args();
    let manifest = Manifest::load(&args.model).expect("manifest");
    let file_bytes: u64 = manifest
        .files
        .iter()
        .filter(|f| f.variant == Some(args.variant))
        .map(|f| f.bytes)
        .sum();
    let config = EngineConfig {
        model_dir: args.model.clone(),
        variant: args.variant.into(),
        workers: args.workers,
        intra_op_threads: args.threads,
        trim_heap_after_load: args.trim,
        trim_heap_when_idle: args.idle_trim,
        prefill_chunk: args.prefill_chunk,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&config).expect("load the model");
    for stage in engine.load_memory() {
        stages.push((format!("load: {}", stage.stage), stage.memory));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(engine.score_prompt(&Prompt::user(PROMPTS[0])))
        .expect("prefill");
    record(&mut stages, "first prefill");
    let generate = |prompt: &str, tokens: usize, seed: usize| {
        let mut sampling = SamplingParams::greedy(tokens);
        if args.temperature > 0.0 {
            sampling.temperature = args.temperature;
            sampling.seed = Some(seed as u64);
        }
        let request = GenerationRequest::new(Prompt::user(prompt), sampling);
        runtime
            .block_on(engine.generate(request))
            .expect("generate")
    };
    let first = generate(PROMPTS[0], args.max_new_tokens, 0);
    record(
        &mut stages,
        &format!("one generation ({} tokens)", first.tokens.len()),
    );
    let faults_before = minor_faults();
    let mut tokens = 0;
    for index in 0..args.requests {
        tokens += generate(
            PROMPTS[index % PROMPTS.len()],
            args.max_new_tokens,
            index + 1,
        )
        .tokens
        .len();
    }
    record(
        &mut stages,
        &format!("{} more requests ({tokens} tokens)", args.requests),
    );
    // Page faults per generated token: what a malloc setting or a dropped page costs each step.
    let faults_per_token = (minor_faults() - faults_before) as f64 / tokens.max(1) as f64;
    // What the node holds at rest: the worker trims (when on) once it finds its queue empty.
    std::thread::sleep(std::time::Duration::from_millis(200));
    record(&mut stages, "at rest (200 ms idle)");
    if args.long_prompt > 0 {
        // A long prompt: prefill logits are one vocabulary-wide row per prompt position.
        let text = PROMPTS.join(" ").repeat(args.long_prompt / 60 + 1);
        let words: Vec<&str> = text.split_whitespace().take(args.long_prompt).collect();
        let long = generate(&words.join(" "), 8, 0);
        let nll = long.prompt_score.unwrap_or(f64::NAN);
        record(
            &mut stages,
            &format!(
                "long prompt ({} tokens, NLL {nll:.5}, {:?})",
                long.prompt_tokens,
                long.token_ids()
            ),
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        record(&mut stages, "at rest after it (200 ms idle)");
    }
    let mappings = resident_by_mapping();

    if args.json {
        let value = serde_json::json!({
            "variant": args.variant,
            "workers": args.workers,
            "trim_heap_after_load": args.trim,
            "trim_heap_when_idle": args.idle_trim,
            "prefill_chunk": args.prefill_chunk,
            "model_file_bytes": file_bytes,
            "minor_faults_per_token": faults_per_token,
            "stages": stages.iter().map(|(stage, m)| serde_json::json!({
                "stage": stage, "rss_bytes": m.rss, "anonymous_bytes": m.anonymous,
                "file_bytes": m.file, "peak_bytes": m.peak,
            })).collect::<Vec<_>>(),
            "mappings": mappings.iter().take(12).map(|m| serde_json::json!({
                "name": m.name, "rss_bytes": m.rss, "anonymous_bytes": m.anonymous,
                "mappings": m.mappings,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return;
    }
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "{} {} ({:.1} MB of model files), {} worker(s), {} thread(s), heap trim after load {}, \
         when idle {}, prefill chunk {}",
        manifest.name,
        args.variant,
        mb(file_bytes),
        args.workers,
        args.threads,
        if args.trim { "on" } else { "off" },
        if args.idle_trim { "on" } else { "off" },
        args.prefill_chunk
    );
    println!(
        "{:<42}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "stage", "RSS MB", "anon MB", "file MB", "peak MB", "x files"
    );
    for (stage, m) in &stages {
        println!(
            "{stage:<42}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>8.2}x",
            mb(m.rss),
            mb(m.anonymous),
            mb(m.file),
            mb(m.peak),
            m.rss as f64 / file_bytes as f64
        );
    }
    println!("minor page faults per generated token over the requests: {faults_per_token:.1}");
    println!(
        "\nlargest mappings at the end\n{:<70}{:>9}{:>9}",
        "mapping", "RSS MB", "anon MB"
    );
    for m in mappings.iter().take(10) {
        println!("{:<70}{:>9.1}{:>9.1}", m.name, mb(m.rss), mb(m.anonymous));
    }
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    rest.split_whitespace()
        .nth(7)
        .and_then(|field| field.parse().ok())
        .expect("minflt")
}
