//! The decode loop, run on a worker thread: prefill the prompt, then one token at a time with
//! the KV cache, until EOS, a stop sequence, the token limit, the context end, or the deadline.

use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::confidence::{token_confidence, token_stats};
use crate::error::EngineError;
use crate::events::{
    FinishReason, GenerationEvent, GenerationSummary, PromptScore, Timings, TokenEvent,
    TokenLogprob, TokenLogprobs,
};
use crate::prefill::prefill_all;
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, TextCodec};

mod start;

pub(crate) use start::{Advanced, Prefilling, Started, begin_generation, start_generation};

/// A tokenized, validated generation request as a worker receives it.
#[derive(Debug, Clone)]
pub(crate) struct GenerationJob {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub deadline: Option<Instant>,
    pub queue_time: Duration,
    /// Score the prompt (`GenerationRequest::score_prompt`).
    pub score_prompt: bool,
}

/// Where the loop sends its events. `emit` returns false once nobody listens any more (the
/// caller dropped the stream): the loop then stops, freeing the worker.
pub(crate) trait EventSink {
    fn emit(&mut self, event: GenerationEvent) -> bool;
    fn is_closed(&self) -> bool;

    /// The caller's tracing span: work a batching worker does for this generation alone (its
    /// prefill, its end) runs in it, so its logs carry the request's fields.
    fn span(&self) -> tracing::Span {
        tracing::Span::none()
    }
}

/// How a generation ended: its summary (for the `Finished` event, which the worker sends after
/// counting it), or cancelled because nobody listens any more.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Finished(GenerationSummary),
    Cancelled,
}

fn deadline_passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// What a sequence does after taking one row of logits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Feed this token to the model next.
    Next(u32),
    Done(Outcome),
}

/// One generation between decode steps: sampling, stop sequences, detokenization, limits and
/// timings. The same state runs alone (`run_generation`) or as a row of a batch (`batch`).
#[derive(Debug)]
pub(crate) struct SequenceState {
    prompt_tokens: usize,
    max_new_tokens: usize,
    deadline: Option<Instant>,
    context: usize,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    generated: usize,
    /// Alternatives to report per token, when the request asked for logprobs.
    logprobs: Option<usize>,
    /// Scratch for the alternatives, reused across steps.
    best: Vec<(u32, f32)>,
    pub(crate) timings: Timings,
    decode_started: Instant,
}

impl SequenceState {
    fn at_limit(&self) -> bool {
        self.generated >= self.max_new_tokens || self.prompt_tokens + self.generated >= self.context
    }

    fn finish(&mut self, finish_reason: FinishReason) -> Outcome {
        self.timings.decode = self.decode_started.elapsed();
        Outcome::Finished(GenerationSummary {
            finish_reason,
            completion_tokens: self.generated,
            timings: self.timings,
        })
    }

    /// Picks the next token from `logits`, emits it (with any text released), and says whether
    /// to feed it to the model or stop.
    pub(crate) fn accept(
        &mut self,
        codec: &TextCodec,
        logits: &[f32],
        sink: &mut dyn EventSink,
    ) -> Result<Step, EngineError> {
        if self.at_limit() {
            return Ok(Step::Done(self.finish(FinishReason::Length)));
        }
        // The confidence, the normaliser of the logprobs and the alternatives (when asked), from
        // one exponential pass over the vocabulary (confidence.rs).
        let stats = token_stats(logits, self.logprobs.unwrap_or(0), &mut self.best);
        let id = self.sampler.next_token(logits);
        let logprobs = self.logprobs.map(|_| {
            let entry = |id: u32, logit: f32| TokenLogprob {
                id,
                bytes: codec.token_bytes(id),
                logprob: (f64::from(logit) - stats.log_partition) as f32,
            };
            let chosen_logit = logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            TokenLogprobs {
                chosen: entry(id, chosen_logit),
                top: self
                    .best
                    .iter()
                    .map(|&(id, logit)| entry(id, logit))
                    .collect(),
            }
        });
        self.generated += 1;

        let (mut text, reason) = if id == codec.eos_id() {
            (String::new(), Some(FinishReason::Eos))
        } else {
            let delta = self.decoder.push(codec, id)?;
            let released = self.stops.push(&delta);
            let reason = released.stopped.then_some(FinishReason::Stop);
            (released.text, reason)
        };
        // Decide now whether this is the last token, so held-back text travels with it.
        let mut reason = reason.or_else(|| {
            if self.at_limit() {
                Some(FinishReason::Length)
            } else if deadline_passed(self.deadline) {
                Some(FinishReason::Deadline)
            } else {
                None
            }
        });
        if reason.is_some_and(|r| r != FinishReason::Stop) {
            let released = self.stops.push(&self.decoder.flush(codec)?);
            text.push_str(&released.text);
            if released.stopped {
                reason = Some(FinishReason::Stop);
            } else {
                text.push_str(&self.stops.flush());
            }
        }
        let event = TokenEvent {
            id,
            text,
            top1_prob: stats.top1_prob,
            entropy: stats.entropy,
            logprobs,
        };
        if !sink.emit(GenerationEvent::Token(event)) {
            return Ok(Step::Done(Outcome::Cancelled));
        }
        if let Some(reason) = reason {
            return Ok(Step::Done(self.finish(reason)));
        }
        if sink.is_closed() {
            return Ok(Step::Done(Outcome::Cancelled));
        }
        Ok(Step::Next(id))
    }
}

