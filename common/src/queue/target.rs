//! Where Redis is: one server, a master watched by Sentinel, or a Cluster,
//! all named by `REDIS_URL`.
//!
//! - `redis://[user:password@]host:port[/db]`, `redis+unix:///path?pass=…`,
//!   `unix:///path`: one server, as redis-rs reads these URLs;
//! - `redis-sentinel://[user:password@]host:port[,host:port…][/db]#MASTER`:
//!   the sentinels' addresses (port 26379 when left out) and, after `#`, the
//!   name they monitor the master under, as Lettuce and other clients write
//!   it; the password is the data nodes' (sentinels are reached without);
//! - `redis-cluster://[user:password@]host:port[,host:port…]`: seed nodes
//!   of a Redis Cluster (port 6379 when left out); the client learns the
//!   others from them;
//! - `rediss://`, `rediss-sentinel://`, `rediss-cluster://`: the same over
//!   TLS, to the sentinels and to every node (see [`super::tls`]).
//!
//! Parsing is separate from connecting so that a bad URL stops a program at
//! start with a message naming the problem.

use std::fmt;

/// Port of a sentinel when the URL leaves it out.
const SENTINEL_PORT: u16 = 26379;
/// Port of a cluster node when the URL leaves it out.
const CLUSTER_PORT: u16 = 6379;

