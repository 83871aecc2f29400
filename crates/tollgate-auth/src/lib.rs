//! Client keys: their stored (hashed) form, lookup, and the constant-time
//! comparison that authenticates a presented key.
//!
//! A client key is never stored or logged in clear: the gateway keeps
//! `sha256:<hex>` of it. SHA-256 (not a slow password hash) is the right tool
//! because gateway keys are long random secrets, not passwords, and the check
//! runs on every request. Lookup goes through a hash map keyed by the digest;
//! the stored digest is then compared to the presented one with
//! [`subtle::ConstantTimeEq`] so no timing difference reveals how much of it matched.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The stored form of a key: the SHA-256 digest of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to tell keys apart in debug output.
        write!(f, "KeyHash(sha256:{}…)", &hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// A stored hash could not be parsed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashParseError {
    /// Missing the `sha256:` scheme prefix.
    #[error("expected `sha256:` followed by 64 hex digits")]
    Scheme,
    /// The digest is not 64 hex digits.
    #[error("the digest after `sha256:` must be 64 hex digits")]
    Digest,
}

impl KeyHash {
    /// Hash a presented or configured key.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parse the stored form `sha256:<64 hex>`.
    pub fn parse(stored: &str) -> Result<KeyHash, HashParseError> {
        let hex_part = stored
            .strip_prefix("sha256:")
            .ok_or(HashParseError::Scheme)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| HashParseError::Digest)?;
        Ok(KeyHash(out))
    }

    /// Parse the bare 64 hex digits (the database's form).
    pub fn from_hex(hex_part: &str) -> Result<KeyHash, HashParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| HashParseError::Digest)?;
        Ok(KeyHash(out))
    }

    /// The bare 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// Generate a new random client key (`tg-` + 48 hex digits, 192 bits).
pub fn generate_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("tg-{}", hex::encode(bytes))
}

/// The key to show for display: its first characters only (`tg-` and 8 hex
/// digits: 32 bits, too few to guess the rest from, enough to tell keys apart).
pub fn display_prefix(key: &str) -> String {
    key.chars().take(11).collect()
}

/// Extract the presented key from `Authorization: Bearer …` or `api-key: …`.
pub fn presented_key<'a>(
    authorization: Option<&'a [u8]>,
    api_key: Option<&'a [u8]>,
) -> Option<&'a str> {
    if let Some(v) = authorization {
        let v = std::str::from_utf8(v).ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let k = rest.trim();
            return (!k.is_empty()).then_some(k);
        }
        return None;
    }
    let k = std::str::from_utf8(api_key?).ok()?.trim();
    (!k.is_empty()).then_some(k)
}

/// Keys by digest, each with the caller's principal data `T`.
#[derive(Debug)]
pub struct KeyStore<T> {
    by_hash: HashMap<KeyHash, (KeyHash, Arc<T>)>,
}

impl<T> Clone for KeyStore<T> {
    fn clone(&self) -> Self {
        KeyStore {
            by_hash: self.by_hash.clone(),
        }
    }
}

impl<T> Default for KeyStore<T> {
    fn default() -> Self {
        KeyStore {
            by_hash: HashMap::new(),
        }
    }
}

impl<T> KeyStore<T> {
    /// An empty store with room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        KeyStore {
            by_hash: HashMap::with_capacity(n),
        }
    }

    /// Add a key; returns false if the digest was already present.
    pub fn insert(&mut self, hash: KeyHash, value: Arc<T>) -> bool {
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        self.by_hash.insert(hash, (hash, value));
        true
    }

    /// Remove a key by its digest.
    pub fn remove(&mut self, hash: &KeyHash) -> Option<Arc<T>> {
        self.by_hash.remove(hash).map(|(_, v)| v)
    }

    /// Replace (or add) a key.
    pub fn upsert(&mut self, hash: KeyHash, value: Arc<T>) {
        self.by_hash.insert(hash, (hash, value));
    }

    /// The entry stored under a digest.
    pub fn get(&self, hash: &KeyHash) -> Option<&Arc<T>> {
        self.by_hash.get(hash).map(|(_, v)| v)
    }

    /// Look up a presented key.
    pub fn authenticate(&self, presented: &str) -> Option<&Arc<T>> {
        let h = KeyHash::of(presented);
        let (stored, value) = self.by_hash.get(&h)?;
        stored.ct_eq(&h).then_some(value)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyHash, &Arc<T>)> {
        self.by_hash.iter().map(|(k, (_, v))| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip() {
        let h = KeyHash::of("tg-secret");
        let s = h.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 7 + 64);
        assert_eq!(KeyHash::parse(&s).unwrap(), h);
        assert_eq!(KeyHash::parse("md5:00"), Err(HashParseError::Scheme));
        assert_eq!(KeyHash::parse("sha256:zz"), Err(HashParseError::Digest));
        assert!(!format!("{h:?}").contains(&s[7..]));
    }

    #[test]
    fn store_authenticates() {
        let mut s = KeyStore::default();
        assert!(s.insert(KeyHash::of("a"), Arc::new(1)));
        assert!(!s.insert(KeyHash::of("a"), Arc::new(2)));
        assert_eq!(s.authenticate("a").map(|v| **v), Some(1));
        assert!(s.authenticate("b").is_none());
    }

    #[test]
    fn presented() {
        assert_eq!(presented_key(Some(b"Bearer  k1 "), None), Some("k1"));
        assert_eq!(presented_key(Some(b"bearer k1"), Some(b"k2")), Some("k1"));
        assert_eq!(presented_key(None, Some(b"k2")), Some("k2"));
        assert_eq!(presented_key(Some(b"Basic xx"), None), None);
        assert_eq!(presented_key(Some(b"Bearer "), None), None);
        assert_eq!(presented_key(None, None), None);
        assert!(generate_key().starts_with("tg-"));
    }
}
