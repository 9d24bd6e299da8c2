//! `deliver dead ...`: the operator's view of the dead-letter list.
//!
//! - `deliver dead list [--limit N] [--reason R] [--host H] [--json]`:
//!   newest first, one line per letter with the last answer's status and
//!   the start of its body (default limit 100; `--limit 0` lists all);
//!   `--json`: one JSON object per line;
//! - `deliver dead show ID [--json]`: the whole letter: the job, every
//!   field, the cut of the last answer;
//! - `deliver dead replay (--all | --reason R | --host H | ID...)`:
//!   requeues letters with a fresh attempt count (malformed ones cannot be
//!   replayed and are said so);
//! - `deliver dead purge`: empties the list and says how many it removed.
//!
//! URLs are shown as the delivery log shows them: a password in them reads
//! `***`.

use crate::credentials;
use common::job::{DeadLetter, DeadReason};
use common::line_log::rfc3339_millis;
use common::queue::Queue;
use std::io::Write;

/// Characters of the last answer's body on a `list` line.
const LIST_DETAIL_CHARS: usize = 80;

/// Which letters a command is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Filter {
    /// Only letters dead for this reason: final_status, retries_exhausted,
    /// malformed, blocked_destination.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<DeadReason>,
    /// Only letters whose URL's host (or host:port) is this.
    #[arg(long)]
    pub host: Option<String>,
}

impl Filter {
    fn is_set(&self) -> bool {
        self.reason.is_some() || self.host.is_some()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let reason = self.reason.is_none_or(|r| r == letter.reason);
        let host = self.host.as_deref().is_none_or(|wanted| {
            let destination = letter
                .url
                .as_deref()
                .map(crate::hosts::destination_of)
                .unwrap_or_default();
            let host_port = destination.as_ref();
            let host = host_port.rsplit_once(':').map_or(host_port, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host_port
                }
            });
            wanted.eq_ignore_ascii_case(host_port) || wanted.eq_ignore_ascii_case(host)
        });
        reason && host
    }
}

fn parse_reason(text: &str) -> Result<DeadReason, String> {
    DeadReason::ALL.into_iter().find(|r| r.as_str() == text).ok_or_else(|| {
        let names: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
        format!("no such reason; one of: {}", names.join(", "))
    })
}

/// A `deliver dead` command (parsed by clap, which makes its help).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeadCommand {
    /// List dead letters, newest first.
    List {
        /// How many at most (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        filter: Filter,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show {
        /// The job id.
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead letters with a fresh attempt count.
    Replay {
        /// Job ids to replay.
        #[arg(required_unless_present_any = ["all", "reason", "host"], conflicts_with_all = ["all", "reason", "host"])]
        ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with_all = ["reason", "host"])]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Empty the dead-letter list.
    Purge,
}

