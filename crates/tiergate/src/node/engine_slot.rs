//! The node's local engine behind a slot that a model reload can refill: each request takes the
//! engine in the slot when it starts and keeps that handle to its end, so a swap changes what
//! new requests use while in-flight ones finish on the old engine (whose workers stop once the
//! last handle and queued job are gone).

use std::sync::{Arc, PoisonError, RwLock};

use tiergate_engine::Engine;

/// A shared, swappable [`Engine`] handle.
#[derive(Debug, Clone)]
pub struct EngineSlot(Arc<RwLock<Engine>>);

impl EngineSlot {
    pub fn new(engine: Engine) -> Self {
        EngineSlot(Arc::new(RwLock::new(engine)))
    }

    /// The engine new work should use.
    pub fn current(&self) -> Engine {
        // A panic while holding the lock cannot leave a half-written handle.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `engine` in the slot; returns the previous one.
    pub fn replace(&self, engine: Engine) -> Engine {
        let mut slot = self.0.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, engine)
    }
}
