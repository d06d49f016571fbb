//! Continuous batching through the public API: concurrent greedy generations decoded together
//! (one session run per step, left-padded KV cache) give exactly the tokens each gets alone.
//!
//! Runs on the bundled edge model always, and on the real SmolLM2 model (int4 and fp32) when
//! `TIERGATE_REAL_MODEL` names its folder (`scripts/import-real-model.sh | tail -1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::PathBuf;

use futures::future::join_all;
use tiergate_engine::{
    Engine, EngineConfig, GenerationRequest, ModelVariant, Prompt, SamplingParams,
};

const PROMPTS: [&str; 5] = [
    "What is the capital of France?",
    "turn on the kitchen lights",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "hi",
];

fn load(model_dir: PathBuf, variant: ModelVariant, max_batch: usize) -> Engine {
    Engine::load(&EngineConfig {
        model_dir,
        variant,
        max_batch,
        queue_capacity: 16,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Greedy tokens of every prompt, all submitted at once.
async fn concurrent_tokens(engine: &Engine, max_new_tokens: usize) -> Vec<Vec<u32>> {
    join_all(PROMPTS.iter().map(|prompt| {
        let request = GenerationRequest::new(
            Prompt::user(*prompt),
            SamplingParams::greedy(max_new_tokens),
        );
        let engine = engine.clone();
        async move { engine.generate(request).await.unwrap().token_ids() }
    }))
    .await
}

async fn alone_tokens(engine: &Engine, max_new_tokens: usize) -> Vec<Vec<u32>> {
    let mut all = Vec::new();
    for prompt in PROMPTS {
        let request =
            GenerationRequest::new(Prompt::user(prompt), SamplingParams::greedy(max_new_tokens));
        all.push(engine.generate(request).await.unwrap().token_ids());
    }
    all
}

async fn check(model_dir: PathBuf, variant: ModelVariant, max_new_tokens: usize) {
    let alone = alone_tokens(&load(model_dir.clone(), variant, 1), max_new_tokens).await;
    let batched_engine = load(model_dir, variant, PROMPTS.len());
    let batched = concurrent_tokens(&batched_engine, max_new_tokens).await;
    for (index, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a, b, "prompt {index} ({variant}): batched tokens differ");
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
