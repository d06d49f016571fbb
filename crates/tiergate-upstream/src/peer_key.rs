//! The peer key: a secret shared by the nodes of one deployment. A node presents it with every
//! request it forwards to the regional tier (`x-tiergate-peer-key` metadata); the receiving node
//! trusts the request's forwarding information (hop count, tiers tried) only from a peer that
//! presents it, or from one with a verified client certificate (mTLS). Without it a client could
//! forge forwarding information to force or forbid tiers.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::SetupError;

/// The gRPC metadata key that carries the peer key.
pub const PEER_KEY_METADATA: &str = "x-tiergate-peer-key";
/// Shortest key accepted: a guessable secret protects nothing.
const MIN_KEY_BYTES: usize = 16;

/// Reads a peer key file: one line of printable ASCII (what gRPC metadata carries), surrounding
/// whitespace trimmed, at least 16 characters.
pub fn read_peer_key(path: &Path) -> Result<String, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SetupError::Config(format!("cannot read peer key file {}: {e}", path.display()))
    })?;
    let key = text.trim();
    if key.len() < MIN_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SetupError::Config(format!(
            "peer key file {}: the key must be at least {MIN_KEY_BYTES} printable ASCII characters without spaces",
            path.display()
        )));
    }
    Ok(key.to_owned())
}

/// A peer key as a receiving node holds it: its digest, compared in constant time.
#[derive(Clone)]
pub struct PeerKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

impl PeerKey {
    pub fn new(key: &str) -> Self {
        PeerKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the key. Digests are compared whole, without an early exit, so
    /// the time taken says nothing of how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(&self.digest)
            .fold(0_u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_read_trimmed_and_short_or_odd_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peer.key");
        std::fs::write(&file, "  0123456789abcdef-xyz\n").unwrap();
        assert_eq!(read_peer_key(&file).unwrap(), "0123456789abcdef-xyz");
        for bad in ["short", "0123456789abcdef with space", "0123456789abcdéf!"] {
            std::fs::write(&file, bad).unwrap();
            assert!(read_peer_key(&file).is_err(), "{bad}");
        }
        assert!(read_peer_key(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn only_the_key_matches() {
        let key = PeerKey::new("0123456789abcdef-xyz");
        assert!(key.matches("0123456789abcdef-xyz"));
        assert!(!key.matches("0123456789abcdef-xy"));
        assert!(!key.matches(""));
        assert!(!format!("{key:?}").contains("0123"), "never printed");
    }
}
