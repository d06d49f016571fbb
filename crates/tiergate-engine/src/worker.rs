//! Worker threads, each owning one ONNX Runtime session, fed from one bounded queue.
//!
//! The async side never runs inference: it puts a job on the queue (failing fast with
//! `Overloaded` when the queue is full) and awaits a tokio channel. A worker that finds the
//! event channel closed (the caller dropped the stream) stops that generation.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use tokio::sync::{mpsc as async_mpsc, oneshot};
use tracing::Span;

use crate::batch::{Batch, Completion};
use crate::embedding::EmbeddingSource;
use crate::error::EngineError;
use crate::events::{GenerationEvent, PromptScore};
use crate::generate::{
    EventSink, GenerationJob, Outcome, next_token_logits, run_generation, score_prompt,
};
use crate::manifest::Manifest;
use crate::memory::trim_heap;
use crate::progress::Progress;
use crate::session::{ModelSession, SessionOptions};
use crate::tokenizer::TextCodec;

pub(crate) type EventSender = async_mpsc::UnboundedSender<Result<GenerationEvent, EngineError>>;

pub(crate) enum Job {
    Generate {
        job: GenerationJob,
        events: EventSender,
    },
    Score {
        prompt_ids: Vec<u32>,
        reply: oneshot::Sender<Result<PromptScore, EngineError>>,
    },
    Logits {
        prompt_ids: Vec<u32>,
        reply: oneshot::Sender<Result<Vec<f32>, EngineError>>,
    },
}

/// A job with what travels with it: the caller's tracing span and the time it was queued.
pub(crate) struct Envelope {
    pub job: Job,
    pub span: Span,
    pub enqueued: Instant,
}

/// Counters over the engine's life, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub generations_finished: u64,
    /// Generations stopped because the caller dropped the stream (or never listened).
    pub generations_cancelled: u64,
    pub generations_failed: u64,
    pub prompts_scored: u64,
    pub rejected_overloaded: u64,
    /// Times a worker, idle for 100 ms after running something, gave the heap's free memory
    /// back (`EngineConfig::trim_heap_when_idle`).
    pub heap_trims_when_idle: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    finished: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    scored: AtomicU64,
    overloaded: AtomicU64,
    idle_trims: AtomicU64,
    /// Worker threads that hold a session and run their loop; a panicked or ended worker
    /// leaves (readiness reads it).
    alive: AtomicUsize,
    /// Jobs in the queue, not yet taken by a worker.
    queued: AtomicUsize,
    /// Generations a batching worker took from the queue that wait in its line for their
    /// prefill to begin (`CountGauge`).
    in_line: AtomicUsize,
    /// Whether the workers move (readiness: `WorkerPool::stalled_for`).
    pub(crate) progress: Arc<Progress>,
}

/// Counts a worker as alive while it lives; dropping it (the loop ended, or unwinding from a
/// panic) counts it out.
struct AliveGuard(Arc<StatsCell>);

