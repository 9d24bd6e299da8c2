//! Redis' own distributed forms, for the failover and sharding tests: a
//! master with a replica watched by three sentinels, and a Cluster of
//! masters with replicas. Every node is a real `redis-server` process on a
//! free loopback port, killed on drop.

use crate::{free_port, wait_blocking, RedisCerts, RedisServer, TempDir};
use deadpool_redis::redis;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "postback";

/// A master, one replica of it, and three sentinels (quorum 2) that
/// declare it down after one second.
pub struct SentinelSet {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    /// With certificates, every node and sentinel speaks only TLS.
    tls: Option<Arc<RedisCerts>>,
}

struct Sentinel {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the replica.
    pub fn start() -> Self {
        Self::start_tls_with(None)
    }

    /// [`SentinelSet::start`] with every node and sentinel speaking only
    /// TLS, with `certs`.
    pub fn start_tls(certs: &Arc<RedisCerts>) -> Self {
        Self::start_tls_with(Some(certs))
    }

    fn start_tls_with(tls: Option<&Arc<RedisCerts>>) -> Self {
        let master = RedisServer::start_tls_with(
            tls,
            &["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"],
        );
        let port = master.port().to_string();
        // Either may become the master: both sync a replica at once, not
        // after Redis' default 5 s wait for more.
        let replica = RedisServer::start_tls_with(
            tls,
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
                &port,
            ],
        );
        let sentinels: Vec<Sentinel> = (0..3).map(|_| start_sentinel(master.port(), tls)).collect();
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            tls: tls.cloned(),
        };
        wait_blocking(Duration::from_secs(20), || {
            set.sentinels.iter().all(|s| {
                let replicas: Vec<redis::Value> = query(
                    s.port,
                    &set.tls,
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
                )
                .unwrap_or_default();
                !replicas.is_empty()
            })
        })
        .expect("the sentinels did not find the replica within 20 s");
        set
    }

    /// `redis-sentinel://…#postback` naming the three sentinels
    /// (`rediss-sentinel://` over TLS).
    pub fn url(&self) -> String {
        let list: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}-sentinel://{}#{MASTER_NAME}", list.join(","))
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let (_, port): (String, String) = query(
                s.port,
                &self.tls,
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER_NAME),
            )
            .ok()?;
            port.parse().ok()
        })
    }
}

impl SentinelSet {
    /// Asks a sentinel for a graceful failover (`SENTINEL FAILOVER`): the
    /// replica is promoted while the old master stays up, to be turned
    /// into a replica by the sentinels afterwards. Asks again while the
    /// sentinel has no replica it deems fit yet (`NOGOODSLAVE`: it has not
    /// had fresh word from the synced replica), for up to 20 s.
    pub fn failover(&self) {
        let mut refusal = String::new();
        wait_blocking(Duration::from_secs(20), || {
            match query::<String>(
                self.sentinels[0].port,
                &self.tls,
                redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
            ) {
                Ok(_) => true,
                Err(e) => {
                    refusal = e.to_string();
                    false
                }
            }
        })
        .unwrap_or_else(|_| panic!("SENTINEL FAILOVER was refused for 20 s: {refusal}"));
    }

    /// Tells every sentinel that the master is now the node on `port` (an
    /// operator's hand-made switch: `SENTINEL REMOVE`, then `MONITOR` with
    /// the set's settings).
    pub fn monitor(&self, port: u16) {
        for s in &self.sentinels {
            query::<String>(s.port, &self.tls, redis::cmd("SENTINEL").arg("REMOVE").arg(MASTER_NAME))
                .expect("SENTINEL REMOVE was refused");
            query::<String>(
                s.port,
                &self.tls,
                redis::cmd("SENTINEL")
                    .arg("MONITOR")
                    .arg(MASTER_NAME)
                    .arg("127.0.0.1")
                    .arg(port)
                    .arg(2),
            )
            .expect("SENTINEL MONITOR was refused");
            query::<String>(
                s.port,
                &self.tls,
                redis::cmd("SENTINEL")
                    .arg("SET")
                    .arg(MASTER_NAME)
                    .arg("down-after-milliseconds")
                    .arg(1000),
            )
            .expect("SENTINEL SET was refused");
        }
    }

    /// How many clients of the sentinels listen to a channel (sentinels
    /// have no `PUBSUB`: their `CLIENT LIST` says `sub=N`).
    pub fn subscribers(&self) -> usize {
        self.sentinels
            .iter()
            .filter_map(|s| query::<String>(s.port, &self.tls, redis::cmd("CLIENT").arg("LIST")).ok())
            .map(|list| list.lines().filter(|l| !l.contains(" sub=0 ")).count())
            .sum()
    }
}

