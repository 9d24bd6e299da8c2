//! Producer keys and signing secrets: their format, how they are made, and
//! how a presented key is checked. The store (Redis) is behind
//! [`crate::queue::Queue`]; ingest checks keys, deliver signs with the
//! secrets.
//!
//! A key reads `pk_<id>_<secret>`: the id (12 hex digits) names the key in
//! logs, lists and dead letters; the secret (32 random bytes, base64url)
//! is shown once, at creation, and only its SHA-256 is stored. A key of 32
//! random bytes needs no slow hash or pepper: it cannot be guessed, so its
//! hash only has to keep a copy of the store from being a list of keys.
//! The comparison is constant-time all the same.
//!
//! A signing secret reads `whsec_<base64 of 32 random bytes>`, as the
//! Standard Webhooks specification writes them.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt::Write as _;

/// The prefix of every producer key.
pub const KEY_PREFIX: &str = "pk_";
/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a key's secret part and in a signing secret.
const SECRET_BYTES: usize = 32;
/// Random bytes in a key's id (12 hex digits).
const ID_BYTES: usize = 6;

/// A key and its signing secret, as made by [`new_key`]: the only moment
/// the key's secret part exists outside the producer's hands.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The public id.
    pub id: String,
    /// The whole key to give the producer: `pk_<id>_<secret>`.
    pub key: String,
    /// SHA-256 of the secret part, hex: what is stored.
    pub secret_hash: String,
    /// The signing secret deliveries of this key are signed with.
    pub signing_secret: String,
}

/// A stored key, as every process loads it (never the key's secret part:
/// only its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProducerRecord {
    /// The public id.
    pub id: String,
    /// The name given at creation.
    pub name: String,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// Requests a second allowed over all ingest processes; `None`: no
    /// limit.
    pub rate: Option<u32>,
    /// When it was revoked; `None` while it is valid.
    pub revoked_ms: Option<u64>,
    /// SHA-256 of the secret part, hex.
    #[serde(skip)]
    pub secret_hash: String,
    /// The current signing secret.
    #[serde(skip)]
    pub signing_secret: String,
    /// The signing secret before the last rotation, if any.
    #[serde(skip)]
    pub previous_secret: Option<String>,
    /// When the signing secret was last rotated.
    pub rotated_ms: Option<u64>,
}

impl ProducerRecord {
    /// A record from the fields of its Redis hash; `None` if one is
    /// missing (a record half written by another version).
    pub fn from_fields(id: String, fields: &std::collections::HashMap<String, String>) -> Option<Self> {
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0);
        Some(ProducerRecord {
            name: fields.get("name")?.clone(),
            created_ms: number("created_ms").unwrap_or(0),
            rate: number("rate").map(|r| r.min(u64::from(u32::MAX)) as u32),
            revoked_ms: number("revoked_ms"),
            secret_hash: fields.get("secret_hash")?.clone(),
            signing_secret: fields.get("signing_secret")?.clone(),
            previous_secret: fields.get("previous_secret").filter(|s| !s.is_empty()).cloned(),
            rotated_ms: number("rotated_ms"),
            id,
        })
    }
}

/// Makes a new key and signing secret from the system's random source.
pub fn new_key() -> Result<NewKey, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    rng.fill(&mut id)?;
    let id = hex(&id);
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut secret)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        key: format!("{KEY_PREFIX}{id}_{secret}"),
        secret_hash: hash_secret(&secret),
        id,
        signing_secret: new_signing_secret()?,
    })
}

/// A new `whsec_` signing secret.
pub fn new_signing_secret() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The id and secret part of a presented key, if it has the key's shape.
pub fn split_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let plausible = id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty();
    plausible.then_some((id, secret))
}

/// SHA-256 of a key's secret part, hex.
pub fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A stored hash (hex) as its 32 bytes, to check many requests against.
pub fn decode_hash(stored_hash: &str) -> Option<[u8; 32]> {
    if stored_hash.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(stored_hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `secret` hashes to the decoded `stored` hash, in constant time
/// and without allocating (ingest checks every request this way).
pub fn secret_matches_digest(secret: &str, stored: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq as _;
    let presented = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    bool::from(presented.as_ref().ct_eq(stored))
}

/// Whether two presented keys are the same, in constant time for keys of
/// one length (ingest compares a request's key with the last one it
/// accepted).
pub fn same_key(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The key bytes of a `whsec_` signing secret (Standard Webhooks: the
/// base64 after the prefix).
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    base64::engine::general_purpose::STANDARD.decode(encoded).ok()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_checks_against_its_hash_and_nothing_else_does() {
        let made = new_key().unwrap();
        let (id, secret) = split_key(&made.key).unwrap();
        assert_eq!(id, made.id);
        assert_eq!(id.len(), 12);
        let matches = |secret: &str, hash: &str| secret_matches_digest(secret, &decode_hash(hash).unwrap());
        assert!(matches(secret, &made.secret_hash));
        assert!(!matches("wrong", &made.secret_hash));
        let other = new_key().unwrap();
        assert_ne!(other.id, made.id);
        assert!(!matches(secret, &other.secret_hash));
        assert!(!made.secret_hash.contains(secret), "the secret is not stored");
    }

    #[test]
    fn keys_of_another_shape_are_not_split() {
        for bad in [
            "",
            "pk_",
            "pk_abc_x",
            "sk_0123456789ab_x",
            "pk_0123456789ab_",
            "pk_0123456789zz_x",
        ] {
            assert_eq!(split_key(bad), None, "{bad}");
        }
        assert_eq!(split_key("pk_0123456789ab_s3cr_et"), Some(("0123456789ab", "s3cr_et")));
    }

    #[test]
    fn a_signing_secret_holds_32_bytes() {
        let secret = new_signing_secret().unwrap();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(signing_key(&secret).unwrap().len(), 32);
        assert_ne!(secret, new_signing_secret().unwrap());
    }
}
