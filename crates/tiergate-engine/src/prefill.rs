//! Prefill in chunks: the prompt runs through the model `Backend::prefill_chunk` positions at
//! a time, the KV cache carrying over, so the logits held at once stay bounded.
//!
//! The graph returns one vocabulary-wide logits row per input position (49,152 floats, 196 KB
//! for SmolLM2), and ONNX Runtime holds several such buffers during a run (the lm_head's
//! products and their sum): an 892-token prompt in one run took the int4 node's resident set
//! from 248 MB to a 903 MB peak (docs/benchmarks.md). Scoring reads the rows where ONNX Runtime
//! left them (`Backend::forward_scored`); only the last row is copied out.

use std::time::Duration;

use crate::backend::Backend;
use crate::error::EngineError;
use crate::memory::trim_heap;

/// What a prefill leaves: the last position's logits (the first answer token's distribution),
/// the prompt's mean NLL when asked for, and the time inside the model runs.
#[derive(Debug)]
pub(crate) struct Prefilled {
    pub last: Vec<f32>,
    pub mean_nll: Option<f64>,
    pub run_time: Duration,
}

/// Runs `ids` after the (empty or not) one-row `cache`, chunk by chunk. With `score`, every
/// position's logits come back from each run and the mean NLL of `ids[1..]` is accumulated
/// (row `i` of a chunk starting at `start` predicts `ids[start + i + 1]`).
///
/// `keep_going` is asked before every chunk after the first: a caller that left or a deadline
/// that passed stops a long prompt there (`Ok(None)`) instead of after all its chunks (an
/// 892-token prompt is seconds of CPU on an edge box).
pub(crate) fn prefill<B: Backend>(
    backend: &mut B,
    ids: &[u32],
    cache: &mut B::Cache,
    score: bool,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<Option<Prefilled>, EngineError> {
    if ids.is_empty() {
        return Err(EngineError::Runtime(
            "a prefill needs at least one token".into(),
        ));
    }
    let chunk = match backend.prefill_chunk() {
        0 => ids.len(),
        n => n,
    };
    let mut run_time = Duration::ZERO;
    let mut last = Vec::new();
    let mut total = Some(0.0f64);
    for (index, part) in ids.chunks(chunk).enumerate() {
        if index > 0 && !keep_going() {
            return Ok(None);
        }
        let logits = if score {
            let start = index * chunk;
            let targets = &ids[start..(start + part.len() + 1).min(ids.len())];
            let (logits, nll, time) = backend.forward_scored(part, cache, targets)?;
            total = total.zip(nll).map(|(a, b)| a + b);
            run_time += time;
            logits
        } else {
            let (logits, time) = backend.forward(part, cache, false)?;
            run_time += time;
            logits
        };
        last = logits.into_last();
    }
    if ids.len() > chunk {
        // The chunks' logits buffers (tens of MB each) stay in malloc's free lists after the
        // prompt, under its mmap threshold: measured 381 MB resident after an 892-token prompt
        // against 243 MB unchunked. One trim per long prompt, never per decode step.
        trim_heap();
    }
    let mean_nll = if score && ids.len() > 1 {
        total.map(|sum| sum / (ids.len() - 1) as f64)
    } else {
        None
    };
    Ok(Some(Prefilled {
        last,
        mean_nll,
        run_time,
    }))
}

/// A prefill nobody abandons (scoring a prompt, the first token's logits).
pub(crate) fn prefill_all<B: Backend>(
    backend: &mut B,
    ids: &[u32],
    cache: &mut B::Cache,
    score: bool,
) -> Result<Prefilled, EngineError> {
    prefill(backend, ids, cache, score, &mut || true)?
        .ok_or_else(|| EngineError::Runtime("a prefill that nothing stops stopped".into()))
}
