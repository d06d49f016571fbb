//! The detached signature beside a model's manifest: `manifest.json.sig`, an ed25519 signature
//! over the exact bytes of `manifest.json`. The manifest lists every file with its sha256 and
//! size, so the signature covers the whole model; the engine's own hash check covers the files.
//!
//! Detached (not a field inside the manifest) so the signed bytes are exactly the file on disk,
//! with no canonical-JSON step, and so `openssl pkeyutl -verify -rawin` can check it too.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiergate_engine::Manifest;

use super::TrustError;
use super::keys::{TrustedKeys, key_id};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
const FORMAT: &str = "tiergate-manifest-signature-v1";
const ALGORITHM: &str = "ed25519";

/// The signature file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: String,
    pub algorithm: String,
    /// The signer's key id (see [`key_id`]).
    pub key_id: String,
    /// 64 bytes, hex.
    pub signature: String,
}

/// A manifest whose signature checked out: who signed it and the bytes that were signed.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: String,
    pub manifest_bytes: Vec<u8>,
}

impl Verified {
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.manifest_bytes))
    }
}

pub fn read_manifest_bytes(dir: &Path) -> Result<Vec<u8>, TrustError> {
    let path = dir.join(MANIFEST_FILE);
    std::fs::read(&path).map_err(|e| TrustError::Unreadable {
        path,
        reason: e.to_string(),
    })
}

/// Signs `dir`'s manifest after checking that it is valid and that every file it lists is
/// there with the listed hash: a signature vouches for a model that loads, not for a typo.
/// Returns the signature file's path.
pub fn sign_model(dir: &Path, key: &SigningKey) -> Result<PathBuf, TrustError> {
    let bytes = read_manifest_bytes(dir)?;
    let manifest = Manifest::load(dir).map_err(TrustError::Model)?;
    manifest.verify_files(dir).map_err(TrustError::Model)?;
    if read_manifest_bytes(dir)? != bytes {
        return Err(TrustError::ManifestChanged {
            dir: dir.to_path_buf(),
        });
    }
    let signature = key.sign(&bytes);
    let file = SignatureFile {
        format: FORMAT.to_owned(),
        algorithm: ALGORITHM.to_owned(),
        key_id: key_id(&key.verifying_key()),
        signature: hex::encode(signature.to_bytes()),
    };
    let path = dir.join(SIGNATURE_FILE);
    let mut text = serde_json::to_string_pretty(&file).map_err(|e| TrustError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|e| TrustError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(path)
}

/// Checks `dir/manifest.json` against `dir/manifest.json.sig` and the trusted keys. Files are
/// not hashed here (see [`verify_model`] and the engine's load).
pub fn verify_signature(dir: &Path, trusted: &TrustedKeys) -> Result<Verified, TrustError> {
    let sig_path = dir.join(SIGNATURE_FILE);
    let manifest_bytes = read_manifest_bytes(dir)?;
    let text = match std::fs::read_to_string(&sig_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrustError::Unsigned {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TrustError::Unreadable {
                path: sig_path,
                reason: e.to_string(),
            });
        }
    };
    let malformed = |reason: String| TrustError::SignatureMalformed {
        path: sig_path.clone(),
        reason,
    };
    let file: SignatureFile = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    if file.format != FORMAT || file.algorithm != ALGORITHM {
        return Err(malformed(format!(
            "format `{}` / algorithm `{}` (expected {FORMAT} / {ALGORITHM})",
            file.format, file.algorithm
        )));
    }
    let mut raw = [0u8; 64];
    hex::decode_to_slice(&file.signature, &mut raw)
        .map_err(|_| malformed("signature must be 128 hex digits".to_owned()))?;
    let Some(key) = trusted.find(&file.key_id) else {
        return Err(TrustError::UntrustedKey {
            dir: dir.to_path_buf(),
            key_id: file.key_id,
            trusted: trusted.ids(),
        });
    };
    // verify_strict: no malleable or small-order signatures (RFC 8032 cofactorless checks).
    key.verify_strict(&manifest_bytes, &Signature::from_bytes(&raw))
        .map_err(|_| TrustError::BadSignature {
            dir: dir.to_path_buf(),
            key_id: file.key_id.clone(),
        })?;
    Ok(Verified {
        key_id: file.key_id,
        manifest_bytes,
    })
}

/// Everything `tiergate model verify` checks: the signature, then every listed file's size and
/// sha256, then that the manifest did not change meanwhile.
pub fn verify_model(dir: &Path, trusted: &TrustedKeys) -> Result<(Verified, usize), TrustError> {
    let verified = verify_signature(dir, trusted)?;
    let manifest = Manifest::load(dir).map_err(TrustError::Model)?;
    manifest.verify_files(dir).map_err(TrustError::Model)?;
    if read_manifest_bytes(dir)? != verified.manifest_bytes {
        return Err(TrustError::ManifestChanged {
            dir: dir.to_path_buf(),
        });
    }
    Ok((verified, manifest.files.len()))
}
