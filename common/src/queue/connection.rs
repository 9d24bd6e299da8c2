//! How the queue handle connects to Redis, wherever `REDIS_URL` says it
//! is (see [`super::target`]): one server (a multiplexed connection made by
//! deadpool-redis' manager), the master a set of sentinels names, or a
//! Redis Cluster. Every wait is bounded, so that a Redis that is down turns
//! into a quick error (503 at ingest, a back-off at deliver), never a hang.
//!
//! No connection is checked out of a pool: deadpool-redis pings a
//! connection each time it hands it out (`UNWATCH` + `PING`), which would
//! double the round trips of every push. Each handle holds a [`Shared`]
//! connection instead, made once and cloned per command; redis-rs
//! pipelines the commands of all its clones on one socket (per node, for a
//! cluster), and a broken connection is replaced. Work that must not wait
//! behind others (a blocking take, an ingest worker's thread) gets a
//! handle of its own (`Queue::handle`); docs/ARCHITECTURE.md has why.
//!
//! Failover: a connection is replaced after any error that may mean the
//! master moved (a broken or refused connection, `READONLY`, a cluster
//! redirect it could not follow), and a new connection to a Sentinel-watched
//! master asks the sentinels again, who the master is, and checks its
//! `ROLE`. A demoted master still answers `PING`, so nothing trusts a ping.
//! Nor does anything wait for an error: [`Connector::follow_switches`]
//! listens to the sentinels' `+switch-master` announcements, and every
//! connection made before the last one is replaced at its next use. After
//! a failover the old master may accept writes for a while before the
//! sentinels turn it into a replica (which then drops them); the
//! announcement keeps the services from writing there.
//! In a cluster, redis-rs follows `MOVED`/`ASK` and refreshes the slot map
//! itself, retrying at most [`CLUSTER_RETRIES`] times.

use super::target::{Credentials, Node, Target};
use super::QueueError;
use deadpool::managed::Manager as _;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use deadpool_redis::redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use deadpool_redis::Manager;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often redis-rs' cluster client retries a command itself (after a
/// redirect, a reconnect, a slot-map refresh) before the error comes to
/// the queue handle; the operation's deadline bounds the whole anyway.
pub(crate) const CLUSTER_RETRIES: u32 = 3;
/// How long a subscription to a sentinel may hear nothing before it is
/// made again (on the next sentinel): a sentinel cut off without a reset
/// leaves a silent socket, and switches are rare.
const SUBSCRIPTION_IDLE: Duration = Duration::from_secs(60);
/// The pause before subscribing again after a sentinel could not be
/// reached or went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// A connection to wherever the queue lives.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server, or the master the sentinels named.
    Single(MultiplexedConnection),
    /// A Redis Cluster: one connection per node, commands routed by key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Waits until `replicas` replicas hold every write this connection
    /// made so far on the master of `key`'s slot, or `timeout`; returns how
    /// many did. (redis-rs would send a bare `WAIT` to every master of a
    /// cluster; this one goes to the master that took the writes.)
    pub(crate) async fn wait_replicas(&mut self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u64> {
        use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
        let mut wait = deadpool_redis::redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Connection::Single(c) => wait.query_async(c).await,
            Connection::Cluster(c) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let value = c
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(deadpool_redis::redis::from_redis_value(value)?)
            }
        }
    }
}

/// Makes connections to where `REDIS_URL` points.
pub(crate) enum Connector {
    /// One server: deadpool-redis' manager makes its connections.
    Server(Manager),
    /// The master a set of sentinels names.
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
        /// The name the sentinels know the master by, for log lines.
        name: String,
        /// The master's address at the last connection, to log a switch.
        master: std::sync::Mutex<Option<String>>,
        /// The sentinels, to hear their announcements.
        sentinels: Vec<Node>,
        /// How many master switches the sentinels announced.
        switches: AtomicU64,
    },
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

