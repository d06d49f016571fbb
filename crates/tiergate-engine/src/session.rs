//! One ONNX Runtime session of a decoder-with-past graph, and its KV cache.
//!
//! Handles both graph styles of the contract: GPT-2 (learned positions, `position_ids` input)
//! and Llama (rotary positions, grouped-query attention, `position_ids` optional).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use crate::backend::{Backend, Logits};
use crate::embedding::{EmbeddingSource, TokenRows};
use crate::error::EngineError;
pub(crate) use crate::kv_cache::KvCache;
use crate::kv_cache::{KvShape, SharedBuffers};
use crate::manifest::{KvCacheLayout, Manifest};
use crate::progress::Progress;
pub(crate) use crate::session_options::{GraphOptimization, SessionOptions};

mod run_io;
use run_io::{LogitsShape, Rows, StepInputs, read_logits, tensor_i64};

/// Graph IO names resolved per layer.
#[derive(Debug, Clone)]
struct ResolvedIo {
    /// `io.input_ids`, or `io.inputs_embeds` for a graph fed embedding rows.
    tokens: String,
    attention_mask: String,
    position_ids: Option<String>,
    logits_to_keep: Option<String>,
    logits: String,
    past_keys: Vec<String>,
    past_values: Vec<String>,
    present_keys: Vec<String>,
    present_values: Vec<String>,
}

impl ResolvedIo {
    fn new(manifest: &Manifest, embeds: bool) -> ResolvedIo {
        let io = &manifest.io;
        let per_layer = |pattern: &str| -> Vec<String> {
            (0..manifest.num_layers)
                .map(|layer| Manifest::layer_name(pattern, layer))
                .collect()
        };
        ResolvedIo {
            tokens: match (&io.inputs_embeds, embeds) {
                (Some(name), true) => name.clone(),
                _ => io.input_ids.clone(),
            },
            attention_mask: io.attention_mask.clone(),
            position_ids: io.position_ids.clone(),
            logits_to_keep: io.logits_to_keep.clone(),
            logits: io.logits.clone(),
            past_keys: per_layer(&io.past_key),
            past_values: per_layer(&io.past_value),
            present_keys: per_layer(&io.present_key),
            present_values: per_layer(&io.present_value),
        }
    }

    /// A run's non-cache inputs with their graph names.
    fn named(&self, inputs: StepInputs) -> Vec<(&str, DynValue)> {
        let mut named = vec![
            (self.tokens.as_str(), inputs.tokens),
            (self.attention_mask.as_str(), inputs.attention_mask),
        ];
        if let (Some(name), Some(value)) = (&self.position_ids, inputs.position_ids) {
            named.push((name.as_str(), value));
        }
        if let (Some(name), Some(value)) = (&self.logits_to_keep, inputs.logits_to_keep) {
            named.push((name.as_str(), value));
        }
        named
    }

