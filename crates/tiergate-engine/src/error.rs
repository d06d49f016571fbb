//! One error type for everything the engine can refuse or fail at, with a coarse class that the
//! servers map to a status (HTTP 400/429/503/500, gRPC INVALID_ARGUMENT/RESOURCE_EXHAUSTED/...).

use std::path::PathBuf;

/// How a caller should treat an [`EngineError`]: the request was bad, the engine is busy, the
/// engine cannot serve at all, or a bug / runtime failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request itself is wrong (empty prompt, too long, bad sampling parameters).
    InvalidRequest,
    /// The queue is full: retry later (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    Overloaded,
    /// The engine cannot serve (model or runtime library missing or broken, workers gone).
    Unavailable,
    /// A failure inside ONNX Runtime or the tokenizer while serving a valid request.
    Internal,
}

impl ErrorClass {
    /// A short, low-cardinality label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    // --- ONNX Runtime library ---
    #[error(
        "ONNX Runtime library not found (looked at: {tried}); run `make setup` \
         (or ./scripts/fetch-onnxruntime.sh) or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    OrtLibraryNotFound { tried: String },
    #[error(
        "cannot load the ONNX Runtime library {}: {reason}; run `make setup` \
         (or ./scripts/fetch-onnxruntime.sh) or set ORT_DYLIB_PATH to a libonnxruntime.so of 1.31 or newer",
        path.display()
    )]
    OrtLibraryInvalid { path: PathBuf, reason: String },

    // --- model directory ---
    #[error("model file {} is missing: {reason}", path.display())]
    ModelFileMissing { path: PathBuf, reason: String },
    #[error("model manifest {} is invalid: {reason}", path.display())]
    ManifestInvalid { path: PathBuf, reason: String },
    #[error(
        "model file {} does not match its manifest: sha256 {actual}, expected {expected}",
        path.display()
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "model file {} is {actual} bytes but its manifest says {expected} (truncated or replaced?)",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("model variant {variant} is not listed in the manifest of {}", model_dir.display())]
    VariantMissing { model_dir: PathBuf, variant: String },
    #[error(
        "graph {} does not match the manifest: missing inputs [{}], missing outputs [{}], unexpected inputs [{}], unexpected outputs [{}]",
        path.display(),
        missing_inputs.join(", "),
        missing_outputs.join(", "),
        unexpected_inputs.join(", "),
        unexpected_outputs.join(", ")
    )]
    GraphIoMismatch {
        path: PathBuf,
        missing_inputs: Vec<String>,
        missing_outputs: Vec<String>,
        unexpected_inputs: Vec<String>,
        unexpected_outputs: Vec<String>,
    },
    #[error("tokenizer {} cannot be used: {reason}", path.display())]
    TokenizerInvalid { path: PathBuf, reason: String },
    #[error("invalid engine configuration: {0}")]
    ConfigInvalid(String),

    // --- requests ---
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// `tokens` is the exact count, or for a prompt far beyond the context a lower bound
    /// computed without tokenizing all of it.
    #[error("the prompt needs at least {tokens} tokens; the model's context holds {limit}, so at most {} prompt tokens fit", limit.saturating_sub(1))]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("the model's chat template refused the conversation: {0}")]
    ChatTemplate(String),
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    #[error("the engine queue is full ({capacity} requests waiting); retry later")]
    Overloaded { capacity: usize },

    // --- serving ---
    #[error("the engine workers have stopped")]
    WorkersGone,
    #[error("ONNX Runtime failed: {0}")]
    Runtime(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::EmptyPrompt
            | Self::PromptTooLong { .. }
            | Self::InvalidSampling(_)
            | Self::ChatTemplate(_) => ErrorClass::InvalidRequest,
            Self::Overloaded { .. } => ErrorClass::Overloaded,
            Self::OrtLibraryNotFound { .. }
            | Self::OrtLibraryInvalid { .. }
            | Self::ModelFileMissing { .. }
            | Self::ManifestInvalid { .. }
            | Self::HashMismatch { .. }
            | Self::SizeMismatch { .. }
            | Self::VariantMissing { .. }
            | Self::GraphIoMismatch { .. }
            | Self::TokenizerInvalid { .. }
            | Self::ConfigInvalid(_)
            | Self::WorkersGone => ErrorClass::Unavailable,
            Self::Runtime(_) | Self::Tokenizer(_) => ErrorClass::Internal,
        }
    }

    /// Turns any `ort` error (including `Error<SessionBuilder>`, which is not `Send + Sync`) into
    /// a plain message.
    pub(crate) fn runtime(error: impl std::fmt::Display) -> Self {
        Self::Runtime(error.to_string())
    }
}
