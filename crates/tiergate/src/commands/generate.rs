//! `tiergate generate --model DIR PROMPT`: the local engine alone, with the answer, per-token
//! confidence, the prompt score and timings.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tiergate_engine::{
    Engine, EngineConfig, Generation, GenerationRequest, Prompt, SamplingParams,
};

use crate::cli::GenerateArgs;

pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let engine = load_engine(
        args.model.clone(),
        args.variant,
        args.ort_library.clone(),
        args.threads,
    )
    .await?;
    let prompt = if args.raw {
        Prompt::Text(args.prompt.clone())
    } else {
        Prompt::user(args.prompt.as_str())
    };
    let request = GenerationRequest {
        prompt,
        sampling: SamplingParams {
            max_new_tokens: args.max_tokens,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            stop: args.stop.clone(),
            logprobs: None,
        },
        deadline: args
            .deadline_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
        score_prompt: args.score_prompt,
    };
    let generation = engine.generate(request).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = to_json(&engine, &generation);
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write_human(&mut out, &engine, &generation)?;
    }
    Ok(())
}

/// One worker on the model, loaded off the async runtime (hashing and session creation block):
/// how the single-model commands (`generate`, `eval confidence`) run the engine.
pub(crate) async fn load_engine(
    model_dir: std::path::PathBuf,
    variant: tiergate_engine::VariantChoice,
    ort_library: Option<std::path::PathBuf>,
    intra_op_threads: usize,
) -> anyhow::Result<Engine> {
    let config = EngineConfig {
        model_dir,
        variant,
        ort_library,
        workers: 1,
        intra_op_threads,
        // No router here, so no early-exit gate whose calibration int4-fast could miss on this
        // CPU: `auto` runs the fastest graph, as the node does where int4-fast is gated.
        int4_fast_with_avx512: true,
        ..EngineConfig::default()
    };
    Ok(tokio::task::spawn_blocking(move || Engine::load(&config))
        .await
        .context("loading the model")??)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn to_json(engine: &Engine, generation: &Generation) -> serde_json::Value {
    let model = engine.model();
    let timings = &generation.timings;
    json!({
        "model": {
            "name": model.name,
            "version": model.version,
            "architecture": model.architecture,
            "variant": model.variant,
            "context_length": model.context_length,
        },
        "text": generation.text,
        "finish_reason": generation.finish_reason,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.tokens.len(),
        "prompt_score": generation.prompt_score,
        "tokens": generation.tokens,
        "timings": {
            "queue_ms": millis(timings.queue),
            "prefill_ms": millis(timings.prefill),
            "decode_ms": millis(timings.decode),
            "session_run_ms": millis(timings.session_run),
            "decode_tokens_per_second": generation.decode_tokens_per_second(),
        },
    })
}

fn write_human(
    out: &mut impl Write,
    engine: &Engine,
    generation: &Generation,
) -> std::io::Result<()> {
    let model = engine.model();
    let timings = &generation.timings;
    writeln!(out, "{}", generation.text)?;
    writeln!(out)?;
    writeln!(
        out,
        "model {} {} ({}, {})",
        model.name,
        model.version,
        model.architecture.as_str(),
        model.variant
    )?;
    let score = generation
        .prompt_score
        .map_or_else(|| "n/a".to_string(), |s| format!("{s:.3} nats/token"));
    writeln!(
        out,
        "finish {}  prompt {} tokens  completion {} tokens  prompt score {score}",
        generation.finish_reason.as_str(),
        generation.prompt_tokens,
        generation.tokens.len(),
    )?;
    let speed = generation
        .decode_tokens_per_second()
        .map_or_else(|| "n/a".to_string(), |t| format!("{t:.0} tokens/s"));
    writeln!(
        out,
        "prefill {:.2} ms  decode {:.2} ms ({speed})  inside session.run {:.2} ms",
        millis(timings.prefill),
        millis(timings.decode),
        millis(timings.session_run),
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>6}  {:<16} {:>8} {:>8}",
        "id", "text", "p(top1)", "entropy"
    )?;
    for token in &generation.tokens {
        writeln!(
            out,
            "{:>6}  {:<16} {:>8.4} {:>8.4}",
            token.id,
            format!("{:?}", token.text),
            token.top1_prob,
            token.entropy
        )?;
    }
    Ok(())
}
