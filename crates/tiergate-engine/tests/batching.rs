//! Continuous batching through the public API: concurrent greedy generations decoded together
//! (one session run per step, left-padded KV cache) give exactly the tokens each gets alone,
//! and the same log-probabilities (to float rounding: a padded batch runs other kernels).
//!
//! Runs on the bundled edge model always, and on the real SmolLM2 model (int4 and fp32) when
//! `TIERGATE_REAL_MODEL` names its folder (`scripts/import-real-model.sh | tail -1`; required
//! with `TIERGATE_REQUIRE_REAL_MODEL=1`, as `make test` sets).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use futures::future::join_all;
use tiergate_engine::{
    Engine, EngineConfig, Generation, GenerationRequest, ModelVariant, Prompt, SamplingParams,
};

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "turn on the kitchen lights",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "hi",
];

fn config_for(model_dir: PathBuf, variant: ModelVariant, max_batch: usize) -> EngineConfig {
    EngineConfig {
        model_dir,
        variant: variant.into(),
        max_batch,
        queue_capacity: 16,
        ..EngineConfig::default()
    }
}

fn load(model_dir: PathBuf, variant: ModelVariant, max_batch: usize) -> Engine {
    Engine::load(&config_for(model_dir, variant, max_batch)).unwrap()
}

/// Greedy, with each token's log-probability and 3 alternatives.
fn request(prompt: &str, max_new_tokens: usize) -> GenerationRequest {
    let sampling = SamplingParams {
        logprobs: Some(3),
        ..SamplingParams::greedy(max_new_tokens)
    };
    GenerationRequest::new(Prompt::user(prompt), sampling)
}

/// Greedy generations of every prompt, all submitted at once.
async fn concurrent(engine: &Engine, max_new_tokens: usize) -> Vec<Generation> {
    join_all(PROMPTS.iter().map(|prompt| {
        let request = request(prompt, max_new_tokens);
        let engine = engine.clone();
        async move { engine.generate(request).await.unwrap() }
    }))
    .await
}

async fn concurrent_tokens(engine: &Engine, max_new_tokens: usize) -> Vec<Vec<u32>> {
    let all = concurrent(engine, max_new_tokens).await;
    all.iter().map(Generation::token_ids).collect()
}

async fn alone(engine: &Engine, max_new_tokens: usize) -> Vec<Generation> {
    let mut all = Vec::new();
    for prompt in PROMPTS {
        all.push(
            engine
                .generate(request(prompt, max_new_tokens))
                .await
                .unwrap(),
        );
    }
    all
}

async fn alone_tokens(engine: &Engine, max_new_tokens: usize) -> Vec<Vec<u32>> {
    let all = alone(engine, max_new_tokens).await;
    all.iter().map(Generation::token_ids).collect()
}

/// The log-probabilities of `b` equal those of `a`, token by token and alternative by
/// alternative (ids exactly, values to `1e-3` nats).
fn same_logprobs(a: &Generation, b: &Generation, what: &str) {
    for (step, (x, y)) in a.tokens.iter().zip(&b.tokens).enumerate() {
        let (x, y) = (x.logprobs.as_ref().unwrap(), y.logprobs.as_ref().unwrap());
        let ids =
            |l: &tiergate_engine::TokenLogprobs| l.top.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            (x.chosen.id, ids(x)),
            (y.chosen.id, ids(y)),
            "{what}, step {step}"
        );
        for (p, q) in std::iter::once(&x.chosen)
            .chain(&x.top)
            .zip(std::iter::once(&y.chosen).chain(&y.top))
        {
            assert!(
                (p.logprob - q.logprob).abs() < 1e-3,
                "{what}, step {step}: {} vs {}",
                p.logprob,
                q.logprob
            );
        }
    }
}

async fn check(model_dir: PathBuf, variant: ModelVariant, max_new_tokens: usize) {
    let solo = alone(&load(model_dir.clone(), variant, 1), max_new_tokens).await;
    let batched_engine = load(model_dir, variant, PROMPTS.len());
    let together = concurrent(&batched_engine, max_new_tokens).await;
    let alone: Vec<Vec<u32>> = solo.iter().map(Generation::token_ids).collect();
    for (index, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a.token_ids(),
            b.token_ids(),
            "prompt {index} ({variant}): batched tokens differ"
        );
        same_logprobs(a, b, &format!("prompt {index} ({variant})"));
    }
    assert!(
        alone.iter().any(|t| t.len() > 4),
        "answers long enough to compare"
    );
    assert_eq!(
        batched_engine.stats().generations_finished,
        PROMPTS.len() as u64
    );
}