/// One generation alone: prefill, then one decode step per token on a one-row cache.
pub(crate) fn run_generation<B: Backend>(
    backend: &mut B,
    codec: &TextCodec,
    job: &GenerationJob,
    sink: &mut dyn EventSink,
) -> Result<Outcome, EngineError> {
    let (mut state, mut logits, mut cache) = match start_generation(backend, job, sink)? {
        Started::Running {
            state,
            logits,
            cache,
        } => (state, logits, cache),
        Started::Done(outcome) => return Ok(outcome),
    };
    loop {
        match state.accept(codec, &logits, sink)? {
            Step::Done(outcome) => return Ok(outcome),
            Step::Next(id) => {
                let (step_logits, run_time) = backend.forward(&[id], &mut cache, false)?;
                state.timings.session_run += run_time;
                logits = step_logits.data;
            }
        }
    }
}

/// Prefill only: the prompt's mean NLL and the confidence of the first answer token.
pub(crate) fn score_prompt<B: Backend>(
    backend: &mut B,
    prompt_ids: &[u32],
) -> Result<PromptScore, EngineError> {
    let started = Instant::now();
    let mut cache = backend.empty_cache()?;
    let prefilled = prefill_all(backend, prompt_ids, &mut cache, true)?;
    let mean_nll = prefilled.mean_nll;
    let (next_top1_prob, next_entropy) = token_confidence(&prefilled.last);
    Ok(PromptScore {
        prompt_tokens: prompt_ids.len(),
        mean_nll,
        next_top1_prob,
        next_entropy,
        prefill_time: started.elapsed(),
    })
}