/// Runs `command` against `queue`, writing its report to `out`.
pub async fn run(command: &DeadCommand, queue: &Queue, out: &mut impl Write) -> Result<(), String> {
    let fail = |e: common::queue::QueueError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    match command {
        DeadCommand::List { limit, filter, json } => {
            // Filtered: read them all, then keep `limit` of the matches.
            let letters = queue
                .dead_letters(if filter.is_set() { 0 } else { *limit })
                .await
                .map_err(fail)?;
            let total = queue.depths().await.map_err(fail)?.dead;
            let mut shown = 0;
            for (stored, letter) in &letters {
                if *limit > 0 && shown == *limit {
                    break;
                }
                match letter {
                    Some(letter) if !filter.matches(letter) => continue,
                    Some(letter) if *json => writeln!(out, "{}", shown_json(letter)).map_err(io)?,
                    Some(letter) => writeln!(out, "{}", list_line(letter)).map_err(io)?,
                    None if filter.is_set() => continue,
                    None if *json => writeln!(out, "{}", serde_json::json!({ "unreadable": stored })).map_err(io)?,
                    None => writeln!(out, "unreadable dead letter: {stored}").map_err(io)?,
                }
                shown += 1;
            }
            if !*json {
                writeln!(out, "# {shown} of {total} dead letters in {}", queue.dead_key()).map_err(io)?;
            }
        }
        DeadCommand::Show { id, json } => {
            let letters = queue.dead_letters(0).await.map_err(fail)?;
            let Some(letter) = letters.into_iter().find_map(|(_, l)| l.filter(|l| &l.id == id)) else {
                return Err(format!(
                    "{id}: no such dead letter (`deliver dead list` lists them; `deliver job {id}` tells where a job is)"
                ));
            };
            if *json {
                writeln!(out, "{}", shown_json(&letter)).map_err(io)?;
            } else {
                write!(out, "{}", show_text(&letter)).map_err(io)?;
            }
        }
        DeadCommand::Replay { ids, all, filter } => {
            let letters = queue.dead_letters(0).await.map_err(fail)?;
            let mut chosen_letters = Vec::new();
            let mut found = std::collections::HashSet::new();
            for (stored, letter) in letters {
                let Some(letter) = letter else { continue };
                let chosen = *all || (filter.is_set() && filter.matches(&letter)) || ids.contains(&letter.id);
                if !chosen {
                    continue;
                }
                found.insert(letter.id.clone());
                match letter.job {
                    Some(_) => chosen_letters.push((stored, letter)),
                    None => writeln!(
                        out,
                        "{}: malformed, cannot be replayed (see `deliver dead show {}`)",
                        letter.id, letter.id
                    )
                    .map_err(io)?,
                }
            }
            for id in ids.iter().filter(|id| !found.contains(*id)) {
                writeln!(out, "{id}: no such dead letter").map_err(io)?;
            }
            let requeued = queue.replay(&chosen_letters).await.map_err(fail)?;
            writeln!(out, "requeued {requeued} dead letters onto {}", queue.ready_key()).map_err(io)?;
            if (requeued as usize) < chosen_letters.len() {
                writeln!(
                    out,
                    "{} were not requeued: already replayed by someone else, or their header values are gone",
                    chosen_letters.len() - requeued as usize
                )
                .map_err(io)?;
            }
            if !ids.is_empty() && found.len() < ids.len() {
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
    let detail = letter.detail.as_deref().unwrap_or("");
    let cut: String = detail.chars().take(LIST_DETAIL_CHARS).collect();
    let more = if cut.len() < detail.len() { "..." } else { "" };
    format!(
        "time={} id={} producer={} method={} url={:?} attempts={} last_status={:?} reason={} answer={:?}",
        rfc3339_millis(letter.dead_at),
        letter.id,
        letter.job.as_ref().and_then(|j| j.producer.as_deref()).unwrap_or("-"),
        letter.method.map(|m| m.as_str()).unwrap_or("-"),
        letter.url.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.last_status,
        letter.reason.as_str(),
        format!("{cut}{more}"),
    )
}

/// The letter as operators see it: the stored one with the job's URL
/// template shown without its password.
fn shown(letter: &DeadLetter) -> DeadLetter {
    let mut letter = letter.clone();
    if let Some(job) = &mut letter.job {
        job.url = credentials::extract(std::mem::take(&mut job.url)).shown().to_string();
    }
    letter
}

fn shown_json(letter: &DeadLetter) -> String {
    shown(letter).encode()
}

/// `deliver dead show`'s text.
fn show_text(letter: &DeadLetter) -> String {
    let letter = shown(letter);
    let mut text = format!(
        "id:          {}\nreason:      {}\ndead at:     {}\nattempts:    {}\nlast status: {}\nmethod:      {}\nurl:         {}\n",
        letter.id,
        letter.reason.as_str(),
        rfc3339_millis(letter.dead_at),
        letter.attempts,
        letter.last_status,
        letter.method.map(|m| m.as_str()).unwrap_or("-"),
        letter.url.as_deref().unwrap_or("-"),
    );
    if let Some(job) = &letter.job {
        text.push_str(&format!(
            "template:    {}\ndata:        {}\nproducer:    {}\nrequest id:  {}\nqueued at:   {}\n",
            job.url,
            job.data.get(),
            job.producer.as_deref().unwrap_or("-"),
            job.request_id.as_deref().unwrap_or("-"),
            rfc3339_millis(job.enqueued_at),
        ));
    }
    if !letter.header_names.is_empty() {
        // Names only: values may be secrets (they are kept for the replay).
        text.push_str(&format!("headers:     {}\n", letter.header_names.join(", ")));
    }
    if let Some(raw) = &letter.raw {
        text.push_str(&format!("queued text: {raw}\n"));
    }
    text.push_str(&format!(
        "answer:      {}\n",
        letter.detail.as_deref().unwrap_or("(none)")
    ));
    text
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
        let none = Filter::default();
        assert_eq!(
            parse("list").unwrap(),
            DeadCommand::List {
                limit: 100,
                filter: none.clone(),
                json: false
            }
        );
        assert_eq!(
            parse("list --limit 5 --reason final_status --host h:81 --json").unwrap(),
            DeadCommand::List {
                limit: 5,
                filter: Filter {
                    reason: Some(DeadReason::FinalStatus),
                    host: Some("h:81".into())
                },
                json: true
            }
        );
        assert_eq!(
            parse("show x --json").unwrap(),
            DeadCommand::Show {
                id: "x".into(),
                json: true
            }
        );
        assert_eq!(
            parse("replay --all").unwrap(),
            DeadCommand::Replay {
                ids: vec![],
                all: true,
                filter: none.clone()
            }
        );
        assert_eq!(
            parse("replay --host h").unwrap(),
            DeadCommand::Replay {
                ids: vec![],
                all: false,
                filter: Filter {
                    reason: None,
                    host: Some("h".into())
                }
            }
        );
        assert_eq!(
            parse("replay a b").unwrap(),
            DeadCommand::Replay {
                ids: vec!["a".into(), "b".into()],
                all: false,
                filter: none
            }
        );
        assert_eq!(parse("purge").unwrap(), DeadCommand::Purge);
        for bad in [
            "",
            "replay",
            "list --limit x",
            "list --reason nope",
            "replay --bogus",
            "drop",
            "show",
            "replay --all a",
            "replay --all --reason malformed",
            "replay a --host h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
