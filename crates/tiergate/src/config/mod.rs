//! The node's configuration: one TOML file, every field documented, unknown fields rejected.

pub mod duration;
mod layers;

pub use layers::{ConfigError, ENV_PREFIX, load};
