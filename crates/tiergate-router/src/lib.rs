//! Pure routing logic for tiergate: no I/O, no clocks of its own (time is passed in).
//!
//! - [`health`]: per-upstream link health (latency EWMA, error rate, circuit breaker).

pub mod health;