    fn inputs(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = [&self.tokens, &self.attention_mask]
            .into_iter()
            .chain(&self.position_ids)
            .chain(&self.logits_to_keep)
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

#[derive(Debug)]
pub(crate) struct ModelSession {
    session: Session,
    io: ResolvedIo,
    kv: KvShape,
    /// Past and present bound to one buffer (the graph writes new positions in place).
    shared_kv: bool,
    /// Where a shared-buffer run's logits go.
    cpu_memory: MemoryInfo<'static>,
    /// A graph taking `inputs_embeds`: the table its rows are read from.
    embedding_rows: Option<TokenRows>,
    vocab_size: usize,
    context_length: usize,
    prefill_chunk: usize,
    /// Told after every forward pass (a worker's: readiness tells a stuck one from a busy one).
    progress: Option<Arc<Progress>>,
}

impl ModelSession {
    pub(crate) fn open(
        environment: &Environment,
        model_path: &Path,
        embedding: Option<&EmbeddingSource>,
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
            .with_inter_threads(1)
            .map_err(EngineError::runtime)?
            .with_intra_op_spinning(options.intra_op_spinning)
            .map_err(EngineError::runtime)?;
        if options.intra_op_spinning && options.intra_op_spin_duration_us > 0 {
            builder = builder
                .with_config_entry(
                    "session.intra_op.spin_duration_us",
                    options.intra_op_spin_duration_us.to_string(),
                )
                .map_err(EngineError::runtime)?;
        }
        builder = builder
            .with_execution_providers([ep::CPU::default()
                .with_arena_allocator(options.memory_arena)
                .build()])
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
        let mut model = ModelSession {
            session,
            io: ResolvedIo::new(manifest, embedding.is_some()),
            kv: KvShape {
                layers: manifest.num_layers,
                heads: manifest.num_kv_heads,
                dim: manifest.head_dim,
            },
            shared_kv: options.share_kv_buffer && manifest.kv_cache == KvCacheLayout::SharedBuffer,
            cpu_memory: MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(EngineError::runtime)?,
            embedding_rows: None,
            vocab_size: manifest.vocab_size,
            context_length: manifest.context_length,
            prefill_chunk: options.prefill_chunk,
            progress: None,
        };
        model.check_io(source)?;
        if let Some(embedding) = embedding {
            let hidden = model.embeds_width(source)?;
            model.embedding_rows = Some(embedding.open(hidden, manifest.vocab_size)?);
        }
        Ok(model)
    }

    /// Beats `progress` after every forward pass from now on.
    pub(crate) fn report_progress_to(&mut self, progress: Arc<Progress>) {
        self.progress = Some(progress);
    }

    /// The width of the graph's `inputs_embeds` (its last dimension, which must be fixed).
    fn embeds_width(&self, path: &Path) -> Result<usize, EngineError> {
        let width = self
            .session
            .inputs()
            .iter()
            .find(|input| input.name() == self.io.tokens)
            .and_then(|input| input.dtype().tensor_shape())
            .and_then(|shape| shape.last().copied());
        match width {
            Some(width) if width > 0 => Ok(width as usize),
            _ => Err(EngineError::ManifestInvalid {
                path: path.to_path_buf(),
                reason: format!(
                    "the graph's `{}` needs a fixed last dimension (the embedding width)",
                    self.io.tokens
                ),
            }),
        }
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

    /// Runs the graph: `ids` is `[batch, seq]` row-major; the cache's past goes in and the
    /// presents come back into it. Returns the logits `rows` asks for, the NLL sum of its
    /// targets (`Rows::Scored`) read from ONNX Runtime's buffer in place, and the time inside
    /// `Session::run`.
    fn run(
        &mut self,
        ids: &[u32],
        seq: usize,
        cache: &mut KvCache,
        rows: Rows<'_>,
    ) -> Result<(Logits, Option<f64>, Duration), EngineError> {
        let started = Instant::now();
        let batch = cache.batch_size();
        if seq == 0 || ids.len() != batch * seq {
            return Err(EngineError::Runtime(format!(
                "a forward pass needs {batch} x {seq} > 0 tokens, got {}",
                ids.len()
            )));
        }
        let past = cache.len;
        let total = past + seq;
        let mut mask = Vec::with_capacity(batch * total);
        let mut positions = Vec::with_capacity(batch * seq);
        for &length in &cache.lengths {
            let padding = past - length.min(past);
            mask.extend(std::iter::repeat_n(0i64, padding));
            mask.extend(std::iter::repeat_n(1i64, total - padding));
            positions.extend((length..length + seq).map(|p| p as i64));
        }
        // A graph that can return the last position alone does so when nothing else is read.
        let last_only = matches!(rows, Rows::Last) && self.io.logits_to_keep.is_some();
        let inputs = StepInputs {
            tokens: self.token_input(ids, batch, seq)?,
            attention_mask: tensor_i64([batch, total], mask)?,
            position_ids: match self.io.position_ids {
                Some(_) => Some(tensor_i64([batch, seq], positions)?),
                None => None,
            },
            logits_to_keep: match self.io.logits_to_keep {
                Some(_) => Some(tensor_i64([1], vec![i64::from(last_only)])?),
                None => None,
            },
        };
        let shape = LogitsShape {
            batch,
            seq: if last_only { 1 } else { seq },
            vocab: self.vocab_size,
        };
        let result = match self.shared_buffers() {
            Some(buffers) => {
                self.kv.reserve(buffers, cache, total)?;
                self.run_shared(inputs, cache, shape, rows)
            }
            None => self.run_concat(inputs, cache, shape, rows),
        };
        if let Some(progress) = &self.progress {
            progress.pass_ended(started.elapsed());
        }
        let result = result?;
        cache.len = total;
        if !self.shared_kv {
            cache.capacity = total;
        }
        for length in &mut cache.lengths {
            *length += seq;
        }
        Ok(result)
    }

    /// A concat graph: the cache's tensors move into the run and the presents move back (no
    /// copies here; the graph itself concatenates past and new positions).
    fn run_concat(
        &mut self,
        inputs: StepInputs,
        cache: &mut KvCache,
        shape: LogitsShape,
        rows: Rows<'_>,
    ) -> Result<(Logits, Option<f64>, Duration), EngineError> {
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + 2 * self.io.past_keys.len());
        for (name, value) in self.io.named(inputs) {
            feeds.push((Cow::Borrowed(name), value.into()));
        }
        let keys = std::mem::take(&mut cache.keys);
        let values = std::mem::take(&mut cache.values);
        for (name, value) in self.io.past_keys.iter().zip(keys) {
            feeds.push((Cow::Borrowed(name.as_str()), value.into()));
        }
        for (name, value) in self.io.past_values.iter().zip(values) {
            feeds.push((Cow::Borrowed(name.as_str()), value.into()));
        }

        let started = Instant::now();
        let mut outputs = self.session.run(feeds).map_err(EngineError::runtime)?;
        let run_time = started.elapsed();

        let logits_value = outputs
            .get(&self.io.logits)
            .ok_or_else(|| EngineError::Runtime(format!("no `{}` output", self.io.logits)))?;
        let (logits, nll) = read_logits(logits_value, shape, rows)?;
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
        Ok((logits, nll, run_time))
    }

    /// A shared-buffer graph: each past tensor is bound as its layer's present too, so the
    /// graph writes the new positions into the room `reserve` made and copies nothing else.
    /// The cache keeps that binding; a run binds only its own inputs and the logits.
    fn run_shared(
        &mut self,
        inputs: StepInputs,
        cache: &mut KvCache,
        shape: LogitsShape,
        rows: Rows<'_>,
    ) -> Result<(Logits, Option<f64>, Duration), EngineError> {
        let binding = match &mut cache.binding {
            Some(binding) => binding,
            empty => empty.insert(self.bind_cache(&mut cache.keys, &mut cache.values)?),
        };
        for (name, value) in self.io.named(inputs) {
            binding
                .bind_input(name, &value)
                .map_err(EngineError::runtime)?;
        }
        // Bound anew every run: a bound output keeps its first run's shape, and the logits'
        // shape changes (a prefill chunk, then one position).
        binding
            .bind_output_to_device(self.io.logits.as_str(), &self.cpu_memory)
            .map_err(EngineError::runtime)?;

        let started = Instant::now();
        let outputs = self
            .session
            .run_binding(binding)
            .map_err(EngineError::runtime)?;
        let run_time = started.elapsed();

        let logits_value = outputs
            .get(&self.io.logits)
            .ok_or_else(|| EngineError::Runtime(format!("no `{}` output", self.io.logits)))?;
        let (logits, nll) = read_logits(logits_value, shape, rows)?;
        Ok((logits, nll, run_time))
    }

    /// A binding with every layer's cache tensor as its past input and its present output.
    fn bind_cache(
        &self,
        keys: &mut [DynValue],
        values: &mut [DynValue],
    ) -> Result<IoBinding, EngineError> {
        let mut binding = self
            .session
            .create_binding()
            .map_err(EngineError::runtime)?;
        let layers = [
            (&self.io.past_keys, &self.io.present_keys, keys),
            (&self.io.past_values, &self.io.present_values, values),
        ];
        for (past_names, present_names, tensors) in layers {
            for ((past, present), tensor) in past_names.iter().zip(present_names).zip(tensors) {
                binding
                    .bind_input(past.as_str(), &*tensor)
                    .map_err(EngineError::runtime)?;
                binding
                    .bind_output(present.as_str(), tensor)
                    .map_err(EngineError::runtime)?;
            }
        }
        Ok(binding)
    }

    /// Where a shared-buffer cache's tensors come from (`None`: a concat graph).
    fn shared_buffers(&self) -> Option<SharedBuffers<'_>> {
        self.shared_kv.then(|| SharedBuffers {
            allocator: self.session.allocator(),
            limit: self.context_length,
        })
    }
}

impl Backend for ModelSession {
    type Cache = KvCache;

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// A cache holding nothing: zero-length past tensors, as the graph expects for prefill.
    fn empty_cache(&self) -> Result<KvCache, EngineError> {
        self.kv.empty()
    }

