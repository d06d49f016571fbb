//! tiergate-engine: the local ONNX tier.
//!
//! Loads a model directory (manifest, ONNX graphs, `tokenizer.json`; every file hash-checked),
//! runs decoder-only generation with a KV cache on dedicated worker threads (one ONNX Runtime
//! session each), and reports the signals the router needs: per-token confidence (top-1
//! probability, entropy) and the prompt's mean negative log-likelihood.
//!
//! Inside, three parts, each testable alone: `backend` (the `Backend` trait: prefill, one decode
//! step over a batch of sequences, cache rows gathered into a new batch; `session::ModelSession`
//! implements it on ONNX Runtime with a left-padded KV cache), `generate` (one sequence's decode
//! loop: sampling, stops, limits, confidence) and `batch` (continuous batching: with
//! `EngineConfig::max_batch` > 1 a worker decodes its active generations in one session run per
//! step, a new one joining after its own prefill).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tiergate_engine::EngineError> {
//! use tiergate_engine::{Engine, EngineConfig, GenerationRequest, Prompt, SamplingParams};
//! let engine = Engine::load(&EngineConfig::for_model("models/edge"))?;
//! let request = GenerationRequest::new(Prompt::user("turn on the kitchen lights"), SamplingParams::greedy(32));
//! let answer = engine.generate(request).await?;
//! # let _ = answer; Ok(()) }
//! ```

mod backend;
mod batch;
mod confidence;
mod cpu;
mod embedding;
mod engine;
mod error;
mod events;
mod generate;
mod kv_cache;
mod manifest;
pub mod memory;
mod prefill;
mod progress;
mod prompt;
mod runtime;
mod sampling;
mod session;
mod session_options;
mod stop;
mod tokenizer;
mod variant;
mod worker;

pub use cpu::{CpuKind, Int8Kernels};
pub use engine::{Engine, EngineConfig, GenerationStream, LoadStage, ModelInfo};
pub use error::{EngineError, ErrorClass};
pub use events::{
    FinishReason, Generation, GenerationEvent, GenerationRequest, GenerationSummary, PromptScore,
    Timings, TokenEvent, TokenLogprob, TokenLogprobs,
};
pub use manifest::{Architecture, KvCacheLayout, Manifest, ModelVariant};
pub use prompt::{ChatMessage, Prompt, Role};
pub use runtime::{BUNDLED_LIBRARY, ORT_DYLIB_ENV, resolve_library};
pub use sampling::{MAX_TOP_LOGPROBS, SamplingParams};
pub use session_options::GraphOptimization;
pub use variant::{ResolvedVariant, VariantChoice, resolve_variant};
pub use worker::EngineStats;
