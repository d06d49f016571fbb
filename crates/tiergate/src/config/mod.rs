//! The node's configuration: one TOML file, every field documented, unknown fields rejected.

mod layers;

pub use layers::{ConfigError, ENV_PREFIX, load};
