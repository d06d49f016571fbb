//! Durations in config files as human strings: "250ms", "30s", "5m", "1h" (one format for
//! every section; the parser lives beside the link-health config that needs it first).

pub use tiergate_router::health::duration_text::{deserialize, parse, serialize};
