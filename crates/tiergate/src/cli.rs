//! Command-line arguments only: one `Command` variant per subcommand, each with its own args
//! struct; the work lives in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tiergate_engine::ModelVariant;

#[derive(Debug, Parser)]
#[command(
    name = "tiergate",
    version,
    about = "Hierarchical edge-to-cloud LLM routing gateway"
)]
pub struct Cli {
    /// Log filter for stderr (tracing EnvFilter syntax), e.g. `info` or `tiergate=debug`.
    #[arg(long, global = true, env = "TIERGATE_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one prompt with the local ONNX model alone (no routing, no upstream).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt; rendered with the model's chat template as one user message.
    pub prompt: String,

    /// Model directory (manifest.json, ONNX graphs, tokenizer.json).
    #[arg(long, default_value = "models/edge")]
    pub model: PathBuf,

    /// Which graph of the manifest to run.
    #[arg(long, default_value_t = ModelVariant::Fp32)]
    pub variant: ModelVariant,

    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .tools/onnxruntime/ from `make setup`).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,

    /// Upper bound on generated tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,

    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,

    /// Sample among the k most likely tokens only (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,

    /// Nucleus sampling threshold (1.0: no limit).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,

    /// Seed for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,

    /// Give up after this many milliseconds (finish reason `deadline`).
    #[arg(long)]
    pub deadline_ms: Option<u64>,

    /// Feed the prompt verbatim, without the chat template.
    #[arg(long)]
    pub raw: bool,

    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