fn start_sentinel(master_port: u16, tls: Option<&Arc<RedisCerts>>) -> Sentinel {
    let port = free_port();
    let dir = TempDir::new("sentinel");
    let conf = dir.path().join("sentinel.conf");
    // Over TLS: the sentinel's port, and its links to the nodes, are TLS
    // only.
    let listen = match tls {
        Some(certs) => certs
            .server_options(port)
            .chunks(2)
            .map(|pair| format!("{} {}\n", pair[0].trim_start_matches("--"), pair[1]))
            .collect::<String>(),
        None => format!("port {port}\n"),
    };
    let tls = tls.cloned();
    std::fs::write(
        &conf,
        format!(
            "{listen}bind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir.path().display()
        ),
    )
    .expect("cannot write sentinel.conf");
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start redis-server --sentinel");
    let sentinel = Sentinel { child, port, _dir: dir };
    wait_blocking(Duration::from_secs(10), || {
        query::<String>(port, &tls, &mut redis::cmd("PING")).is_ok()
    })
    .expect("a sentinel did not answer PING within 10 s");
    sentinel
}

/// A Redis Cluster: `masters` masters with one replica each, made with
/// `redis-cli --cluster create`, nodes declared failed after one second.
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    /// With certificates, every node speaks only TLS, to clients and to
    /// its peers.
    tls: Option<Arc<RedisCerts>>,
}

struct ClusterNode {
    child: Option<Child>,
    port: u16,
    _dir: TempDir,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::start_tls_with(masters, None)
    }

    /// [`Cluster::start`] with every node speaking only TLS, with `certs`.
    pub fn start_tls(masters: usize, certs: &Arc<RedisCerts>) -> Self {
        Self::start_tls_with(masters, Some(certs))
    }

    fn start_tls_with(masters: usize, tls: Option<&Arc<RedisCerts>>) -> Self {
        let nodes: Vec<ClusterNode> = (0..2 * masters).map(|_| start_cluster_node(tls)).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut create = Command::new("redis-cli");
        if let Some(certs) = tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(certs.file("ca.crt"))
                .arg("--cert")
                .arg(certs.file("client.crt"))
                .arg("--key")
                .arg(certs.file("client.key"));
        }
        let status = create
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("cannot run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Cluster {
            nodes,
            tls: tls.cloned(),
        };
        wait_blocking(Duration::from_secs(30), || cluster.is_ok()).expect("the cluster was not ok within 30 s");
        // A replica that has never synced refuses to take over (its data
        // counts as too old), so the cluster is ready once every one has.
        wait_blocking(Duration::from_secs(30), || {
            cluster.nodes.iter().all(|n| {
                query::<String>(n.port, &cluster.tls, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|info| info.contains("role:master") || info.contains("master_link_status:up"))
            })
        })
        .expect("the replicas did not sync within 30 s");
        cluster
    }

    /// Whether every running node says `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            query::<String>(n.port, &self.tls, redis::cmd("CLUSTER").arg("INFO"))
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    }

    /// `redis-cluster://…` naming every node (`rediss-cluster://` over
    /// TLS).
    pub fn url(&self) -> String {
        let list: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}-cluster://{}", list.join(","))
    }

    /// The ports of the running nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                query::<Vec<redis::Value>>(n.port, &self.tls, &mut redis::cmd("ROLE"))
                    .ok()
                    .and_then(|role| role.into_iter().next())
                    .is_some_and(|first| matches!(&first, redis::Value::BulkString(b) if b == b"master"))
            })
            .map(|n| n.port)
            .collect()
    }

    /// How many keys the node on `port` holds.
    pub fn dbsize(&self, port: u16) -> u64 {
        query(port, &self.tls, &mut redis::cmd("DBSIZE")).unwrap_or(0)
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn start_cluster_node(tls: Option<&Arc<RedisCerts>>) -> ClusterNode {
    let (port, bus) = (free_port(), free_port());
    let dir = TempDir::new("cluster");
    let listen = match tls {
        Some(certs) => {
            let mut options = certs.server_options(port);
            options.extend(["--tls-cluster".to_string(), "yes".to_string()]);
            options
        }
        None => vec!["--port".to_string(), port.to_string()],
    };
    let tls = tls.cloned();
    let child = Command::new("redis-server")
        .args(listen)
        .args(["--cluster-port", &bus.to_string()])
        .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
        .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"])
        // Replicas sync at once, not after Redis' default 5 s wait for more.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start a cluster node");
    let node = ClusterNode {
        child: Some(child),
        port,
        _dir: dir,
    };
    wait_blocking(Duration::from_secs(10), || {
        query::<String>(port, &tls, &mut redis::cmd("PING")).is_ok()
    })
    .expect("a cluster node did not answer PING within 10 s");
    node
}

/// One command to the node on `port`, over a connection of its own.
/// (Over TLS with `tls`.)
fn query<T: redis::FromRedisValue>(
    port: u16,
    tls: &Option<Arc<RedisCerts>>,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    let client = match tls {
        Some(certs) => certs.client(port),
        None => redis::Client::open(format!("redis://127.0.0.1:{port}"))?,
    };
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    cmd.query(&mut conn)
}
