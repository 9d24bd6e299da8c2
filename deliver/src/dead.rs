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

/// A `deliver dead` command (parsed by clap, which makes its help).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeadCommand {
    /// List dead letters, newest first.
    List {
        /// How many at most (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Requeue dead letters with a fresh attempt count.
    Replay {
        /// Job ids to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Empty the dead-letter list.
    Purge,
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
        "time={} id={} producer={} method={} url={:?} attempts={} last_status={:?} reason={}",
        rfc3339_millis(letter.dead_at),
        letter.id,
        letter.job.as_ref().and_then(|j| j.producer.as_deref()).unwrap_or("-"),
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
    use clap::Parser;

    #[derive(Parser)]
    struct Dead {
        #[command(subcommand)]
        command: DeadCommand,
    }

    fn parse(line: &str) -> Result<DeadCommand, clap::Error> {
        Dead::try_parse_from(std::iter::once("dead").chain(line.split_whitespace())).map(|d| d.command)
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("list").unwrap(), DeadCommand::List { limit: 100 });
        assert_eq!(parse("list --limit 5").unwrap(), DeadCommand::List { limit: 5 });
        assert_eq!(
            parse("replay --all").unwrap(),
            DeadCommand::Replay { ids: vec![], all: true }
        );
        assert_eq!(
            parse("replay a b").unwrap(),
            DeadCommand::Replay {
                ids: vec!["a".into(), "b".into()],
                all: false
            }
        );
        assert_eq!(parse("purge").unwrap(), DeadCommand::Purge);
        for bad in [
            "",
            "replay",
            "list --limit x",
            "replay --bogus",
            "drop",
            "replay --all a",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
