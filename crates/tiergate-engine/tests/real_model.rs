//! The real edge model (SmolLM2-135M-Instruct, imported from its GGUF by
//! scripts/import-real-model.sh) against the committed transformers reference
//! (models/smollm2/reference.json): chat template, tokenizer, fp32 greedy tokens and logits,
//! prompt NLL, and int4 logits against the fp32 graph dequantised from the same blocks.
//!
//! The model folder is named by `TIERGATE_REAL_MODEL` (`make test` builds it and sets it). Without
//! it these tests say so and pass, so a bare `cargo test` works; with
//! `TIERGATE_REQUIRE_REAL_MODEL=1` (also set by `make test`) a missing model fails them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::OnceLock;

use common::real_model_dir;
use serde::Deserialize;
use tiergate_engine::{
    ChatMessage, CpuKind, Engine, EngineConfig, GenerationRequest, Manifest, ModelVariant, Prompt,
    Role, SamplingParams, VariantChoice, resolve_variant,
};

/// fp32 logits of the ONNX graph vs transformers' float32 forward of the same weights.
const FP32_LOGIT_TOLERANCE: f32 = 2e-3;
/// The prompt NLL (nats per token), fp32.
const NLL_TOLERANCE: f64 = 1e-3;
/// int4 (MatMulNBits on the GGUF's own Q4_1 blocks) vs the fp32 graph dequantised from the
/// same blocks: the same weights, so only the kernels' accumulation differs (measured: see
/// docs/models.md).
const INT4_VS_FP32_LOGIT_TOLERANCE: f32 = 2e-3;
/// Two top logits closer than this are a tie that another kernel may break the other way.
const TIE_GAP: f32 = 1e-3;
/// A reference top-2 gap the int4-fast graph must not flip (verify.py's FAST_BUDGET clear_gap).
const INT4_FAST_CLEAR_GAP: f32 = 0.5;

fn engine(variant: ModelVariant) -> Option<&'static Engine> {
    static FP32: OnceLock<Engine> = OnceLock::new();
    static INT4: OnceLock<Engine> = OnceLock::new();
    static INT4_FAST: OnceLock<Engine> = OnceLock::new();
    let dir = real_model_dir()?;
    let cell = match variant {
        ModelVariant::Int4 => &INT4,
        ModelVariant::Int4Fast => &INT4_FAST,
        _ => &FP32,
    };
    Some(cell.get_or_init(|| {
        Engine::load(&EngineConfig {
            variant: variant.into(),
            intra_op_threads: 2,
            ..EngineConfig::for_model(dir)
        })
        .expect("load the real model")
    }))
}

/// Whether the importer kept the opt-in int4-fast graph. It leaves it out on a CPU whose int8
/// kernels miss its quality checks (ONNX Runtime's AVX2 path), and then must say why in
/// import-report.json; a variant that vanished without a reason fails here.
fn int4_fast_imported() -> bool {
    let Some(dir) = real_model_dir() else {
        return false;
    };
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    if manifest.contains("\"variant\": \"int4-fast\"") {
        return true;
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("import-report.json")).unwrap())
            .unwrap();
    let reasons = &report["left_out"]["int4-fast"];
    assert!(
        reasons.as_array().is_some_and(|r| !r.is_empty()),
        "int4-fast is not in the manifest and import-report.json gives no reason: {reasons}"
    );
    eprintln!("skipped: the importer left int4-fast out on this CPU: {reasons}");
    false
}

