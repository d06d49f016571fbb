//! The `tiergate.v1` gRPC contract, generated at build time from `proto/`.

/// Types and services of package `tiergate.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("tiergate.v1");
}

/// The encoded file descriptor set of every tiergate proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tiergate_descriptor.bin"));