impl AliveGuard {
    fn enter(stats: &Arc<StatsCell>) -> AliveGuard {
        stats.alive.fetch_add(1, Ordering::SeqCst);
        AliveGuard(Arc::clone(stats))
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StatsCell {
    pub(crate) fn snapshot(&self) -> EngineStats {
        EngineStats {
            generations_finished: self.finished.load(Ordering::Relaxed),
            generations_cancelled: self.cancelled.load(Ordering::Relaxed),
            generations_failed: self.failed.load(Ordering::Relaxed),
            prompts_scored: self.scored.load(Ordering::Relaxed),
            rejected_overloaded: self.overloaded.load(Ordering::Relaxed),
            heap_trims_when_idle: self.idle_trims.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct PoolSpec {
    pub environment: Environment,
    pub model_path: PathBuf,
    /// Where the graph's token embedding rows are, for a graph taking `inputs_embeds`.
    pub embedding: Option<EmbeddingSource>,
    pub manifest: Arc<Manifest>,
    pub codec: Arc<TextCodec>,
    pub options: SessionOptions,
    pub workers: usize,
    pub queue_capacity: usize,
    /// Generations one worker decodes together (one session run per step, `batch.max_batch`
    /// 1 runs each alone), and how it fills its batch.
    pub batch: BatchSizes,
    /// A worker that falls idle gives the heap's free memory back (`wait_for_job`).
    pub trim_heap_when_idle: bool,
}

#[derive(Debug)]
pub(crate) struct WorkerPool {
    queue: SyncSender<Envelope>,
    capacity: usize,
    stats: Arc<StatsCell>,
}

impl WorkerPool {
    /// Starts the workers and waits until each has its session (or one failed to get it).
    pub(crate) fn start(spec: PoolSpec) -> Result<WorkerPool, EngineError> {
        let (queue, receiver) = mpsc::sync_channel::<Envelope>(spec.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(StatsCell::default());
        let spec = Arc::new(spec);
        // The first worker starts alone so that, with an optimised-model cache configured, it
        // writes the cache and the others load it.
        let first = spawn_worker(0, &spec, &receiver, &stats)?;
        first.recv().map_err(|_| EngineError::WorkersGone)??;
        let pending: Vec<_> = (1..spec.workers)
            .map(|index| spawn_worker(index, &spec, &receiver, &stats))
            .collect::<Result<_, _>>()?;
        for ready in pending {
            ready.recv().map_err(|_| EngineError::WorkersGone)??;
        }
        Ok(WorkerPool {
            queue,
            capacity: spec.queue_capacity,
            stats,
        })
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), EngineError> {
        let envelope = Envelope {
            job,
            span: Span::current(),
            enqueued: Instant::now(),
        };
        // Counted before it is sent, so that a worker taking it at once never counts below 0.
        let queued_before = self.stats.queued.fetch_add(1, Ordering::SeqCst);
        if !self.stats.progress.has_work(queued_before) {
            self.stats.progress.beat();
        }
        let sent = self.queue.try_send(envelope);
        if sent.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                Err(EngineError::Overloaded {
                    capacity: self.capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(EngineError::WorkersGone),
        }
    }

    pub(crate) fn stats(&self) -> EngineStats {
        self.stats.snapshot()
    }

    pub(crate) fn workers_alive(&self) -> usize {
        self.stats.alive.load(Ordering::SeqCst)
    }

    /// How long the pool has had work without any worker moving (`Progress`); `None` while
    /// it has none.
    pub(crate) fn stalled_for(&self) -> Option<Duration> {
        (self.stats.progress).stalled_for(self.stats.queued.load(Ordering::SeqCst))
    }

    pub(crate) fn longest_pass(&self) -> Duration {
        self.stats.progress.longest_pass()
    }

    pub(crate) fn has_work(&self) -> bool {
        (self.stats.progress).has_work(self.stats.queued.load(Ordering::SeqCst))
    }

    /// Jobs waiting now: for a worker, or in a batching worker's line for their prefill to
    /// begin (both are requests that have not started, for the queue-depth gauge and autoscaling).
    pub(crate) fn queue_depth(&self) -> usize {
        let in_line = self.stats.in_line.load(Ordering::SeqCst);
        self.stats.queued.load(Ordering::SeqCst) + in_line
    }
}

fn spawn_worker(
    index: usize,
    spec: &Arc<PoolSpec>,
    receiver: &Arc<Mutex<Receiver<Envelope>>>,
    stats: &Arc<StatsCell>,
) -> Result<mpsc::Receiver<Result<(), EngineError>>, EngineError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let spec = Arc::clone(spec);
    let receiver = Arc::clone(receiver);
    let stats = Arc::clone(stats);
    std::thread::Builder::new()
        .name(format!("tiergate-engine-{index}"))
        .spawn(move || {
            let session = ModelSession::open(
                &spec.environment,
                &spec.model_path,
                spec.embedding.as_ref(),
                &spec.manifest,
                &spec.options,
            );
            let (mut session, _alive) = match session {
                Ok(mut session) => {
                    session.report_progress_to(Arc::clone(&stats.progress));
                    // Counted before the pool hears of it: once `Engine::load` returns, every
                    // worker is counted (a node that read 0 here reported NOT_SERVING).
                    let alive = AliveGuard::enter(&stats);
                    let _ = ready_tx.send(Ok(()));
                    (session, alive)
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            drop(ready_tx);
            let idle = IdleTrim::new(spec.trim_heap_when_idle);
            if spec.batch.max_batch > 1 {
                batching_loop(
                    &mut session,
                    &spec.codec,
                    &receiver,
                    &stats,
                    spec.batch,
                    idle,
                );
            } else {
                worker_loop(&mut session, &spec.codec, &receiver, &stats, idle);
            }
        })
        .map_err(|e| EngineError::Runtime(format!("cannot start a worker thread: {e}")))?;
    Ok(ready_rx)
}

/// Whether a worker gives the heap's free memory back when it falls idle, and whether it has
/// run anything since it last did.
#[derive(Debug)]
struct IdleTrim {
    enabled: bool,
    worked: bool,
}

impl IdleTrim {
    fn new(enabled: bool) -> IdleTrim {
        IdleTrim {
            enabled,
            worked: false,
        }
    }
}

/// How long a worker waits for the next job before it trims: longer than the gaps inside a burst
/// of requests, whose pages the next request would fault back in (measured: 47 minor faults per
/// generated token when trimming between back-to-back requests, 2 without).
const IDLE_BEFORE_TRIM: Duration = Duration::from_millis(100);

/// The next job, waiting for it when none is queued; `None` once every `Engine` handle is gone.
/// The lock is held only while waiting, released before the job runs.
///
/// A worker that has run something and then waits `IDLE_BEFORE_TRIM` for more returns the
/// allocator's free memory, outside the lock: what its generations' buffers (logits rows, KV
/// caches, ONNX Runtime's outputs) left in malloc's free lists would otherwise stay resident
/// while the node idles. Once per idle spell, never during a burst of requests.
fn wait_for_job(
    receiver: &Mutex<Receiver<Envelope>>,
    idle: &mut IdleTrim,
    stats: &StatsCell,
) -> Option<Envelope> {
    if idle.enabled && idle.worked {
        match receiver.lock().ok()?.recv_timeout(IDLE_BEFORE_TRIM) {
            Ok(envelope) => return Some(envelope),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        idle.worked = false;
        trim_heap();
        stats.idle_trims.fetch_add(1, Ordering::Relaxed);
    }
    let envelope = receiver.lock().ok()?.recv().ok();
    idle.worked = true;
    envelope
}

fn worker_loop(
    session: &mut ModelSession,
    codec: &TextCodec,
    receiver: &Mutex<Receiver<Envelope>>,
    stats: &StatsCell,
    mut idle: IdleTrim,
) {
    loop {
        // Every `Engine` handle is gone: the queue is closed and the worker ends.
        let Some(Envelope {
            job,
            span,
            enqueued,
        }) = wait_for_job(receiver, &mut idle, stats)
        else {
            return;
        };
        let mut held = CountGauge::new(&stats.progress.held);
        held.set(1);
        stats.queued.fetch_sub(1, Ordering::SeqCst);
        stats.progress.beat();
        let _entered = span.enter();
        let queue_time = enqueued.elapsed();
        // A panic inside a job must not take the worker (and its session) down with it.
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| match job {
            Job::Generate { mut job, events } => {
                job.queue_time = queue_time;
                run_generate(session, codec, &job, events, stats);
            }
            other => run_prefill_job(session, other, stats),
        }));
        if run.is_err() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("engine job panicked; the worker continues");
        }
    }
}

fn run_generate(
    session: &mut ModelSession,
    codec: &TextCodec,
    job: &GenerationJob,
    events: EventSender,
    stats: &StatsCell,
) {
    let _span = tracing::debug_span!(
        "engine.generate",
        prompt_tokens = job.prompt_ids.len(),
        max_new_tokens = job.sampling.max_new_tokens
    )
    .entered();
    let mut sink = ChannelSink {
        events,
        span: Span::current(),
    };
    let result = run_generation(session, codec, job, &mut sink);
    complete((sink, result), stats);
}

/// Sends a generation's end to its caller and counts it.
fn complete((sink, result): Completion<ChannelSink>, stats: &StatsCell) {
    let _entered = sink.span.enter();
    match result {
        Ok(Outcome::Finished(summary)) => {
            // Counted before the caller can see the end, so stats never lag the stream.
            stats.finished.fetch_add(1, Ordering::Relaxed);
            let _ = sink.events.send(Ok(GenerationEvent::Finished(summary)));
        }
        Ok(Outcome::Cancelled) => {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("generation cancelled: the caller went away");
        }
        Err(error) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "generation failed");
            let _ = sink.events.send(Err(error));
        }
    }
}

/// Prompt scoring and raw logits: a prefill, no decoding.
fn run_prefill_job(session: &mut ModelSession, job: Job, stats: &StatsCell) {
    match job {
        Job::Score { prompt_ids, reply } => {
            if reply.is_closed() {
                return;
            }
            let _span =
                tracing::debug_span!("engine.score_prompt", tokens = prompt_ids.len()).entered();
            let result = score_prompt(session, &prompt_ids);
            if result.is_ok() {
                stats.scored.fetch_add(1, Ordering::Relaxed);
            }
            let _ = reply.send(result);
        }
        Job::Logits { prompt_ids, reply } => {
            if !reply.is_closed() {
                let _ = reply.send(next_token_logits(session, &prompt_ids));
            }
        }
        Job::Generate { events, .. } => {
            let error = EngineError::Runtime("a generation reached the prefill path".into());
            let _ = events.send(Err(error));
        }
    }
}

/// A worker that decodes its active generations together: it takes queued jobs while it has
/// room (waiting only when idle), prefills what is in line within `sizes.prefill_per_step`
/// prompt positions, then runs one batched decode step.
fn batching_loop(
    session: &mut ModelSession,
    codec: &TextCodec,
    receiver: &Mutex<Receiver<Envelope>>,
    stats: &StatsCell,
    sizes: BatchSizes,
    mut idle: IdleTrim,
) {
    let mut batch: Batch<ModelSession, ChannelSink> = Batch::new(sizes.shared_from);
    let mut in_line = CountGauge::new(&stats.in_line);
    let mut held = CountGauge::new(&stats.progress.held);
    let mut open = true;
    while open || !batch.is_empty() {
        while open && batch.len() < sizes.max_batch {
            let next = if batch.is_empty() {
                wait_for_job(receiver, &mut idle, stats)
            } else {
                // Never wait for the lock with members running: another worker holding it is
                // idle, waiting for a job, so there is nothing queued to take anyway.
                match receiver.try_lock() {
                    Ok(guard) => match guard.try_recv() {
                        Ok(envelope) => Some(envelope),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => None,
                    },
                    Err(std::sync::TryLockError::WouldBlock) => break,
                    Err(std::sync::TryLockError::Poisoned(_)) => None,
                }
            };
            let Some(Envelope {
                job,
                span,
                enqueued,
            }) = next
            else {
                // Every `Engine` handle is gone: finish what is running, then end.
                open = false;
                break;
            };
            held.set(batch.len() + 1);
            stats.queued.fetch_sub(1, Ordering::SeqCst);
            stats.progress.beat();
            let _entered = span.enter();
            let queue_time = enqueued.elapsed();
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| match job {
                Job::Generate { mut job, events } => {
                    job.queue_time = queue_time;
                    tracing::debug!(
                        prompt_tokens = job.prompt_ids.len(),
                        max_new_tokens = job.sampling.max_new_tokens,
                        batch = batch.len() + 1,
                        "engine.generate joins the batch's line"
                    );
                    let sink = ChannelSink {
                        events,
                        span: span.clone(),
                    };
                    if let Some(done) = batch.enqueue(session, job, sink) {
                        complete(done, stats);
                    }
                }
                other => run_prefill_job(session, other, stats),
            }));
            if run.is_err() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("engine job panicked; the worker continues");
            }
            // Counted in line as soon as it left the queue (the gauge dips by one at most).
            in_line.set(batch.waiting());
            held.set(batch.len());
        }
        if batch.is_empty() {
            continue;
        }
        let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut done = batch.prefill_round(session, codec, sizes.prefill_per_step);
            if batch.has_members() {
                done.extend(batch.step(session, codec));
            }
            done
        }));
        match step {
            Ok(done) => done.into_iter().for_each(|done| complete(done, stats)),
            Err(_) => {
                // The members' channels close with the batch: their callers see an error.
                let lost = batch.len() as u64;
                stats.failed.fetch_add(lost, Ordering::Relaxed);
                batch = Batch::new(sizes.shared_from);
                tracing::error!(
                    lost,
                    "batched prefill or decode step panicked; the worker continues"
                );
            }
        }
        in_line.set(batch.waiting());
        held.set(batch.len());
    }
}