impl Connector {
    /// A connector for `target`. `response_timeout` bounds every command;
    /// it must be longer than the longest blocking command the caller
    /// sends (deliver's `BLMOVE`).
    pub(crate) fn new(target: &Target, response_timeout: Duration) -> Result<Connector, QueueError> {
        let connect_timeout = response_timeout.min(Duration::from_secs(2));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        match target {
            Target::Server(url) => Ok(Connector::Server(
                Manager::new_with_config(url.as_str(), config).map_err(QueueError::Refused)?,
            )),
            Target::Sentinel {
                sentinels,
                master,
                credentials,
                db,
            } => {
                let mut builder =
                    SentinelClientBuilder::new(sentinels.iter().map(tcp), master, SentinelServerType::Master)
                        .map_err(QueueError::Refused)?
                        .set_client_to_redis_db(*db);
                let Credentials { username, password } = credentials;
                if let Some(username) = username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password);
                }
                Ok(Connector::Sentinel {
                    client: tokio::sync::Mutex::new(builder.build().map_err(QueueError::Refused)?),
                    config,
                    name: master.clone(),
                    master: std::sync::Mutex::new(None),
                    sentinels: sentinels.clone(),
                    switches: AtomicU64::new(0),
                })
            }
            Target::Cluster { seeds, credentials } => {
                let seeds: Vec<String> = seeds.iter().map(|n| format!("redis://{n}")).collect();
                let mut builder = ClusterClientBuilder::new(seeds)
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout)
                    .retries(CLUSTER_RETRIES);
                if let Some(username) = &credentials.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &credentials.password {
                    builder = builder.password(password);
                }
                Ok(Connector::Cluster(builder.build().map_err(QueueError::Refused)?))
            }
        }
    }

    /// A new connection.
    pub(crate) async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Connector::Server(manager) => Ok(Connection::Single(manager.create().await?)),
            Connector::Sentinel {
                client,
                config,
                name,
                master,
                ..
            } => {
                // The lock is held only while the sentinels are asked.
                let found = client.lock().await.async_get_client().await?;
                let address = found.get_connection_info().addr().to_string();
                let conn = found.get_multiplexed_async_connection_with_config(config).await?;
                let mut last = master.lock().unwrap_or_else(|e| e.into_inner());
                match last.as_deref() {
                    Some(old) if old != address => {
                        log::warn!("redis master {name:?} moved from {old} to {address}: following it")
                    }
                    None => log::info!("redis master {name:?} is at {address}"),
                    _ => {}
                }
                *last = Some(address);
                Ok(Connection::Single(conn))
            }
            Connector::Cluster(client) => Ok(Connection::Cluster(client.get_async_connection().await?)),
        }
    }
}

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
            ..
        } = self
        else {
            return;
        };
        for node in sentinels.iter().cycle() {
            if let Err(e) = listen_for_switches(node, name, switches).await {
                log::debug!("sentinel {}:{}: {e}; listening to the next one", node.host, node.port);
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }
}

