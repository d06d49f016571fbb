//! Per-token log-probabilities on the bundled edge model, checked against a log-softmax the
//! test computes itself from the engine's raw next-token logits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tiergate_engine::{
    Engine, FinishReason, Generation, GenerationRequest, Prompt, SamplingParams, TokenLogprobs,
};

const LIGHTS: &str = "turn on the kitchen lights";

fn request(prompt: &str, temperature: f32, logprobs: Option<usize>) -> GenerationRequest {
    GenerationRequest::new(
        Prompt::user(prompt),
        SamplingParams {
            max_new_tokens: 24,
            temperature,
            seed: Some(7),
            logprobs,
            ..SamplingParams::default()
        },
    )
}

/// The reference: log-softmax of the first answer token's raw logits, in f64, fully sorted.
async fn first_step_reference(engine: &Engine, prompt: &str) -> Vec<(u32, f64)> {
    let logits = engine
        .next_token_logits(&Prompt::user(prompt))
        .await
        .unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let mut all: Vec<(u32, f64)> = (logits.iter().enumerate())
        .map(|(i, &l)| (i as u32, l as f64 - z))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

fn logprobs(generation: &Generation) -> Vec<&TokenLogprobs> {
    (generation.tokens.iter())
        .map(|t| t.logprobs.as_ref().expect("asked for"))
        .collect()
}

/// What holds for every token: log-probabilities are <= 0, the alternatives are the k most
/// likely in order, their probabilities sum to at most 1, and the top-1 probability the
/// router reads is the first alternative's.
fn check_shape(generation: &Generation, k: usize) {
    for (step, (token, l)) in generation
        .tokens
        .iter()
        .zip(logprobs(generation))
        .enumerate()
    {
        assert_eq!(l.chosen.id, token.id, "step {step}");
        assert!(l.chosen.logprob <= 0.0 && l.chosen.logprob.is_finite());
        assert_eq!(l.top.len(), k, "step {step}");
        assert!(
            l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "step {step}: unsorted"
        );
        assert!(l.top.iter().all(|t| t.logprob <= 0.0));
        let mass: f32 = l.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "step {step}: mass {mass}");
        if let Some(first) = l.top.first() {
            assert!(l.chosen.logprob <= first.logprob + 1e-6);
            assert!(
                (first.logprob.exp() - token.top1_prob).abs() < 1e-4,
                "step {step}"
            );
        }
    }
}

#[tokio::test]
async fn greedy_tokens_report_the_model_log_softmax_and_the_best_alternatives() {
    let engine = common::engine("edge");
    let generation = engine
        .generate(request(LIGHTS, 0.0, Some(5)))
        .await
        .unwrap();
    check_shape(&generation, 5);
    // Greedy picks the most likely token: it is the first alternative, with the same value.
    for l in logprobs(&generation) {
        assert_eq!(l.chosen, l.top[0]);
    }
    // The first step against the test's own log-softmax of the raw logits.
    let reference = first_step_reference(&engine, LIGHTS).await;
    let first = logprobs(&generation)[0];
    for (got, want) in first.top.iter().zip(&reference) {
        assert_eq!(got.id, want.0);
        assert!(
            (f64::from(got.logprob) - want.1).abs() < 1e-4,
            "{} vs {}",
            got.logprob,
            want.1
        );
    }
    // The bytes of the tokens are the answer (special tokens aside): the end token adds none.
    let bytes: Vec<u8> = (logprobs(&generation).iter())
        .filter(|l| {
            generation.finish_reason != FinishReason::Eos
                || l.chosen.id != generation.tokens.last().unwrap().id
        })
        .flat_map(|l| l.chosen.bytes.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), generation.text);
}

#[tokio::test]
async fn sampled_tokens_report_the_distribution_before_temperature() {
    let engine = common::engine("edge");
    let prompt = "write a poem about the sea";
    let hot = engine
        .generate(request(prompt, 1.5, Some(2)))
        .await
        .unwrap();
    check_shape(&hot, 2);
    let reference = first_step_reference(&engine, prompt).await;
    let first = &logprobs(&hot)[0].chosen;
    let want = reference.iter().find(|(id, _)| *id == first.id).unwrap().1;
    // Temperature 1.5 would flatten the distribution; the reported value is the model's own.
    assert!(
        (f64::from(first.logprob) - want).abs() < 1e-4,
        "{} vs {want}",
        first.logprob
    );
}

#[tokio::test]
async fn logprobs_come_only_when_asked_and_zero_alternatives_is_the_chosen_token_alone() {
    let engine = common::engine("edge");
    let plain = engine.generate(request(LIGHTS, 0.0, None)).await.unwrap();
    assert!(plain.tokens.iter().all(|t| t.logprobs.is_none()));
    let bare = engine
        .generate(request(LIGHTS, 0.0, Some(0)))
        .await
        .unwrap();
    check_shape(&bare, 0);
    assert_eq!(plain.token_ids(), bare.token_ids());
    let too_many = engine.generate(request(LIGHTS, 0.0, Some(21))).await;
    assert!(too_many.unwrap_err().to_string().contains("top_logprobs"));
}
