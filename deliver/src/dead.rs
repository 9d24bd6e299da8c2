//! `deliver dead ...`: the operator's view of the dead-letter list.
//!
//! - `deliver dead list [--limit N]`: newest first, one line per letter
//!   (default limit 100; `--limit 0` lists all);
//! - `deliver dead replay (--all | ID...)`: requeues letters with a fresh
//!   attempt count (malformed ones cannot be replayed and are said so);
//! - `deliver dead purge`: empties the list and says how many it removed.

use common::job::{DeadLetter, Job};
use common::line_log::rfc3339_millis;
use common::queue::Queue;
use std::io::Write;

/// A parsed `deliver dead` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadCommand {
    /// List the newest `limit` letters (0: all).
    List {
        /// How many at most.
        limit: usize,
    },
    /// Requeue every letter, or those with the given ids.
    Replay {
        /// Job ids to replay; empty with `all`.
        ids: Vec<String>,
        /// Replay every letter.
        all: bool,
    },
    /// Empty the list.
    Purge,
}

/// Usage text of `deliver dead`.
pub const USAGE: &str =
    "usage: deliver dead list [--limit N] | deliver dead replay (--all | ID...) | deliver dead purge";

/// Parses the words after `deliver dead`.
pub fn parse(args: &[String]) -> Result<DeadCommand, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["list"] => Ok(DeadCommand::List { limit: 100 }),
        ["list", "--limit", n] => n
            .parse()
            .map(|limit| DeadCommand::List { limit })
            .map_err(|_| format!("--limit takes a whole number, not {n:?}\n{USAGE}")),
        ["replay", "--all"] => Ok(DeadCommand::Replay {
            ids: Vec::new(),
            all: true,
        }),
        ["replay", ids @ ..] if !ids.is_empty() && !ids.iter().any(|id| id.starts_with('-')) => {
            Ok(DeadCommand::Replay {
                ids: ids.iter().map(|s| s.to_string()).collect(),
                all: false,
            })
        }
        ["purge"] => Ok(DeadCommand::Purge),
        _ => Err(USAGE.to_string()),
    }
}

/// Runs `command` against `queue`, writing its report to `out`.
pub async fn run(command: &DeadCommand, queue: &Queue, out: &mut impl Write) -> Result<(), String> {
    let fail = |e: common::queue::QueueError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    match command {
        DeadCommand::List { limit } => {
            let letters = queue.dead_letters(*limit).await.map_err(fail)?;
            let total = queue.depths().await.map_err(fail)?.dead;
            for (stored, letter) in &letters {
                match letter {
                    Some(letter) => writeln!(out, "{}", list_line(letter)).map_err(io)?,
                    None => writeln!(out, "unreadable dead letter: {stored}").map_err(io)?,
                }
            }
            writeln!(
                out,
                "# {} of {} dead letters in {}",
                letters.len(),
                total,
                queue.dead_key()
            )
            .map_err(io)?;
        }
        DeadCommand::Replay { ids, all } => {
            let letters = queue.dead_letters(0).await.map_err(fail)?;
            let mut pairs = Vec::new();
            let mut found = std::collections::HashSet::new();
            for (stored, letter) in letters {
                let Some(letter) = letter else { continue };
                if !*all && !ids.contains(&letter.id) {
                    continue;
                }
                found.insert(letter.id.clone());
                match letter.job {
                    Some(job) => pairs.push((stored, Job { attempt: 1, ..job }.encode())),
                    None => writeln!(
                        out,
                        "{}: malformed, cannot be replayed (see `deliver dead list`)",
                        letter.id
                    )
                    .map_err(io)?,
                }
            }
            for id in ids.iter().filter(|id| !found.contains(*id)) {
                writeln!(out, "{id}: no such dead letter").map_err(io)?;
            }
            let requeued = queue.replay(&pairs).await.map_err(fail)?;
            writeln!(out, "requeued {requeued} dead letters onto {}", queue.ready_key()).map_err(io)?;
            if !*all && found.len() < ids.len() {
                return Err(format!("{} of the given ids were not found", ids.len() - found.len()));
            }
        }
        DeadCommand::Purge => {
            let removed = queue.purge_dead().await.map_err(fail)?;
            writeln!(out, "purged {removed} dead letters from {}", queue.dead_key()).map_err(io)?;
        }
    }
    Ok(())
}

/// One line of `deliver dead list`.
pub fn list_line(letter: &DeadLetter) -> String {
    format!(
        "time={} id={} method={} url={:?} attempts={} last_status={:?} reason={}",
        rfc3339_millis(letter.dead_at),
        letter.id,
        letter.method.map(|m| m.as_str()).unwrap_or("-"),
        letter.url.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.last_status,
        letter.reason.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse(&words("list")), Ok(DeadCommand::List { limit: 100 }));
        assert_eq!(parse(&words("list --limit 5")), Ok(DeadCommand::List { limit: 5 }));
        assert_eq!(
            parse(&words("replay --all")),
            Ok(DeadCommand::Replay { ids: vec![], all: true })
        );
        assert_eq!(
            parse(&words("replay a b")),
            Ok(DeadCommand::Replay {
                ids: vec!["a".into(), "b".into()],
                all: false
            })
        );
        assert_eq!(parse(&words("purge")), Ok(DeadCommand::Purge));
        for bad in ["", "replay", "list --limit x", "replay --bogus", "drop"] {
            assert!(parse(&words(bad)).is_err(), "{bad}");
        }
    }
}
