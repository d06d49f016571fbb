//! The engine handle: load a model directory, then generate or score from async code.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::cpu::{CpuKind, Int8Kernels};
use crate::embedding::EmbeddingSource;
use crate::error::EngineError;
use crate::events::{Generation, GenerationEvent, GenerationRequest, PromptScore};
use crate::generate::GenerationJob;
use crate::manifest::{Architecture, Manifest, ModelVariant};
use crate::memory::{self, MemoryUsage};
use crate::prompt::{ChatRenderer, Prompt};
use crate::runtime;
use crate::session::{GraphOptimization, SessionOptions};
use crate::tokenizer::TextCodec;
use crate::variant::{VariantChoice, resolve_variant};
use crate::worker::{BatchSizes, EngineStats, Job, PoolSpec, WorkerPool};

/// How to load and run the local model. Sits in the node's TOML config as is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Model directory with `manifest.json`, the ONNX graphs and `tokenizer.json`.
    pub model_dir: PathBuf,
    /// Which graph of the manifest to run, or `auto`: the fastest graph on this CPU that fits
    /// `memory_budget_mb` (crate::variant).
    pub variant: VariantChoice,
    /// The node's resident-memory budget (`[device] memory_budget_mb`), which `auto` keeps to.
    /// Not an `[engine]` key: the node sets it from its device section.
    #[serde(skip)]
    pub memory_budget_mb: Option<u64>,
    /// Whether `auto` may run int4-fast on x86-64 with AVX-512 (crate::variant). It is faster
    /// there, but its answers are not AVX2's, so a node allows it only when its router has a gate
    /// calibrated on this CPU's kind (`router.confidence_by_cpu.<kind>.int4-fast`); the
    /// single-model commands (`tiergate generate`), which gate nothing, allow it. Not an
    /// `[engine]` key.
    #[serde(skip)]
    pub int4_fast_with_avx512: bool,
    /// The ONNX Runtime library; when unset, `ORT_DYLIB_PATH`, then `.tools/onnxruntime/`.
    pub ort_library: Option<PathBuf>,
    /// Worker threads, each with its own session (concurrent generations).
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default, one per core).
    pub intra_op_threads: usize,
    /// Whether idle intra-op threads spin before sleeping. A decode step is ~800 small operators,
    /// each parallel one waking the pool: asleep, a worker takes tens of microseconds to wake on
    /// a VM, and at 2 threads int4-fast then runs no faster than at 1 (docs/benchmarks.md,
    /// "Intra-op spinning, bounded"). Matters only with `intra_op_threads` > 1.
    pub intra_op_spinning: bool,
    /// How long an idle intra-op thread spins before it sleeps, in microseconds (ONNX Runtime's
    /// `session.intra_op.spin_duration_us`): long enough to span the gaps between a step's
    /// parallel operators, short enough that an idle node burns no CPU between requests. 0 keeps
    /// ONNX Runtime's own spin (2^20 polls, ~40 ms of one core after every run).
    pub intra_op_spin_duration_us: u32,
    /// ONNX Runtime's CPU memory arena. Off, activations and outputs come from malloc and are
    /// returned after each run: a smaller resident set for the same speed (docs/benchmarks.md).
    pub memory_arena: bool,
    pub graph_optimization: GraphOptimization,
    /// Directory for optimised graphs, keyed by the graph's sha256 and the level: written on
    /// first load, loaded (skipping optimisation) after. With level `all` the file suits only
    /// this kind of CPU, so keep the cache on the machine that made it.
    pub optimized_model_cache: Option<PathBuf>,
    /// Requests that may wait for a worker; one more gets `Overloaded`. 0 accepts a request only
    /// when a worker is idle.
    pub queue_capacity: usize,
    /// Generations one worker decodes together, one session run per step for all of them
    /// (continuous batching: a new request joins after its prefill, a finished one leaves at
    /// once). 1 runs every generation alone, one after the other.
    pub max_batch: usize,
    /// With `max_batch` > 1: prompt positions a worker prefills between two decode steps of its
    /// running generations. A new prompt runs a piece at a time (several short ones share a
    /// step's budget), so the streams already running get a token between pieces instead of
    /// waiting for the whole prompt (a 1,000-token prompt is seconds on an edge CPU). Smaller
    /// bounds the pause more tightly and costs more throughput when many requests arrive at once
    /// (128: ~7% at 8 streams, 2 threads; 256: ~2%); 0 prefills every waiting prompt whole before
    /// the next step, with the stalls back (docs/benchmarks.md).
    pub prefill_per_step: usize,
    /// Caps the model's context (the manifest's `context_length`): prompts of this many tokens
    /// or more are refused and generation stops at it. Unset: the manifest's.
    pub context_length: Option<usize>,
    /// Once every session is loaded, return the allocator's free memory to the system (what
    /// loading allocated and freed: -14.6 MB after load with the int4 SmolLM2, -6 MB after 40
    /// requests; docs/benchmarks.md).
    pub trim_heap_after_load: bool,
    /// A worker idle for 100 ms after running something returns the allocator's free memory to
    /// the system, once per idle spell: the node's resident set at rest is then not the
    /// high-water mark of its last requests (docs/benchmarks.md, "Memory (RSS)"). A request
    /// arriving during the trim waits for it.
    pub trim_heap_when_idle: bool,
    /// Prompt positions per prefill run; longer prompts run in several, the KV cache carrying
    /// over. Each position's logits row is vocabulary-wide (196 KB for SmolLM2) and the whole
    /// prompt's rows are held at once several times over, so this bounds a long prompt's memory
    /// peak. 0 runs every prompt in one pass.
    pub prefill_chunk: usize,
    /// When the graph allows it (the manifest's `kv_cache = "shared_buffer"`), bind each
    /// layer's past and present to one buffer so a run writes only the new positions, instead
    /// of ONNX Runtime copying the whole cache into a new present on every run: the same
    /// logits, bit for bit, and a decode step 4% cheaper at 60 cached positions, 26% at 1500
    /// (docs/benchmarks.md, "Long contexts"). Off: every run copies, as before.
    pub share_kv_buffer: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model_dir: PathBuf::from("models/edge"),
            variant: VariantChoice::default(),
            memory_budget_mb: None,
            int4_fast_with_avx512: false,
            ort_library: None,
            workers: 1,
            intra_op_threads: 1,
            intra_op_spinning: true,
            intra_op_spin_duration_us: 20,
            memory_arena: false,
            graph_optimization: GraphOptimization::All,
            optimized_model_cache: None,
            queue_capacity: 16,
            max_batch: 1,
            prefill_per_step: 256,
            context_length: None,
            trim_heap_after_load: true,
            trim_heap_when_idle: true,
            prefill_chunk: 128,
            share_kv_buffer: true,
        }
    }
}

