//! The decode loop, run on a worker thread: prefill the prompt, then one token at a time with
//! the KV cache, until EOS, a stop sequence, the token limit, the context end, or the deadline.

use std::time::{Duration, Instant};

use crate::confidence::{prompt_nll, token_confidence};
use crate::error::EngineError;
use crate::events::{
    FinishReason, GenerationEvent, GenerationSummary, PromptScore, Timings, TokenEvent,
};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::ModelSession;
use crate::stop::StopMatcher;
use crate::tokenizer::{IncrementalDecoder, TextCodec};

/// A tokenized, validated generation request as a worker receives it.
#[derive(Debug)]
pub(crate) struct GenerationJob {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub deadline: Option<Instant>,
    pub queue_time: Duration,
}

/// Where the loop sends its events. `emit` returns false once nobody listens any more (the
/// caller dropped the stream): the loop then stops, freeing the worker.
pub(crate) trait EventSink {
    fn emit(&mut self, event: GenerationEvent) -> bool;
    fn is_closed(&self) -> bool;
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

pub(crate) fn run_generation(
    session: &mut ModelSession,
    codec: &TextCodec,
    job: &GenerationJob,
    sink: &mut dyn EventSink,
) -> Result<Outcome, EngineError> {
    let prompt_tokens = job.prompt_ids.len();
    let mut timings = Timings {
        queue: job.queue_time,
        ..Timings::default()
    };
    if sink.is_closed() {
        return Ok(Outcome::Cancelled);
    }
    if deadline_passed(job.deadline) {
        let started = GenerationEvent::Started {
            prompt_tokens,
            prompt_score: None,
        };
        if !sink.emit(started) {
            return Ok(Outcome::Cancelled);
        }
        return Ok(Outcome::Finished(GenerationSummary {
            finish_reason: FinishReason::Deadline,
            completion_tokens: 0,
            timings,
        }));
    }

    let prefill_started = Instant::now();
    let mut cache = session.empty_cache()?;
    let (prefill_logits, run_time) = session.forward(&job.prompt_ids, &mut cache, true)?;
    timings.session_run += run_time;
    let prompt_score = prompt_nll(&prefill_logits.data, prefill_logits.vocab, &job.prompt_ids);
    let mut logits = prefill_logits.last().to_vec();
    drop(prefill_logits);
    timings.prefill = prefill_started.elapsed();
    if !sink.emit(GenerationEvent::Started {
        prompt_tokens,
        prompt_score,
    }) {
        return Ok(Outcome::Cancelled);
    }

    let decode_started = Instant::now();
    let context = session.context_length();
    let mut sampler = Sampler::new(&job.sampling);
    let mut decoder = IncrementalDecoder::default();
    let mut stops = StopMatcher::new(&job.sampling.stop);
    let mut generated = 0usize;
    let finish_reason = loop {
        if generated >= job.sampling.max_new_tokens || prompt_tokens + generated >= context {
            break FinishReason::Length;
        }
        let (top1_prob, entropy) = token_confidence(&logits);
        let id = sampler.next_token(&logits);
        generated += 1;

        let (mut text, reason) = if id == codec.eos_id() {
            (String::new(), Some(FinishReason::Eos))
        } else {
            let delta = decoder.push(codec, id)?;
            let released = stops.push(&delta);
            let reason = released.stopped.then_some(FinishReason::Stop);
            (released.text, reason)
        };
        // Decide now whether this is the last token, so held-back text travels with it.
        let reason = reason.or_else(|| {
            if generated >= job.sampling.max_new_tokens || prompt_tokens + generated >= context {
                Some(FinishReason::Length)
            } else if deadline_passed(job.deadline) {
                Some(FinishReason::Deadline)
            } else {
                None
            }
        });
        let mut reason = reason;
        if reason.is_some_and(|r| r != FinishReason::Stop) {
            let released = stops.push(&decoder.flush(codec)?);
            text.push_str(&released.text);
            if released.stopped {
                reason = Some(FinishReason::Stop);
            } else {
                text.push_str(&stops.flush());
            }
        }
        let event = TokenEvent {
            id,
            text,
            top1_prob,
            entropy,
        };
        if !sink.emit(GenerationEvent::Token(event)) {
            return Ok(Outcome::Cancelled);
        }
        if let Some(reason) = reason {
            break reason;
        }
        if sink.is_closed() {
            return Ok(Outcome::Cancelled);
        }
        let (step_logits, run_time) = session.forward(&[id], &mut cache, false)?;
        timings.session_run += run_time;
        logits = step_logits.data;
    };
    timings.decode = decode_started.elapsed();
    Ok(Outcome::Finished(GenerationSummary {
        finish_reason,
        completion_tokens: generated,
        timings,
    }))
}

/// Prefill only: the prompt's mean NLL and the confidence of the first answer token.
pub(crate) fn score_prompt(
    session: &mut ModelSession,
    prompt_ids: &[u32],
) -> Result<PromptScore, EngineError> {
    let started = Instant::now();
    let mut cache = session.empty_cache()?;
    let (logits, _) = session.forward(prompt_ids, &mut cache, true)?;
    let mean_nll = prompt_nll(&logits.data, logits.vocab, prompt_ids);
    let (next_top1_prob, next_entropy) = token_confidence(logits.last());
    Ok(PromptScore {
        prompt_tokens: prompt_ids.len(),
        mean_nll,
        next_top1_prob,
        next_entropy,
        prefill_time: started.elapsed(),
    })
}

/// Raw logits after the prompt (the distribution of the first answer token).
pub(crate) fn next_token_logits(
    session: &mut ModelSession,
    prompt_ids: &[u32],
) -> Result<Vec<f32>, EngineError> {
    let mut cache = session.empty_cache()?;
    let (logits, _) = session.forward(prompt_ids, &mut cache, false)?;
    Ok(logits.data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    use super::*;
    use crate::manifest::{Manifest, ModelVariant};
    use crate::session::{GraphOptimization, SessionOptions};

    fn edge() -> (ModelSession, TextCodec, Vec<u32>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/edge");
        let manifest = Manifest::load(&dir).unwrap();
        let codec = TextCodec::load(&dir.join("tokenizer.json"), &manifest).unwrap();
        let environment = crate::runtime::environment(None).unwrap();
        let model = manifest.model_file(ModelVariant::Fp32).unwrap();
        let options = SessionOptions {
            intra_op_threads: 1,
            graph_optimization: GraphOptimization::All,
            optimized_model: None,
        };
        let session =
            ModelSession::open(&environment, &dir.join(&model.path), &manifest, &options).unwrap();
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
}