#[tokio::test]
async fn batched_greedy_tokens_equal_unbatched_on_the_edge_model() {
    check(common::model_dir("edge"), ModelVariant::Fp32, 24).await;
}

#[tokio::test]
async fn batched_greedy_tokens_equal_unbatched_on_the_real_model() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    for variant in [ModelVariant::Int4, ModelVariant::Fp32] {
        check(dir.clone(), variant, 48).await;
    }
}

#[tokio::test]
async fn max_batch_zero_is_refused() {
    let config = EngineConfig {
        max_batch: 0,
        ..common::config("edge")
    };
    assert!(Engine::load(&config).is_err());
}

/// Two batching workers share one queue: a worker with members running never waits on the
/// queue lock that an idle worker holds, and every answer still equals its unbatched one.
#[tokio::test]
async fn two_batching_workers_finish_every_stream_with_the_same_tokens() {
    let dir = common::model_dir("edge");
    let alone = alone_tokens(&load(dir.clone(), ModelVariant::Fp32, 1), 24).await;
    let engine = Engine::load(&EngineConfig {
        model_dir: dir,
        workers: 2,
        max_batch: 3,
        queue_capacity: 16,
        ..EngineConfig::default()
    })
    .unwrap();
    let batched = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        concurrent_tokens(&engine, 24),
    )
    .await
    .unwrap();
    assert_eq!(alone, batched);
}

/// Past and present bound to one buffer (what the real model's manifest allows, the default)
/// give the tokens and log-probabilities of ONNX Runtime's concat mode, alone and batched,
/// through buffer regrowths (64 -> 128 positions) and a prompt of several prefill chunks
/// (128 -> 256 -> 512).
#[tokio::test]
async fn a_shared_kv_buffer_answers_as_the_concat_mode_on_the_real_model() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let manifest = tiergate_engine::Manifest::load(&dir).unwrap();
    assert_eq!(
        manifest.kv_cache,
        tiergate_engine::KvCacheLayout::SharedBuffer
    );
    let engine = |share_kv_buffer: bool, max_batch: usize| {
        Engine::load(&EngineConfig {
            share_kv_buffer,
            ..config_for(dir.clone(), ModelVariant::Fp32, max_batch)
        })
        .unwrap()
    };
    let long = "Tell me about the history of the bicycle, from the draisine to modern road bikes. "
        .repeat(12);
    let prompts: Vec<&str> = PROMPTS.iter().copied().chain([long.as_str()]).collect();
    let concat = engine(false, 1);
    let tokens = concat.tokenize(&Prompt::user(long.as_str())).unwrap().len();
    assert!(tokens > 256, "{tokens} prompt tokens: three buffer growths");
    let run_alone = |engine: Engine| {
        let prompts = prompts.clone();
        async move {
            let mut all = Vec::new();
            for prompt in prompts {
                all.push(engine.generate(request(prompt, 80)).await.unwrap());
            }
            all
        }
    };
    let expected = run_alone(concat).await;
    let shared = run_alone(engine(true, 1)).await;
    let batched_engine = engine(true, prompts.len());
    let batched = join_all(prompts.iter().map(|prompt| {
        let request = request(prompt, 80);
        let engine = batched_engine.clone();
        async move { engine.generate(request).await.unwrap() }
    }))
    .await;
    for (index, want) in expected.iter().enumerate() {
        for (got, how) in [
            (&shared[index], "shared"),
            (&batched[index], "shared, batched"),
        ] {
            assert_eq!(want.token_ids(), got.token_ids(), "prompt {index} ({how})");
            same_logprobs(want, got, &format!("prompt {index} ({how})"));
        }
    }
    assert!(
        expected.iter().any(|g| g.tokens.len() > 64),
        "past the first regrowth"
    );
}