impl EngineConfig {
    pub fn for_model(model_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            model_dir: model_dir.into(),
            ..EngineConfig::default()
        }
    }
}

/// What is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub architecture: Architecture,
    pub context_length: usize,
    pub variant: ModelVariant,
    /// The CPU kind it runs on (the int8 kernel family), detected once at load: with `variant`
    /// it picks the router's early-exit gate (`router.confidence_by_cpu`).
    pub cpu_kind: Int8Kernels,
    pub vocab_size: usize,
    pub model_dir: PathBuf,
}

/// A cheap, cloneable handle to a loaded model and its workers. The workers stop when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
struct EngineInner {
    info: ModelInfo,
    template: ChatRenderer,
    codec: Arc<TextCodec>,
    pool: WorkerPool,
    load_memory: Vec<LoadStage>,
}

/// The process's resident memory at one step of `Engine::load` (Linux only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadStage {
    pub stage: &'static str,
    pub memory: MemoryUsage,
}

/// Records the process's memory after a step of the load, where `/proc` reports it.
fn record(stages: &mut Vec<LoadStage>, stage: &'static str) {
    if let Some(memory) = MemoryUsage::current() {
        stages.push(LoadStage { stage, memory });
    }
}

impl Engine {
    /// Loads the model (verifying every file's hash and the graph's IO) and starts the workers.
    /// Blocking: call it before serving or from `spawn_blocking`.
    pub fn load(config: &EngineConfig) -> Result<Engine, EngineError> {
        if config.max_batch == 0 {
            return Err(EngineError::ConfigInvalid(
                "max_batch must be at least 1".into(),
            ));
        }
        if config.workers == 0 {
            return Err(EngineError::ConfigInvalid(
                "workers must be at least 1".into(),
            ));
        }
        let mut load_memory = Vec::new();
        record(&mut load_memory, "before load");
        let dir = &config.model_dir;
        let mut manifest = Manifest::load(dir)?;
        // Detected once: the graph `auto` runs and the gate the router picks both follow it.
        let cpu_kind = Int8Kernels::detect();
        let cpu = CpuKind::from(cpu_kind);
        let resolved = resolve_variant(
            config.variant,
            &manifest,
            cpu,
            config.memory_budget_mb,
            config.int4_fast_with_avx512,
        );
        let variant = resolved.variant;
        manifest.verify_variant(dir, variant)?;
        if let Some(cap) = config.context_length {
            if cap < 2 {
                return Err(EngineError::ConfigInvalid(
                    "context_length must be at least 2".into(),
                ));
            }
            manifest.context_length = manifest.context_length.min(cap);
        }
        let model_file =
            manifest
                .model_file(variant)
                .ok_or_else(|| EngineError::VariantMissing {
                    model_dir: dir.clone(),
                    variant: variant.to_string(),
                })?;
        let model_path = dir.join(&model_file.path);
        let optimized_model = config
            .optimized_model_cache
            .as_deref()
            .map(|cache| cache_file(cache, &model_file.sha256, config.graph_optimization));
        if let Some(parent) = optimized_model.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(parent).map_err(|e| {
                EngineError::ConfigInvalid(format!(
                    "optimized_model_cache {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let tokenizer_path = manifest
            .tokenizer_file()
            .map(|f| dir.join(&f.path))
            .ok_or_else(|| EngineError::ManifestInvalid {
                path: dir.join(crate::manifest::MANIFEST_FILE),
                reason: "no tokenizer file".into(),
            })?;
        let codec = Arc::new(TextCodec::load(&tokenizer_path, &manifest)?);
        record(&mut load_memory, "tokenizer loaded");
        let environment = runtime::environment(config.ort_library.as_deref())?;
        record(&mut load_memory, "ONNX Runtime environment");
        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            architecture: manifest.architecture,
            context_length: manifest.context_length,
            variant,
            cpu_kind,
            vocab_size: manifest.vocab_size,
            model_dir: dir.clone(),
        };
        let template = ChatRenderer::new(&manifest.chat_template, &manifest.special_tokens)
            .map_err(|reason| EngineError::ManifestInvalid {
                path: dir.join(crate::manifest::MANIFEST_FILE),
                reason,
            })?;
        let embedding = model_file.embedding.clone().map(|table| EmbeddingSource {
            dir: dir.clone(),
            table,
        });
        let pool = WorkerPool::start(PoolSpec {
            environment,
            model_path,
            embedding,
            manifest: Arc::new(manifest),
            codec: Arc::clone(&codec),
            options: SessionOptions {
                intra_op_threads: config.intra_op_threads,
                graph_optimization: config.graph_optimization,
                optimized_model,
                intra_op_spinning: config.intra_op_spinning,
                intra_op_spin_duration_us: config.intra_op_spin_duration_us,
                memory_arena: config.memory_arena,
                prefill_chunk: config.prefill_chunk,
                share_kv_buffer: config.share_kv_buffer,
            },
            workers: config.workers,
            queue_capacity: config.queue_capacity,
            batch: BatchSizes {
                max_batch: config.max_batch,
                shared_from: shared_batch_from(variant, cpu),
                prefill_per_step: config.prefill_per_step,
            },
            trim_heap_when_idle: config.trim_heap_when_idle,
        })?;
        record(&mut load_memory, "sessions created");
        if config.trim_heap_after_load {
            memory::trim_heap();
            record(&mut load_memory, "heap trimmed");
        }
        tracing::info!(
            model = %info.name,
            version = %info.version,
            variant = %info.variant,
            chosen = %resolved.reason,
            cpu = cpu.as_str(),
            int8_kernels = info.cpu_kind.as_str(),
            workers = config.workers,
            "engine loaded"
        );
        Ok(Engine {
            inner: Arc::new(EngineInner {
                info,
                template,
                codec,
                pool,
                load_memory,
            }),
        })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The process's resident memory at each step of the load (empty off Linux).
    pub fn load_memory(&self) -> &[LoadStage] {
        &self.inner.load_memory
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.pool.stats()
    }

    /// Worker threads alive now (each with its session). Zero means nothing can generate: a
    /// node reports itself not ready.
    pub fn workers_alive(&self) -> usize {
        self.inner.pool.workers_alive()
    }

    /// How long the engine has had work (a request queued or being generated) without any
    /// worker moving: no job taken, no forward pass ended. `None` while it has no work. A
    /// worker stuck in a pass that does not return (a stalled disk under the weights file, a
    /// starved CPU) is alive but makes this grow; one pass takes well under a second on an edge
    /// CPU (a prefill chunk of 128 positions), so seconds mean stuck. A node reports itself not
    /// ready past `server.engine_stall_timeout`.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.inner.pool.stalled_for()
    }

    /// [`Engine::stalled_for`] when it has reached `timeout`: the engine is stuck.
    pub fn stuck_past(&self, timeout: Duration) -> Option<Duration> {
        self.stalled_for().filter(|&stalled| stalled >= timeout)
    }

    /// The longest forward pass this engine has run (a prefill chunk, a batched step with a
    /// prefill piece): how late past a deadline it may notice it, since it looks between passes.
    pub fn longest_pass(&self) -> Duration {
        self.inner.pool.longest_pass()
    }

    /// Whether a request is queued or being generated. A process about to exit waits for this
    /// to turn false: a worker still inside a forward pass while the runtime's globals are torn
    /// down fails, or worse.
    pub fn has_work(&self) -> bool {
        self.inner.pool.has_work()
    }

    /// Requests waiting now, not yet started: for an engine worker, or (with `max_batch` > 1) in
    /// a worker's line for their prefill to begin.
    pub fn queue_depth(&self) -> usize {
        self.inner.pool.queue_depth()
    }

    /// The text the model sees for `prompt` (chat template applied to conversations).
    pub fn render(&self, prompt: &Prompt) -> Result<String, EngineError> {
        self.inner.template.render(prompt)
    }

    /// Token ids the model sees for `prompt`, checked against the context.
    ///
    /// Context policy: a prompt is never truncated. One of `context_length` tokens or more is
    /// refused with `PromptTooLong` (at least one position must stay free for the answer);
    /// during generation, when prompt + generated tokens reach `context_length`, generation
    /// stops with finish reason `length`.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        if prompt.is_blank() {
            return Err(EngineError::EmptyPrompt);
        }
        let rendered = self.render(prompt)?;
        let limit = self.inner.info.context_length;
        // Refuse a prompt that cannot fit before spending time (on the caller's thread) to
        // tokenize all of it.
        let at_least = self.inner.codec.min_tokens(&rendered);
        if at_least >= limit {
            return Err(EngineError::PromptTooLong {
                tokens: at_least,
                limit,
            });
        }
        let ids = self.inner.codec.encode(&rendered)?;
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        // At least one position must stay free for the answer.
        if ids.len() >= limit {
            return Err(EngineError::PromptTooLong {
                tokens: ids.len(),
                limit,
            });
        }
        Ok(ids)
    }

    /// Queues a generation and returns its event stream: `Started`, then `Token`s, then
    /// `Finished` (or one `Err`). Dropping the stream cancels the generation.
    pub fn generate_stream(
        &self,
        request: GenerationRequest,
    ) -> Result<GenerationStream, EngineError> {
        request.sampling.validate()?;
        let prompt_ids = self.tokenize(&request.prompt)?;
        let (events, receiver) = mpsc::unbounded_channel();
        self.inner.pool.submit(Job::Generate {
            job: GenerationJob {
                prompt_ids,
                sampling: request.sampling,
                deadline: request.deadline,
                queue_time: Duration::ZERO,
                score_prompt: request.score_prompt,
            },
            events,
        })?;
        Ok(GenerationStream {
            receiver,
            finished: false,
        })
    }

    /// Generates to the end and collects the answer.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let mut stream = self.generate_stream(request)?;
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut prompt_tokens = 0;
        let mut prompt_score = None;
        while let Some(event) = stream.next().await {
            match event? {
                GenerationEvent::Started {
                    prompt_tokens: n,
                    prompt_score: score,
                } => {
                    prompt_tokens = n;
                    prompt_score = score;
                }
                GenerationEvent::Token(token) => {
                    text.push_str(&token.text);
                    tokens.push(token);
                }
                GenerationEvent::Finished(summary) => {
                    return Ok(Generation {
                        text,
                        tokens,
                        prompt_tokens,
                        prompt_score,
                        finish_reason: summary.finish_reason,
                        timings: summary.timings,
                    });
                }
            }
        }
        Err(unfinished())
    }

