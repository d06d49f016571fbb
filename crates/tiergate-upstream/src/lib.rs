//! tiergate-upstream
