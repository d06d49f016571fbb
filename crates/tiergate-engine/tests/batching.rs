//! Continuous batching through the public API: concurrent greedy generations decoded together
//! (one session run per step, left-padded KV cache) give exactly the tokens each gets alone,
//! and the same log-probabilities (to float rounding: a padded batch runs other kernels).
//!
//! Runs on the bundled edge model always, and on the real SmolLM2 model (int4 and fp32) when
//! `TIERGATE_REAL_MODEL` names its folder (`scripts/import-real-model.sh | tail -1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

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
    let Some(dir) = std::env::var_os("TIERGATE_REAL_MODEL") else {
        eprintln!("TIERGATE_REAL_MODEL unset: the real-model batching check is skipped");
        return;
    };
    for variant in [ModelVariant::Int4, ModelVariant::Fp32] {
        check(PathBuf::from(&dir), variant, 48).await;
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
    let Some(dir) = std::env::var_os("TIERGATE_REAL_MODEL").map(PathBuf::from) else {
        eprintln!("TIERGATE_REAL_MODEL unset: the shared-buffer check is skipped");
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
