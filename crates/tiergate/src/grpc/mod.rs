//! The gRPC front end: `tiergate.v1.Inference` and `tiergate.v1.Admin`, with
//! `grpc.health.v1.Health` and server reflection on the same port.

mod admin;
mod server;
mod service;

pub use admin::AdminService;
pub use server::{GrpcListenerSettings, serve_grpc};
pub use service::{InferenceService, grpc_timeout};
