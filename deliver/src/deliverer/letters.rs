//! The dead letters a Deliverer makes without an attempt (a malformed
//! job, a disabled destination's job) or after one, each logged and
//! counted like an attempt.

use super::Deliverer;
use crate::delivery_log::Record;
use common::job::{DeadLetter, DeadReason, Job};
use common::queue::Settlement;

impl Deliverer {
    /// A job for a disabled destination: a dead letter with no attempt
    /// made, to be replayed once the destination is enabled again.
    pub(super) fn refused(&self, job: &Job, url: &str) -> Settlement {
        let now = common::now_ms();
        let split = crate::credentials::extract(url.to_string());
        let shown = split.shown();
        let detail = "its destination is disabled: `deliver destinations enable`, then `deliver dead replay --reason destination_disabled`";
        self.metrics.dead(DeadReason::DestinationDisabled.as_str());
        self.log.write(&Record {
            delivery_time_ms: now,
            id: &job.id,
            attempt: job.attempt,
            method: job.method.as_str(),
            url: shown,
            status: "disabled",
            response_ms: 0,
            response_body: detail,
            outcome: "dead",
            retry_in_ms: None,
            request_id: job.request_id.as_deref(),
            producer: job.producer.as_deref(),
        });
        let attempts = job.attempt.saturating_sub(1);
        let reason = DeadReason::DestinationDisabled;
        dead_letter(
            job,
            reason,
            attempts,
            "disabled".into(),
            shown,
            Some(detail.into()),
            now,
        )
    }

    /// A queued string that is not a job: keep it aside, never retry it.
    pub(super) fn malformed(&self, raw: &[u8], error: &str) -> Settlement {
        let text = String::from_utf8_lossy(raw).into_owned();
        // Keep the producer's id when there is one, so it can be traced.
        let id = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
            .unwrap_or_else(Job::new_id);
        let now = common::now_ms();
        log::warn!("malformed job {id} moved to the dead letters: {error}");
        self.metrics.dead(DeadReason::Malformed.as_str());
        self.log.write(&Record {
            delivery_time_ms: now,
            id: &id,
            attempt: 0,
            method: "-",
            url: "-",
            status: "malformed",
            response_ms: 0,
            response_body: error,
            outcome: "dead",
            retry_in_ms: None,
            request_id: None,
            producer: None,
        });
        Settlement::Dead {
            letter: Box::new(DeadLetter {
                id,
                reason: DeadReason::Malformed,
                attempts: 0,
                last_status: "malformed".into(),
                method: None,
                url: None,
                detail: Some(error.to_string()),
                dead_at: now,
                job: None,
                raw: Some(text),
                header_names: Vec::new(),
                header_values: Default::default(),
            }),
        }
    }
}

/// A job's dead letter: `attempts` made, the last `status`, the URL as
/// shown, the answer's start.
pub(super) fn dead_letter(
    job: &Job,
    reason: DeadReason,
    attempts: u32,
    last_status: String,
    url: &str,
    detail: Option<String>,
    now: u64,
) -> Settlement {
    Settlement::Dead {
        letter: Box::new(
            DeadLetter {
                id: job.id.clone(),
                reason,
                attempts,
                last_status,
                method: Some(job.method),
                url: Some(url.to_string()),
                detail,
                dead_at: now,
                job: Some(job.clone()),
                raw: None,
                header_names: Vec::new(),
                header_values: Default::default(),
            }
            .set_headers_aside(),
        ),
    }
}
