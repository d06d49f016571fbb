//! The engine against the Python onnxruntime reference of each bundled model: same token ids
//! (tokenizer + chat template), same first-step logits, same greedy tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tiergate_engine::{FinishReason, GenerationRequest, Prompt, SamplingParams};

/// The reference decodes up to 24 new tokens, stopping after `<|end|>`.
const REFERENCE_MAX_NEW_TOKENS: usize = 24;
const LOGIT_TOLERANCE: f32 = 1e-4;

async fn check_model(name: &str) {
    let engine = common::engine(name);
    let reference = common::reference(name);
    assert!(!reference.cases.is_empty());
    for case in &reference.cases {
        let prompt = Prompt::user(case.prompt.as_str());
        assert_eq!(
            engine.render(&prompt).unwrap(),
            case.rendered,
            "{name}: rendered prompt"
        );
        assert_eq!(
            engine.tokenize(&prompt).unwrap(),
            case.input_ids,
            "{name}: input ids of {:?}",
            case.prompt
        );

        let logits = engine.next_token_logits(&prompt).await.unwrap();
        assert_eq!(logits.len(), case.first_step_logits.len());
        let max_diff = logits
            .iter()
            .zip(&case.first_step_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max_diff <= LOGIT_TOLERANCE,
            "{name}: first-step logits of {:?} differ by {max_diff}",
            case.prompt
        );

        let generation = engine
            .generate(
                GenerationRequest::new(prompt, SamplingParams::greedy(REFERENCE_MAX_NEW_TOKENS))
                    .scored(),
            )
            .await
            .unwrap();
        assert_eq!(
            generation.token_ids(),
            case.greedy_tokens,
            "{name}: greedy tokens of {:?}",
            case.prompt
        );
        assert_eq!(generation.text, case.greedy_text, "{name}: greedy text");
        let expected_reason = if case.greedy_tokens.len() < REFERENCE_MAX_NEW_TOKENS {
            FinishReason::Eos
        } else {
            generation.finish_reason
        };
        assert_eq!(generation.finish_reason, expected_reason);
        assert_eq!(generation.prompt_tokens, case.input_ids.len());
        assert!(
            generation
                .prompt_score
                .is_some_and(|s| s.is_finite() && s > 0.0)
        );
    }
}

#[tokio::test]
async fn edge_gpt2_graph_matches_the_python_reference() {
    check_model("edge").await;
}

#[tokio::test]
async fn regional_llama_graph_matches_the_python_reference() {
    check_model("regional").await;
}
