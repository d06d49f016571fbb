//! The KV cache of one or more sequences: past keys and values per layer, and the buffers that
//! hold them.
//!
//! Two layouts, after the graph (`Manifest::kv_cache`): a concat graph takes the past and hands
//! back a new present holding past and new positions (the cache is exactly as long as its
//! positions); a shared-buffer graph writes the new positions into the past tensor itself, so
//! the cache keeps room beyond its positions and grows by doubling. The second saves ONNX
//! Runtime's copy of the whole cache on every run (docs/benchmarks.md, "Long contexts").

use ort::memory::Allocator;
use ort::session::IoBinding;
use ort::value::{DynValue, Tensor};

use crate::error::EngineError;

/// The smallest buffer a shared-buffer cache allocates, in positions: a short prompt and its
/// first answer tokens fit without a regrowth.
const MIN_CAPACITY: usize = 64;

/// Past keys and values per layer, `[batch, kv_heads, capacity, head_dim]` each.
///
/// Rows are left-padded to a common `len`: row `i` holds `lengths[i]` real positions in slots
/// `len - lengths[i] .. len`; the padding before them is zeros, masked out (`attention_mask`
/// 0). Slots `len .. capacity` are room a shared-buffer graph writes the next positions into;
/// a concat graph's cache has none (`capacity == len`).
#[derive(Debug)]
pub(crate) struct KvCache {
    pub(crate) keys: Vec<DynValue>,
    pub(crate) values: Vec<DynValue>,
    pub(crate) len: usize,
    pub(crate) capacity: usize,
    pub(crate) lengths: Vec<usize>,
    /// A shared-buffer cache's tensors bound as the session's past inputs and present outputs,
    /// kept from run to run (binding 120 tensors anew cost ~2% of a decode step); dropped
    /// whenever the tensors are replaced.
    pub(crate) binding: Option<IoBinding>,
}

impl KvCache {
    pub(crate) fn batch_size(&self) -> usize {
        self.lengths.len()
    }
}

/// The shape of one model's cache tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvShape {
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) dim: usize,
}

/// Where a shared-buffer cache's tensors come from, and how far they may grow.
#[derive(Clone, Copy)]
pub(crate) struct SharedBuffers<'a> {
    /// The session's allocator: ONNX Runtime writes a present output only into tensors it
    /// allocated.
    pub(crate) allocator: &'a Allocator,
    /// The model's context: no buffer grows beyond it (unless one run needs more).
    pub(crate) limit: usize,
}

impl KvShape {
    /// A cache holding nothing: zero-length past tensors, as the graph expects for a prompt.
    pub(crate) fn empty(self) -> Result<KvCache, EngineError> {
        Ok(KvCache {
            keys: (0..self.layers)
                .map(|_| self.owned(1, 0, Vec::new()))
                .collect::<Result<_, _>>()?,
            values: (0..self.layers)
                .map(|_| self.owned(1, 0, Vec::new()))
                .collect::<Result<_, _>>()?,
            len: 0,
            capacity: 0,
            lengths: vec![0],
            binding: None,
        })
    }

    /// `[batch, heads, positions, dim]` from row-major data.
    fn owned(
        self,
        batch: usize,
        positions: usize,
        data: Vec<f32>,
    ) -> Result<DynValue, EngineError> {
        let shape = [batch, self.heads, positions, self.dim];
        Ok(Tensor::<f32>::from_array((shape, data))
            .map_err(EngineError::runtime)?
            .into_dyn())
    }

    /// A zeroed `[batch, heads, capacity, dim]` tensor from ONNX Runtime's allocator, filled by
    /// `fill` (the tensor's data, row-major).
    fn buffer(
        self,
        allocator: &Allocator,
        batch: usize,
        capacity: usize,
        fill: impl FnOnce(&mut [f32]),
    ) -> Result<DynValue, EngineError> {
        let shape = [batch, self.heads, capacity, self.dim];
        let mut tensor = Tensor::<f32>::new(allocator, shape).map_err(EngineError::runtime)?;
        let (_, data) = tensor.extract_tensor_mut();
        // ONNX Runtime hands the memory over uninitialised: padding must read as zeros.
        data.fill(0.0);
        fill(data);
        Ok(tensor.into_dyn())
    }

