//! The scheduler alone, against a deterministic fake backend: its next token depends only on
//! a row's own history, so batched decoding must give every sequence exactly the tokens it
//! gets alone, whatever joins or leaves the batch around it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::Logits;
use crate::events::GenerationEvent;
use crate::generate::run_generation;
use crate::manifest::Manifest;
use crate::sampling::SamplingParams;

/// Rows of token histories; the next token is a hash of the history.
struct FakeBackend {
    vocab: usize,
    eos: u32,
    largest_batch: usize,
    steps: usize,
    /// Prompt positions per prefill run (0: whole prompts).
    chunk: usize,
    /// Positions of every prefill run, in order.
    prefill_runs: Vec<usize>,
    /// The tracing span each prefill run ran in.
    prefill_spans: Vec<Option<&'static str>>,
}

impl FakeBackend {
    fn logits_after(&self, history: &[u32]) -> Vec<f32> {
        let mut hash: u64 = 1469598103934665603;
        for &id in history {
            hash = (hash ^ u64::from(id)).wrapping_mul(1099511628211);
        }
        let mut logits = vec![0.0f32; self.vocab];
        // One in eleven steps ends the answer, so sequences finish at different steps.
        let next = if hash.is_multiple_of(11) {
            self.eos as usize
        } else {
            (hash % self.vocab as u64) as usize
        };
        logits[next] = 10.0;
        logits
    }
}

impl Backend for FakeBackend {
    type Cache = Vec<Vec<u32>>;

    fn context_length(&self) -> usize {
        4096
    }

    fn empty_cache(&self) -> Result<Self::Cache, EngineError> {
        Ok(vec![Vec::new()])
    }

    fn prefill_chunk(&self) -> usize {
        self.chunk
    }

    fn forward(
        &mut self,
        ids: &[u32],
        cache: &mut Self::Cache,
        all_rows: bool,
    ) -> Result<(Logits, Duration), EngineError> {
        self.prefill_runs.push(ids.len());
        let span = tracing::Span::current();
        self.prefill_spans.push(span.metadata().map(|m| m.name()));
        let mut data = Vec::new();
        for &id in ids {
            cache[0].push(id);
            if all_rows {
                data.extend(self.logits_after(&cache[0]));
            }
        }
        if !all_rows {
            data = self.logits_after(&cache[0]);
        }
        Ok((
            Logits {
                data,
                vocab: self.vocab,
            },
            Duration::ZERO,
        ))
    }

    fn decode_batch(
        &mut self,
        tokens: &[u32],
        cache: &mut Self::Cache,
    ) -> Result<(Logits, Duration), EngineError> {
        assert_eq!(tokens.len(), cache.len());
        self.largest_batch = self.largest_batch.max(tokens.len());
        self.steps += 1;
        let mut data = Vec::new();
        for (row, &id) in cache.iter_mut().zip(tokens) {
            row.push(id);
            data.extend(self.logits_after(row));
        }
        Ok((
            Logits {
                data,
                vocab: self.vocab,
            },
            Duration::ZERO,
        ))
    }

    fn batch_size(cache: &Self::Cache) -> usize {
        cache.len()
    }

    fn gather(
        &mut self,
        caches: &[&Self::Cache],
        rows: &[(usize, usize)],
    ) -> Result<Self::Cache, EngineError> {
        Ok(rows.iter().map(|&(c, r)| caches[c][r].clone()).collect())
    }
}

#[derive(Default)]
struct VecSink {
    events: Vec<GenerationEvent>,
    /// Closes (like a dropped stream) after this many tokens.
    close_after: Option<usize>,
    /// Closes when set (a caller that leaves while its request waits).
    left: Rc<Cell<bool>>,
}

impl VecSink {
    fn tokens(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Token(t) => Some(t.id),
                _ => None,
            })
            .collect()
    }
}

impl EventSink for VecSink {
    fn emit(&mut self, event: GenerationEvent) -> bool {
        if self.is_closed() {
            return false;
        }
        self.events.push(event);
        true
    }

    fn is_closed(&self) -> bool {
        self.left.get()
            || self
                .close_after
                .is_some_and(|limit| self.tokens().len() >= limit)
    }
}

fn setup() -> (FakeBackend, TextCodec) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/edge");
    let manifest = Manifest::load(&dir).unwrap();
    let codec = TextCodec::load(&dir.join("tokenizer.json"), &manifest).unwrap();
    let backend = FakeBackend {
        vocab: manifest.vocab_size,
        eos: codec.eos_id(),
        largest_batch: 0,
        steps: 0,
        chunk: 0,
        prefill_runs: Vec::new(),
        prefill_spans: Vec::new(),
    };
    (backend, codec)
}

