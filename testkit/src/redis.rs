//! A real `redis-server` of the test's own, and reading its `INFO`.
use crate::{free_port, wait_blocking, RedisCerts, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `redis-server` of the test's own, on a free port, with its data in a
/// temp folder. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
    /// With certificates: TLS only, on `port`.
    tls: Option<Arc<RedisCerts>>,
}

impl RedisServer {
    /// Starts Redis without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts Redis with `appendonly yes` and `appendfsync always`, so a
    /// SIGKILL loses nothing it acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts Redis with extra command-line options.
    pub fn start_with(options: &[&str]) -> Self {
        Self::start_tls_with(None, options)
    }

    /// Starts Redis without persistence, speaking only TLS with `certs`
    /// (and asking clients for a certificate).
    pub fn start_tls(certs: &Arc<RedisCerts>) -> Self {
        Self::start_tls_with(Some(certs), &["--save", "", "--appendonly", "no"])
    }

    /// Starts Redis with extra options, speaking only TLS if `certs` are
    /// given.
    pub fn start_tls_with(certs: Option<&Arc<RedisCerts>>, options: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            extra: options.iter().map(|s| s.to_string()).collect(),
            tls: certs.cloned(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let listen = match &self.tls {
            Some(certs) => certs.server_options(self.port),
            None => vec!["--port".to_string(), self.port.to_string()],
        };
        let child = Command::new("redis-server")
            .args(listen)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start redis-server: is the redis-server package installed? (scripts/test installs it)");
        self.child = Some(child);
        wait_blocking(Duration::from_secs(10), || self.ping()).expect("redis-server did not answer PING within 10 s");
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it answers `PING` right now.
    pub fn ping(&self) -> bool {
        if let Some(certs) = &self.tls {
            let conn = certs
                .client(self.port)
                .get_connection_with_timeout(Duration::from_secs(1));
            return conn.is_ok_and(|mut conn| {
                deadpool_redis::redis::cmd("PING")
                    .query::<String>(&mut conn)
                    .is_ok_and(|pong| pong == "PONG")
            });
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port as a replica of the server on
    /// `master` (what a start script that asks the sentinels first does
    /// for a master that was failed over).
    pub fn restart_as_replica_of(&mut self, master: u16) {
        self.kill();
        let at = self.extra.iter().position(|o| o == "--replicaof");
        if let Some(at) = at {
            self.extra.drain(at..at + 3);
        }
        self.extra
            .extend(["--replicaof".to_string(), "127.0.0.1".to_string(), master.to_string()]);
        self.spawn();
    }

    /// A connection for a test to inspect or prepare the queue.
    pub async fn connection(&self) -> deadpool_redis::redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            Some(certs) => certs.client(self.port),
            None => deadpool_redis::redis::Client::open(self.url()).expect("bad redis url"),
        };
        client
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to the test redis-server")
    }
}

/// One field of Redis' `INFO section` (its `field:value` line), as text.
pub async fn redis_info(
    conn: &mut deadpool_redis::redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Option<String> {
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
