//! The gRPC front end: `tiergate.v1.Inference`, with `grpc.health.v1.Health` and server
//! reflection on the same port.

mod server;
mod service;

pub use server::{GrpcListenerSettings, serve_grpc};
pub use service::{InferenceService, grpc_timeout};
