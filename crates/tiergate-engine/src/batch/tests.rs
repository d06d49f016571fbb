//! The scheduler alone, against a deterministic fake backend: its next token depends only on
//! a row's own history, so batched decoding must give every sequence exactly the tokens it
//! gets alone, whatever joins or leaves the batch around it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
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

    fn forward(
        &mut self,
        ids: &[u32],
        cache: &mut Self::Cache,
        all_rows: bool,
    ) -> Result<(Logits, Duration), EngineError> {
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
        self.close_after
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
    };
    (backend, codec)
}

fn job(seed: u32, max_new_tokens: usize) -> GenerationJob {
    GenerationJob {
        prompt_ids: (0..5 + seed % 7)
            .map(|i| (i * 31 + seed * 17) % 200)
            .collect(),
        sampling: SamplingParams::greedy(max_new_tokens),
        deadline: None,
        queue_time: Duration::ZERO,
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
            record(
                batch
                    .admit(&mut backend, &codec, job, sink)
                    .into_iter()
                    .collect(),
            );
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
    assert!(batch.admit(&mut backend, &codec, &long, closing).is_none());
    assert!(
        batch
            .admit(&mut backend, &codec, &long, VecSink::default())
            .is_none()
    );
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
    let (_, outcome) = batch
        .admit(&mut backend, &codec, &late, VecSink::default())
        .unwrap();
    assert!(matches!(outcome.unwrap(), Outcome::Finished(_)));
    assert!(batch.is_empty());
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
