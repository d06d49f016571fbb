//! tiergate-engine
