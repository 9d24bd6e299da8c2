//! Faults between a client and Redis: a proxy that loses one answer.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A TCP proxy in front of a Redis server that loses one answer on purpose:
/// once [`arm`](ReplyCutter::arm)ed, the first reply that contains the
/// marker is never passed on and its connection is closed, as when Redis
/// carries out a command and dies (or the network fails) before the answer
/// leaves. For tests of a client that cannot know whether its command took
/// effect. Stopped on drop.
pub struct ReplyCutter {
    port: u16,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl ReplyCutter {
    /// Listens on a free loopback port and forwards every connection to
    /// Redis on `redis_port`.
    pub async fn start(redis_port: u16) -> ReplyCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (marker_, cuts_) = (marker.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            // Dropped with the accept task, which aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (marker, cuts) = (marker_.clone(), cuts_.clone());
                connections.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let replies = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_rx.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let chunk = &buffer[..n];
                            let cut = {
                                let mut marker = marker.lock().unwrap_or_else(|e| e.into_inner());
                                let hit = marker
                                    .as_deref()
                                    .is_some_and(|m| chunk.windows(m.len()).any(|w| w == m));
                                if hit {
                                    *marker = None;
                                }
                                hit
                            };
                            if cut {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if client_tx.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either direction ending closes both sockets.
                    tokio::select! {
                        _ = requests => {}
                        _ = replies => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        ReplyCutter {
            port,
            marker,
            cuts,
            accept,
        }
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the next reply that contains `marker`.
    pub fn arm(&self, marker: &str) {
        *self.marker.lock().unwrap_or_else(|e| e.into_inner()) = Some(marker.as_bytes().to_vec());
    }

    /// How many replies it has lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyCutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
