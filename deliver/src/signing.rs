//! Standard Webhooks signatures on every delivery, so a receiver can tell
//! our postbacks from forged ones (<https://www.standardwebhooks.com/>).
//!
//! Each delivery carries `webhook-id` (the job id: the same on every
//! attempt, for the receiver's de-duplication), `webhook-timestamp` (Unix
//! seconds of this attempt) and `webhook-signature: v1,<base64>`, an
//! HMAC-SHA256 with the producer key's signing secret over
//! `{id}.{timestamp}.{payload}`. The payload is the body for POST, PUT and
//! PATCH, byte for byte; for GET and DELETE, which have none, it is the
//! request target as sent (path and query), so a postback's query string
//! is signed too.
//!
//! After `ingest keys rotate-secret` the old secret keeps signing beside
//! the new one (two space-separated signatures, as the specification
//! allows) for `DELIVER_SECRET_OVERLAP`, so receivers can switch at their
//! pace. Jobs with no producer (ingest with `INGEST_AUTH=off`) are signed
//! with `DELIVER_SIGNING_SECRET` if it is set, and go unsigned otherwise;
//! so do jobs whose producer key is no longer in the store.
//!
//! Secrets are cached like ingest's keys: a version read a second, a
//! reload when it moved; no round trip per delivery.

use base64::Engine as _;
use common::job::Job;
use common::producer::{signing_key, ProducerRecord};
use common::queue::Queue;
use http::{HeaderName, HeaderValue};
use ring::hmac;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the secrets' store version is read.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// `webhook-id`.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The signing keys of one producer.
struct Keys {
    current: hmac::Key,
    /// The one before the last rotation, while the overlap lasts: the
    /// rotation time (ms since the epoch) and the key.
    previous: Option<(u64, hmac::Key)>,
}

/// The signatures deliver puts on its requests.
pub struct Signer {
    by_producer: RwLock<HashMap<String, Keys>>,
    fallback: Option<hmac::Key>,
    overlap: Duration,
    version: AtomicU64,
    loaded: AtomicBool,
}

impl Signer {
    /// A signer with no producer secrets yet (see [`refresh`]); `fallback`
    /// signs jobs with no producer; an old secret signs for `overlap`
    /// after a rotation.
    pub fn new(fallback: Option<&str>, overlap: Duration) -> Self {
        Signer {
            by_producer: RwLock::new(HashMap::new()),
            fallback: fallback.and_then(key_of),
            overlap,
            version: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
        }
    }

    /// Whether the producers' secrets have been read once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The three headers of `job`'s attempt at Unix second `timestamp`
    /// over `payload`, or none when there is no secret to sign with.
    pub fn headers(
        &self,
        job: &Job,
        payload: &[u8],
        timestamp: u64,
        now_ms: u64,
    ) -> Option<[(HeaderName, HeaderValue); 3]> {
        let by_producer = self.by_producer.read().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = match job.producer.as_deref() {
            Some(id) => {
                let keys = by_producer.get(id)?;
                let previous = keys
                    .previous
                    .as_ref()
                    .filter(|(rotated_ms, _)| now_ms.saturating_sub(*rotated_ms) < self.overlap.as_millis() as u64)
                    .map(|(_, key)| key);
                (&keys.current, previous)
            }
            None => (self.fallback.as_ref()?, None),
        };
        // Formatted once (by itoa), signed and sent as it is.
        let timestamp = HeaderValue::from(timestamp);
        // One buffer for both signatures (44 base64 characters each).
        let mut signature = String::with_capacity(2 * SIGNATURE_LEN + 1);
        sign_into(&mut signature, current, &job.id, timestamp.as_bytes(), payload);
        if let Some(previous) = previous {
            signature.push(' ');
            sign_into(&mut signature, previous, &job.id, timestamp.as_bytes(), payload);
        }
        // The strings become the header values without another copy.
        let value = |text: String| HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok();
        Some([
            (WEBHOOK_ID, value(job.id.clone())?),
            (WEBHOOK_TIMESTAMP, timestamp),
            (WEBHOOK_SIGNATURE, value(signature)?),
        ])
    }

    fn replace(&self, version: u64, records: &[ProducerRecord]) {
        let map = records
            .iter()
            .filter_map(|r| {
                let current = key_of(&r.signing_secret)?;
                let previous = match (&r.previous_secret, r.rotated_ms) {
                    (Some(secret), Some(at)) => key_of(secret).map(|k| (at, k)),
                    _ => None,
                };
                Some((r.id.clone(), Keys { current, previous }))
            })
            .collect();
        *self.by_producer.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.version.store(version, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }
}

fn key_of(secret: &str) -> Option<hmac::Key> {
    signing_key(secret).map(|bytes| hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// The length of one `v1,<base64>` signature.
const SIGNATURE_LEN: usize = 3 + 44;

/// Appends `v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{payload}">`.
fn sign_into(out: &mut String, key: &hmac::Key, id: &str, timestamp: &[u8], payload: &[u8]) {
    let mut context = hmac::Context::with_key(key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp);
    context.update(b".");
    context.update(payload);
    let tag = context.sign();
    out.push_str("v1,");
    base64::engine::general_purpose::STANDARD.encode_string(tag.as_ref(), out);
}

#[cfg(test)]
fn sign(key: &hmac::Key, id: &str, timestamp: &str, payload: &[u8]) -> String {
    let mut out = String::new();
    sign_into(&mut out, key, id, timestamp.as_bytes(), payload);
    out
}

/// Keeps `signer` in step with the producer key store until the task is
/// aborted.
pub async fn refresh(signer: Arc<Signer>, queue: Queue) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match queue.producers_version().await {
            Ok(version) if signer.is_loaded() && version == signer.version.load(Ordering::Acquire) => continue,
            Ok(_) => {}
            // The queue handle logs the outage; the secrets stay as they were.
            Err(_) => continue,
        }
        if let Ok((version, records)) = queue.producers().await {
            signer.replace(version, &records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// implementations (their test vectors).
    #[test]
    fn the_specification_example_signs_as_its_libraries_do() {
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
