//! The on-call engineer's views of the queue, read-only:
//!
//! - `deliver queue [--json]`: every shard's depths: ready, in flight per
//!   worker (and whether it is alive), waiting for retry (and when the next
//!   one is due), parked per host (the top 10), dead letters per reason;
//! - `deliver job ID [--logs DIR] [--json]`: where one job is now (ready,
//!   in flight with which worker, waiting for a retry and until when,
//!   parked behind which host, dead and why, or in no list: settled), and
//!   every attempt line for it in the delivery logs of this host (every
//!   `*.delivery.log` file in DIR, rotated ones included), oldest first.
//!   DIR is the folder of `DELIVER_LOG_FILE` unless given.

use common::job::{DeadLetter, DeadReason, Job};
use common::line_log::rfc3339_millis;
use common::queue::{Place, Queue};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Hosts shown with their parked jobs.
const TOP_PARKED_HOSTS: usize = 10;

/// `deliver queue`.
pub async fn queue_report(queue: &Queue, json: bool, out: &mut impl Write) -> Result<(), String> {
    let shards = queue.overview(TOP_PARKED_HOSTS).await.map_err(|e| e.to_string())?;
    let letters = queue.dead_letters(0).await.map_err(|e| e.to_string())?;
    let mut dead_by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, letter) in &letters {
        let reason = letter.as_ref().map_or("unreadable", |l| l.reason.as_str());
        *dead_by_reason.entry(reason).or_default() += 1;
    }
    let now = common::now_ms();
    let io = |e: std::io::Error| e.to_string();
    if json {
        let value = serde_json::json!({
            "shards": shards.iter().map(|(tag, o)| serde_json::json!({"shard": tag, "depths": o})).collect::<Vec<_>>(),
            "dead_by_reason": dead_by_reason,
        });
        return writeln!(out, "{value}").map_err(io);
    }
    let total = |f: fn(&common::queue::Overview) -> u64| shards.iter().map(|(_, o)| f(o)).sum::<u64>();
    let in_flight: u64 = shards.iter().flat_map(|(_, o)| &o.in_flight).map(|w| w.jobs).sum();
    writeln!(out, "ready:     {}", total(|o| o.ready)).map_err(io)?;
    writeln!(out, "in flight: {in_flight}").map_err(io)?;
    for (tag, o) in &shards {
        for w in &o.in_flight {
            let state = if w.alive {
                "alive"
            } else {
                "no heartbeat: its jobs go back to the queue"
            };
            let shard = if shards.len() > 1 {
                format!(" (shard {tag})")
            } else {
                String::new()
            };
            writeln!(out, "  {:>8}  {}{shard}, {state}", w.jobs, w.worker).map_err(io)?;
        }
    }
    let next = shards.iter().filter_map(|(_, o)| o.next_retry_ms).min();
    writeln!(
        out,
        "retry:     {}{}",
        total(|o| o.retry),
        next.map(|due| format!(" (next due {})", in_words(due, now)))
            .unwrap_or_default()
    )
    .map_err(io)?;
    writeln!(out, "parked:    {}", total(|o| o.parked)).map_err(io)?;
    let mut hosts: Vec<(&str, u64)> = shards
        .iter()
        .flat_map(|(_, o)| o.parked_hosts.iter().map(|(h, n)| (h.as_str(), *n)))
        .collect();
    hosts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (host, n) in hosts.into_iter().take(TOP_PARKED_HOSTS) {
        writeln!(out, "  {n:>8}  {host}").map_err(io)?;
    }
    writeln!(out, "dead:      {}", total(|o| o.dead)).map_err(io)?;
    for (reason, n) in &dead_by_reason {
        writeln!(out, "  {n:>8}  {reason}").map_err(io)?;
    }
    Ok(())
}

/// When `at` (ms since the epoch) is, from `now`, in words.
pub fn in_words(at: u64, now: u64) -> String {
    let (seconds, future) = if at >= now {
        ((at - now) / 1000, true)
    } else {
        ((now - at) / 1000, false)
    };
    let amount = match seconds {
        0 => return "now".to_string(),
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    };
    if future {
        format!("in {amount} ({})", rfc3339_millis(at))
    } else {
        format!("{amount} ago ({})", rfc3339_millis(at))
    }
}

/// Why `deliver job` could not answer: an unknown id is not an error of
/// the tool, but the command exits 1 all the same.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The queue could not be read.
    #[error("{0}")]
    Queue(String),
    /// No list holds the id and no log line names it.
    #[error("{0}: no such job in the queue and no attempt in {1} (ids are in ingest's answer and in every log line)")]
    Unknown(String, String),
}

