//! The seam between the decode loop / batch scheduler and the thing that runs the model.
//!
//! Like text-embeddings-inference's `Backend`: `generate` (one sequence) and `batch` (many
//! sequences sharing each decode step) are written against this trait; `session::ModelSession`
//! (ONNX Runtime) implements it, and the scheduler's tests use a small deterministic fake.

use std::time::Duration;

use crate::confidence::nll_sum;
use crate::error::EngineError;

/// Logits of a forward pass: `rows` rows of `vocab` scores, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Logits {
    pub data: Vec<f32>,
    pub vocab: usize,
}

impl Logits {
    pub(crate) fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    pub(crate) fn row(&self, index: usize) -> &[f32] {
        let start = (index * self.vocab).min(self.data.len());
        let end = (start + self.vocab).min(self.data.len());
        &self.data[start..end]
    }

    /// The last row, keeping the buffer (no copy when it holds one row, as a decode step's does).
    pub(crate) fn into_last(mut self) -> Vec<f32> {
        let start = (self.rows().saturating_sub(1) * self.vocab).min(self.data.len());
        self.data.drain(..start);
        self.data.truncate(self.vocab);
        self.data
    }
}

/// A decoder with a KV cache.
///
/// A cache holds one or more sequences (batch rows). Rows may have different lengths: the
/// backend decides how (left padding for the ONNX graph); callers only see per-row lengths.
pub(crate) trait Backend {
    type Cache;

    /// Positions the model can attend over; a sequence never grows beyond it.
    fn context_length(&self) -> usize;

    /// A cache of one row holding nothing (before a prefill).
    fn empty_cache(&self) -> Result<Self::Cache, EngineError>;

    /// Prompt positions per forward pass during prefill; 0 runs a prompt in one pass.
    fn prefill_chunk(&self) -> usize {
        0
    }

    /// Runs `ids` after the cached positions of a one-row cache. With `all_rows` the logits of
    /// every position come back (prompt scoring), otherwise the last row only. The duration is
    /// the time spent inside the model run itself.
    fn forward(
        &mut self,
        ids: &[u32],
        cache: &mut Self::Cache,
        all_rows: bool,
    ) -> Result<(Logits, Duration), EngineError>;

    /// Runs `ids` like [`Backend::forward`] and scores them: returns the last position's logits
    /// and the summed negative log-likelihood of `targets` (row `i` predicting `targets[i + 1]`;
    /// `None` when a target is out of the vocabulary). The default asks `forward` for every row;
    /// a backend that can read its output in place overrides it (the ONNX session: a prompt's
    /// rows are 196 KB each, copied for nothing but this sum).
    fn forward_scored(
        &mut self,
        ids: &[u32],
        cache: &mut Self::Cache,
        targets: &[u32],
    ) -> Result<(Logits, Option<f64>, Duration), EngineError> {
        let (all, run_time) = self.forward(ids, cache, true)?;
        let nll = nll_sum(&all.data, all.vocab, targets);
        let vocab = all.vocab;
        let last = Logits {
            data: all.into_last(),
            vocab,
        };
        Ok((last, nll, run_time))
    }

    /// One decode step for every row of `cache`: `tokens[i]` extends row `i`. Returns one logits
    /// row per cache row, in order.
    fn decode_batch(
        &mut self,
        tokens: &[u32],
        cache: &mut Self::Cache,
    ) -> Result<(Logits, Duration), EngineError>;

    /// Rows in `cache`.
    fn batch_size(cache: &Self::Cache) -> usize;

    /// A new cache made of rows picked from several caches, in the order given:
    /// `(cache index, row index)`. Used to add prefilled sequences to the running batch and to
    /// drop finished ones.
    fn gather(
        &mut self,
        caches: &[&Self::Cache],
        rows: &[(usize, usize)],
    ) -> Result<Self::Cache, EngineError>;
}
