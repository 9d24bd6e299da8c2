//! Producer keys at the door: who may queue postbacks (`INGEST_AUTH`).
//!
//! With `keys` (the default) a request to an ingest route must carry
//! `Authorization: Bearer <key>` or `X-Api-Key: <key>`, a key made with
//! `ingest keys create`. The keys live in Redis, shared by every ingest
//! process; each process keeps them in memory and checks a request against
//! that copy, so a check costs no round trip. A background task reads the
//! store's version once a second and reloads the keys only when it moved,
//! so a key revoked anywhere is refused everywhere within about a second
//! (the promise is 5).
//!
//! With `off`, anyone who reaches ingest may queue postbacks: for a trusted
//! network only, where something in front (nginx's allowlist, a firewall,
//! a private network) decides who reaches it.

use crate::error::ApiError;
use actix_web::http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use common::producer::{decode_hash, same_key, secret_matches_digest, split_key, ProducerRecord};
use common::queue::Queue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often each process looks at the key store's version.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// `INGEST_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every ingest request needs a producer key.
    Keys,
    /// No keys: a trusted network.
    Off,
}

/// The producer a request was accepted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// The key's public id (shared: it is copied into the request's
    /// extensions and the access line).
    pub id: std::sync::Arc<str>,
    /// Its requests-per-second limit, if any.
    pub rate: Option<u32>,
}

/// One key as a request is checked against it.
#[derive(Debug)]
struct Entry {
    producer: Producer,
    secret_hash: Option<[u8; 32]>,
    revoked: bool,
}

/// The last key one worker thread accepted, with the store version it was
/// accepted at. A producer sends the same key with every request, and the
/// same key again with the store unchanged needs no hash and no lookup: one
/// constant-time comparison. Any change to the store (a revocation
/// included) moves the version, and the next request is checked in full.
#[derive(Debug, Default)]
pub struct LastKey(RefCell<Option<(String, u64, Producer)>>);

/// This process's copy of the key store.
#[derive(Debug)]
pub struct Producers {
    mode: AuthMode,
    /// Each key: who it is, its stored hash decoded, and whether it is
    /// revoked.
    by_id: RwLock<HashMap<String, Entry>>,
    version: AtomicU64,
    loaded: AtomicBool,
}

impl Producers {
    /// An empty copy, to be filled by [`refresh`].
    pub fn new(mode: AuthMode) -> Self {
        Producers {
            mode,
            by_id: RwLock::new(HashMap::new()),
            version: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
        }
    }

    /// Who sent a request with these headers: `Ok(None)` with
    /// `INGEST_AUTH=off`, the producer with `keys`, or why not. `last` is
    /// the calling worker's [`LastKey`].
    pub fn authorize(&self, headers: &HeaderMap, last: &LastKey) -> Result<Option<Producer>, ApiError> {
        if self.mode == AuthMode::Off {
            return Ok(None);
        }
        let presented = presented_key(headers).ok_or(ApiError::MissingKey)?;
        if !self.loaded.load(Ordering::Acquire) {
            return Err(ApiError::KeysNotLoaded);
        }
        // Read before the map: `replace` stores the map, then the version.
        // A key checked against a map newer than `version` is filed under
        // the older version, which costs one more full check later; a key
        // is never filed under a version newer than its map.
        let version = self.version.load(Ordering::Acquire);
        if let Some((key, at, producer)) = &*last.0.borrow() {
            if *at == version && same_key(key, presented) {
                return Ok(Some(producer.clone()));
            }
        }
        let (id, secret) = split_key(presented).ok_or(ApiError::InvalidKey)?;
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        match by_id.get(id) {
            Some(Entry {
                producer,
                secret_hash: Some(hash),
                revoked: false,
            }) if secret_matches_digest(secret, hash) => {
                *last.0.borrow_mut() = Some((presented.to_string(), version, producer.clone()));
                Ok(Some(producer.clone()))
            }
            _ => Err(ApiError::InvalidKey),
        }
    }

    /// For `/health`: `off`, `loading` (not read yet) or `loaded`.
    pub fn state(&self) -> &'static str {
        match (self.mode, self.loaded.load(Ordering::Acquire)) {
            (AuthMode::Off, _) => "off",
            (AuthMode::Keys, false) => "loading",
            (AuthMode::Keys, true) => "loaded",
        }
    }

    fn replace(&self, version: u64, records: Vec<ProducerRecord>) {
        let map = records
            .into_iter()
            .map(|r| {
                let entry = Entry {
                    producer: Producer {
                        id: r.id.as_str().into(),
                        rate: r.rate,
                    },
                    secret_hash: decode_hash(&r.secret_hash),
                    revoked: r.revoked_ms.is_some(),
                };
                (r.id, entry)
            })
            .collect();
        *self.by_id.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.version.store(version, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }
}

