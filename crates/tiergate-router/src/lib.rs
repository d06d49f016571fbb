//! tiergate-router
