//! One ONNX Runtime session of a decoder-with-past graph, and its KV cache.
//!
//! Handles both graph styles of the contract: GPT-2 (learned positions, `position_ids` input)
//! and Llama (rotary positions, grouped-query attention, `position_ids` optional).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::manifest::Manifest;

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
    fn level(self) -> GraphOptimizationLevel {
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
}

/// Graph IO names resolved per layer.
#[derive(Debug, Clone)]
struct ResolvedIo {
    input_ids: String,
    attention_mask: String,
    position_ids: Option<String>,
    logits: String,
    past_keys: Vec<String>,
    past_values: Vec<String>,
    present_keys: Vec<String>,
    present_values: Vec<String>,
}

impl ResolvedIo {
    fn new(manifest: &Manifest) -> ResolvedIo {
        let io = &manifest.io;
        let per_layer = |pattern: &str| -> Vec<String> {
            (0..manifest.num_layers)
                .map(|layer| Manifest::layer_name(pattern, layer))
                .collect()
        };
        ResolvedIo {
            input_ids: io.input_ids.clone(),
            attention_mask: io.attention_mask.clone(),
            position_ids: io.position_ids.clone(),
            logits: io.logits.clone(),
            past_keys: per_layer(&io.past_key),
            past_values: per_layer(&io.past_value),
            present_keys: per_layer(&io.present_key),
            present_values: per_layer(&io.present_value),
        }
    }

    fn inputs(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = [&self.input_ids, &self.attention_mask]
            .into_iter()
            .chain(&self.position_ids)
            .chain(&self.past_keys)
            .chain(&self.past_values)
            .cloned()
            .collect();
        names.retain(|n| !n.is_empty());
        names
    }

    fn outputs(&self) -> BTreeSet<String> {
        std::iter::once(&self.logits)
            .chain(&self.present_keys)
            .chain(&self.present_values)
            .cloned()
            .collect()
    }
}

/// Past keys and values per layer, `[1, kv_heads, len, head_dim]` each.
#[derive(Debug)]
pub(crate) struct KvCache {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    len: usize,
}

/// Logits of a forward pass: `rows` positions, `vocab` wide.
#[derive(Debug)]
pub(crate) struct Logits {
    pub data: Vec<f32>,
    pub vocab: usize,
}

impl Logits {
    pub(crate) fn last(&self) -> &[f32] {
        let start = self.data.len().saturating_sub(self.vocab);
        &self.data[start..]
    }
}

#[derive(Debug)]
pub(crate) struct ModelSession {
    session: Session,
    io: ResolvedIo,
    num_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    context_length: usize,
}

impl ModelSession {
    pub(crate) fn open(
        environment: &Environment,
        model_path: &Path,
        manifest: &Manifest,
        options: &SessionOptions,
    ) -> Result<ModelSession, EngineError> {
        let cached = options
            .optimized_model
            .as_deref()
            .filter(|path| path.is_file());
        let source = cached.unwrap_or(model_path);
        let mut builder = Session::builder(environment)
            .map_err(EngineError::runtime)?
            .with_intra_threads(options.intra_op_threads)
            .map_err(EngineError::runtime)?
            .with_optimization_level(options.graph_optimization.level())
            .map_err(EngineError::runtime)?;
        // Write the optimised graph to a temporary name, then rename: another process (or a
        // later start) never sees a half-written file.
        let mut pending_cache = None;
        if let (None, Some(target)) = (cached, options.optimized_model.as_deref()) {
            let temporary = target.with_extension(format!("tmp-{}", std::process::id()));
            builder = builder
                .with_optimized_model_path(&temporary)
                .map_err(EngineError::runtime)?;
            pending_cache = Some((temporary, target.to_path_buf()));
        }
        let session = builder
            .commit_from_file(source)
            .map_err(|e| EngineError::Runtime(format!("loading {}: {e}", source.display())))?;
        if let Some((temporary, target)) = pending_cache
            && let Err(e) = std::fs::rename(&temporary, &target)
        {
            tracing::warn!(error = %e, path = %target.display(), "could not store the optimised model");
        }
        let model = ModelSession {
            session,
            io: ResolvedIo::new(manifest),
            num_kv_heads: manifest.num_kv_heads,
            head_dim: manifest.head_dim,
            vocab_size: manifest.vocab_size,
            context_length: manifest.context_length,
        };
        model.check_io(source)?;
        Ok(model)
    }

