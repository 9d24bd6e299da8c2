//! `deliver destinations ...`: the operator's view of the partners and
//! their switches.
//!
//! - `deliver destinations list [--json]`: every destination that is not
//!   closed: its state, since when, and the jobs held for it (parked);
//! - `deliver destinations disable HOST:PORT`: its held and new jobs become
//!   dead letters (`destination_disabled`) until it is enabled;
//! - `deliver destinations enable HOST:PORT`: closed again, its breaker's
//!   count forgotten; `deliver dead replay --reason destination_disabled`
//!   then sends what it refused meanwhile.
//!
//! Every running deliver process reads a change within a second
//! ([`super::REFRESH`]); `disable` and `enable` return after twice that, so
//! that what follows them (a replay, say) meets every process changed.

use common::line_log::rfc3339_millis;
use common::queue::destinations::DestinationState;
use common::queue::Queue;
use std::collections::HashMap;
use std::io::Write;

/// A `deliver destinations` command (parsed by clap, which makes its help).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DestinationsCommand {
    /// List every destination that is not closed, with its held jobs.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Disable a destination: its jobs become dead letters until enabled.
    Disable {
        /// The destination, as `host:port` (the port the URL names, or 80 /
        /// 443 when it names none... as written in the URL).
        #[arg(value_parser = parse_destination)]
        destination: String,
    },
    /// Enable a destination again (also closes an open breaker).
    Enable {
        /// The destination, as `host:port`.
        #[arg(value_parser = parse_destination)]
        destination: String,
    },
}

/// A destination as the gates and the breaker name it: `host:port`, or a
/// bracketed IPv6 address with its port.
fn parse_destination(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} has no port: write host:port, e.g. partner.example:443"))?;
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(format!(
            "{text:?} is not host:port (no scheme, path or credentials), e.g. partner.example:443"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(format!("{text:?}: the port must be 1 to 65535")),
    }
}

/// Runs `command` against `queue`, writing its report to `out`.
pub async fn run(command: &DestinationsCommand, queue: &Queue, out: &mut impl Write) -> Result<(), String> {
    let fail = |e: common::queue::QueueError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    match command {
        DestinationsCommand::List { json } => {
            let (_, states) = queue.destinations().await.map_err(fail)?;
            let held = held_by_host(queue).await.map_err(fail)?;
            for (host, state) in &states {
                let held = held.get(host).copied().unwrap_or(0);
                if *json {
                    let mut value = serde_json::to_value(state).map_err(|e| e.to_string())?;
                    value["destination"] = host.as_str().into();
                    value["held"] = held.into();
                    writeln!(out, "{value}").map_err(io)?;
                } else {
                    writeln!(out, "{}", list_line(host, state, held)).map_err(io)?;
                }
            }
            if !*json {
                writeln!(
                    out,
                    "# {} destinations not closed; every other one is closed",
                    states.len()
                )
                .map_err(io)?;
            }
        }
        DestinationsCommand::Disable { destination } | DestinationsCommand::Enable { destination } => {
            let disable = matches!(command, DestinationsCommand::Disable { .. });
            queue
                .set_destination_disabled(destination, disable)
                .await
                .map_err(fail)?;
            tokio::time::sleep(super::REFRESH * 2).await;
            let said = if disable {
                format!("{destination}: disabled; its jobs become dead letters (destination_disabled) until `deliver destinations enable {destination}`")
            } else {
                format!("{destination}: enabled; `deliver dead replay --reason destination_disabled --host {destination}` sends what it refused meanwhile")
            };
            writeln!(out, "{said}").map_err(io)?;
        }
    }
    Ok(())
}

/// Parked jobs by host over every shard (the busiest hosts of each).
async fn held_by_host(queue: &Queue) -> Result<HashMap<String, u64>, common::queue::QueueError> {
    let mut held = HashMap::new();
    for (_, overview) in queue.overview(HELD_HOSTS).await? {
        for (host, n) in overview.parked_hosts {
            *held.entry(host).or_insert(0) += n;
        }
    }
    Ok(held)
}

/// How many hosts with parked jobs each shard names at most.
const HELD_HOSTS: usize = 1000;

fn list_line(host: &str, state: &DestinationState, held: u64) -> String {
    let since = rfc3339_millis(state.since());
    let detail = match state {
        DestinationState::Open { until, cooldown_ms, .. } => {
            format!(
                "probe at {} (cooldown {} s)",
                rfc3339_millis(*until),
                cooldown_ms / 1000
            )
        }
        DestinationState::HalfOpen { probe, .. } => format!("probe in flight ({probe})"),
        DestinationState::Paused { until, .. } => format!("until {}", rfc3339_millis(*until)),
        DestinationState::Disabled { by, .. } => format!("by {by}"),
    };
    format!("{host}  {}  since {since}  {detail}  held {held}", state.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_host_and_port() {
        assert_eq!(parse_destination("partner.example:443").unwrap(), "partner.example:443");
        assert_eq!(parse_destination("[2001:db8::1]:8080").unwrap(), "[2001:db8::1]:8080");
        for bad in [
            "partner.example",
            "https://p.example:443",
            "p.example:0",
            "p.example:lots",
            ":80",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }
}
