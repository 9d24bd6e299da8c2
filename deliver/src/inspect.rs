//! The on-call engineer's views of the queue, read-only:
//!
//! - `deliver queue [--json]`: every shard's depths: ready, in flight per
//!   worker (and whether it is alive), waiting for retry (and when the next
//!   one is due), parked per host (the top 10, with why: a breaker open, a
//!   pause, a rate), dead letters per reason;
//! - `deliver job ID [--logs DIR] [--json]`: where one job is now (ready,
//!   in flight with which worker, waiting for a retry and until when,
//!   parked behind which host, dead and why, or in no list: settled), and
//!   every attempt line for it in the delivery logs of this host (every
//!   `*.delivery.log` file in DIR, rotated ones included), oldest first.
//!   DIR is the folder of `DELIVER_LOG_FILE` unless given.

use common::job::{DeadLetter, DeadReason, Job};
use common::line_log::rfc3339_millis;
use common::queue::destinations::{DestinationState, Snapshot};
use common::queue::{Place, Queue};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Hosts shown with their parked jobs.
const TOP_PARKED_HOSTS: usize = 10;

/// `deliver queue`.
pub async fn queue_report(queue: &Queue, json: bool, out: &mut impl Write) -> Result<(), String> {
    let shards = queue.overview(TOP_PARKED_HOSTS).await.map_err(|e| e.to_string())?;
    let destinations = queue.destinations().await.map_err(|e| e.to_string())?;
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
        match held_because(host, &destinations, now) {
            Some(why) => writeln!(out, "  {n:>8}  {host}  ({why})").map_err(io)?,
            None => writeln!(out, "  {n:>8}  {host}").map_err(io)?,
        }
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

/// Where `deliver job` reads a job's attempts: every `*.delivery.log*`
/// file of a folder, and the file `DELIVER_LOG_FILE` names (with its
/// rotated `NAME.N`) whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPlace<'a> {
    /// The folder.
    pub dir: &'a Path,
    /// `DELIVER_LOG_FILE`'s file name, when the folder is its.
    pub file_name: Option<&'a str>,
}

impl<'a> LogPlace<'a> {
    /// `--logs DIR` if given, else `DELIVER_LOG_FILE`'s folder, else
    /// `DELIVER_LOG_DIR` (the stack's postback.env sets it: each worker's
    /// `DELIVER_LOG_FILE` is set by supervisord, not there).
    pub fn choose(given: Option<&'a Path>, log_file: Option<&'a Path>, log_dir: Option<&'a Path>) -> Option<Self> {
        if let Some(dir) = given {
            return Some(LogPlace { dir, file_name: None });
        }
        if let Some(file) = log_file {
            return Some(LogPlace {
                dir: file
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
                file_name: file.file_name().and_then(|n| n.to_str()),
            });
        }
        log_dir.map(|dir| LogPlace { dir, file_name: None })
    }
}