    /// Makes room in a shared-buffer `cache` for `needed` positions: larger buffers (at least
    /// double, see [`grown_capacity`]) with the cache's positions copied over. Nothing happens
    /// while the room suffices, which is almost every decode step.
    pub(crate) fn reserve(
        self,
        buffers: SharedBuffers<'_>,
        cache: &mut KvCache,
        needed: usize,
    ) -> Result<(), EngineError> {
        if cache.capacity >= needed {
            return Ok(());
        }
        let capacity = grown_capacity(cache.capacity, needed, buffers.limit);
        let batch = cache.batch_size();
        let slabs = batch * self.heads;
        let (old_capacity, len, dim) = (cache.capacity, cache.len, self.dim);
        let regrow = |value: &DynValue| -> Result<DynValue, EngineError> {
            let (_, source) = value
                .try_extract_tensor::<f32>()
                .map_err(EngineError::runtime)?;
            self.buffer(buffers.allocator, batch, capacity, |target| {
                for slab in 0..slabs {
                    let from = slab * old_capacity * dim;
                    let to = slab * capacity * dim;
                    target[to..to + len * dim].copy_from_slice(&source[from..from + len * dim]);
                }
            })
        };
        // The binding holds the old tensors: rebound on the next run.
        cache.binding = None;
        cache.keys = cache.keys.iter().map(regrow).collect::<Result<_, _>>()?;
        cache.values = cache.values.iter().map(regrow).collect::<Result<_, _>>()?;
        cache.capacity = capacity;
        Ok(())
    }

    /// Copies rows of several caches (`(cache, row)` pairs) into a new one, each row
    /// right-aligned (left-padded with zeros) to the longest picked row; padding no picked row
    /// needs is dropped. With `shared`, the new cache is a shared-buffer one with room to grow.
    pub(crate) fn gather(
        self,
        caches: &[&KvCache],
        rows: &[(usize, usize)],
        shared: Option<SharedBuffers<'_>>,
    ) -> Result<KvCache, EngineError> {
        let mut lengths = Vec::with_capacity(rows.len());
        for &(cache, row) in rows {
            let length = caches
                .get(cache)
                .and_then(|c| c.lengths.get(row))
                .ok_or_else(|| EngineError::Runtime(format!("no cache row {cache}.{row}")))?;
            lengths.push(*length);
        }
        let len = lengths.iter().copied().max().unwrap_or(0);
        // A gathered batch decodes next: room for its next position at least.
        let capacity = match shared {
            Some(buffers) => grown_capacity(0, len + 1, buffers.limit),
            None => len,
        };
        let (heads, dim) = (self.heads, self.dim);
        let copy_rows = |layer: usize, keys: bool, target: &mut [f32]| -> Result<(), EngineError> {
            for (out_row, &(cache, row)) in rows.iter().enumerate() {
                let source = caches[cache];
                let value = if keys {
                    &source.keys[layer]
                } else {
                    &source.values[layer]
                };
                let (_, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(EngineError::runtime)?;
                let length = source.lengths[row];
                for head in 0..heads {
                    // The real positions are the last `length` of the source row's `len`.
                    let from = ((row * heads + head) * source.capacity + source.len - length) * dim;
                    let to = ((out_row * heads + head) * capacity + len - length) * dim;
                    target[to..to + length * dim].copy_from_slice(&data[from..from + length * dim]);
                }
            }
            Ok(())
        };
        let pick = |layer: usize, keys: bool| -> Result<DynValue, EngineError> {
            match shared {
                Some(buffers) => {
                    let mut copied = Ok(());
                    let value = self.buffer(buffers.allocator, rows.len(), capacity, |target| {
                        copied = copy_rows(layer, keys, target);
                    })?;
                    copied.map(|()| value)
                }
                None => {
                    let mut data = vec![0.0f32; rows.len() * heads * capacity * dim];
                    copy_rows(layer, keys, &mut data)?;
                    self.owned(rows.len(), capacity, data)
                }
            }
        };
        Ok(KvCache {
            keys: (0..self.layers)
                .map(|layer| pick(layer, true))
                .collect::<Result<_, _>>()?,
            values: (0..self.layers)
                .map(|layer| pick(layer, false))
                .collect::<Result<_, _>>()?,
            len,
            capacity,
            lengths,
            binding: None,
        })
    }
}

/// The positions a grown buffer holds: `needed` rounded up to a power of two, at least double
/// the current room (so a long generation regrows a logarithmic number of times) and
/// [`MIN_CAPACITY`], but not beyond `limit` (the context) unless `needed` is.
pub(crate) fn grown_capacity(current: usize, needed: usize, limit: usize) -> usize {
    needed
        .next_power_of_two()
        .max(current.saturating_mul(2))
        .max(MIN_CAPACITY)
        .min(limit.max(needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_doubles_rounds_up_and_stops_at_the_context() {
        assert_eq!(grown_capacity(0, 1, 8192), 64);
        assert_eq!(grown_capacity(0, 40, 8192), 64);
        assert_eq!(grown_capacity(0, 129, 8192), 256);
        assert_eq!(grown_capacity(64, 65, 8192), 128);
        assert_eq!(grown_capacity(256, 257, 8192), 512);
        assert_eq!(grown_capacity(4096, 4097, 6000), 6000);
        // A run that needs more than the context still gets its room.
        assert_eq!(grown_capacity(0, 300, 256), 300);
    }
}
