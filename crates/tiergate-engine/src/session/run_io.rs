//! What goes into one run of the graph besides the KV cache, and what comes back out of it.

use ort::value::{DynValue, Tensor};

use crate::backend::Logits;
use crate::confidence::nll_sum;
use crate::error::EngineError;

/// Which logits a run hands back.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rows<'a> {
    /// The last position of every batch row.
    Last,
    /// Every position of every row.
    All,
    /// The last position, plus the NLL sum of these targets over every position (one-row runs).
    Scored(&'a [u32]),
}

pub(super) fn tensor_i64<const N: usize>(
    shape: [usize; N],
    data: Vec<i64>,
) -> Result<DynValue, EngineError> {
    Ok(Tensor::<i64>::from_array((shape, data))
        .map_err(EngineError::runtime)?
        .into_dyn())
}

/// A run's inputs besides the cache.
pub(super) struct StepInputs {
    /// The ids, or their embedding rows.
    pub tokens: DynValue,
    pub attention_mask: DynValue,
    pub position_ids: Option<DynValue>,
    /// 1 (the last position's logits) or 0 (every position's), for a graph that takes it.
    pub logits_to_keep: Option<DynValue>,
}

/// The logits a run should return: `[batch, seq, vocab]` (`seq` 1 when the graph kept only
/// the last position).
#[derive(Debug, Clone, Copy)]
pub(super) struct LogitsShape {
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
}

/// The logits `rows` asks for out of ONNX Runtime's output, and the NLL sum of its targets
/// (`Rows::Scored`) read in place.
pub(super) fn read_logits(
    value: &DynValue,
    shape: LogitsShape,
    rows: Rows<'_>,
) -> Result<(Logits, Option<f64>), EngineError> {
    let LogitsShape { batch, seq, vocab } = shape;
    let (dims, data) = value
        .try_extract_tensor::<f32>()
        .map_err(EngineError::runtime)?;
    let dims: Vec<i64> = dims.iter().copied().collect();
    if dims != [batch as i64, seq as i64, vocab as i64] {
        return Err(EngineError::Runtime(format!(
            "logits have shape {dims:?}, expected [{batch}, {seq}, {vocab}]"
        )));
    }
    let nll = match rows {
        Rows::Scored(targets) => nll_sum(data, vocab, targets),
        Rows::All | Rows::Last => None,
    };
    let data = if matches!(rows, Rows::All) || seq == 1 {
        data.to_vec()
    } else {
        let mut last = Vec::with_capacity(batch * vocab);
        for row in 0..batch {
            let start = (row * seq + seq - 1) * vocab;
            last.extend_from_slice(&data[start..start + vocab]);
        }
        last
    };
    Ok((Logits { data, vocab }, nll))
}
