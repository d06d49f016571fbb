//! Generation behaviour at its limits: token limit, context end, stop sequences, deadlines,
//! seeded sampling, streaming, cancellation, concurrency and overload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use tiergate_engine::{
    Engine, EngineConfig, EngineError, ErrorClass, FinishReason, GenerationEvent,
    GenerationRequest, Prompt, SamplingParams,
};

const LIGHTS: &str = "turn on the kitchen lights";

fn greedy(prompt: &str, max_new_tokens: usize) -> GenerationRequest {
    GenerationRequest::new(Prompt::user(prompt), SamplingParams::greedy(max_new_tokens))
}

/// An out-of-domain prompt, where the model is unsure and sampling has room to differ.
fn sampled(seed: u64) -> GenerationRequest {
    GenerationRequest::new(
        Prompt::user("write a poem about the sea"),
        SamplingParams {
            max_new_tokens: 24,
            temperature: 1.0,
            top_k: 200,
            top_p: 0.98,
            seed: Some(seed),
            stop: Vec::new(),
            logprobs: None,
        },
    )
}

#[tokio::test]
async fn max_new_tokens_is_respected() {
    let engine = common::engine("edge");
    for limit in [1, 3] {
        let generation = engine.generate(greedy(LIGHTS, limit)).await.unwrap();
        assert_eq!(generation.tokens.len(), limit);
        assert_eq!(generation.finish_reason, FinishReason::Length);
    }
    // Zero new tokens only prefills: a prompt asked to be scored still is.
    let generation = engine.generate(greedy(LIGHTS, 0).scored()).await.unwrap();
    assert!(generation.tokens.is_empty() && generation.text.is_empty());
    assert_eq!(generation.finish_reason, FinishReason::Length);
    assert!(generation.prompt_score.is_some());
}

/// A raw prompt of exactly `tokens` tokens.
fn prompt_of(engine: &Engine, tokens: usize) -> Prompt {
    let mut words = tokens;
    loop {
        let prompt = Prompt::Text(" x".repeat(words));
        let count = match engine.tokenize(&prompt) {
            Ok(ids) => ids.len(),
            Err(EngineError::PromptTooLong { tokens, .. }) => tokens,
            Err(other) => panic!("{other}"),
        };
        if count == tokens {
            return prompt;
        }
        assert!(
            count > tokens || words < 4 * tokens,
            "cannot build the prompt"
        );
        if count > tokens {
            words -= 1;
        } else {
            words += 1;
        }
    }
}