    fn forward(
        &mut self,
        ids: &[u32],
        cache: &mut KvCache,
        all_rows: bool,
    ) -> Result<(Logits, Duration), EngineError> {
        one_row(cache)?;
        let rows = if all_rows { Rows::All } else { Rows::Last };
        let (logits, _, run_time) = self.run(ids, ids.len(), cache, rows)?;
        Ok((logits, run_time))
    }

    fn forward_scored(
        &mut self,
        ids: &[u32],
        cache: &mut KvCache,
        targets: &[u32],
    ) -> Result<(Logits, Option<f64>, Duration), EngineError> {
        one_row(cache)?;
        self.run(ids, ids.len(), cache, Rows::Scored(targets))
    }

    fn decode_batch(
        &mut self,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<(Logits, Duration), EngineError> {
        let (logits, _, run_time) = self.run(tokens, 1, cache, Rows::Last)?;
        Ok((logits, run_time))
    }

    fn batch_size(cache: &KvCache) -> usize {
        cache.batch_size()
    }

    fn gather(
        &mut self,
        caches: &[&KvCache],
        rows: &[(usize, usize)],
    ) -> Result<KvCache, EngineError> {
        self.kv.gather(caches, rows, self.shared_buffers())
    }
}

/// `forward` and `forward_scored` run one sequence; the batch scheduler uses `decode_batch`.
fn one_row(cache: &KvCache) -> Result<(), EngineError> {
    match cache.batch_size() {
        1 => Ok(()),
        rows => Err(EngineError::Runtime(format!(
            "forward takes a one-row cache, this one has {rows} rows"
        ))),
    }
}

impl ModelSession {
    /// `ids` (`[batch, seq]`) as the graph takes them: the ids, or their embedding rows.
    fn token_input(&self, ids: &[u32], batch: usize, seq: usize) -> Result<DynValue, EngineError> {
        match &self.embedding_rows {
            None => tensor_i64([batch, seq], ids.iter().map(|&id| i64::from(id)).collect()),
            Some(rows) => {
                let mut data = Vec::new();
                rows.append(ids, &mut data)?;
                Ok(
                    Tensor::<f32>::from_array(([batch, seq, rows.hidden()], data))
                        .map_err(EngineError::runtime)?
                        .into_dyn(),
                )
            }
        }
    }
}