/// A host and port, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Credentials of the data nodes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user, if any (else `default`).
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password, even in a debug print.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What `REDIS_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: the URL as redis-rs reads it.
    Server(String),
    /// A master found through sentinels.
    Sentinel {
        /// The sentinels to ask.
        sentinels: Vec<Node>,
        /// The name the sentinels monitor the master under.
        master: String,
        /// The data nodes' credentials.
        credentials: Credentials,
        /// The database number.
        db: i64,
        /// Whether the sentinels and the master are reached over TLS.
        tls: bool,
    },
    /// A Redis Cluster, through some of its nodes.
    Cluster {
        /// Nodes to learn the cluster's layout from.
        seeds: Vec<Node>,
        /// The data nodes' credentials.
        credentials: Credentials,
        /// Whether the nodes are reached over TLS.
        tls: bool,
    },
}

/// Why a `REDIS_URL` cannot be used; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(String);

impl Target {
    /// Reads a `REDIS_URL`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let sentinel = (url.strip_prefix("redis-sentinel://").map(|rest| (rest, false)))
            .or_else(|| url.strip_prefix("rediss-sentinel://").map(|rest| (rest, true)));
        if let Some((rest, tls)) = sentinel {
            let (rest, master) = rest.split_once('#').ok_or_else(|| {
                TargetError(
                    "a redis-sentinel:// URL needs the master's name after '#', e.g. \
                     redis-sentinel://10.0.0.1:26379,10.0.0.2:26379#postback"
                        .into(),
                )
            })?;
            if master.is_empty() {
                return Err(TargetError("the master's name after '#' is empty".into()));
            }
            let (credentials, rest) = credentials(rest);
            let (nodes, db) = match rest.split_once('/') {
                Some((nodes, "")) => (nodes, 0),
                Some((nodes, db)) => (
                    nodes,
                    db.parse()
                        .map_err(|_| TargetError(format!("the database after '/' must be a number, not {db:?}")))?,
                ),
                None => (rest, 0),
            };
            return Ok(Target::Sentinel {
                sentinels: node_list(nodes, SENTINEL_PORT)?,
                master: master.to_string(),
                credentials,
                db,
                tls,
            });
        }
        let cluster = (url.strip_prefix("redis-cluster://").map(|rest| (rest, false)))
            .or_else(|| url.strip_prefix("rediss-cluster://").map(|rest| (rest, true)));
        if let Some((rest, tls)) = cluster {
            let (credentials, rest) = credentials(rest);
            let nodes = rest.strip_suffix('/').unwrap_or(rest);
            if nodes.contains('/') {
                return Err(TargetError(
                    "a Redis Cluster has only database 0: leave the '/db' out of a redis-cluster:// URL".into(),
                ));
            }
            return Ok(Target::Cluster {
                seeds: node_list(nodes, CLUSTER_PORT)?,
                credentials,
                tls,
            });
        }
        Ok(Target::Server(url.to_string()))
    }

    /// Whether Redis is reached over TLS.
    pub fn uses_tls(&self) -> bool {
        match self {
            Target::Server(url) => url.starts_with("rediss://"),
            Target::Sentinel { tls, .. } | Target::Cluster { tls, .. } => *tls,
        }
    }

    /// Where Redis is looked for, without credentials, for log lines.
    pub fn describe(&self) -> String {
        let over = if self.uses_tls() { " over TLS" } else { "" };
        format!("{}{over}", self.place())
    }

    fn place(&self) -> String {
        let list = |nodes: &[Node]| nodes.iter().map(Node::to_string).collect::<Vec<_>>().join(",");
        match self {
            Target::Server(url) => {
                use deadpool_redis::redis::{ConnectionAddr, IntoConnectionInfo};
                match url.as_str().into_connection_info() {
                    Ok(info) => match info.addr() {
                        ConnectionAddr::Unix(path) => format!("unix:{}", path.display()),
                        other => other.to_string(),
                    },
                    Err(_) => "an unreadable REDIS_URL".to_string(),
                }
            }
            Target::Sentinel { sentinels, master, .. } => {
                format!("master {master:?} of sentinels {}", list(sentinels))
            }
            Target::Cluster { seeds, .. } => format!("the cluster of {}", list(seeds)),
        }
    }
}

/// Splits `user:password@` (percent-encoded) off the front.
fn credentials(rest: &str) -> (Credentials, &str) {
    let Some((userinfo, rest)) = rest.rsplit_once('@') else {
        return (Credentials::default(), rest);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
    let non_empty = |s: &str| (!s.is_empty()).then(|| crate::url_parts::percent_decode(s));
    (
        Credentials {
            username: non_empty(user),
            password: non_empty(password),
        },
        rest,
    )
}

fn node_list(list: &str, default_port: u16) -> Result<Vec<Node>, TargetError> {
    let nodes = list
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| node(n, default_port))
        .collect::<Result<Vec<_>, _>>()?;
    if nodes.is_empty() {
        return Err(TargetError(
            "the URL names no node: list them as host:port,host:port".into(),
        ));
    }
    Ok(nodes)
}

fn node(text: &str, default_port: u16) -> Result<Node, TargetError> {
    let bad = || {
        TargetError(format!(
            "{text:?} is not host:port (an IPv6 address goes in brackets: [::1]:26379)"
        ))
    };
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad())?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Node {
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(host: &str, port: u16) -> Node {
        Node {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn plain_and_unix_urls_are_one_server() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis+unix:///run/r.sock?pass=x",
            "unix:///r.sock",
        ] {
            assert_eq!(Target::parse(url), Ok(Target::Server(url.into())));
        }
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_data_nodes_password() {
        let target = Target::parse("redis-sentinel://:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:5/2#postback").unwrap();
        assert_eq!(
            target,
            Target::Sentinel {
                sentinels: vec![n("10.0.0.1", 26379), n("10.0.0.2", 26380), n("::1", 5)],
                master: "postback".into(),
                credentials: Credentials {
                    username: None,
                    password: Some("p@ss".into())
                },
                db: 2,
                tls: false,
            }
        );
        assert_eq!(
            target.describe(),
            "master \"postback\" of sentinels 10.0.0.1:26379,10.0.0.2:26380,[::1]:5"
        );
        assert!(!format!("{target:?}").contains("p@ss"), "no password in a debug print");
    }

    #[test]
    fn a_cluster_url_names_its_seeds() {
        assert_eq!(
            Target::parse("redis-cluster://app:secret@h1:7000,h2").unwrap(),
            Target::Cluster {
                seeds: vec![n("h1", 7000), n("h2", 6379)],
                credentials: Credentials {
                    username: Some("app".into()),
                    password: Some("secret".into())
                },
                tls: false,
            }
        );
    }

    #[test]
    fn the_rediss_forms_are_the_same_over_tls() {
        let target = Target::parse("rediss-sentinel://s1,s2:26380#postback").unwrap();
        assert!(matches!(target, Target::Sentinel { tls: true, ref sentinels, .. } if sentinels.len() == 2));
        assert_eq!(
            target.describe(),
            "master \"postback\" of sentinels s1:26379,s2:26380 over TLS"
        );
        let target = Target::parse("rediss-cluster://:pw@h1:7000").unwrap();
        assert!(matches!(target, Target::Cluster { tls: true, .. }));
        assert_eq!(target.describe(), "the cluster of h1:7000 over TLS");
        let target = Target::parse("rediss://:pw@h1:6380").unwrap();
        assert!(target.uses_tls());
        assert_eq!(target.describe(), "h1:6380 over TLS");
        assert!(!Target::parse("redis://h1:6380").unwrap().uses_tls());
        assert!(!Target::parse("redis-cluster://h1").unwrap().uses_tls());
    }

    #[test]
    fn bad_urls_say_how_to_write_them() {
        let error = |url: &str| Target::parse(url).unwrap_err().to_string();
        assert!(error("redis-sentinel://h:26379").contains("master's name after '#'"));
        assert!(error("redis-sentinel://h:26379#").contains("empty"));
        assert!(error("redis-sentinel://#m").contains("names no node"));
        assert!(error("redis-sentinel://h:x#m").contains("not host:port"));
        assert!(error("redis-sentinel://h/x#m").contains("must be a number"));
        assert!(error("redis-cluster://h:7000/1").contains("only database 0"));
    }
}