    /// The graph must have exactly the inputs and outputs the manifest names.
    fn check_io(&self, path: &Path) -> Result<(), EngineError> {
        let actual_inputs: BTreeSet<String> = self
            .session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let actual_outputs: BTreeSet<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let expected_inputs = self.io.inputs();
        let expected_outputs = self.io.outputs();
        let missing_inputs: Vec<String> = expected_inputs
            .difference(&actual_inputs)
            .cloned()
            .collect();
        let missing_outputs: Vec<String> = expected_outputs
            .difference(&actual_outputs)
            .cloned()
            .collect();
        let unexpected_inputs: Vec<String> = actual_inputs
            .difference(&expected_inputs)
            .cloned()
            .collect();
        let unexpected_outputs: Vec<String> = actual_outputs
            .difference(&expected_outputs)
            .cloned()
            .collect();
        if missing_inputs.is_empty()
            && missing_outputs.is_empty()
            && unexpected_inputs.is_empty()
            && unexpected_outputs.is_empty()
        {
            return Ok(());
        }
        Err(EngineError::GraphIoMismatch {
            path: path.to_path_buf(),
            missing_inputs,
            missing_outputs,
            unexpected_inputs,
            unexpected_outputs,
        })
    }

    pub(crate) fn context_length(&self) -> usize {
        self.context_length
    }

    /// A cache holding nothing: zero-length past tensors, as the graph expects for prefill.
    pub(crate) fn empty_cache(&self) -> Result<KvCache, EngineError> {
        let layers = self.io.past_keys.len();
        let empty = || -> Result<DynValue, EngineError> {
            let shape = [1usize, self.num_kv_heads, 0, self.head_dim];
            Ok(Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                .map_err(EngineError::runtime)?
                .into_dyn())
        };
        Ok(KvCache {
            keys: (0..layers).map(|_| empty()).collect::<Result<_, _>>()?,
            values: (0..layers).map(|_| empty()).collect::<Result<_, _>>()?,
            len: 0,
        })
    }

    /// Runs `ids` after the cached positions. With `all_rows` the logits of every position are
    /// returned (prefill scoring), otherwise only the last row. Returns the time spent inside
    /// `Session::run` too.
    pub(crate) fn forward(
        &mut self,
        ids: &[u32],
        cache: &mut KvCache,
        all_rows: bool,
    ) -> Result<(Logits, Duration), EngineError> {
        let past = cache.len;
        let seq = ids.len();
        if seq == 0 {
            return Err(EngineError::Runtime(
                "a forward pass needs at least one token".into(),
            ));
        }
        let input_ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + 2 * self.io.past_keys.len());
        inputs.push((
            Cow::Borrowed(self.io.input_ids.as_str()),
            tensor_i64([1, seq], input_ids)?,
        ));
        inputs.push((
            Cow::Borrowed(self.io.attention_mask.as_str()),
            tensor_i64([1, past + seq], vec![1; past + seq])?,
        ));
        if let Some(position_ids) = &self.io.position_ids {
            let positions = (past..past + seq).map(|p| p as i64).collect();
            inputs.push((
                Cow::Borrowed(position_ids.as_str()),
                tensor_i64([1, seq], positions)?,
            ));
        }
        let keys = std::mem::take(&mut cache.keys);
        let values = std::mem::take(&mut cache.values);
        for (name, value) in self.io.past_keys.iter().zip(keys) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        for (name, value) in self.io.past_values.iter().zip(values) {
            inputs.push((Cow::Borrowed(name.as_str()), value.into()));
        }

        let started = Instant::now();
        let mut outputs = self.session.run(inputs).map_err(EngineError::runtime)?;
        let run_time = started.elapsed();

        let logits_value = outputs
            .get(&self.io.logits)
            .ok_or_else(|| EngineError::Runtime(format!("no `{}` output", self.io.logits)))?;
        let (shape, data) = logits_value
            .try_extract_tensor::<f32>()
            .map_err(EngineError::runtime)?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims != [1, seq as i64, self.vocab_size as i64] {
            return Err(EngineError::Runtime(format!(
                "logits have shape {dims:?}, expected [1, {seq}, {}]",
                self.vocab_size
            )));
        }
        let data = if all_rows {
            data.to_vec()
        } else {
            data[(seq - 1) * self.vocab_size..].to_vec()
        };
        let logits = Logits {
            data,
            vocab: self.vocab_size,
        };

        let mut take = |name: &str| {
            outputs
                .remove(name)
                .ok_or_else(|| EngineError::Runtime(format!("no `{name}` output")))
        };
        cache.keys = self
            .io
            .present_keys
            .iter()
            .map(|name| take(name))
            .collect::<Result<_, _>>()?;
        cache.values = self
            .io
            .present_values
            .iter()
            .map(|name| take(name))
            .collect::<Result<_, _>>()?;
        cache.len = past + seq;
        Ok((logits, run_time))
    }
}

fn tensor_i64(
    shape: [usize; 2],
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, EngineError> {
    Ok(Tensor::<i64>::from_array((shape, data))
        .map_err(EngineError::runtime)?
        .into_dyn()
        .into())
}