/// This worker's share of a counter the workers share (`StatsCell::in_line`, `Progress::held`),
/// kept up to date by differences and taken back when the worker's loop or job ends, however it
/// ends.
struct CountGauge<'a> {
    counter: &'a AtomicUsize,
    reported: usize,
}

impl<'a> CountGauge<'a> {
    fn new(counter: &'a AtomicUsize) -> CountGauge<'a> {
        CountGauge {
            counter,
            reported: 0,
        }
    }

    fn set(&mut self, count: usize) {
        if count > self.reported {
            self.counter
                .fetch_add(count - self.reported, Ordering::SeqCst);
        } else {
            self.counter
                .fetch_sub(self.reported - count, Ordering::SeqCst);
        }
        self.reported = count;
    }
}

impl Drop for CountGauge<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// How a batching worker fills its batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSizes {
    /// Generations decoded together, members and the ones in line.
    pub max_batch: usize,
    /// Fewer members than this step one by one (see `Batch`).
    pub shared_from: usize,
    /// Prompt positions prefilled between two decode steps; 0 prefills every waiting prompt
    /// whole first.
    pub prefill_per_step: usize,
}

/// A generation's events to its caller, and the caller's tracing span.
struct ChannelSink {
    events: EventSender,
    span: Span,
}

impl EventSink for ChannelSink {
    fn emit(&mut self, event: GenerationEvent) -> bool {
        self.events.send(Ok(event)).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    fn span(&self) -> Span {
        self.span.clone()
    }
}