    /// Prefills the prompt without generating: its mean NLL and first-token confidence.
    pub async fn score_prompt(&self, prompt: &Prompt) -> Result<PromptScore, EngineError> {
        let prompt_ids = self.tokenize(prompt)?;
        let (reply, answer) = oneshot::channel();
        self.inner.pool.submit(Job::Score { prompt_ids, reply })?;
        answer.await.map_err(|_| unfinished())?
    }

    /// The raw logits of the first answer token after `prompt` (parity checks, debugging).
    pub async fn next_token_logits(&self, prompt: &Prompt) -> Result<Vec<f32>, EngineError> {
        let prompt_ids = self.tokenize(prompt)?;
        let (reply, answer) = oneshot::channel();
        self.inner.pool.submit(Job::Logits { prompt_ids, reply })?;
        answer.await.map_err(|_| unfinished())?
    }
}

/// The smallest batch whose shared decode step beats one-row steps, per graph variant and CPU
/// (`scripts/bench-batch-step.py` on SmolLM2-135M, 1 thread): fp32 one row 55-71 ms, two rows
/// 60-64 ms; int4 with AVX-512 one row 31-45 ms, but 104-123 ms for 2 to 8 rows (`MatMulNBits`
/// with fp32 activations dequantizes the weights for a multi-row product), so int4 shares from
/// 4 rows there. Without AVX-512 the one-row int4 kernel is slow too (2 rows cost 1.06x and
/// 2.05x one row in two runs, 8 rows 4-6x the rows per second), so int4 shares from 2.
/// int4-fast, int8 activations in every product: two rows cost 0.95-1.15x one row with AVX-512
/// VNNI (three runs, 1 and 2 threads), so it shares from 2 (docs/benchmarks.md, "Batching").
fn shared_batch_from(variant: ModelVariant, cpu: CpuKind) -> usize {
    match (variant, cpu) {
        (ModelVariant::Int4, CpuKind::X86WithoutAvx512) => 2,
        (ModelVariant::Int4, _) => 4,
        (ModelVariant::Int4Fast | ModelVariant::Fp32 | ModelVariant::Int8, _) => 2,
    }
}

fn unfinished() -> EngineError {
    EngineError::Runtime("the worker stopped before finishing the request".into())
}

/// `<cache>/<first 16 hex of the graph's sha256>-<level>.onnx`: a changed graph or level never
/// reuses a stale optimised file.
fn cache_file(cache: &Path, sha256: &str, level: GraphOptimization) -> PathBuf {
    let key: String = sha256.chars().take(16).collect();
    cache.join(format!("{key}-{}.onnx", level.as_str()))
}

/// The events of one generation. Dropping it cancels the generation (the worker notices the
/// closed channel before its next step and moves on).
#[derive(Debug)]
pub struct GenerationStream {
    receiver: mpsc::UnboundedReceiver<Result<GenerationEvent, EngineError>>,
    finished: bool,
}

impl Stream for GenerationStream {
    type Item = Result<GenerationEvent, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(Some(Ok(GenerationEvent::Finished(_))) | Some(Err(_))) = &polled {
            self.finished = true;
        }
        polled
    }
}
