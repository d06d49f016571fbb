//! Continuous batching: the active generations of a worker share each decode step.
//!
//! A new generation is prefilled alone (one row), takes its first token, and then joins the
//! running batch (its cache rows gathered into the batch's cache). Every step after that is one
//! `Backend::decode_batch` for all members; a member that finishes (or whose caller went away)
//! leaves at once and its rows are dropped from the cache. Sampling, stop sequences and limits
//! are each member's own `SequenceState`, exactly as when it runs alone.
//!
//! Prefills wait in line (`enqueue`) and run between decode steps within a budget of prompt
//! positions per step (`prefill_round`): a long prompt is prefilled a piece at a time, and the
//! members keep streaming in between instead of stalling for the whole prompt.

use std::collections::VecDeque;

use crate::backend::Backend;
use crate::error::EngineError;
use crate::generate::{
    Advanced, EventSink, GenerationJob, Outcome, Prefilling, SequenceState, Started, Step,
    begin_generation,
};
use crate::tokenizer::TextCodec;

/// A generation that left the batch, with its sink and how it ended.
pub(crate) type Completion<S> = (S, Result<Outcome, EngineError>);

struct Member<S> {
    state: Box<SequenceState>,
    sink: S,
    /// The token to feed at the next step.
    next: u32,
}

/// A generation waiting for (the rest of) its prefill.
struct Joining<C, S> {
    job: GenerationJob,
    sink: S,
    prefill: Prefilling<C>,
}

/// The active generations of one worker and their KV caches, and the ones in line to join.
///
/// With fewer than `shared_from` members each keeps its own one-row cache and steps alone (on
/// some graphs a multi-row step costs several one-row steps: the int4 graph's `MatMulNBits`
/// takes a dequantizing path for more than one row); from `shared_from` members on they share
/// one cache (one row each, in order) and one session run per step.
pub(crate) struct Batch<B: Backend, S> {
    members: Vec<Member<S>>,
    joining: VecDeque<Joining<B::Cache, S>>,
    cache: Option<B::Cache>,
    solo: Vec<B::Cache>,
    shared_from: usize,
}

impl<B: Backend, S: EventSink> Batch<B, S> {
    pub(crate) fn new(shared_from: usize) -> Self {
        Batch {
            members: Vec::new(),
            joining: VecDeque::new(),
            cache: None,
            solo: Vec::new(),
            shared_from: shared_from.max(1),
        }
    }

    /// Members and generations in line to join: what counts against `max_batch`.
    pub(crate) fn len(&self) -> usize {
        self.members.len() + self.joining.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.joining.is_empty()
    }

    /// Generations in line whose prefill has not begun.
    pub(crate) fn waiting(&self) -> usize {
        self.joining
            .iter()
            .filter(|joining| !joining.prefill.has_begun())
            .count()
    }

    /// Whether there is anything to decode.
    pub(crate) fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    /// Puts `job` in line for its prefill. Returns its completion when it ends at once (its
    /// caller left, its deadline passed, no cache).
    pub(crate) fn enqueue(
        &mut self,
        backend: &B,
        job: GenerationJob,
        mut sink: S,
    ) -> Option<Completion<S>> {
        match begin_generation(backend, &job, &mut sink) {
            Ok(Advanced::Prefilling(prefill)) => {
                self.joining.push_back(Joining { job, sink, prefill });
                None
            }
            Ok(Advanced::Started(started)) => Some(ended(sink, started)),
            Err(error) => Some((sink, Err(error))),
        }
    }

    /// Prefills generations in line, oldest first, until `budget` prompt positions ran (0: all
    /// of them, whole); each one finished takes its first token and joins. The first piece always
    /// runs, so a budget smaller than a chunk still makes progress; a long prompt runs in pieces
    /// of at most the budget. A generation whose caller left while it waited leaves the line here.
    pub(crate) fn prefill_round(
        &mut self,
        backend: &mut B,
        codec: &TextCodec,
        budget: usize,
    ) -> Vec<Completion<S>> {
        let mut done = Vec::new();
        let mut waiting = VecDeque::with_capacity(self.joining.len());
        for mut joining in self.joining.drain(..) {
            match joining.prefill.abandoned(&joining.job, &mut joining.sink) {
                None => waiting.push_back(joining),
                Some(end) => done.push(ended(joining.sink, end)),
            }
        }
        self.joining = waiting;
        let mut spent = 0;
        while let Some(front) = self.joining.front() {
            let piece = front.prefill.next_piece(backend, &front.job, budget);
            if spent > 0 && budget > 0 && spent + piece > budget {
                break;
            }
            let Some(Joining {
                job,
                mut sink,
                prefill,
            }) = self.joining.pop_front()
            else {
                break;
            };
            spent += piece;
            let span = sink.span();
            let _entered = span.enter();
            match prefill.advance(backend, &job, &mut sink, piece) {
                Ok(Advanced::Prefilling(prefill)) => {
                    self.joining.push_front(Joining { job, sink, prefill })
                }
                Ok(Advanced::Started(Started::Running {
                    state,
                    logits,
                    cache,
                })) => done.extend(self.join(backend, codec, state, &logits, cache, sink)),
                Ok(Advanced::Started(Started::Done(outcome))) => done.push((sink, Ok(outcome))),
                Err(error) => done.push((sink, Err(error))),
            }
        }
        done
    }