/// `deliver job ID`.
pub async fn job_report(
    queue: &Queue,
    id: &str,
    logs: Option<LogPlace<'_>>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), JobError> {
    let place = queue.find_job(id).await.map_err(|e| JobError::Queue(e.to_string()))?;
    let destinations = queue.destinations().await.map_err(|e| JobError::Queue(e.to_string()))?;
    let (attempts, searched) = match logs {
        Some(logs) => (attempt_lines(logs, id), logs.dir.display().to_string()),
        None => (
            Vec::new(),
            "no delivery logs (neither DELIVER_LOG_FILE nor DELIVER_LOG_DIR is set: give --logs DIR)".to_string(),
        ),
    };
    if place.is_none() && attempts.is_empty() {
        return Err(JobError::Unknown(id.to_string(), searched));
    }
    let now = common::now_ms();
    let (state, detail) = describe(place.as_ref().map(|(_, p)| p), &destinations, now);
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

/// Why a destination's parked jobs wait: its state, if it is not closed,
/// or its rate.
fn held_because(host: &str, destinations: &Snapshot, now: u64) -> Option<String> {
    if let Some((_, state)) = destinations.states.iter().find(|(h, _)| h == host) {
        return Some(match state {
            DestinationState::Open { until, .. } => {
                format!(
                    "held: {host}'s breaker is open; its probe is due {}",
                    in_words(*until, now)
                )
            }
            DestinationState::HalfOpen { .. } => format!("held: {host}'s breaker is half open, its probe in flight"),
            DestinationState::Paused { until, .. } => {
                format!("held: {host} asked for a pause until {}", in_words(*until, now))
            }
            DestinationState::Ramping { .. } => {
                format!("waiting its turn: {host} is ramping up after its breaker closed")
            }
            DestinationState::Disabled { .. } => {
                format!("{host} is disabled: it becomes a dead letter (`deliver destinations enable {host}`)")
            }
        });
    }
    let (_, policy) = destinations.policies.iter().find(|(h, _)| h == host)?;
    Some(format!("waiting its turn at {host}'s limits ({})", policy.shown()))
}

/// The state's name and what to know about it.
fn describe(place: Option<&Place>, destinations: &Snapshot, now: u64) -> (&'static str, String) {
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
        Some(Place::Parked { host }) => (
            "parked",
            held_because(host, destinations, now).unwrap_or_else(|| format!("waiting for room at {host}")),
        ),
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

/// Every delivery log line about job `id` in the delivery logs `logs`
/// names, oldest first (by the time each line starts with).
fn attempt_lines(logs: LogPlace<'_>, id: &str) -> Vec<String> {
    let logfmt = format!(" id={id} ");
    let json = format!("\"id\":{}", serde_json::Value::from(id));
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs.dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|name| is_delivery_log(name, logs.file_name))
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

/// Whether the file `name` is a delivery log: the stack's
/// `*.delivery.log*`, or `own` (`DELIVER_LOG_FILE`'s name) or one of its
/// rotated copies, `own.1` to `own.N`.
fn is_delivery_log(name: &str, own: Option<&str>) -> bool {
    let rotated_own = |own: &str| {
        name.strip_prefix(own).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    name.contains(".delivery.log") || own.is_some_and(rotated_own)
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
    fn delivery_logs_are_the_stacks_and_deliver_log_files_whatever_its_name() {
        assert!(is_delivery_log("deliver_00.delivery.log", None));
        assert!(is_delivery_log("deliver_00.delivery.log.3", None));
        assert!(!is_delivery_log("deliver_00.log", None));
        assert!(is_delivery_log("attempts.txt", Some("attempts.txt")));
        assert!(is_delivery_log("attempts.txt.10", Some("attempts.txt")));
        assert!(!is_delivery_log("attempts.txt.old", Some("attempts.txt")));
        assert!(!is_delivery_log("attempts.txt.", Some("attempts.txt")));
        assert!(!is_delivery_log("attempts.txté", Some("attempts.txt")));
    }

    #[test]
    fn the_logs_are_looked_for_where_given_then_by_the_log_file_then_the_log_dir() {
        let (given, file, dir) = (Path::new("/g"), Path::new("/f/attempts.txt"), Path::new("/d"));
        let at = |g, f, d| LogPlace::choose(g, f, d).map(|p| (p.dir.to_path_buf(), p.file_name.map(str::to_string)));
        assert_eq!(at(Some(given), Some(file), Some(dir)), Some(("/g".into(), None)));
        assert_eq!(
            at(None, Some(file), Some(dir)),
            Some(("/f".into(), Some("attempts.txt".into())))
        );
        assert_eq!(
            at(None, Some(Path::new("bare.log")), None),
            Some((".".into(), Some("bare.log".into())))
        );
        assert_eq!(at(None, None, Some(dir)), Some(("/d".into(), None)));
        assert_eq!(at(None, None, None), None);
    }

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