/// Raw logits after the prompt (the distribution of the first answer token).
pub(crate) fn next_token_logits<B: Backend>(
    backend: &mut B,
    prompt_ids: &[u32],
) -> Result<Vec<f32>, EngineError> {
    let mut cache = backend.empty_cache()?;
    Ok(prefill_all(backend, prompt_ids, &mut cache, false)?.last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    use super::*;
    use crate::manifest::{Manifest, ModelVariant};
    use crate::session::{GraphOptimization, ModelSession, SessionOptions};

    fn edge() -> (ModelSession, TextCodec, Vec<u32>) {
        edge_chunked(0)
    }

    fn edge_chunked(prefill_chunk: usize) -> (ModelSession, TextCodec, Vec<u32>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/edge");
        let manifest = Manifest::load(&dir).unwrap();
        let codec = TextCodec::load(&dir.join("tokenizer.json"), &manifest).unwrap();
        let environment = crate::runtime::environment(None).unwrap();
        let model = manifest.model_file(ModelVariant::Fp32).unwrap();
        let options = SessionOptions {
            intra_op_threads: 1,
            graph_optimization: GraphOptimization::All,
            optimized_model: None,
            intra_op_spinning: true,
            intra_op_spin_duration_us: 20,
            memory_arena: true,
            prefill_chunk,
            share_kv_buffer: true,
        };
        let session = ModelSession::open(
            &environment,
            &dir.join(&model.path),
            None,
            &manifest,
            &options,
        )
        .unwrap();
        let ids = codec
            .encode("<|user|>turn on the kitchen lights<|end|><|assistant|>")
            .unwrap();
        (session, codec, ids)
    }

    /// Records events; reports itself closed after `capacity` tokens, like a dropped stream.
    struct ClosingSink {
        events: Vec<GenerationEvent>,
        capacity: usize,
    }

    impl ClosingSink {
        fn tokens(&self) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, GenerationEvent::Token(_)))
                .count()
        }
    }

    impl EventSink for ClosingSink {
        fn emit(&mut self, event: GenerationEvent) -> bool {
            if self.tokens() >= self.capacity && matches!(event, GenerationEvent::Token(_)) {
                return false;
            }
            self.events.push(event);
            true
        }

        fn is_closed(&self) -> bool {
            self.tokens() >= self.capacity
        }
    }

    fn job(ids: &[u32]) -> GenerationJob {
        GenerationJob {
            prompt_ids: ids.to_vec(),
            sampling: SamplingParams::greedy(24),
            deadline: None,
            queue_time: Duration::ZERO,
            score_prompt: false,
        }
    }

    #[test]
    fn a_closed_stream_stops_the_decode_loop_mid_answer() {
        let (mut session, codec, ids) = edge();
        let mut open = ClosingSink {
            events: Vec::new(),
            capacity: usize::MAX,
        };
        let outcome = run_generation(&mut session, &codec, &job(&ids), &mut open).unwrap();
        assert!(matches!(outcome, Outcome::Finished(_)));
        let full = open.tokens();
        assert!(full > 3, "the answer is long enough to cut");

        let mut closing = ClosingSink {
            events: Vec::new(),
            capacity: 2,
        };
        let outcome = run_generation(&mut session, &codec, &job(&ids), &mut closing).unwrap();
        assert_eq!(outcome, Outcome::Cancelled);
        assert_eq!(closing.tokens(), 2);
    }

    /// Open for the first `open_for` questions, then closed: a client that left mid-prefill.
    struct LeavesDuringPrefill {
        events: Vec<GenerationEvent>,
        open_for: usize,
        asked: std::cell::Cell<usize>,
    }

    impl EventSink for LeavesDuringPrefill {
        fn emit(&mut self, event: GenerationEvent) -> bool {
            self.events.push(event);
            !self.is_closed()
        }

        fn is_closed(&self) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.asked.get() > self.open_for
        }
    }

    #[test]
    fn a_caller_that_leaves_during_a_chunked_prefill_stops_it_between_chunks() {
        let (mut session, _, ids) = edge_chunked(1);
        assert!(
            ids.len() > 4,
            "one chunk per token, more chunks than the sink allows"
        );
        // Open for the check before the prefill and before chunks 2 and 3, gone before chunk 4.
        let mut sink = LeavesDuringPrefill {
            events: Vec::new(),
            open_for: 3,
            asked: std::cell::Cell::new(0),
        };
        let started = start_generation(&mut session, &job(&ids), &mut sink).unwrap();
        assert!(matches!(started, Started::Done(Outcome::Cancelled)));
        // Stopped inside the prefill: no `Started` (it follows a whole prefill), and nobody
        // was asked again after the answer was "closed".
        assert!(sink.events.is_empty(), "{:?}", sink.events);
        assert_eq!(sink.asked.get(), 4);
    }

    #[test]
    fn a_prompt_prefilled_in_chunks_scores_and_continues_like_one_run() {
        let (mut whole, _, ids) = edge();
        // 3 does not divide the prompt: the last chunk is shorter, and one chunk is one token.
        for chunk in [3, 1] {
            let (mut chunked, _, _) = edge_chunked(chunk);
            assert!(ids.len() > 2 * chunk);
            let (mut cache_a, mut cache_b) =
                (whole.empty_cache().unwrap(), chunked.empty_cache().unwrap());
            let a = prefill_all(&mut whole, &ids, &mut cache_a, true).unwrap();
            let b = prefill_all(&mut chunked, &ids, &mut cache_b, true).unwrap();
            let (nll_a, nll_b) = (a.mean_nll.unwrap(), b.mean_nll.unwrap());
            assert!((nll_a - nll_b).abs() < 1e-5, "{nll_a} vs {nll_b}");
            let diff = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max)
            };
            assert_eq!(a.last.len(), b.last.len());
            assert!(diff(&a.last, &b.last) < 1e-4);
            // The caches hold the same positions: the next step agrees too.
            let (step_a, _) = whole.forward(&[ids[0]], &mut cache_a, false).unwrap();
            let (step_b, _) = chunked.forward(&[ids[0]], &mut cache_b, false).unwrap();
            assert!(diff(&step_a.data, &step_b.data) < 1e-4);
            // Without scoring, only the last row is kept, the same one.
            let mut cache_c = chunked.empty_cache().unwrap();
            let c = prefill_all(&mut chunked, &ids, &mut cache_c, false).unwrap();
            assert_eq!(c.mean_nll, None);
            assert!(diff(&a.last, &c.last) < 1e-4);
        }
    }

    #[test]
    fn the_session_scores_a_prompt_in_place_as_from_a_copy_of_every_row() {
        let (mut session, _, ids) = edge();
        let (mut cache_a, mut cache_b) = (
            session.empty_cache().unwrap(),
            session.empty_cache().unwrap(),
        );
        let (last, nll, _) = session.forward_scored(&ids, &mut cache_a, &ids).unwrap();
        let (all, _) = session.forward(&ids, &mut cache_b, true).unwrap();
        assert_eq!(all.rows(), ids.len());
        assert_eq!(last.rows(), 1);
        assert_eq!(last.data, all.row(ids.len() - 1));
        let copied = crate::confidence::nll_sum(&all.data, all.vocab, &ids);
        assert_eq!(nll, copied);
        assert!(nll.unwrap() > 0.0);
        // A target outside the vocabulary gives no score, not a wrong one.
        let mut cache_c = session.empty_cache().unwrap();
        let mut bad = ids.clone();
        bad[1] = u32::MAX;
        let (_, nll, _) = session.forward_scored(&ids, &mut cache_c, &bad).unwrap();
        assert_eq!(nll, None);
    }
}