#[derive(Debug, Deserialize)]
struct Reference {
    chat_renders: Vec<ChatRender>,
    tokenizer: Vec<TokenizerCase>,
    greedy: Vec<GreedyCase>,
    prompt_nll: PromptNll,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct ChatRender {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct GreedyCase {
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    first_step_top: Vec<(u32, f32)>,
    first_step_logsumexp: f32,
    /// Top-1 minus top-2 logit at the step producing each token.
    step_top2_gap: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct PromptNll {
    cases: Vec<NllCase>,
}

#[derive(Debug, Deserialize)]
struct NllCase {
    prompt_ids: Vec<u32>,
    mean_nll: f64,
}

fn reference() -> Reference {
    let path = common::repo_root().join("models/smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn prompt(messages: &[Message]) -> Prompt {
    Prompt::Chat(
        messages
            .iter()
            .map(|m| ChatMessage {
                role: match m.role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => panic!("role {other}"),
                },
                content: m.content.clone(),
            })
            .collect(),
    )
}

fn logsumexp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln()
}

#[test]
fn chat_template_renders_and_tokenizes_like_transformers() {
    let Some(engine) = engine(ModelVariant::Int4) else {
        return;
    };
    let reference = reference();
    let cases: Vec<&ChatRender> = reference
        .chat_renders
        .iter()
        .filter(|c| c.add_generation_prompt)
        .collect();
    assert!(cases.len() >= 5, "{}", cases.len());
    for case in cases {
        let prompt = prompt(&case.messages);
        assert_eq!(engine.render(&prompt).unwrap(), case.text);
        if prompt.is_blank() {
            // A conversation with nothing but blank messages is refused (nothing to answer),
            // though the template would render it.
            assert!(engine.tokenize(&prompt).is_err());
            continue;
        }
        assert_eq!(
            engine.tokenize(&prompt).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
}

#[test]
fn tokenizer_ids_equal_the_reference_on_fifty_strings() {
    let Some(engine) = engine(ModelVariant::Int4) else {
        return;
    };
    let cases = reference().tokenizer;
    assert_eq!(cases.len(), 50);
    let mut checked = 0;
    for case in &cases {
        if case.text.trim().is_empty() {
            // Blank prompts are refused before tokenizing (EmptyPrompt), by design.
            assert!(engine.tokenize(&Prompt::Text(case.text.clone())).is_err());
            continue;
        }
        let ids = engine.tokenize(&Prompt::Text(case.text.clone())).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        checked += 1;
    }
    assert!(checked >= 45, "{checked}");
}

#[tokio::test]
async fn fp32_greedy_tokens_and_logits_equal_transformers() {
    let Some(engine) = engine(ModelVariant::Fp32) else {
        return;
    };
    let cases = reference().greedy;
    assert_eq!(cases.len(), 5);
    let mut compared = 0;
    for case in &cases {
        let prompt = prompt(&case.messages);
        assert_eq!(engine.tokenize(&prompt).unwrap(), case.prompt_ids);

        let logits = engine.next_token_logits(&prompt).await.unwrap();
        for &(id, expected) in &case.first_step_top {
            let got = logits[id as usize];
            assert!(
                (got - expected).abs() <= FP32_LOGIT_TOLERANCE,
                "logit of {id}: {got} vs {expected}"
            );
        }
        let lse = logsumexp(&logits);
        assert!((lse - case.first_step_logsumexp).abs() <= FP32_LOGIT_TOLERANCE);

        let request = GenerationRequest::new(prompt, SamplingParams::greedy(64));
        let generation = engine.generate(request).await.unwrap();
        // Identical up to the first near-tie of the reference's top two logits (one prompt
        // has a 0.00085 gap at step 31, which float accumulation order may break either way).
        let comparable = case
            .step_top2_gap
            .iter()
            .position(|&gap| gap < TIE_GAP)
            .unwrap_or(case.tokens.len());
        let got = generation.token_ids();
        assert!(got.len() >= comparable, "{} < {comparable}", got.len());
        assert_eq!(got[..comparable], case.tokens[..comparable]);
        compared += comparable;
    }
    assert!(compared >= 4 * 64 + 31, "{compared} tokens compared");
}

#[tokio::test]
async fn fp32_prompt_nll_equals_transformers() {
    let Some(engine) = engine(ModelVariant::Fp32) else {
        return;
    };
    let reference = reference();
    for (case, greedy) in reference.prompt_nll.cases.iter().zip(&reference.greedy) {
        let prompt = prompt(&greedy.messages);
        assert_eq!(engine.tokenize(&prompt).unwrap(), case.prompt_ids);
        let score = engine.score_prompt(&prompt).await.unwrap();
        let nll = score.mean_nll.unwrap();
        assert!(
            (nll - case.mean_nll).abs() <= NLL_TOLERANCE,
            "{nll} vs {}",
            case.mean_nll
        );
    }
}

#[tokio::test]
async fn int4_logits_stay_close_to_the_fp32_graph_of_the_same_blocks() {
    let (Some(int4), Some(fp32)) = (engine(ModelVariant::Int4), engine(ModelVariant::Fp32)) else {
        return;
    };
    let mut worst = 0.0f32;
    let mut same_top1 = 0;
    let cases = reference().greedy;
    for case in &cases {
        let prompt = prompt(&case.messages);
        let a = int4.next_token_logits(&prompt).await.unwrap();
        let b = fp32.next_token_logits(&prompt).await.unwrap();
        assert_eq!(a.len(), b.len());
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        worst = worst.max(diff);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(i, _)| i)
        };
        if argmax(&a) == argmax(&b) {
            same_top1 += 1;
        }
    }
    eprintln!(
        "int4 vs fp32: max abs logit diff {worst}, same top-1 {same_top1}/{}",
        cases.len()
    );
    assert!(worst <= INT4_VS_FP32_LOGIT_TOLERANCE, "{worst}");
    assert_eq!(same_top1, cases.len());
}

#[tokio::test]
async fn int4_answers_a_simple_question_right() {
    let Some(engine) = engine(ModelVariant::Int4) else {
        return;
    };
    let request = GenerationRequest::new(
        Prompt::user("What is the capital of France?"),
        SamplingParams::greedy(24),
    );
    let generation = engine.generate(request).await.unwrap();
    assert!(generation.text.contains("Paris"), "{}", generation.text);
}

/// A generation that does not score its prompt asks the graph for its last position's logits
/// alone (`io.logits_to_keep` 1): the lm_head skips every other position. Its answer and first
/// token are those of a scored generation, which runs the lm_head on every position (1: one
/// row where the engine expects one, else the run fails on the logits' shape).
#[tokio::test]
async fn int4_an_unscored_prompt_keeps_one_row_and_the_scored_answer() {
    let Some(engine) = engine(ModelVariant::Int4) else {
        return;
    };
    let manifest = Manifest::load(&real_model_dir().unwrap()).unwrap();
    assert_eq!(
        manifest.io.logits_to_keep.as_deref(),
        Some("logits_to_keep")
    );
    for question in [
        "What is the capital of France?",
        "Name three primary colours.",
    ] {
        let request = || GenerationRequest::new(Prompt::user(question), SamplingParams::greedy(24));
        let plain = engine.generate(request()).await.unwrap();
        let scored = engine.generate(request().scored()).await.unwrap();
        assert_eq!(plain.prompt_score, None);
        assert!(
            scored
                .prompt_score
                .is_some_and(|s| s.is_finite() && s > 0.0)
        );
        assert_eq!(plain.token_ids(), scored.token_ids(), "{question}");
        // The first token's distribution comes from the one-row and the every-row lm_head.
        let (a, b) = (plain.tokens[0].top1_prob, scored.tokens[0].top1_prob);
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }
}

/// The opt-in int4-fast graph (int8 activations in every product) is not bit-close to fp32; the
/// importer checks its parity budget over whole generations. Here, through the engine: the first
/// token of every reference prompt whose reference top-2 gap is clear, and a right answer to a
/// question whose first step is clear (not the France one: the exact model's first step there is a
/// 0.08 near-tie that llama.cpp on the same GGUF also breaks the other way; models/smollm2/README.md).
#[tokio::test]
async fn int4_fast_keeps_the_clear_first_tokens_and_answers_right() {
    if !int4_fast_imported() {
        return;
    }
    let Some(engine) = engine(ModelVariant::Int4Fast) else {
        return;
    };
    let mut clear = 0;
    for case in &reference().greedy {
        let logits = engine
            .next_token_logits(&prompt(&case.messages))
            .await
            .unwrap();
        let top = logits
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i as u32);
        if case.step_top2_gap[0] >= INT4_FAST_CLEAR_GAP {
            assert_eq!(top, Some(case.tokens[0]), "{:?}", case.messages);
            clear += 1;
        }
    }
    assert!(clear >= 3, "only {clear} clear first steps compared");
    let request = GenerationRequest::new(
        Prompt::user("What is the capital of Japan?"),
        SamplingParams::greedy(24),
    );
    let generation = engine.generate(request).await.unwrap();
    assert!(generation.text.contains("Tokyo"), "{}", generation.text);
}

/// `variant = "auto"` loads the graph this CPU runs fastest (on x86-64 without AVX-512 int4-fast
/// when the import kept it, else fp32; with AVX-512 int4-fast when the router has a gate
/// calibrated on this CPU's answers, else int4; int4 elsewhere; docs/benchmarks.md), answers as
/// that graph does, and keeps to a memory budget the fp32 graph would not fit.
#[tokio::test]
async fn auto_loads_the_fastest_graph_for_this_cpu() {
    let Some(dir) = real_model_dir() else {
        return;
    };
    let manifest = Manifest::load(&dir).unwrap();
    let has_int4_fast = manifest.model_file(ModelVariant::Int4Fast).is_some();
    for gated_here in [false, true] {
        let expected = match CpuKind::detect() {
            CpuKind::X86WithoutAvx512 if has_int4_fast => ModelVariant::Int4Fast,
            CpuKind::X86WithoutAvx512 => ModelVariant::Fp32,
            CpuKind::X86Avx512 if has_int4_fast && gated_here => ModelVariant::Int4Fast,
            CpuKind::X86Avx512 | CpuKind::Other => ModelVariant::Int4,
        };
        let auto = Engine::load(&EngineConfig {
            variant: VariantChoice::Auto,
            intra_op_threads: 2,
            int4_fast_with_avx512: gated_here,
            ..EngineConfig::for_model(&dir)
        })
        .unwrap();
        assert_eq!(auto.model().variant, expected, "gated here: {gated_here}");
        let request = || {
            GenerationRequest::new(
                Prompt::user("What is the capital of France?"),
                SamplingParams::greedy(16),
            )
        };
        let named = engine(expected).unwrap();
        let (a, b) = (
            auto.generate(request()).await.unwrap(),
            named.generate(request()).await.unwrap(),
        );
        assert_eq!(a.text, b.text);
    }

    // ~980 MiB estimated for fp32 at its peak: a 512 MB budget keeps a 4-bit graph.
    let small = resolve_variant(
        VariantChoice::Auto,
        &manifest,
        CpuKind::X86WithoutAvx512,
        Some(512),
        false,
    );
    let small_expected = if has_int4_fast {
        ModelVariant::Int4Fast
    } else {
        ModelVariant::Int4
    };
    assert_eq!(small.variant, small_expected, "{}", small.reason);
}

/// A prompt longer than a prefill chunk (the default 128 positions) scores and continues like
/// the same prompt in one run (the heap trim after load: tests/load_heap_trim.rs).
#[tokio::test]
async fn int4_chunked_prefill_keeps_the_logits() {
    let Some(chunked) = engine(ModelVariant::Int4) else {
        return;
    };
    let whole = Engine::load(&EngineConfig {
        variant: ModelVariant::Int4.into(),
        intra_op_threads: 2,
        prefill_chunk: 0,
        trim_heap_after_load: false,
        ..EngineConfig::for_model(real_model_dir().unwrap())
    })
    .unwrap();
    let topic =
        "Tell me about the history of the bicycle, from the draisine to modern road bikes. ";
    let long = Prompt::user(topic.repeat(12));
    let tokens = chunked.tokenize(&long).unwrap().len();
    assert!(
        tokens > 2 * EngineConfig::default().prefill_chunk,
        "{tokens}"
    );
    let (a, b) = (
        chunked.score_prompt(&long).await.unwrap(),
        whole.score_prompt(&long).await.unwrap(),
    );
    let (nll_a, nll_b) = (a.mean_nll.unwrap(), b.mean_nll.unwrap());
    assert!((nll_a - nll_b).abs() <= 1e-4, "{nll_a} vs {nll_b}");
    let (x, y) = (
        chunked.next_token_logits(&long).await.unwrap(),
        whole.next_token_logits(&long).await.unwrap(),
    );
    let worst = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= INT4_VS_FP32_LOGIT_TOLERANCE, "{worst}");
}
