//! The start of a generation: its prompt's prefill, whole or a piece at a time, up to the
//! `Started` event and the first answer token's logits.

use std::time::Instant;

use super::{EventSink, GenerationJob, Outcome, SequenceState, deadline_passed};
use crate::backend::Backend;
use crate::error::EngineError;
use crate::events::{FinishReason, GenerationEvent, GenerationSummary, Timings};
use crate::prefill::PrefillProgress;
use crate::sampling::Sampler;
use crate::stop::StopMatcher;
use crate::tokenizer::IncrementalDecoder;

/// After the prefill: the sequence and the logits of its first answer token, or its end.
pub(crate) enum Started<C> {
    Running {
        state: Box<SequenceState>,
        logits: Vec<f32>,
        cache: C,
    },
    Done(Outcome),
}

/// The deadline passed before the first token: `Started` without a score, then the end.
fn out_of_time<C>(sink: &mut dyn EventSink, prompt_tokens: usize, timings: Timings) -> Started<C> {
    let started = GenerationEvent::Started {
        prompt_tokens,
        prompt_score: None,
    };
    if !sink.emit(started) {
        return Started::Done(Outcome::Cancelled);
    }
    Started::Done(Outcome::Finished(GenerationSummary {
        finish_reason: FinishReason::Deadline,
        completion_tokens: 0,
        timings,
    }))
}

/// A generation whose prompt is part-way through its prefill. A batching worker runs a decode
/// step for the generations it is already streaming between two pieces of a long prompt, so
/// theirs do not stall for the whole prompt (`batch.rs`).
pub(crate) struct Prefilling<C> {
    cache: C,
    progress: PrefillProgress,
    /// When it was put in line, then (from its first piece on) when its prefill began: the wait
    /// in line counts as queue time, as the wait for a worker does.
    started: Instant,
    timings: Timings,
}

/// Where a generation is after a step of its start.
pub(crate) enum Advanced<C> {
    /// More of the prompt to run.
    Prefilling(Prefilling<C>),
    Started(Started<C>),
}

/// Sets up the prefill of `job`'s prompt, unless its caller already left or its deadline passed.
pub(crate) fn begin_generation<B: Backend>(
    backend: &B,
    job: &GenerationJob,
    sink: &mut dyn EventSink,
) -> Result<Advanced<B::Cache>, EngineError> {
    let timings = Timings {
        queue: job.queue_time,
        ..Timings::default()
    };
    if sink.is_closed() {
        return Ok(Advanced::Started(Started::Done(Outcome::Cancelled)));
    }
    if deadline_passed(job.deadline) {
        let end = out_of_time(sink, job.prompt_ids.len(), timings);
        return Ok(Advanced::Started(end));
    }
    Ok(Advanced::Prefilling(Prefilling {
        cache: backend.empty_cache()?,
        progress: PrefillProgress::new(),
        started: Instant::now(),
        timings,
    }))
}

impl<C> Prefilling<C> {
    /// Whether a piece of the prompt has run.
    pub(crate) fn has_begun(&self) -> bool {
        self.progress.has_begun()
    }

    /// The largest next piece of the prompt: at most a chunk of the backend's and `limit`
    /// positions (0: no limit).
    pub(crate) fn next_piece<B: Backend<Cache = C>>(
        &self,
        backend: &B,
        job: &GenerationJob,
        limit: usize,
    ) -> usize {
        self.progress.next_piece(backend, &job.prompt_ids, limit)
    }

    /// How the generation ends if its caller left or its deadline passed since the last piece.
    pub(crate) fn abandoned(
        &mut self,
        job: &GenerationJob,
        sink: &mut dyn EventSink,
    ) -> Option<Started<C>> {
        if sink.is_closed() {
            return Some(Started::Done(Outcome::Cancelled));
        }
        if deadline_passed(job.deadline) {
            if self.progress.has_begun() {
                self.timings.prefill = self.started.elapsed();
            } else {
                self.timings.queue += self.started.elapsed();
            }
            return Some(out_of_time(sink, job.prompt_ids.len(), self.timings));
        }
        None
    }

    /// Runs the next `positions` of the prompt. After the last one emits `Started` with the
    /// prompt's NLL and hands back the sequence with its first token's logits.
    pub(crate) fn advance<B: Backend<Cache = C>>(
        mut self,
        backend: &mut B,
        job: &GenerationJob,
        sink: &mut dyn EventSink,
        positions: usize,
    ) -> Result<Advanced<C>, EngineError> {
        if !self.progress.has_begun() {
            self.timings.queue += self.started.elapsed();
            self.started = Instant::now();
        } else if let Some(end) = self.abandoned(job, sink) {
            return Ok(Advanced::Started(end));
        }
        let ids = &job.prompt_ids;
        let score = job.score_prompt;
        self.progress
            .advance(backend, ids, &mut self.cache, score, positions)?;
        if self.progress.remaining(ids) > 0 {
            return Ok(Advanced::Prefilling(self));
        }
        let prefilled = self.progress.finish(ids, score);
        let mut timings = self.timings;
        timings.session_run += prefilled.run_time;
        timings.prefill = self.started.elapsed();
        let prompt_tokens = ids.len();
        if !sink.emit(GenerationEvent::Started {
            prompt_tokens,
            prompt_score: prefilled.mean_nll,
        }) {
            return Ok(Advanced::Started(Started::Done(Outcome::Cancelled)));
        }
        let state = SequenceState {
            prompt_tokens,
            max_new_tokens: job.sampling.max_new_tokens,
            deadline: job.deadline,
            context: backend.context_length(),
            sampler: Sampler::new(&job.sampling),
            decoder: IncrementalDecoder::default(),
            stops: StopMatcher::new(&job.sampling.stop),
            generated: 0,
            logprobs: job.sampling.logprobs,
            best: Vec::new(),
            timings,
            decode_started: Instant::now(),
        };
        Ok(Advanced::Started(Started::Running {
            state: Box::new(state),
            logits: prefilled.last,
            cache: self.cache,
        }))
    }
}

/// Prefills `job`'s prompt (one row) chunk by chunk, emits `Started` with the prompt's NLL.
pub(crate) fn start_generation<B: Backend>(
    backend: &mut B,
    job: &GenerationJob,
    sink: &mut dyn EventSink,
) -> Result<Started<B::Cache>, EngineError> {
    let mut next = begin_generation(backend, job, sink)?;
    loop {
        match next {
            Advanced::Started(started) => return Ok(started),
            Advanced::Prefilling(prefilling) => {
                let piece = prefilling.next_piece(backend, job, 0);
                next = prefilling.advance(backend, job, sink, piece)?;
            }
        }
    }
}