/// The key in `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    headers.get(X_API_KEY).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Keeps `producers` in step with the store until the task is aborted: a
/// version read per [`REFRESH_EVERY`], a reload when it moved. Nothing to
/// do with `INGEST_AUTH=off`.
pub async fn refresh(producers: Arc<Producers>, queue: Queue) {
    if producers.mode == AuthMode::Off {
        return;
    }
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let loaded = producers.loaded.load(Ordering::Acquire);
        match queue.producers_version().await {
            Ok(version) if loaded && version == producers.version.load(Ordering::Acquire) => continue,
            Ok(_) => {}
            // The queue handle logs the outage; the copy stays as it was.
            Err(_) => continue,
        }
        if let Ok((version, records)) = queue.producers().await {
            producers.replace(version, records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            actix_web::http::header::HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        map
    }

    fn loaded_with(record: ProducerRecord) -> Producers {
        let producers = Producers::new(AuthMode::Keys);
        producers.replace(1, vec![record]);
        producers
    }

    fn record(made: &common::producer::NewKey, revoked: bool) -> ProducerRecord {
        ProducerRecord {
            id: made.id.clone(),
            name: "shop".into(),
            created_ms: 1,
            rate: Some(5),
            revoked_ms: revoked.then_some(2),
            secret_hash: made.secret_hash.clone(),
            signing_secret: made.signing_secret.clone(),
            previous_secret: None,
            rotated_ms: None,
        }
    }

    #[test]
    fn a_valid_key_is_accepted_by_either_header() {
        let made = common::producer::new_key().unwrap();
        let producers = loaded_with(record(&made, false));
        let expected = Some(Producer {
            id: made.id.as_str().into(),
            rate: Some(5),
        });
        let bearer = headers("authorization", &format!("Bearer {}", made.key));
        assert_eq!(producers.authorize(&bearer, &LastKey::default()).unwrap(), expected);
        let api_key = headers("x-api-key", &made.key);
        assert_eq!(producers.authorize(&api_key, &LastKey::default()).unwrap(), expected);
    }

    #[test]
    fn missing_wrong_and_revoked_keys_are_refused() {
        let made = common::producer::new_key().unwrap();
        let producers = loaded_with(record(&made, false));
        let code = |h: &HeaderMap| producers.authorize(h, &LastKey::default()).unwrap_err().code();
        assert_eq!(code(&HeaderMap::new()), "missing_key");
        assert_eq!(code(&headers("authorization", "Basic abc")), "missing_key");
        assert_eq!(code(&headers("x-api-key", "nonsense")), "invalid_key");
        let wrong = format!("pk_{}_{}", made.id, "x".repeat(43));
        assert_eq!(code(&headers("x-api-key", &wrong)), "invalid_key");
        let revoked = loaded_with(record(&made, true));
        assert_eq!(
            revoked
                .authorize(&headers("x-api-key", &made.key), &LastKey::default())
                .unwrap_err()
                .code(),
            "invalid_key"
        );
        let off = Producers::new(AuthMode::Off);
        assert_eq!(off.authorize(&HeaderMap::new(), &LastKey::default()).unwrap(), None);
    }

    #[test]
    fn the_last_key_accepted_is_rechecked_once_the_store_changes() {
        let made = common::producer::new_key().unwrap();
        let producers = loaded_with(record(&made, false));
        let last = LastKey::default();
        let request = headers("x-api-key", &made.key);
        assert!(producers.authorize(&request, &last).is_ok());
        assert!(producers.authorize(&request, &last).is_ok(), "again, from the memo");
        let other = format!("pk_{}_{}", made.id, "y".repeat(43));
        assert_eq!(
            producers
                .authorize(&headers("x-api-key", &other), &last)
                .unwrap_err()
                .code(),
            "invalid_key",
            "another key with the same id is checked in full"
        );
        // Revoked: the store's version moves on, the memo no longer counts.
        producers.replace(2, vec![record(&made, true)]);
        assert_eq!(producers.authorize(&request, &last).unwrap_err().code(), "invalid_key");
    }
}