/// A short request and a long prompt submitted together to one worker: the tokens the short
/// one streams before the long prompt's `Started` event (its prefill done), with
/// `prefill_per_step` positions prefilled between two decode steps; and the long prompt's answer.
/// A third long prompt goes first and keeps the worker busy while the two are queued, so they
/// are in line together whatever the test thread's timing.
async fn streamed_during_a_long_prefill(prefill_per_step: usize) -> (usize, Vec<u32>) {
    use futures::StreamExt;
    use tiergate_engine::GenerationEvent;

    let engine = Engine::load(&EngineConfig {
        max_batch: 3,
        prefill_chunk: 16,
        prefill_per_step,
        ..common::config("edge")
    })
    .unwrap();
    // Sampled with a fixed seed: one of the edge model's longer answers (19 tokens).
    let running = GenerationRequest::new(
        Prompt::user("Tell me a story."),
        SamplingParams {
            temperature: 1.0,
            seed: Some(32),
            ..SamplingParams::greedy(60)
        },
    );
    let long_prompt = Prompt::user("the lights in the kitchen are on. ".repeat(22));
    let prompt_tokens = engine.tokenize(&long_prompt).unwrap().len();
    assert!((180..240).contains(&prompt_tokens), "{prompt_tokens}");
    let long = |max_new_tokens| {
        GenerationRequest::new(long_prompt.clone(), SamplingParams::greedy(max_new_tokens))
    };
    let _first = engine.generate_stream(long(1)).unwrap();
    let mut running = engine.generate_stream(running).unwrap();
    let mut long = engine.generate_stream(long(4)).unwrap();
    let mut streamed = 0;
    let mut running_ended = false;
    loop {
        // The long prompt's events first: a running token counted here was sent before the
        // long prompt started, whatever the order the two channels are read in.
        tokio::select! {
            biased;
            event = long.next() => match event.unwrap().unwrap() {
                GenerationEvent::Started { .. } => break,
                other => panic!("the long prompt's first event: {other:?}"),
            },
            event = running.next(), if !running_ended => match event.unwrap().unwrap() {
                GenerationEvent::Token(_) => streamed += 1,
                GenerationEvent::Finished(_) => running_ended = true,
                GenerationEvent::Started { .. } => {}
            },
        }
    }
    let mut answer = Vec::new();
    while let Some(event) = long.next().await {
        match event.unwrap() {
            GenerationEvent::Token(token) => answer.push(token.id),
            GenerationEvent::Finished(_) => break,
            GenerationEvent::Started { .. } => panic!("started twice"),
        }
    }
    (streamed, answer)
}

/// Chunked prefill between decode steps (`prefill_per_step`): a running stream keeps getting
/// tokens while a ~200-token prompt joins its worker, instead of waiting for the whole prefill;
/// the long prompt's answer is the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_keeps_streaming_while_a_long_prompt_is_prefilled() {
    let (interleaved, answer) = streamed_during_a_long_prefill(16).await;
    let (whole_first, same_answer) = streamed_during_a_long_prefill(0).await;
    // The short prompt joins first; then ~13 pieces of 16, a decode step after each (the short
    // answer is 19 tokens). Whole first: both prefilled before the next step, so only the short
    // one's first token (from its own prefill) comes before, and a step or a few more if the
    // worker took the short one before the long one was queued.
    assert!(
        interleaved >= 8,
        "{interleaved} tokens while the prompt was prefilled"
    );
    assert!(
        whole_first <= 4,
        "{whole_first} tokens with the whole prompt first"
    );
    assert_eq!(answer, same_answer);
}

/// Requests a batching worker has taken into its line but not begun to prefill are still
/// waiting: `queue_depth` (the node's `tiergate_engine_queue_depth`, what autoscaling reads)
/// counts them, and lets them go when their callers leave.
#[tokio::test]
async fn requests_waiting_in_a_workers_line_count_in_the_queue_depth_on_the_real_model() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let engine = Engine::load(&EngineConfig {
        prefill_per_step: 128,
        ..config_for(dir, ModelVariant::Int4, 3)
    })
    .unwrap();
    // ~2,000 tokens: sixteen pieces of 128, seconds of prefill, while the two short ones wait
    // behind it in the worker's line.
    let long = Prompt::user(
        "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(140),
    );
    let long = engine
        .generate_stream(GenerationRequest::new(long, SamplingParams::greedy(1)))
        .unwrap();
    let short: Vec<_> = PROMPTS[..2]
        .iter()
        .map(|prompt| engine.generate_stream(request(prompt, 8)).unwrap())
        .collect();
    let until = |depth: usize, what: &'static str| {
        let engine = engine.clone();
        async move {
            let waited = std::time::Instant::now();
            while engine.queue_depth() != depth {
                assert!(
                    waited.elapsed() < std::time::Duration::from_secs(20),
                    "{what}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    // All three wait until the long prompt's first piece has run, then the two short ones: in
    // the queue until the worker takes them (after that piece), then in its line.
    until(2, "the two short requests never counted as waiting").await;
    for _ in 0..15 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // One of them may be between the queue and the line at the moment of reading.
        let depth = engine.queue_depth();
        assert!(
            (1..=2).contains(&depth),
            "the two short requests still wait: {depth}"
        );
    }
    drop(short);
    drop(long);
    until(0, "the line never let go of the requests that left").await;
    // The long prompt stops at its next piece, maybe a round later.
    let waited = std::time::Instant::now();
    while engine.stats().generations_cancelled < 3 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
