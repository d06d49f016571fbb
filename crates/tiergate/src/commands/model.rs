//! `tiergate model keygen | sign | verify`: the publisher's and the operator's side of signed
//! models (docs/security.md). Errors name what failed: unsigned, bad signature, untrusted key,
//! or the file whose hash does not match. `tiergate model cpu`: which calibrated gate this
//! machine's int4-fast answers need (docs/routing.md).

use std::io::Write;

use tiergate::model_trust::{TrustedKeys, keys, sign_model, verify_model};

use crate::cli::{ModelCpuArgs, ModelKeygenArgs, ModelSignArgs, ModelVerifyArgs};

pub fn keygen(args: &ModelKeygenArgs) -> anyhow::Result<()> {
    let public = keys::generate(&args.out)?;
    let id = keys::key_id(&public);
    let private_path = keys::with_suffix(&args.out, "key");
    let public_path = keys::with_suffix(&args.out, "pub");
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({
            "key_id": id,
            "public_key": hex::encode(public.as_bytes()),
            "private_key_file": private_path,
            "public_key_file": public_path,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "key {id}: private {} (mode 0600, keep it secret), public {}",
            private_path.display(),
            public_path.display()
        )?;
        write!(out, "{}", keys::public_key_text(&public))?;
    }
    Ok(())
}

pub fn sign(args: &ModelSignArgs) -> anyhow::Result<()> {
    let key = keys::load_signing_key(&args.key)?;
    let path = sign_model(&args.dir, &key)?;
    let id = keys::key_id(&key.verifying_key());
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({ "signature_file": path, "key_id": id });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "{}: signed by key {id}", path.display())?;
    }
    Ok(())
}

pub fn verify(args: &ModelVerifyArgs) -> anyhow::Result<()> {
    let trusted = TrustedKeys::load(&args.trusted_keys)?;
    let (verified, files) = verify_model(&args.dir, &trusted)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({
            "valid": true,
            "dir": args.dir,
            "key_id": verified.key_id,
            "manifest_sha256": verified.manifest_sha256(),
            "files": files,
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "{}: signature by trusted key {} is valid; {files} files match the manifest",
            args.dir.display(),
            verified.key_id
        )?;
    }
    Ok(())
}

/// One line, the kind's name, so scripts can use it (`make calibrate-edge` names its answers
/// file after it); `--json` adds what `auto` sees and the config section.
pub fn cpu(args: &ModelCpuArgs) -> anyhow::Result<()> {
    let kernels = tiergate_engine::Int8Kernels::detect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({
            "cpu_kind": kernels.as_str(),
            "auto_sees": tiergate_engine::CpuKind::detect().as_str(),
            "int4_fast_gate_section": format!("[router.confidence_by_cpu.{kernels}.int4-fast]"),
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "{kernels}")?;
    }
    Ok(())
}
