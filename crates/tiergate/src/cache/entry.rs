//! What the cache keeps of an answer, and how it is written to disk (JSON inside the embedded
//! store's value: readable with any redb tool, and a field added later stays readable).

use serde::{Deserialize, Serialize};
use tiergate_router::tier::Tier;

use crate::node::{FinishReason, Usage};
use tiergate_api::wire::finish_reason_from_str;

/// A stored answer: its text and where it came from; never the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub text: String,
    /// The tier that originally answered; a hit reports it.
    pub tier: Tier,
    pub model: String,
    /// "stop" or "length".
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Wall-clock seconds since the Unix epoch when it was stored (survives restarts, which
    /// `Instant` does not).
    pub stored_at: u64,
}

impl CachedAnswer {
    pub fn finish_reason(&self) -> FinishReason {
        finish_reason_from_str(&self.finish_reason)
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        }
    }

    /// Roughly what the entry costs in memory, for the LRU's byte bound.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>() + 32 + self.text.len() + self.model.len()
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
