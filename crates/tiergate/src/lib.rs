//! The tiergate node: configuration, the gRPC and HTTP servers, the request executor that walks
//! a routing plan across tiers, and the metrics exporter. `main.rs` only parses the command line.

pub mod auth;
pub mod cache;
pub mod calibration;
pub mod config;
pub mod demo;
pub mod device;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model_trust;
pub mod node;
pub mod privacy;
pub mod serve;
pub mod shell;
pub mod telemetry;
pub mod tls;
