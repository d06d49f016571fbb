//! Command-line arguments only: one `Command` variant per subcommand, each with its own args
//! struct; the work lives in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tiergate_engine::{ModelVariant, VariantChoice};

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
    /// Run one node: gRPC and HTTP servers, local engine, router, upstreams.
    Serve(ServeArgs),
    /// Three tiers on loopback, a mixed workload, a table of where each prompt went.
    Demo(DemoArgs),
    /// Answer one prompt with the local ONNX model alone (no routing, no upstream).
    Generate(GenerateArgs),
    /// Routing decisions and thresholds.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Evaluations on labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Model signing keys, signatures and verification.
    #[command(subcommand)]
    Model(ModelCommand),
    /// API keys of tenants: make one, or hash one for `[[tenants]] key_sha256`.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt; rendered with the model's chat template as one user message.
    pub prompt: String,

    /// Model directory (manifest.json, ONNX graphs, tokenizer.json).
    #[arg(long, default_value = "models/edge")]
    pub model: PathBuf,

    /// Which graph of the manifest to run, or `auto` (the fastest graph on this CPU).
    #[arg(long, default_value_t = VariantChoice::Named(ModelVariant::Fp32))]
    pub variant: VariantChoice,

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

    /// Score the prompt (its mean token NLL under the model, `prompt_score`); the prefill then
    /// runs the lm_head on every prompt position instead of the last one.
    #[arg(long)]
    pub score_prompt: bool,

    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's TOML config (defaults, then this file, then TIERGATE__SECTION__FIELD variables).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The real edge model folder (`make demo` imports SmolLM2-135M-Instruct and passes it): the
    /// edge runs its int4 graph, regional and the cloud stand-in its fp32 graph. Without it, the
    /// toy models of --models.
    #[arg(long, env = "TIERGATE_REAL_MODEL")]
    pub edge_model: Option<PathBuf>,

    /// The edge node's config for the real model (its calibrated early-exit gate).
    #[arg(long, default_value = "deploy/edge.toml")]
    pub edge_config: PathBuf,

    /// Folder holding the toy `edge` and `regional` model directories.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,

    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then .tools/onnxruntime/ from `make setup`).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,

    /// First port of the demo nodes (edge gRPC/HTTP on +0/+1, regional +10/+11, cloud +20/+21).
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,

    /// Run the workload on free ports, print the table and exit instead of serving on.
    #[arg(long)]
    pub exit: bool,

    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// The routing decision for a prompt, without generating.
    Explain(RouteExplainArgs),
    /// The complexity threshold that sends a given share of a labelled data set up.
    Calibrate(RouteCalibrateArgs),
}

#[derive(Debug, Args)]
pub struct RouteExplainArgs {
    /// The prompt (one user message).
    pub prompt: String,

    /// The node's config; without it, the default edge node (models/edge).
    #[arg(long, short)]
    pub config: Option<PathBuf>,

    /// Tier constraint: none, edge_only, at_most_regional, at_least_cloud.
    #[arg(long, default_value = "none")]
    pub constraint: String,

    /// Print the whole decision as JSON (the same document as the Explain RPC's decision_json).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RouteCalibrateArgs {
    /// CSV with columns prompt,weak_correct,strong_correct,source.
    #[arg(long)]
    pub data: PathBuf,

    /// Share of prompts to send up (0..=1).
    #[arg(long, default_value_t = 0.3)]
    pub strong_share: f64,

    /// The node's config (its complexity weights); without it, the defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// APGR, CPT(50%) and CPT(80%) of the complexity signal on labelled data (RouteLLM metrics).
    Routing(EvalRoutingArgs),
    /// Calibrate the early-exit gate on a model: AUROC of each confidence signal for right vs
    /// wrong answers, and the gate that keeps the most at the edge within an error budget.
    Confidence(EvalConfidenceArgs),
}

#[derive(Debug, Args)]
pub struct EvalConfidenceArgs {
    /// Labelled prompts (JSON lines: id, category, kind, prompt, answers), answered by --model.
    #[arg(long, requires = "model", conflicts_with = "results")]
    pub data: Option<PathBuf>,

    /// Answers recorded by an earlier run (--out); analysed without running a model.
    #[arg(long)]
    pub results: Option<PathBuf>,

    /// Model directory to answer --data with.
    #[arg(long)]
    pub model: Option<PathBuf>,

    #[arg(long, default_value_t = ModelVariant::Int4)]
    pub variant: ModelVariant,

    #[arg(long)]
    pub ort_library: Option<PathBuf>,

    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// Tokens generated per answer (greedy).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,

    /// Write the answers and their signals here (JSON lines) for later --results runs.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// The commit window the gate judges, in tokens.
    #[arg(long, default_value_t = 8)]
    pub window: usize,

    /// Error budget: the largest share of wrong answers among those kept at the edge.
    #[arg(long, default_value_t = 0.1)]
    pub max_error: f64,

    /// The largest share of must-not-attempt prompts the gate may keep at the edge.
    #[arg(long, default_value_t = 0.1)]
    pub max_must_not: f64,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalRoutingArgs {
    /// CSV files with columns prompt,weak_correct,strong_correct,source (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,

    /// The node's config (its complexity weights); without it, the defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load a config as `serve` would and report the first problem.
    Validate(ConfigValidateArgs),
}

#[derive(Debug, Args)]
pub struct ConfigValidateArgs {
    pub file: PathBuf,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Make a signing key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen(ModelKeygenArgs),
    /// Sign a model folder: writes manifest.json.sig (the files must match the manifest).
    Sign(ModelSignArgs),
    /// Check a model folder's signature against trusted keys and every file's sha256.
    Verify(ModelVerifyArgs),
    /// Print this CPU's kind as the engine sees it: the key of `[router.confidence_by_cpu]`
    /// under which a gate calibrated on this machine's int4-fast answers belongs.
    Cpu(ModelCpuArgs),
}

#[derive(Debug, Args)]
pub struct ModelCpuArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelKeygenArgs {
    /// Where to write the pair: PREFIX.key and PREFIX.pub (never over existing files).
    #[arg(long)]
    pub out: PathBuf,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelSignArgs {
    /// The private key file from `tiergate model keygen`.
    #[arg(long)]
    pub key: PathBuf,

    /// The model folder (manifest.json and the files it lists).
    pub dir: PathBuf,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelVerifyArgs {
    /// Public key files to trust (repeat the flag, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    pub trusted_keys: Vec<PathBuf>,

    /// The model folder.
    pub dir: PathBuf,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random API key and the `key_sha256` line for the tenant's config.
    New(KeysNewArgs),
    /// Read an API key from stdin (one line) and print its `key_sha256` (SHA-256, hex).
    Hash(KeysHashArgs),
}

#[derive(Debug, Args)]
pub struct KeysNewArgs {
    /// The tenant the key is for (`[[tenants]] name`); printed in the config snippet.
    #[arg(long)]
    pub tenant: String,

    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeysHashArgs {
    #[arg(long)]
    pub json: bool,
}
