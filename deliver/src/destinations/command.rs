//! `deliver destinations ...`: the operator's view of the partners and
//! their switches.
//!
//! - `deliver destinations list [--json]`: every destination that is not
//!   closed or has limits: its state, since when, its limits, the jobs
//!   held for it (parked) and its partner failures of the last 5 minutes;
//! - `deliver destinations set HOST:PORT [--rate N/s|N/m] [--burst N]
//!   [--concurrency N]`: its limits, over every deliver process (the burst
//!   defaults to one second of the rate); `unset HOST:PORT` removes them;
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
use common::queue::destinations::{DestinationState, Policy};
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
    /// Set a destination's limits (over every deliver process).
    Set {
        /// The destination, as `host:port`.
        #[arg(value_parser = parse_destination)]
        destination: String,
        /// Most requests per second or minute: `50/s`, `3000/m`.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<(u32, u64)>,
        /// Requests allowed at once after a quiet spell (default: one
        /// second of the rate).
        #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
        burst: Option<u32>,
        /// Requests in flight at once to it, instead of
        /// DELIVER_PER_HOST_CONCURRENCY.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
    },
    /// Remove a destination's limits.
    Unset {
        /// The destination, as `host:port`.
        #[arg(value_parser = parse_destination)]
        destination: String,
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

/// A rate as `N/s` or `N/m`: (N, the period in ms).
fn parse_rate(text: &str) -> Result<(u32, u64), String> {
    let (n, unit) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: write the rate as N/s or N/m, e.g. 50/s"))?;
    let per_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        _ => return Err(format!("{text:?}: the unit is s or m, e.g. 50/s or 3000/m")),
    };
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok((n, per_ms)),
        _ => Err(format!(
            "{text:?}: the number of requests is a whole number from 1, e.g. 50/s"
        )),
    }
}

/// The policy a `set` asks for.
fn policy_of(rate: Option<(u32, u64)>, burst: Option<u32>, concurrency: Option<u32>) -> Result<Policy, String> {
    if rate.is_none() && concurrency.is_none() {
        return Err("set what? --rate N/s|N/m and/or --concurrency N (`unset` removes the limits)".into());
    }
    let (rate, per_ms) = rate.unwrap_or((0, 1_000));
    // One second of the rate, at least one request.
    let second = (u64::from(rate) * 1_000 / per_ms).max(1) as u32;
    Ok(Policy {
        rate,
        per_ms,
        burst: burst.unwrap_or(second),
        concurrency,
    })
}

/// Runs `command` against `queue`, writing its report to `out`.
pub async fn run(command: &DestinationsCommand, queue: &Queue, out: &mut impl Write) -> Result<(), String> {
    let fail = |e: common::queue::QueueError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    match command {
        DestinationsCommand::List { json } => {
            let snapshot = queue.destinations().await.map_err(fail)?;
            let held = held_by_host(queue).await.map_err(fail)?;
            let activity = queue.destination_activity(HELD_HOSTS).await.map_err(fail)?;
            let states: HashMap<&str, &DestinationState> =
                snapshot.states.iter().map(|(h, s)| (h.as_str(), s)).collect();
            let policies: HashMap<&str, &Policy> = snapshot.policies.iter().map(|(h, p)| (h.as_str(), p)).collect();
            let mut hosts: Vec<&str> = states.keys().chain(policies.keys()).copied().collect();
            hosts.sort_unstable();
            hosts.dedup();
            for host in &hosts {
                let (state, policy) = (states.get(host).copied(), policies.get(host).copied());
                let held = held.get(*host).copied().unwrap_or(0);
                let recent = activity.iter().find(|a| a.destination == *host);
                if *json {
                    let mut value = match state {
                        Some(state) => serde_json::to_value(state).map_err(|e| e.to_string())?,
                        None => serde_json::json!({ "state": "closed" }),
                    };
                    value["destination"] = (*host).into();
                    value["held"] = held.into();
                    if let Some(policy) = policy {
                        value["limits"] = serde_json::to_value(policy).map_err(|e| e.to_string())?;
                    }
                    if let Some(recent) = recent {
                        value["last_5_minutes"] = serde_json::to_value(recent).map_err(|e| e.to_string())?;
                    }
                    writeln!(out, "{value}").map_err(io)?;
                } else {
                    let line = list_line(host, state, policy, held);
                    let recent = recent.map_or_else(
                        || "no attempt in 5 min".to_string(),
                        |r| format!("{} of {} attempts failed in 5 min", r.failed, r.attempts),
                    );
                    writeln!(out, "{line}  {recent}").map_err(io)?;
                }
            }
            if !*json {
                writeln!(
                    out,
                    "# {} destinations held, disabled or limited; every other one is closed and unlimited",
                    hosts.len()
                )
                .map_err(io)?;
            }
        }
        DestinationsCommand::Set {
            destination,
            rate,
            burst,
            concurrency,
        } => {
            let policy = policy_of(*rate, *burst, *concurrency)?;
            queue
                .set_destination_policy(destination, Some(&policy))
                .await
                .map_err(fail)?;
            writeln!(
                out,
                "{destination}: {}; every deliver process follows within a second",
                policy.shown()
            )
            .map_err(io)?;
        }
        DestinationsCommand::Unset { destination } => {
            queue.set_destination_policy(destination, None).await.map_err(fail)?;
            writeln!(out, "{destination}: no limits but DELIVER_PER_HOST_CONCURRENCY").map_err(io)?;
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

fn list_line(host: &str, state: Option<&DestinationState>, policy: Option<&Policy>, held: u64) -> String {
    let state = match state {
        None => "closed".to_string(),
        Some(state) => {
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
                DestinationState::Ramping { .. } => "held jobs resume at a rate that doubles every second".into(),
                DestinationState::Disabled { by, .. } => format!("by {by}"),
            };
            format!("{}  since {}  {detail}", state.name(), rfc3339_millis(state.since()))
        }
    };
    let limits = policy.map_or_else(|| "no limits".to_string(), Policy::shown);
    format!("{host}  {state}  {limits}  held {held}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_n_per_second_or_minute_and_the_burst_a_second_of_it() {
        assert_eq!(parse_rate("50/s"), Ok((50, 1_000)));
        assert_eq!(parse_rate("3000/m"), Ok((3000, 60_000)));
        for bad in ["lots", "50", "50/h", "0/s", "-1/s", "x/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(policy_of(Some((50, 1_000)), None, None).unwrap().burst, 50);
        assert_eq!(policy_of(Some((30, 60_000)), None, None).unwrap().burst, 1);
        assert_eq!(
            policy_of(Some((50, 1_000)), Some(5), Some(2)).unwrap().shown(),
            "50/s burst 5 concurrency 2"
        );
        assert!(policy_of(None, None, None).is_err(), "set needs something to set");
    }

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