#[tokio::test]
async fn the_context_end_stops_with_length_and_a_full_prompt_is_refused() {
    let engine = common::engine("edge");
    let context = engine.model().context_length;

    // One position left: exactly one token fits, then `length`.
    let prompt = prompt_of(&engine, context - 1);
    let request = GenerationRequest::new(prompt, SamplingParams::greedy(50));
    let generation = engine.generate(request).await.unwrap();
    assert_eq!(generation.prompt_tokens, context - 1);
    assert_eq!(generation.tokens.len(), 1);
    // Unless that one token is the end of the answer, the context stopped it.
    if generation.finish_reason != FinishReason::Eos {
        assert_eq!(generation.finish_reason, FinishReason::Length);
    }

    // A prompt filling the whole context leaves no room for an answer.
    let prompt = prompt_of(&engine, context);
    let request = GenerationRequest::new(prompt, SamplingParams::greedy(50));
    match engine.generate_stream(request) {
        Err(EngineError::PromptTooLong { tokens, limit }) => {
            assert_eq!((tokens, limit), (context, context));
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[tokio::test]
async fn stop_sequences_end_the_answer_before_them() {
    let engine = common::engine("edge");
    let full = engine.generate(greedy(LIGHTS, 24)).await.unwrap();
    assert_eq!(full.finish_reason, FinishReason::Eos, "{:?}", full.text);
    // Stop at the second word of the model's own answer.
    let words: Vec<&str> = full.text.split(' ').collect();
    assert!(
        words.len() >= 3,
        "answer too short to test: {:?}",
        full.text
    );
    let stop = format!(" {}", words[1]);
    let position = full.text.find(&stop).unwrap();

    let mut request = greedy(LIGHTS, 24);
    request.sampling.stop = vec!["never appears".into(), stop.clone()];
    let stopped = engine.generate(request).await.unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..position], "stop {stop:?}");
    assert!(stopped.tokens.len() < full.tokens.len());
}

#[tokio::test]
async fn a_deadline_in_the_past_finishes_at_once() {
    let engine = common::engine("edge");
    let mut request = greedy(LIGHTS, 50);
    request.deadline = Some(Instant::now() - Duration::from_millis(1));
    let generation = engine.generate(request).await.unwrap();
    assert_eq!(generation.finish_reason, FinishReason::Deadline);
    assert!(generation.tokens.is_empty());
}

#[tokio::test]
async fn a_deadline_during_generation_stops_it() {
    let engine = common::engine("regional");
    let prompt = "write an essay about the causes of the first world war";
    let full = engine.generate(greedy(prompt, 64)).await.unwrap();
    // One millisecond is less than the whole answer takes (prefill plus several decode steps).
    let mut request = greedy(prompt, 64);
    request.deadline = Some(Instant::now() + Duration::from_millis(1));
    let generation = engine.generate(request).await.unwrap();
    assert_eq!(generation.finish_reason, FinishReason::Deadline);
    assert!(generation.tokens.len() < full.tokens.len());
    // What was produced before the deadline is the start of the full answer.
    assert!(full.text.starts_with(&generation.text));
}

#[tokio::test]
async fn seeded_sampling_is_reproducible_and_seeds_differ() {
    let engine = common::engine("edge");
    let first = engine.generate(sampled(7)).await.unwrap();
    let again = engine.generate(sampled(7)).await.unwrap();
    assert_eq!(first.token_ids(), again.token_ids());
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..6 {
        distinct.insert(engine.generate(sampled(seed)).await.unwrap().token_ids());
    }
    assert!(distinct.len() > 1, "six seeds gave one answer");
}

#[tokio::test]
async fn the_stream_starts_then_tokens_then_finishes_and_matches_generate() {
    let engine = common::engine("edge");
    let collected = engine.generate(greedy(LIGHTS, 24)).await.unwrap();
    let mut stream = engine.generate_stream(greedy(LIGHTS, 24)).unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    assert!(
        matches!(events.first(), Some(GenerationEvent::Started { prompt_tokens, .. }) if *prompt_tokens == collected.prompt_tokens)
    );
    assert!(
        matches!(events.last(), Some(GenerationEvent::Finished(s)) if s.finish_reason == collected.finish_reason && s.completion_tokens == collected.tokens.len())
    );
    let tokens: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            GenerationEvent::Token(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, collected.tokens);
    for token in &tokens {
        assert!(token.top1_prob > 0.0 && token.top1_prob <= 1.0);
        assert!(token.entropy >= 0.0 && token.entropy.is_finite());
    }
}

#[tokio::test]
async fn score_prompt_agrees_with_generation_and_one_token_has_no_score() {
    let engine = common::engine("edge");
    let prompt = Prompt::user(LIGHTS);
    let score = engine.score_prompt(&prompt).await.unwrap();
    let generation = engine.generate(greedy(LIGHTS, 2).scored()).await.unwrap();
    assert_eq!(score.prompt_tokens, generation.prompt_tokens);
    // Unasked, a generation leaves its prompt unscored.
    let plain = engine.generate(greedy(LIGHTS, 2)).await.unwrap();
    assert_eq!(plain.prompt_score, None);
    assert_eq!(plain.token_ids(), generation.token_ids());
    let (a, b) = (score.mean_nll.unwrap(), generation.prompt_score.unwrap());
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    assert!((score.next_top1_prob - generation.tokens[0].top1_prob).abs() < 1e-6);

    // An in-domain prompt surprises the model less than gibberish.
    let gibberish = engine
        .score_prompt(&Prompt::user("qzx vbnm plokij wertyu zzqx"))
        .await
        .unwrap();
    assert!(gibberish.mean_nll.unwrap() > a);

    let single = Prompt::Text("<|user|>".into());
    assert_eq!(engine.tokenize(&single).unwrap().len(), 1);
    assert_eq!(engine.score_prompt(&single).await.unwrap().mean_nll, None);
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_frees_the_worker() {
    let config = EngineConfig {
        workers: 1,
        ..common::config("regional")
    };
    let engine = Engine::load(&config).unwrap();
    let prompt = "write an essay about the causes of the first world war";

    // Dropped while queued behind another request: never runs.
    let busy = engine.generate_stream(greedy(prompt, 64)).unwrap();
    let queued = engine.generate_stream(greedy(prompt, 64)).unwrap();
    drop(queued);
    // Dropped after the first event, in the middle of decoding.
    let mut running = busy;
    assert!(matches!(
        running.next().await,
        Some(Ok(GenerationEvent::Started { .. }))
    ));
    drop(running);

    // The single worker is free for the next request.
    let next = engine.generate(greedy(LIGHTS, 8)).await.unwrap();
    assert!(!next.tokens.is_empty());
    // The queued one was certainly cancelled; the running one almost certainly (it was dropped
    // after its first event, milliseconds before its answer could end). The worker-level
    // unit test in generate.rs checks mid-generation cancellation deterministically.
    let stats = engine.stats();
    assert!(stats.generations_cancelled >= 1, "{stats:?}");
    assert_eq!(
        stats.generations_finished + stats.generations_cancelled,
        3,
        "{stats:?}"
    );
}

#[tokio::test]
async fn concurrent_requests_through_two_workers_all_complete() {
    let config = EngineConfig {
        workers: 2,
        queue_capacity: 8,
        ..common::config("edge")
    };
    let engine = Engine::load(&config).unwrap();
    let prompts = [
        LIGHTS,
        "what is 7 plus 5",
        "hello",
        "what day comes after friday",
        "convert 3 kilometers to meters",
        "what is tiergate",
    ];
    let mut expected = Vec::new();
    for prompt in prompts {
        expected.push(
            engine
                .generate(greedy(prompt, 24))
                .await
                .unwrap()
                .token_ids(),
        );
    }
    let tasks: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let engine = engine.clone();
            let request = greedy(prompt, 24);
            tokio::spawn(async move { engine.generate(request).await })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(expected) {
        let generation = task.await.unwrap().unwrap();
        assert_eq!(generation.token_ids(), expected);
    }
}

#[tokio::test]
async fn a_full_queue_is_overloaded_and_accepted_requests_still_finish() {
    let config = EngineConfig {
        workers: 1,
        queue_capacity: 1,
        ..common::config("edge")
    };
    let engine = Engine::load(&config).unwrap();
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    // Submitting takes microseconds; each generation takes milliseconds.
    for _ in 0..10 {
        match engine.generate_stream(greedy(LIGHTS, 24)) {
            Ok(stream) => accepted.push(stream),
            Err(error) => {
                assert!(
                    matches!(error, EngineError::Overloaded { capacity: 1 }),
                    "{error}"
                );
                assert_eq!(error.class(), ErrorClass::Overloaded);
                overloaded += 1;
            }
        }
    }
    assert!(overloaded >= 1, "ten requests never filled a queue of one");
    assert!(!accepted.is_empty());
    for mut stream in accepted {
        let mut finished = false;
        while let Some(event) = stream.next().await {
            finished |= matches!(event.unwrap(), GenerationEvent::Finished(_));
        }
        assert!(finished);
    }
    assert_eq!(engine.stats().rejected_overloaded, overloaded);
}

#[tokio::test]
async fn the_int8_variant_loads_and_answers() {
    let config = EngineConfig {
        variant: tiergate_engine::ModelVariant::Int8.into(),
        ..common::config("edge")
    };
    let engine = Engine::load(&config).unwrap();
    assert_eq!(engine.model().variant, tiergate_engine::ModelVariant::Int8);
    let generation = engine.generate(greedy(LIGHTS, 24)).await.unwrap();
    assert!(!generation.tokens.is_empty());
}

#[tokio::test]
async fn the_optimised_model_cache_is_written_then_reused() {
    let cache = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        optimized_model_cache: Some(cache.path().to_path_buf()),
        workers: 2,
        ..common::config("edge")
    };
    let first = Engine::load(&config).unwrap();
    let expected = first
        .generate(greedy(LIGHTS, 24))
        .await
        .unwrap()
        .token_ids();
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one optimised graph in the cache");
    let second = Engine::load(&config).unwrap();
    assert_eq!(
        second
            .generate(greedy(LIGHTS, 24))
            .await
            .unwrap()
            .token_ids(),
        expected
    );
}

/// Polls the engine's stats until `done` holds, for at most 5 s (a loaded test machine).
async fn stats_reach(engine: &Engine, done: impl Fn(&tiergate_engine::EngineStats) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(5);
    while !done(&engine.stats()) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_worker_gives_the_heap_back_once_per_idle_spell() {
    let engine = common::engine("edge");
    assert!(EngineConfig::default().trim_heap_when_idle, "on by default");
    // Never before the worker has run anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.stats().heap_trims_when_idle, 0);

    engine.generate(greedy(LIGHTS, 4)).await.unwrap();
    stats_reach(&engine, |s| s.heap_trims_when_idle >= 1).await;
    assert_eq!(engine.stats().heap_trims_when_idle, 1);
    // Still idle: no second trim until the worker has run something again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.stats().heap_trims_when_idle, 1);

    // The trimmed worker answers as before.
    let again = engine.generate(greedy(LIGHTS, 4)).await.unwrap();
    assert!(!again.tokens.is_empty());
    stats_reach(&engine, |s| s.heap_trims_when_idle >= 2).await;
    assert_eq!(engine.stats().heap_trims_when_idle, 2);

    let untrimmed = Engine::load(&EngineConfig {
        trim_heap_when_idle: false,
        ..common::config("edge")
    })
    .unwrap();
    untrimmed.generate(greedy(LIGHTS, 4)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(untrimmed.stats().heap_trims_when_idle, 0);
}