/// Puts `job` in line and prefills everything in line whole: a new generation joins at once.
fn admit<S: EventSink>(
    batch: &mut Batch<FakeBackend, S>,
    backend: &mut FakeBackend,
    codec: &TextCodec,
    job: &GenerationJob,
    sink: S,
) -> Vec<Completion<S>> {
    let mut done: Vec<_> = batch
        .enqueue(backend, job.clone(), sink)
        .into_iter()
        .collect();
    done.extend(batch.prefill_round(backend, codec, 0));
    done
}

fn job(seed: u32, max_new_tokens: usize) -> GenerationJob {
    GenerationJob {
        prompt_ids: (0..5 + seed % 7)
            .map(|i| (i * 31 + seed * 17) % 200)
            .collect(),
        sampling: SamplingParams::greedy(max_new_tokens),
        deadline: None,
        queue_time: Duration::ZERO,
        score_prompt: true,
    }
}

#[test]
fn batched_tokens_equal_unbatched_tokens_while_members_join_and_leave() {
    // 1: every step shared; 3: members step alone while fewer than 3, so the batch moves
    // between solo and shared caches both ways.
    for shared_from in [1, 3] {
        joins_and_leaves(shared_from);
    }
}

fn joins_and_leaves(shared_from: usize) {
    let (mut backend, codec) = setup();
    let jobs: Vec<GenerationJob> = (0..9)
        .map(|seed| job(seed, 6 + seed as usize * 3))
        .collect();
    let alone: Vec<Vec<u32>> = jobs
        .iter()
        .map(|job| {
            let mut sink = VecSink::default();
            let outcome = run_generation(&mut backend, &codec, job, &mut sink).unwrap();
            assert!(matches!(outcome, Outcome::Finished(_)));
            sink.tokens()
        })
        .collect();
    assert!(alone.iter().any(|t| t.len() > 8), "some answers run long");

    let mut batch: Batch<FakeBackend, (usize, VecSink)> = Batch::new(shared_from);
    let mut finished: Vec<Option<Vec<u32>>> = vec![None; jobs.len()];
    let mut pending = jobs.iter().enumerate();
    let mut record = |done: Vec<Completion<(usize, VecSink)>>| {
        for ((index, sink), outcome) in done {
            assert!(matches!(outcome.unwrap(), Outcome::Finished(_)));
            finished[index] = Some(sink.tokens());
        }
    };
    // Members join every other step, so the batch changes shape all the time.
    let mut step = 0;
    loop {
        if step % 2 == 0
            && let Some((index, job)) = pending.next()
        {
            let sink = (index, VecSink::default());
            record(admit(&mut batch, &mut backend, &codec, job, sink));
        }
        if batch.is_empty() && step > 2 * jobs.len() {
            break;
        }
        record(batch.step(&mut backend, &codec));
        step += 1;
    }
    for (index, tokens) in alone.iter().enumerate() {
        assert_eq!(
            finished[index].as_ref(),
            Some(tokens),
            "sequence {index}, shared from {shared_from}"
        );
    }
    assert!(backend.largest_batch >= 3, "steps were shared");
}

#[test]
fn a_closed_stream_leaves_the_batch_and_the_others_go_on() {
    let (mut backend, codec) = setup();
    let long = job(3, 40);
    let mut alone = VecSink::default();
    run_generation(&mut backend, &codec, &long, &mut alone).unwrap();

    let mut batch: Batch<FakeBackend, VecSink> = Batch::new(1);
    let closing = VecSink {
        close_after: Some(2),
        ..VecSink::default()
    };
    assert!(admit(&mut batch, &mut backend, &codec, &long, closing).is_empty());
    assert!(admit(&mut batch, &mut backend, &codec, &long, VecSink::default()).is_empty());
    let mut outcomes = Vec::new();
    while !batch.is_empty() {
        outcomes.extend(batch.step(&mut backend, &codec));
    }
    assert_eq!(outcomes.len(), 2);
    let (first, cancelled) = &outcomes[0];
    assert_eq!(*cancelled.as_ref().unwrap(), Outcome::Cancelled);
    assert_eq!(first.tokens().len(), 2);
    let (second, finished) = &outcomes[1];
    assert!(matches!(finished.as_ref().unwrap(), Outcome::Finished(_)));
    assert_eq!(second.tokens(), alone.tokens());
}

#[test]
fn a_passed_deadline_never_joins() {
    let (mut backend, codec) = setup();
    let mut late = job(1, 10);
    late.deadline = Some(Instant::now());
    let mut batch: Batch<FakeBackend, VecSink> = Batch::new(1);
    let (_, outcome) = admit(&mut batch, &mut backend, &codec, &late, VecSink::default())
        .pop()
        .unwrap();
    assert!(matches!(outcome.unwrap(), Outcome::Finished(_)));
    assert!(batch.is_empty());
}