/// Counts, in `switches`, the switches of master `name` the sentinel at
/// `node` announces, until it goes away or stays silent too long.
async fn listen_for_switches(node: &Node, name: &str, switches: &AtomicU64) -> RedisResult<()> {
    use futures_util::StreamExt as _;
    let client = deadpool_redis::redis::Client::open(tcp(node))?;
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

fn tcp(node: &Node) -> ConnectionAddr {
    ConnectionAddr::Tcp(node.host.clone(), node.port)
}

/// Logs a Redis outage once when it starts and once when it ends, however
/// many operations fail in between, so an outage is two log lines, not a
/// flood. Before Redis has answered once, a failure is a start-up wait
/// (supervisord starts every program at once, so the services often come
/// up before Redis), logged as information; once it has, an error.
///
/// A connection made before an outage began can still fail after it
/// ended (one that sat unused through it, say): that is the same outage,
/// already logged as over, so it is not logged again
/// ([`Outage::failed_on`]).
///
/// Redis refusing writes while it answers (a full disk's `MISCONF`, too
/// few replicas, `maxmemory`) is no outage: it is logged apart, once when
/// a write is first refused and once when that same operation, a write,
/// goes through again. A read that succeeds meanwhile says nothing of it.
#[derive(Debug)]
pub(crate) struct Outage {
    down: AtomicBool,
    /// The operation a write was first refused to, while they are (empty:
    /// writes are accepted).
    refused: std::sync::Mutex<String>,
    /// Whether an operation has succeeded yet.
    answered: AtomicBool,
    /// How many outages have begun.
    starts: AtomicU64,
    /// Where Redis was looked for, without credentials: an error such as
    /// "No such file or directory" means little without the socket's path.
    address: String,
}

impl Outage {
    /// Outages of the Redis `target` names.
    pub(crate) fn new(target: &Target) -> Self {
        Outage {
            down: AtomicBool::new(false),
            refused: std::sync::Mutex::new(String::new()),
            answered: AtomicBool::new(false),
            starts: AtomicU64::new(0),
            address: format!(" at {}", target.describe()),
        }
    }

    /// How many outages have begun so far; a connection made now has
    /// lived through none of them.
    pub(crate) fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Records an operation that failed on a connection made when
    /// [`starts`](Self::starts) was `made_after` (`None`: no connection
    /// was had). A connection older than the last outage's start is a
    /// leftover of it: it is replaced without a word. (If that outage is
    /// over and a new one is beginning, the next operation, on a new
    /// connection, says so.)
    pub(crate) fn failed_on(&self, what: &str, error: &dyn std::fmt::Display, made_after: Option<u64>) {
        if made_after.is_some_and(|made| made < self.starts()) {
            log::debug!("a connection from before the last outage failed ({what}: {error}); replaced");
            return;
        }
        self.failed(what, error);
    }

    /// Records a failed operation; logs only the first of an outage.
    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.down.swap(true, Ordering::Relaxed) {
            return;
        }
        self.starts.fetch_add(1, Ordering::Relaxed);
        if self.answered.load(Ordering::Relaxed) {
            log::error!(
                "redis unavailable{} ({what}: {error}); retrying with back-off until it answers",
                self.address
            );
        } else {
            log::info!("waiting for redis{} to answer ({what}: {error})", self.address);
        }
    }

    /// Records that Redis refused `what`, a write, while it answers; logs
    /// the first refusal of a stretch.
    pub(crate) fn writes_refused(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_empty() {
            refused.push_str(what);
            log::error!(
                "redis{} refuses writes ({what}: {error}); reads still work, writes are tried again until it accepts them",
                self.address
            );
        }
    }

    /// Whether writes are being refused (see [`writes_refused`](Self::writes_refused)).
    pub(crate) fn refusing_writes(&self) -> bool {
        !self.refused.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Records that `what` succeeded; logs the end of an outage, and the
    /// end of refused writes when `what` is the write first refused.
    pub(crate) fn succeeded_on(&self, what: &str) {
        {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if !refused.is_empty() && *refused == what {
                refused.clear();
                log::info!("redis accepts writes again ({what})");
            }
        }
        self.succeeded();
    }

    /// Records a successful operation; logs the end of an outage.
    pub(crate) fn succeeded(&self) {
        if !self.answered.load(Ordering::Relaxed) && !self.answered.swap(true, Ordering::Relaxed) {
            if self.down.swap(false, Ordering::Relaxed) {
                log::info!("redis answers{}", self.address);
            }
            return;
        }
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            log::info!("redis is back");
        }
    }

    /// Whether the last operation failed.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// One connection shared by many tasks, made on the runtime of the first
/// task that needs it, and replaced after an error that may have broken it.
pub(crate) struct Shared {
    connector: std::sync::Arc<Connector>,
    /// The connection, with the count of announced master switches and
    /// of outages begun ([`Outage::starts`]) when it was made.
    current: std::sync::Mutex<Option<(u64, u64, Connection)>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Shared {
    /// A shared connection made by `connector` when first needed.
    pub(crate) fn new(connector: std::sync::Arc<Connector>) -> Self {
        Shared {
            connector,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection, unless a master switch was announced since it was
    /// made.
    fn cached(&self) -> Option<(Connection, u64)> {
        let switches = self.connector.switches();
        match &*self.current.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((made_at, starts, conn)) if *made_at == switches => Some((conn.clone(), *starts)),
            _ => None,
        }
    }

    /// A handle on the connection (cheap: a clone), connecting if needed,
    /// and how many outages had begun when it was made (`starts`: the
    /// current count, for a new one).
    pub(crate) async fn get(&self, starts: u64) -> Result<(Connection, u64), RedisError> {
        if let Some(cached) = self.cached() {
            return Ok(cached);
        }
        // One task connects; the others wait for its result.
        let _connecting = self.connecting.lock().await;
        if let Some(cached) = self.cached() {
            return Ok(cached);
        }
        // A new connection, not one from the pool: redis-rs runs a
        // connection's I/O task on the runtime that created it, and a pooled
        // connection may have been made on another thread (ingest's main
        // thread, say), which would cost two cross-thread wake-ups per
        // command. The switch count is read first: a switch announced
        // while connecting makes the next use connect again.
        let switches = self.connector.switches();
        let conn = self.connector.connect().await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((switches, starts, conn.clone()));
        Ok((conn, starts))
    }

    /// Drops the connection after an error that may have broken it (see
    /// [`QueueError::replaces_connection`]), so the next `get` makes a new
    /// one.
    pub(crate) fn failed(&self, error: &QueueError) {
        if error.replaces_connection() {
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_from_before_an_outage_failing_after_it_is_no_new_outage() {
        let outage = Outage::new(&Target::parse("redis://127.0.0.1:6390").unwrap());
        outage.succeeded();
        // Made before the outage: an idle connection, and the one in use.
        let idle = outage.starts();
        outage.failed_on("take", &"connection reset", Some(outage.starts()));
        assert!(outage.is_down());
        // Reconnected during the outage, and it answers: the end.
        let made_during = outage.starts();
        outage.succeeded();
        assert!(!outage.is_down());
        // The idle one fails now: the same outage, already over.
        outage.failed_on("producer keys", &"broken pipe", Some(idle));
        assert!(!outage.is_down(), "a leftover of the last outage started a new one");
        // The one made during it fails later: a new outage.
        outage.failed_on("take", &"connection reset", Some(made_during));
        assert!(outage.is_down());
        // No connection at all (connecting failed): an outage too.
        outage.succeeded();
        outage.failed_on("take", &"connection refused", None);
        assert!(outage.is_down());
    }

    #[test]
    fn an_outage_names_where_redis_was_looked_for_without_the_password() {
        let outage = |url: &str| Outage::new(&Target::parse(url).unwrap()).address;
        assert_eq!(outage("redis://default:secret@127.0.0.1:6390/0"), " at 127.0.0.1:6390");
        assert_eq!(
            outage("redis+unix:///run/postback/redis/redis.sock?user=default&pass=secret"),
            " at unix:/run/postback/redis/redis.sock"
        );
        assert_eq!(outage("redis-cluster://:secret@h:7000"), " at the cluster of h:7000");
        assert_eq!(outage("nonsense"), " at an unreadable REDIS_URL");
    }
}
