//! Ed25519 key files for model signing.
//!
//! Text formats, one key per non-comment line, so an operator can read, diff and concatenate
//! them (`cat a.pub b.pub > trusted.pub`):
//! - public: `ed25519 <64 hex>`; several lines are several trusted keys;
//! - private: `ed25519-private <64 hex seed>`, written 0600 and refused when group or others
//!   may read it (as ssh refuses a private key anyone can read).
//!
//! A key is named by its id: the first 8 bytes of the sha256 of the public key, in hex. The id
//! travels in the signature file so a node finds the right trusted key without trying them all.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::TrustError;

const PUBLIC_TAG: &str = "ed25519";
const PRIVATE_TAG: &str = "ed25519-private";

/// The short, stable name of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// The public keys a node trusts, by id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Reads every key of every file; a file without a key is an error (an empty trust list
    /// would refuse every model, which is never what the operator meant).
    pub fn load(files: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| TrustError::KeyFile {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            let before = keys.len();
            for line in key_lines(&text) {
                let key = parse_public(line).map_err(|reason| TrustError::KeyFile {
                    path: file.clone(),
                    reason,
                })?;
                keys.push((key_id(&key), key));
            }
            if keys.len() == before {
                return Err(TrustError::KeyFile {
                    path: file.clone(),
                    reason: format!("no `{PUBLIC_TAG} <hex>` key line"),
                });
            }
        }
        Ok(TrustedKeys { keys })
    }

    pub fn find(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn parse_hex32(tag: &str, line: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let hex_text = line
        .strip_prefix(tag)
        .and_then(|rest| rest.strip_prefix(' '))
        .map(str::trim)
        .ok_or_else(|| format!("expected a line `{tag} <64 hex digits>`"))?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text, bytes.as_mut_slice())
        .map_err(|_| format!("`{tag}` must be followed by 64 hex digits"))?;
    Ok(bytes)
}

fn parse_public(line: &str) -> Result<VerifyingKey, String> {
    let bytes = parse_hex32(PUBLIC_TAG, line)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// `# comment` then the key line, as `keygen` writes and `TrustedKeys::load` reads.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!(
        "# tiergate model signing key, id {}\n{PUBLIC_TAG} {}\n",
        key_id(key),
        hex::encode(key.as_bytes())
    )
}

/// Reads a private key written by [`generate`].
pub fn load_signing_key(path: &Path) -> Result<SigningKey, TrustError> {
    let fail = |reason: String| TrustError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    check_private_mode(path).map_err(fail)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
    let line = key_lines(&text)
        .next()
        .ok_or_else(|| fail(format!("no `{PRIVATE_TAG} <hex>` line")))?;
    let seed = parse_hex32(PRIVATE_TAG, line).map_err(fail)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the private key is readable by others (mode {:o}); run `chmod 600 {}`",
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<(), String> {
    Ok(())
}

/// A new key pair from the operating system's RNG: writes `<prefix>.key` (0600, never over an
/// existing file) and `<prefix>.pub`, and returns the public key.
pub fn generate(prefix: &Path) -> Result<VerifyingKey, TrustError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(|e| TrustError::KeyFile {
        path: prefix.to_path_buf(),
        reason: format!("the operating system's random source failed: {e}"),
    })?;
    let signing = SigningKey::from_bytes(&seed);
    let public = signing.verifying_key();
    let private_path = with_suffix(prefix, "key");
    let public_path = with_suffix(prefix, "pub");
    let private_text = Zeroizing::new(format!(
        "# tiergate model signing PRIVATE key, id {}: keep it secret\n{PRIVATE_TAG} {}\n",
        key_id(&public),
        hex::encode(seed.as_slice())
    ));
    write_new(&private_path, private_text.as_bytes(), 0o600)?;
    write_new(&public_path, public_key_text(&public).as_bytes(), 0o644)?;
    Ok(public)
}

pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` with `mode` from the start (no window where a private key is world-readable)
/// and refuses to replace an existing file (a lost private key cannot be recovered).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let fail = |e: std::io::Error| TrustError::KeyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn generated_keys_read_back_and_private_key_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("release");
        let public = generate(&prefix).unwrap();
        let signing = load_signing_key(&with_suffix(&prefix, "key")).unwrap();
        assert_eq!(signing.verifying_key(), public);
        let trusted = TrustedKeys::load(&[with_suffix(&prefix, "pub")]).unwrap();
        assert_eq!(trusted.find(&key_id(&public)), Some(&public));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(with_suffix(&prefix, "key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second keygen never overwrites the private key.
        assert!(generate(&prefix).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("k");
        generate(&prefix).unwrap();
        let key = with_suffix(&prefix, "key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_signing_key(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_and_empty_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pub");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let err = TrustedKeys::load(std::slice::from_ref(&empty))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty.pub") && err.contains("no `ed25519"),
            "{err}"
        );
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "ed25519 zz\n").unwrap();
        let err = TrustedKeys::load(&[bad]).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
