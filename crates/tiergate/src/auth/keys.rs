//! API keys: how a key is made, hashed and found. Config holds only SHA-256 digests (hex); a
//! presented key is hashed and compared with every configured digest in constant time
//! (`subtle`), so neither the config nor the timing of a refusal gives a key away.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of keys made by `tiergate keys new`: recognisable in a secret scanner's rules.
pub const KEY_PREFIX: &str = "tg_";
/// Shortest key accepted by `tiergate keys hash`: a guessable key protects nothing.
pub const MIN_KEY_CHARS: usize = 16;
/// Random bytes in a fresh key (256 bits).
const KEY_BYTES: usize = 32;

/// A key's SHA-256 digest.
pub type KeyDigest = [u8; 32];

/// The digest of `key`, as it is configured (`key_sha256`).
pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex form of [`digest`], as `tiergate keys hash` prints it.
pub fn digest_hex(key: &str) -> String {
    hex::encode(digest(key))
}

/// Parses a configured digest: exactly 64 hex digits (either case).
pub fn parse_digest(text: &str) -> Result<KeyDigest, String> {
    let mut out = [0_u8; 32];
    if text.len() != 64 {
        return Err(format!(
            "a key hash is 64 hex digits (SHA-256), got {} characters; make one with `tiergate keys hash`",
            text.len()
        ));
    }
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| "a key hash must hold hex digits only (0-9, a-f)".to_owned())?;
    Ok(out)
}

/// Checks a key given to `tiergate keys hash`: printable ASCII without spaces (what an HTTP
/// header and gRPC metadata carry), at least [`MIN_KEY_CHARS`] long.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.len() < MIN_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "an API key must be at least {MIN_KEY_CHARS} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// A fresh random key from the operating system's RNG: `tg_` and 64 hex digits.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; KEY_BYTES];
    getrandom::fill(&mut bytes)?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(key)
}

/// The configured digests and what each one unlocks.
#[derive(Debug)]
pub struct KeyTable<T> {
    entries: Vec<(KeyDigest, T)>,
}

impl<T> KeyTable<T> {
    pub fn new(entries: Vec<(KeyDigest, T)>) -> Self {
        KeyTable { entries }
    }

    /// The entry whose digest is `presented`'s. Every digest is compared, each in constant
    /// time, whatever matched: the time taken does not depend on which key (if any) matched
    /// or on how much of a digest a guess got right.
    pub fn find(&self, presented: &str) -> Option<&T> {
        let wanted = digest(presented);
        let mut found = None;
        for (configured, value) in &self.entries {
            let equal: bool = configured.ct_eq(&wanted).into();
            if equal {
                found = Some(value);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_digest_is_sha256_in_hex() {
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_digest(&digest_hex("abc")).unwrap(), digest("abc"));
        assert_eq!(
            parse_digest(&digest_hex("abc").to_uppercase()).unwrap(),
            digest("abc")
        );
    }

    #[test]
    fn bad_hex_is_refused_with_a_reason() {
        assert!(parse_digest("abc").unwrap_err().contains("64 hex digits"));
        let not_hex = "z".repeat(64);
        assert!(
            parse_digest(&not_hex)
                .unwrap_err()
                .contains("hex digits only")
        );
        // A plaintext key pasted where its hash belongs is refused, not taken as a hash.
        let key = new_key().unwrap();
        assert!(parse_digest(&key).is_err());
    }

    #[test]
    fn keys_are_found_by_digest_and_nothing_else() {
        let table = KeyTable::new(vec![
            (digest("key-of-tenant-a-0123"), "a"),
            (digest("key-of-tenant-b-0123"), "b"),
        ]);
        assert_eq!(table.find("key-of-tenant-a-0123"), Some(&"a"));
        assert_eq!(table.find("key-of-tenant-b-0123"), Some(&"b"));
        assert_eq!(table.find("key-of-tenant-a-012"), None);
        assert_eq!(table.find(""), None);
        // The digest itself is not a key.
        assert_eq!(table.find(&digest_hex("key-of-tenant-a-0123")), None);
    }

    #[test]
    fn fresh_keys_are_long_random_and_acceptable() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        check_key(&a).unwrap();
        assert!(check_key("short").is_err());
        assert!(check_key("has a space in it, long enough").is_err());
    }
}
