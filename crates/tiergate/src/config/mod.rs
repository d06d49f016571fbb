//! The node's configuration: one TOML file, every field documented, unknown fields rejected.

pub mod duration;
mod layers;
mod node;

pub use layers::{ConfigError, ENV_PREFIX, from_value, load, load_with, process_env};
pub use node::{Config, NodeSection, ServerSection, UpstreamsSection};
