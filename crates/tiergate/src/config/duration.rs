//! Durations in config files as humantime strings: "250ms", "1.5s", "5m", "1h 30m" (one format for
//! every section; the parser lives beside the link-health config that needs it first).

pub use tiergate_router::health::duration_text::{deserialize, parse, serialize};