/// A prompt of `len` positions and a short greedy answer.
fn prompt_of(len: u32) -> GenerationJob {
    GenerationJob {
        prompt_ids: (0..len).map(|i| (i * 13 + 7) % 200).collect(),
        ..job(0, 8)
    }
}

/// A job whose answer runs at least `tokens` long on the fake backend.
fn long_answer(backend: &mut FakeBackend, codec: &TextCodec, tokens: usize) -> GenerationJob {
    (0..200)
        .map(|seed| job(seed, 60))
        .find(|job| {
            let mut sink = VecSink::default();
            run_generation(backend, codec, job, &mut sink).unwrap();
            sink.tokens().len() >= tokens
        })
        .expect("a seed with a long answer")
}

/// A member already streaming, then a 40-position prompt put in line, prefilled in chunks of
/// 16 within `budget` positions per step. Returns the member's tokens while the prompt waited
/// and the prompt's prefill runs; both answers must be what each gets alone.
fn stream_during_a_long_prefill(budget: usize) -> (usize, Vec<usize>) {
    let (mut backend, codec) = setup();
    backend.chunk = 16;
    let streaming = long_answer(&mut backend, &codec, 20);
    let long = prompt_of(40);
    let alone = |backend: &mut FakeBackend, job: &GenerationJob| {
        let mut sink = VecSink::default();
        run_generation(backend, &codec, job, &mut sink).unwrap();
        sink.tokens()
    };
    let (streaming_alone, long_alone) =
        (alone(&mut backend, &streaming), alone(&mut backend, &long));

    let mut batch: Batch<FakeBackend, (usize, VecSink)> = Batch::new(1);
    let first = admit(
        &mut batch,
        &mut backend,
        &codec,
        &streaming,
        (0, VecSink::default()),
    );
    assert!(first.is_empty());
    assert!(batch.step(&mut backend, &codec).is_empty());
    backend.prefill_runs.clear();
    assert!(
        batch
            .enqueue(&backend, long, (1, VecSink::default()))
            .is_none()
    );
    let mut finished: Vec<Option<Vec<u32>>> = vec![None, None];
    let mut streamed_while_waiting = 0;
    while !batch.is_empty() {
        let waiting = !batch.joining.is_empty();
        let before = batch.members[0].sink.1.tokens().len();
        let mut done = batch.prefill_round(&mut backend, &codec, budget);
        if batch.has_members() {
            done.extend(batch.step(&mut backend, &codec));
        }
        if waiting && !batch.joining.is_empty() {
            streamed_while_waiting += batch.members[0].sink.1.tokens().len() - before;
        }
        for ((index, sink), outcome) in done {
            assert!(matches!(outcome.unwrap(), Outcome::Finished(_)));
            finished[index] = Some(sink.tokens());
        }
    }
    assert_eq!(
        finished[0].as_ref(),
        Some(&streaming_alone),
        "budget {budget}"
    );
    assert_eq!(finished[1].as_ref(), Some(&long_alone), "budget {budget}");
    (streamed_while_waiting, backend.prefill_runs)
}

#[test]
fn a_long_prompt_is_prefilled_between_the_decode_steps_of_running_streams() {
    // A budget of 8 positions per step: the prompt runs in five pieces of 8, the member takes a
    // token after each of the first four (the fifth step has the new generation in it too).
    assert_eq!(stream_during_a_long_prefill(8), (4, vec![8; 5]));
    // A budget of a chunk: pieces of 16, 16 and 8, one per step.
    assert_eq!(stream_during_a_long_prefill(16), (2, vec![16, 16, 8]));
    // 0, or a budget above the prompt: the whole prompt first (in chunks), the member waits.
    assert_eq!(stream_during_a_long_prefill(0), (0, vec![16, 16, 8]));
    assert_eq!(stream_during_a_long_prefill(100), (0, vec![16, 16, 8]));
}

#[test]
fn short_prompts_share_a_step_budget_and_the_oldest_goes_first() {
    let (mut backend, codec) = setup();
    let mut batch: Batch<FakeBackend, (usize, VecSink)> = Batch::new(1);
    // Prompts of 5, 6, 7 and 8 positions; 12 per step.
    for seed in 0..4 {
        let done = batch.enqueue(&backend, job(seed, 30), (seed as usize, VecSink::default()));
        assert!(done.is_none());
    }
    let mut members_after_each_round = Vec::new();
    while !batch.joining.is_empty() {
        let done = batch.prefill_round(&mut backend, &codec, 12);
        assert!(done.is_empty());
        members_after_each_round.push(batch.members.len());
    }
    assert_eq!(backend.prefill_runs, vec![5, 6, 7, 8]);
    // 5 + 6 fit in 12; 7 alone (7 + 8 would not); then 8.
    assert_eq!(members_after_each_round, vec![2, 3, 4]);
    let order: Vec<usize> = batch.members.iter().map(|m| m.sink.0).collect();
    assert_eq!(order, vec![0, 1, 2, 3]);
}

