//! Prefill in pieces: the prompt runs through the model at most `Backend::prefill_chunk`
//! positions at a time, the KV cache carrying over, so the logits held at once stay bounded; a
//! batching worker may also stop between pieces to run a decode step for the generations it is
//! already streaming (`PrefillProgress`, `batch.rs`).
//!
//! Scoring needs every position's logits row, each vocabulary-wide (49,152 floats, 196 KB for
//! SmolLM2), and ONNX Runtime holds several such buffers during a run (the lm_head's products
//! and their sum): an 892-token prompt in one run took the int4 node's resident set from 248 MB
//! to a 903 MB peak (docs/benchmarks.md). Scoring reads the rows where ONNX Runtime left them
//! (`Backend::forward_scored`); only the last row is copied out. Without scoring, a graph with
//! `io.logits_to_keep` runs the lm_head on each piece's last position alone.

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

/// How far a prompt's prefill got: the positions already in the cache, the summed NLL of their
/// targets, the time inside the model runs. Holds no borrow, so a generation can wait between
/// pieces while other work runs on the same worker.
#[derive(Debug)]
pub(crate) struct PrefillProgress {
    done: usize,
    pieces: usize,
    nll_sum: Option<f64>,
    run_time: Duration,
    last: Vec<f32>,
}

impl PrefillProgress {
    pub(crate) fn new() -> Self {
        PrefillProgress {
            done: 0,
            pieces: 0,
            nll_sum: Some(0.0),
            run_time: Duration::ZERO,
            last: Vec::new(),
        }
    }

    /// Prompt positions not yet run.
    pub(crate) fn remaining(&self, ids: &[u32]) -> usize {
        ids.len().saturating_sub(self.done)
    }

    pub(crate) fn has_begun(&self) -> bool {
        self.pieces > 0
    }

    /// The largest next piece: what is left, at most one chunk of the backend's and `limit`
    /// (0: no limit).
    pub(crate) fn next_piece<B: Backend>(&self, backend: &B, ids: &[u32], limit: usize) -> usize {
        let cap = |n: usize| if n == 0 { usize::MAX } else { n };
        self.remaining(ids)
            .min(cap(backend.prefill_chunk()))
            .min(cap(limit))
    }

    /// Runs the next `positions` prompt positions (at least one) after the cached ones. With
    /// `score`, every position's logits come back and the NLL of its target is added (row `i` of
    /// a piece starting at `start` predicts `ids[start + i + 1]`).
    pub(crate) fn advance<B: Backend>(
        &mut self,
        backend: &mut B,
        ids: &[u32],
        cache: &mut B::Cache,
        score: bool,
        positions: usize,
    ) -> Result<(), EngineError> {
        let start = self.done;
        let end = (start + positions.max(1)).min(ids.len());
        let part = &ids[start..end];
        if part.is_empty() {
            return Err(EngineError::Runtime(
                "a prefill needs at least one token".into(),
            ));
        }
        let logits = if score {
            let targets = &ids[start..(end + 1).min(ids.len())];
            let (logits, nll, time) = backend.forward_scored(part, cache, targets)?;
            self.nll_sum = self.nll_sum.zip(nll).map(|(a, b)| a + b);
            self.run_time += time;
            logits
        } else {
            let (logits, time) = backend.forward(part, cache, false)?;
            self.run_time += time;
            logits
        };
        self.last = logits.into_last();
        self.done = end;
        self.pieces += 1;
        Ok(())
    }

    /// The prefill of a prompt whose every position has run.
    pub(crate) fn finish(self, ids: &[u32], score: bool) -> Prefilled {
        if self.pieces > 1 {
            // The pieces' logits buffers (tens of MB each) stay in malloc's free lists after the
            // prompt, under its mmap threshold: measured 381 MB resident after an 892-token
            // prompt against 243 MB unchunked. One trim per long prompt, never per decode step.
            trim_heap();
        }
        let mean_nll = if score && ids.len() > 1 {
            self.nll_sum.map(|sum| sum / (ids.len() - 1) as f64)
        } else {
            None
        };
        Prefilled {
            last: self.last,
            mean_nll,
            run_time: self.run_time,
        }
    }
}

/// Runs `ids` after the (empty or not) one-row `cache`, chunk by chunk. With `score` the mean NLL
/// of `ids[1..]` comes back too.
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
    let mut progress = PrefillProgress::new();
    loop {
        if progress.has_begun() && !keep_going() {
            return Ok(None);
        }
        let piece = progress.next_piece(backend, ids, 0);
        progress.advance(backend, ids, cache, score, piece)?;
        if progress.remaining(ids) == 0 {
            return Ok(Some(progress.finish(ids, score)));
        }
    }
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
