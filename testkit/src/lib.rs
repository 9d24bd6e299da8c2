//! Test support shared by the integration tests of both services, never
//! linked into a service: real servers on free loopback ports, stopped on
//! drop (also when a test fails), and waiting with a deadline.
//!
//! - [`ports`](mod@ports): free ports and temp folders;
//! - [`redis`](mod@redis): a `redis-server` of the test's own;
//! - [`ha`]: a Sentinel-watched master and replica, and a Redis Cluster;
//! - [`sink`](mod@sink): an HTTP sink that records requests and answers as
//!   scripted;
//! - [`fault`](mod@fault): a proxy that loses a Redis answer;
//! - [`tls`](mod@tls): a private CA and a `localhost` certificate;
//! - [`http`](mod@http): a plain HTTP client;
//! - [`wait`](mod@wait): waiting on a condition with a deadline;
//! - [`docs_table`]: the settings tables against `docs/CONFIGURATION.md`.

pub mod docs_table;
pub mod fault;
pub mod ha;
pub mod http;
pub mod ports;
pub mod redis;
pub mod sink;
pub mod tls;
pub mod wait;

pub use fault::ReplyCutter;
pub use ha::{Cluster, SentinelSet};
pub use http::{get, http, post, HttpResponse};
pub use ports::{free_port, TempDir};
pub use redis::{redis_info, RedisServer};
pub use sink::{switched, Received, Reply, Responder, Sink};
pub use tls::{RedisCerts, TestCa};
pub use wait::{wait_blocking, wait_until};
