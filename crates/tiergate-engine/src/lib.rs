//! tiergate-engine: the local ONNX tier.
//!
//! Loads a model directory (manifest, ONNX graphs, `tokenizer.json`; every file hash-checked),
//! runs decoder-only generation with a KV cache on dedicated worker threads (one ONNX Runtime
//! session each), and reports the signals the router needs: per-token confidence (top-1
//! probability, entropy) and the prompt's mean negative log-likelihood.
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
mod engine;
mod error;
mod events;
mod generate;
mod manifest;
mod prompt;
mod runtime;
mod sampling;
mod session;
mod stop;
mod tokenizer;
mod worker;

pub use engine::{Engine, EngineConfig, GenerationStream, ModelInfo};
pub use error::{EngineError, ErrorClass};
pub use events::{
    FinishReason, Generation, GenerationEvent, GenerationRequest, GenerationSummary, PromptScore,
    Timings, TokenEvent,
};
pub use manifest::{Architecture, Manifest, ModelVariant};
pub use prompt::{ChatMessage, Prompt, Role};
pub use runtime::{BUNDLED_LIBRARY, ORT_DYLIB_ENV, resolve_library};
pub use sampling::SamplingParams;
pub use session::GraphOptimization;
pub use worker::EngineStats;