type Scheduler = (FakeBackend, TextCodec, Batch<FakeBackend, (usize, VecSink)>);

/// A 40-position prompt (job 0) and then `job` (job 1) in line, and one round of 8 positions:
/// the long prompt's first piece ran, `job` waits behind it.
fn waiting_behind_a_long_prompt(job: GenerationJob, sink: VecSink) -> Scheduler {
    let (mut backend, codec) = setup();
    backend.chunk = 16;
    let mut batch: Batch<FakeBackend, (usize, VecSink)> = Batch::new(1);
    let long = batch.enqueue(&backend, prompt_of(40), (0, VecSink::default()));
    assert!(long.is_none());
    assert!(batch.enqueue(&backend, job, (1, sink)).is_none());
    assert!(batch.prefill_round(&mut backend, &codec, 8).is_empty());
    assert_eq!(batch.len(), 2);
    assert_eq!(
        batch.waiting(),
        1,
        "the long prompt has begun, the other waits"
    );
    (backend, codec, batch)
}

#[test]
fn a_caller_that_leaves_while_in_line_gives_its_place_back_before_its_prefill() {
    let leaving = VecSink::default();
    let left = Rc::clone(&leaving.left);
    let (mut backend, codec, mut batch) = waiting_behind_a_long_prompt(prompt_of(3), leaving);
    left.set(true);
    let done = batch.prefill_round(&mut backend, &codec, 8);
    assert_eq!(done.len(), 1);
    let ((index, sink), outcome) = &done[0];
    assert_eq!(
        (*index, outcome.as_ref().unwrap()),
        (1, &Outcome::Cancelled)
    );
    assert!(sink.events.is_empty(), "it never started");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.waiting(), 0);
    // Only the long prompt ever ran.
    assert_eq!(backend.prefill_runs, vec![8, 8]);
}

#[test]
fn a_deadline_that_passes_in_line_ends_the_generation_without_its_prefill() {
    let mut late = prompt_of(3);
    late.deadline = Some(Instant::now() + Duration::from_millis(200));
    let (mut backend, codec, mut batch) = waiting_behind_a_long_prompt(late, VecSink::default());
    std::thread::sleep(Duration::from_millis(250));
    let done = batch.prefill_round(&mut backend, &codec, 8);
    assert_eq!(done.len(), 1);
    let ((index, sink), outcome) = &done[0];
    assert_eq!(*index, 1);
    let Outcome::Finished(summary) = outcome.as_ref().unwrap() else {
        panic!("a finished generation: {outcome:?}");
    };
    assert_eq!(summary.finish_reason, crate::events::FinishReason::Deadline);
    assert_eq!(summary.completion_tokens, 0);
    // The wait in line is queue time: no prefill ran.
    assert_eq!(summary.timings.prefill, Duration::ZERO);
    assert!(summary.timings.queue >= Duration::from_millis(200));
    assert!(matches!(
        sink.events.as_slice(),
        [GenerationEvent::Started {
            prompt_score: None,
            ..
        }]
    ));
    assert_eq!(backend.prefill_runs, vec![8, 8]);
}

/// A sink in a caller's tracing span.
struct SpanSink(tracing::Span);

impl EventSink for SpanSink {
    fn emit(&mut self, _: GenerationEvent) -> bool {
        true
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn span(&self) -> tracing::Span {
        self.0.clone()
    }
}

#[test]
fn a_prefill_in_line_runs_in_its_callers_span() {
    let subscriber = tracing_subscriber::registry();
    tracing::subscriber::with_default(subscriber, || {
        let (mut backend, codec) = setup();
        backend.chunk = 16;
        let mut batch: Batch<FakeBackend, SpanSink> = Batch::new(1);
        let first = SpanSink(tracing::info_span!("first_request"));
        let second = SpanSink(tracing::info_span!("second_request"));
        assert!(batch.enqueue(&backend, prompt_of(20), first).is_none());
        assert!(batch.enqueue(&backend, prompt_of(3), second).is_none());
        while batch.has_members() || !batch.joining.is_empty() {
            batch.prefill_round(&mut backend, &codec, 0);
            batch.step(&mut backend, &codec);
        }
        assert_eq!(
            backend.prefill_spans,
            [
                Some("first_request"),
                Some("first_request"),
                Some("second_request")
            ]
        );
    });
}

/// A sink that knows which job it belongs to.
impl EventSink for (usize, VecSink) {
    fn emit(&mut self, event: GenerationEvent) -> bool {
        self.1.emit(event)
    }

    fn is_closed(&self) -> bool {
        self.1.is_closed()
    }
}