    /// Takes a prefilled generation's first token and adds it to the members.
    fn join(
        &mut self,
        backend: &mut B,
        codec: &TextCodec,
        mut state: Box<SequenceState>,
        logits: &[f32],
        cache: B::Cache,
        mut sink: S,
    ) -> Option<Completion<S>> {
        let next = match state.accept(codec, logits, &mut sink) {
            Ok(Step::Next(id)) => id,
            Ok(Step::Done(outcome)) => return Some((sink, Ok(outcome))),
            Err(error) => return Some((sink, Err(error))),
        };
        if self.cache.is_none() && self.members.len() + 1 < self.shared_from {
            self.solo.push(cache);
            self.members.push(Member { state, sink, next });
            return None;
        }
        if self.cache.is_none() && !self.solo.is_empty() {
            // Enough members now: the solo caches and the new one become one shared cache.
            let mut all: Vec<&B::Cache> = self.solo.iter().collect();
            all.push(&cache);
            let rows: Vec<(usize, usize)> = (0..all.len()).map(|i| (i, 0)).collect();
            return match backend.gather(&all, &rows) {
                Ok(shared) => {
                    self.solo.clear();
                    self.cache = Some(shared);
                    self.members.push(Member { state, sink, next });
                    None
                }
                Err(error) => Some((sink, Err(error))),
            };
        }
        let joined = match self.cache.take() {
            None => Ok(cache),
            Some(current) => {
                let mut rows: Vec<(usize, usize)> =
                    (0..B::batch_size(&current)).map(|row| (0, row)).collect();
                rows.push((1, 0));
                let joined = backend.gather(&[&current, &cache], &rows);
                if joined.is_err() {
                    self.cache = Some(current);
                }
                joined
            }
        };
        match joined {
            Ok(cache) => {
                self.cache = Some(cache);
                self.members.push(Member { state, sink, next });
                None
            }
            Err(error) => Some((sink, Err(error))),
        }
    }

    /// One decode step for every member; returns the members that finished in it.
    pub(crate) fn step(&mut self, backend: &mut B, codec: &TextCodec) -> Vec<Completion<S>> {
        if self.cache.is_none() {
            return self.step_solo(backend, codec);
        }
        let Some(cache) = self.cache.as_mut() else {
            return Vec::new();
        };
        let tokens: Vec<u32> = self.members.iter().map(|m| m.next).collect();
        let (logits, run_time) = match backend.decode_batch(&tokens, cache) {
            Ok(result) => result,
            Err(error) => return self.fail_all(&error),
        };
        let mut kept = Vec::with_capacity(self.members.len());
        let mut rows = Vec::with_capacity(self.members.len());
        let mut done = Vec::new();
        for (row, mut member) in self.members.drain(..).enumerate() {
            member.state.timings.session_run += run_time;
            match member
                .state
                .accept(codec, logits.row(row), &mut member.sink)
            {
                Ok(Step::Next(id)) => {
                    member.next = id;
                    kept.push(member);
                    rows.push((0, row));
                }
                Ok(Step::Done(outcome)) => done.push((member.sink, Ok(outcome))),
                Err(error) => done.push((member.sink, Err(error))),
            }
        }
        self.members = kept;
        if self.members.is_empty() {
            self.cache = None;
        } else if !done.is_empty()
            && let Some(cache) = self.cache.take()
        {
            if self.members.len() < self.shared_from {
                // Too few to share a step: each remaining row gets its own cache again.
                let split: Result<Vec<_>, _> = rows
                    .iter()
                    .map(|&row| backend.gather(&[&cache], &[row]))
                    .collect();
                match split {
                    Ok(solo) => self.solo = solo,
                    Err(error) => done.extend(self.fail_all(&error)),
                }
            } else {
                match backend.gather(&[&cache], &rows) {
                    Ok(smaller) => self.cache = Some(smaller),
                    Err(error) => done.extend(self.fail_all(&error)),
                }
            }
        }
        done
    }

    /// Below `shared_from`: one one-row step per member, each on its own cache.
    fn step_solo(&mut self, backend: &mut B, codec: &TextCodec) -> Vec<Completion<S>> {
        let mut done = Vec::new();
        let mut kept = Vec::with_capacity(self.members.len());
        let mut caches = Vec::with_capacity(self.members.len());
        let members = std::mem::take(&mut self.members);
        let solo = std::mem::take(&mut self.solo);
        for (mut member, mut cache) in members.into_iter().zip(solo) {
            let step = backend.decode_batch(&[member.next], &mut cache);
            let result = step.and_then(|(logits, run_time)| {
                member.state.timings.session_run += run_time;
                member.state.accept(codec, logits.row(0), &mut member.sink)
            });
            match result {
                Ok(Step::Next(id)) => {
                    member.next = id;
                    kept.push(member);
                    caches.push(cache);
                }
                Ok(Step::Done(outcome)) => done.push((member.sink, Ok(outcome))),
                Err(error) => done.push((member.sink, Err(error))),
            }
        }
        self.members = kept;
        self.solo = caches;
        done
    }

    /// Ends every member with `error` (a failed step leaves the shared cache unusable); the
    /// generations in line keep their own caches and stay.
    fn fail_all(&mut self, error: &EngineError) -> Vec<Completion<S>> {
        self.cache = None;
        self.solo.clear();
        self.members
            .drain(..)
            .map(|m| {
                let error = EngineError::Runtime(format!("batched decode step failed: {error}"));
                (m.sink, Err(error))
            })
            .collect()
    }
}

/// A generation that ended before joining (a running one here would be a bug: a generation
/// starts running only after a piece of prefill).
fn ended<C, S>(sink: S, end: Started<C>) -> Completion<S> {
    match end {
        Started::Done(outcome) => (sink, Ok(outcome)),
        Started::Running { .. } => (sink, Err(unexpected_start())),
    }
}

fn unexpected_start() -> EngineError {
    EngineError::Runtime("a generation started without its prefill".into())
}

#[cfg(test)]
mod tests;
