//! How the engine asks ONNX Runtime to build and run a session: the settings of
//! [`crate::session::ModelSession::open`], from `[engine]`.

use std::path::PathBuf;

use ort::session::builder::GraphOptimizationLevel;
use serde::{Deserialize, Serialize};

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl GraphOptimization {
    pub(crate) fn level(self) -> GraphOptimizationLevel {
        match self {
            Self::Disable => GraphOptimizationLevel::Disable,
            Self::Basic => GraphOptimizationLevel::Level1,
            Self::Extended => GraphOptimizationLevel::Level2,
            Self::All => GraphOptimizationLevel::All,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Basic => "basic",
            Self::Extended => "extended",
            Self::All => "all",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SessionOptions {
    pub intra_op_threads: usize,
    pub graph_optimization: GraphOptimization,
    /// Write the optimised graph here (first worker only) / load it from here when present.
    pub optimized_model: Option<PathBuf>,
    /// Let idle intra-op threads spin before sleeping (ONNX Runtime's default).
    pub intra_op_spinning: bool,
    /// The spin's length in microseconds (0: ONNX Runtime's own).
    pub intra_op_spin_duration_us: u32,
    /// ONNX Runtime's CPU arena for activations and outputs (its default) or plain malloc.
    pub memory_arena: bool,
    /// Prompt positions per prefill run (0: the whole prompt in one run).
    pub prefill_chunk: usize,
    /// Bind past and present to one buffer when the graph allows it (`KvCacheLayout`).
    pub share_kv_buffer: bool,
}