/// `deliver job ID`.
pub async fn job_report(
    queue: &Queue,
    id: &str,
    logs: Option<&Path>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), JobError> {
    let place = queue.find_job(id).await.map_err(|e| JobError::Queue(e.to_string()))?;
    let (attempts, searched) = match logs {
        Some(dir) => (attempt_lines(dir, id), dir.display().to_string()),
        None => (
            Vec::new(),
            "no delivery logs (DELIVER_LOG_FILE is not set: give --logs DIR)".to_string(),
        ),
    };
    if place.is_none() && attempts.is_empty() {
        return Err(JobError::Unknown(id.to_string(), searched));
    }
    let now = common::now_ms();
    let (state, detail) = describe(place.as_ref().map(|(_, p)| p), now);
    let io = |e: std::io::Error| JobError::Queue(e.to_string());
    if json {
        let value = serde_json::json!({
            "id": id,
            "state": state,
            "detail": detail,
            "shard": place.as_ref().map(|(tag, _)| tag),
            "attempts": attempts,
        });
        return writeln!(out, "{value}").map_err(io);
    }
    writeln!(
        out,
        "job {id}: {state}{}",
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    )
    .map_err(io)?;
    writeln!(out, "attempts in {searched}: {}", attempts.len()).map_err(io)?;
    for line in &attempts {
        writeln!(out, "  {line}").map_err(io)?;
    }
    Ok(())
}

/// The state's name and what to know about it.
fn describe(place: Option<&Place>, now: u64) -> (&'static str, String) {
    match place {
        None => (
            "settled",
            "in no list of the queue: delivered or given up on; the attempts say which".into(),
        ),
        Some(Place::Ready) => ("ready", "waiting for a worker to take it".into()),
        Some(Place::InFlight { worker }) => ("in_flight", format!("taken by worker {worker}")),
        Some(Place::Retry { due_ms, job }) => {
            let attempt = Job::decode(job.as_bytes()).map(|j| j.attempt).unwrap_or(0);
            ("retry", format!("attempt {attempt} due {}", in_words(*due_ms, now)))
        }
        Some(Place::Parked { host }) => ("parked", format!("waiting for room at {host}")),
        Some(Place::Dead { letter }) => match serde_json::from_str::<DeadLetter>(letter) {
            Ok(l) => (
                "dead",
                format!(
                    "{} after {} attempts, last status {} (deliver dead show {})",
                    l.reason.as_str(),
                    l.attempts,
                    l.last_status,
                    l.id
                ),
            ),
            Err(_) => ("dead", DeadReason::Malformed.as_str().into()),
        },
    }
}

/// Every delivery log line about job `id` in the `*.delivery.log*` files
/// of `dir`, oldest first (by the time each line starts with).
fn attempt_lines(dir: &Path, id: &str) -> Vec<String> {
    let logfmt = format!(" id={id} ");
    let json = format!("\"id\":{}", serde_json::Value::from(id));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains(".delivery.log"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut lines: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains(&logfmt) || l.contains(&json))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    // RFC 3339 times in UTC sort as text.
    lines.sort_by_key(|l| time_of(l).to_string());
    lines
}

/// The delivery time of a log line, logfmt or JSON.
fn time_of(line: &str) -> &str {
    ["delivery_time=", "\"delivery_time\":\""]
        .iter()
        .find_map(|field| line.find(field).map(|at| &line[at + field.len()..]))
        .and_then(|rest| rest.get(..24))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_words() {
        let now = 1_764_000_000_000;
        assert_eq!(in_words(now, now), "now");
        assert!(in_words(now + 30_000, now).starts_with("in 30 s ("));
        assert!(in_words(now + 600_000, now).starts_with("in 10 min ("));
        assert!(in_words(now - 7_200_000, now).starts_with("2 h ago ("));
        assert!(in_words(now + 3 * 86_400_000, now).starts_with("in 3 days ("));
    }

    #[test]
    fn lines_sort_by_their_delivery_time_in_either_format() {
        assert_eq!(
            time_of("delivery_time=2025-11-28T05:44:25.123Z id=a"),
            "2025-11-28T05:44:25.123Z"
        );
        assert_eq!(
            time_of(r#"{"attempt":1,"delivery_time":"2025-11-28T05:44:25.123Z","id":"a"}"#),
            "2025-11-28T05:44:25.123Z"
        );
    }
}
