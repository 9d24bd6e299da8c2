//! How the queue handle connects to Redis, wherever `REDIS_URL` says it
//! is (see [`super::target`]): one server (a multiplexed connection made by
//! deadpool-redis' manager), the master a set of sentinels names, or a
//! Redis Cluster. Every wait is bounded, so that a Redis that is down turns
//! into a quick error (503 at ingest, a back-off at deliver), never a hang.
//!
//! No connection is checked out of a pool: deadpool-redis pings a
//! connection each time it hands it out (`UNWATCH` + `PING`), which would
//! double the round trips of every push. Each handle holds a [`SharedConnection`]
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
use super::tls::RedisTls;
use super::QueueError;
use deadpool::managed::Manager as _;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use deadpool_redis::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsMode, Value,
};
use deadpool_redis::Manager;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How often redis-rs' cluster client retries a command itself (after a
/// redirect, a reconnect, a slot-map refresh) before the error comes to
/// the queue handle; the operation's deadline bounds the whole anyway.
pub(crate) const CLUSTER_RETRIES: u32 = 3;

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
        /// The certificates for the sentinels, if reached over TLS.
        tls: Option<RedisTls>,
        /// How many master switches the sentinels announced.
        switches: AtomicU64,
    },
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

impl Connector {
    /// A connector for `target`, using `tls`'s certificates if the target
    /// is reached over TLS. `response_timeout` bounds every command; it
    /// must be longer than the longest blocking command the caller sends
    /// (deliver's `BLMOVE`).
    pub(crate) fn new(target: &Target, tls: &RedisTls, response_timeout: Duration) -> Result<Connector, QueueError> {
        let connect_timeout = response_timeout.min(Duration::from_secs(2));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        match target {
            Target::Server(url) => {
                let info = if target.uses_tls() {
                    // The certificates travel inside the connection info.
                    Client::build_with_tls(url.as_str(), tls.certificates())
                        .map_err(QueueError::Refused)?
                        .get_connection_info()
                        .clone()
                } else {
                    url.as_str().into_connection_info().map_err(QueueError::Refused)?
                };
                Ok(Connector::Server(
                    Manager::new_with_config(info, config).map_err(QueueError::Refused)?,
                ))
            }
            Target::Sentinel {
                sentinels,
                master,
                credentials,
                db,
                tls: over_tls,
            } => {
                let tls = over_tls.then(|| tls.clone());
                let mut builder = SentinelClientBuilder::new(
                    sentinels.iter().map(|node| address(node, tls.is_some())),
                    master,
                    SentinelServerType::Master,
                )
                .map_err(QueueError::Refused)?
                .set_client_to_redis_db(*db);
                if let Some(tls) = &tls {
                    builder = builder
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_certificates(tls.certificates())
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_certificates(tls.certificates());
                }
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
                    tls,
                    switches: AtomicU64::new(0),
                })
            }
            Target::Cluster {
                seeds,
                credentials,
                tls: over_tls,
            } => {
                let scheme = if *over_tls { "rediss" } else { "redis" };
                let seeds: Vec<String> = seeds.iter().map(|n| format!("{scheme}://{n}")).collect();
                let mut builder = ClusterClientBuilder::new(seeds)
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout)
                    .retries(CLUSTER_RETRIES);
                if *over_tls {
                    // Every node the cluster names is then reached the same way.
                    builder = builder.tls(TlsMode::Secure).certs(tls.certificates());
                }
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

/// The address of `node`, over TLS or not.
fn address(node: &Node, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    }
}

/// A client for one sentinel (to hear its announcements), with `tls`'s
/// certificates if it is reached over TLS.
pub(super) fn sentinel_client(node: &Node, tls: Option<&RedisTls>) -> RedisResult<Client> {
    let info = address(node, tls.is_some()).into_connection_info()?;
    match tls {
        Some(tls) => Client::build_with_tls(info, tls.certificates()),
        None => Client::open(info),
    }
}

/// One connection shared by many tasks, made on the runtime of the first
/// task that needs it, and replaced after an error that may have broken it.
pub(crate) struct SharedConnection {
    connector: std::sync::Arc<Connector>,
    /// The connection, with the count of announced master switches and
    /// of outages begun ([`Outage::starts`]) when it was made.
    current: std::sync::Mutex<Option<(u64, u64, Connection)>>,
    connecting: tokio::sync::Mutex<()>,
}

impl SharedConnection {
    /// A shared connection made by `connector` when first needed.
    pub(crate) fn new(connector: std::sync::Arc<Connector>) -> Self {
        SharedConnection {
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
