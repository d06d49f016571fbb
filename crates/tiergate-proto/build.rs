//! Compiles `proto/` with the pure-Rust `protox` (no system protoc) into OUT_DIR.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        proto_root.join("tiergate/v1/inference.proto"),
        proto_root.join("tiergate/v1/admin.proto"),
    ];
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set serves gRPC server reflection.
    std::fs::write(
        out_dir.join("tiergate_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
