//! Following the sentinels: their `+switch-master` announcements are
//! counted, and every connection made before the last switch is replaced
//! at its next use, so that no write goes to a demoted master.

use super::connect::{sentinel_client, Connector};
use super::target::Node;
use super::tls::RedisTls;
use deadpool_redis::redis::RedisResult;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a subscription to a sentinel may hear nothing before it is
/// made again (on the next sentinel): a sentinel cut off without a reset
/// leaves a silent socket, and switches are rare.
const SUBSCRIPTION_IDLE: Duration = Duration::from_secs(60);

/// The pause before subscribing again after a sentinel could not be
/// reached or went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

impl Connector {
    /// How many master switches the sentinels have announced (0 for
    /// other targets): a connection made before the last is not used again.
    pub(crate) fn switches(&self) -> u64 {
        match self {
            Connector::Sentinel { switches, .. } => switches.load(Ordering::Acquire),
            _ => 0,
        }
    }

    /// Listens to the sentinels' `+switch-master` announcements for our
    /// master, one sentinel at a time, each in turn, for ever; returns at
    /// once for a target without sentinels.
    pub(crate) async fn follow_switches(&self) {
        let Connector::Sentinel {
            sentinels,
            name,
            switches,
            tls,
            ..
        } = self
        else {
            return;
        };
        for node in sentinels.iter().cycle() {
            if let Err(e) = listen_for_switches(node, tls.as_ref(), name, switches).await {
                log::debug!("sentinel {}:{}: {e}; listening to the next one", node.host, node.port);
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }
}

/// Counts, in `switches`, the switches of master `name` the sentinel at
/// `node` announces (over TLS with `tls`), until it goes away or stays
/// silent too long.
async fn listen_for_switches(node: &Node, tls: Option<&RedisTls>, name: &str, switches: &AtomicU64) -> RedisResult<()> {
    use futures_util::StreamExt as _;
    let client = sentinel_client(node, tls)?;
    let mut pubsub = match tokio::time::timeout(RESUBSCRIBE_AFTER * 2, client.get_async_pubsub()).await {
        Ok(pubsub) => pubsub?,
        Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    };
    pubsub.subscribe("+switch-master").await?;
    let mut messages = pubsub.on_message();
    while let Ok(Some(message)) = tokio::time::timeout(SUBSCRIPTION_IDLE, messages.next()).await {
        // "<name> <old ip> <old port> <new ip> <new port>"
        let text: String = message.get_payload()?;
        let mut words = text.split(' ');
        if words.next() == Some(name) {
            switches.fetch_add(1, Ordering::AcqRel);
            let old: Vec<&str> = words.by_ref().take(2).collect();
            let new: Vec<&str> = words.take(2).collect();
            // Debug only: the reconnection logs the switch, once.
            log::debug!(
                "the sentinels announced a new master for {name:?}: {} (was {}); reconnecting",
                new.join(":"),
                old.join(":")
            );
        }
    }
    Ok(())
}
