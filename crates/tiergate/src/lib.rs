//! The tiergate node: configuration, the gRPC and HTTP servers, the request executor that walks
//! a routing plan across tiers, and the metrics exporter. `main.rs` only parses the command line.

pub mod accept;
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
pub mod page_faults;
pub mod privacy;
pub mod serve;
pub mod shell;
pub mod telemetry;
pub mod tls;

/// An error and its sources on one line, for logs.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
