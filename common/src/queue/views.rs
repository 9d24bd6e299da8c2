//! The operator's views of a queue, read-only: depths, an overview of
//! every shard, and where one job is. They only read, so they answer while
//! Redis refuses writes (a full disk, too few replicas), when they are
//! needed most.

use super::{Queue, QueueError, QueueKeys};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// Extra time for an operator's search through a deep queue.
const FIND_DEADLINE: Duration = Duration::from_secs(60);

static DEPTHS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/depths.lua")));

/// One shard at a glance, for operators (`deliver queue`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Overview {
    /// Jobs waiting for delivery.
    pub ready: u64,
    /// Jobs waiting for a retry.
    pub retry: u64,
    /// When the next retry is due, in ms since the epoch.
    pub next_retry_ms: Option<u64>,
    /// Each registered worker's in-flight jobs, and whether its heartbeat
    /// is alive.
    pub in_flight: Vec<WorkerLoad>,
    /// Parked jobs, all hosts.
    pub parked: u64,
    /// The hosts with the most parked jobs (at most the number asked for),
    /// most first.
    pub parked_hosts: Vec<(String, u64)>,
    /// Dead letters.
    pub dead: u64,
}

/// One worker's share of a shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerLoad {
    /// The worker's id.
    pub worker: String,
    /// Jobs in its in-flight list.
    pub jobs: u64,
    /// Whether its heartbeat key exists.
    pub alive: bool,
}

/// The shard at a glance, with the `top_hosts` hosts that have the most
/// parked jobs. Two round trips; read-only.
pub async fn overview<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, top_hosts: usize) -> RedisResult<Overview> {
    type Counts = (u64, u64, Vec<(String, f64)>, Vec<String>, Vec<(String, f64)>, u64);
    let (ready, retry, next, workers, parked, dead): Counts = redis::pipe()
        .cmd("LLEN")
        .arg(&keys.ready)
        .cmd("ZCARD")
        .arg(&keys.retry)
        .cmd("ZRANGE")
        .arg(&keys.retry)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .cmd("SMEMBERS")
        .arg(&keys.workers)
        .cmd("ZRANGE")
        .arg(&keys.parked)
        .arg(0)
        .arg(-1)
        .arg("REV")
        .arg("WITHSCORES")
        .cmd("LLEN")
        .arg(&keys.dead)
        .query_async(conn)
        .await?;
    let mut in_flight = Vec::with_capacity(workers.len());
    if !workers.is_empty() {
        let mut pipe = redis::pipe();
        for worker in &workers {
            pipe.cmd("LLEN")
                .arg(keys.inflight(worker))
                .cmd("EXISTS")
                .arg(keys.heartbeat(worker));
        }
        let counts: Vec<u64> = pipe.query_async(conn).await?;
        for (worker, pair) in workers.into_iter().zip(counts.chunks(2)) {
            in_flight.push(WorkerLoad {
                worker,
                jobs: pair.first().copied().unwrap_or(0),
                alive: pair.get(1).copied().unwrap_or(0) == 1,
            });
        }
    }
    Ok(Overview {
        ready,
        retry,
        next_retry_ms: next.first().map(|(_, due)| *due as u64),
        in_flight,
        parked: parked.iter().map(|(_, n)| *n as u64).sum(),
        parked_hosts: parked.into_iter().take(top_hosts).map(|(h, n)| (h, n as u64)).collect(),
        dead,
    })
}

/// Where a job is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// Waiting for delivery.
    Ready,
    /// Being delivered (or taken) by this worker.
    InFlight {
        /// The worker's id.
        worker: String,
    },
    /// Waiting for its next attempt, due then (ms since the epoch).
    Retry {
        /// When.
        due_ms: u64,
        /// The job as queued (its attempt number).
        job: String,
    },
    /// Waiting for room at its host.
    Parked {
        /// `host:port`.
        host: String,
    },
    /// A dead letter.
    Dead {
        /// The letter as stored.
        letter: String,
    },
}

/// Entries read per round trip while looking for a job.
const FIND_CHUNK: isize = 1000;

/// Looks for job `id` in every list of the shard: ready, every in-flight
/// list, retry, parked, dead. Reads each list in chunks of 1,000 (jobs and
/// letters are JSON that starts with their id), so on a deep queue this is
/// many round trips: an operator's command, never the services'.
pub async fn find<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, id: &str) -> RedisResult<Option<Place>> {
    let prefix = format!("{{\"id\":{}", serde_json::Value::from(id));
    let starts = |entry: &str| entry.starts_with(&prefix);
    if find_in_list(conn, &keys.ready, &starts).await?.is_some() {
        return Ok(Some(Place::Ready));
    }
    let workers: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.workers).query_async(conn).await?;
    for worker in workers {
        if find_in_list(conn, &keys.inflight(&worker), &starts).await?.is_some() {
            return Ok(Some(Place::InFlight { worker }));
        }
    }
    let mut start = 0;
    loop {
        let chunk: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.retry)
            .arg(start)
            .arg(start + FIND_CHUNK - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        if let Some((job, due)) = chunk.iter().find(|(job, _)| starts(job)) {
            return Ok(Some(Place::Retry {
                due_ms: *due as u64,
                job: job.clone(),
            }));
        }
        if (chunk.len() as isize) < FIND_CHUNK {
            break;
        }
        start += FIND_CHUNK;
    }
    let hosts: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.parked)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    for host in hosts {
        if find_in_list(conn, &keys.parked_list(&host), &starts).await?.is_some() {
            return Ok(Some(Place::Parked { host }));
        }
    }
    Ok(find_in_list(conn, &keys.dead, &starts)
        .await?
        .map(|letter| Place::Dead { letter }))
}

async fn find_in_list<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    found: &impl Fn(&str) -> bool,
) -> RedisResult<Option<String>> {
    let mut start = 0;
    loop {
        let chunk: Vec<String> = redis::cmd("LRANGE")
            .arg(key)
            .arg(start)
            .arg(start + FIND_CHUNK - 1)
            .query_async(conn)
            .await?;
        if let Some(entry) = chunk.iter().find(|e| found(e)) {
            return Ok(Some(entry.clone()));
        }
        if (chunk.len() as isize) < FIND_CHUNK {
            return Ok(None);
        }
        start += FIND_CHUNK;
    }
}

/// Redis answers a `PING`.
pub async fn ping<C: ConnectionLike>(conn: &mut C) -> RedisResult<()> {
    redis::cmd("PING").query_async::<String>(conn).await.map(drop)
}

/// How many jobs wait in the ready list, the retry set, the dead-letter
/// list and the parked lists, in one round trip.
pub async fn depths<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys) -> RedisResult<Depths> {
    let (ready, retry, dead, parked): (u64, u64, u64, u64) = DEPTHS
        .key(&keys.ready)
        .key(&keys.retry)
        .key(&keys.dead)
        .key(&keys.parked)
        .invoke_async(conn)
        .await?;
    Ok(Depths {
        ready,
        retry,
        dead,
        parked,
    })
}

/// Queue depths at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Depths {
    /// Jobs waiting for delivery.
    pub ready: u64,
    /// Jobs waiting for a retry.
    pub retry: u64,
    /// Dead letters.
    pub dead: u64,
    /// Jobs parked until their host has room.
    pub parked: u64,
}

impl Depths {
    /// Adds `other`'s depths to these (another shard's, say).
    pub fn add(&mut self, other: &Depths) {
        self.ready += other.ready;
        self.retry += other.retry;
        self.dead += other.dead;
        self.parked += other.parked;
    }

    /// Each depth with its name, as the `state` label of the queue gauges.
    pub fn by_state(&self) -> [(&'static str, u64); 4] {
        [
            ("ready", self.ready),
            ("retry", self.retry),
            ("dead", self.dead),
            ("parked", self.parked),
        ]
    }
}

impl Queue {
    /// Redis answers a `PING`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.run("health", Duration::ZERO, async move |mut conn| ping(&mut conn).await)
            .await
    }

    /// Depths of every shard, added up.
    pub async fn depths(&self) -> Result<Depths, QueueError> {
        let mut total = Depths::default();
        for (_, d) in self.depths_by_shard().await? {
            total.add(&d);
        }
        Ok(total)
    }

    /// Depths of each shard, by its tag (a shard that fills while the
    /// others drain is a stuck consumer or a hot shard).
    pub async fn depths_by_shard(&self) -> Result<Vec<(String, Depths)>, QueueError> {
        self.on_every_shard("queue length", Duration::ZERO, async |mut conn, keys| {
            depths(&mut conn, keys).await
        })
        .await
    }

    /// Every shard at a glance (see [`overview()`]), by tag.
    pub async fn overview(&self, top_hosts: usize) -> Result<Vec<(String, Overview)>, QueueError> {
        self.on_every_shard("queue overview", Duration::ZERO, async |mut conn, keys| {
            overview(&mut conn, keys, top_hosts).await
        })
        .await
    }

    /// Where job `id` is, in whichever shard holds it (see
    /// [`find`]); `None`: in no list, so settled (or never
    /// queued).
    pub async fn find_job(&self, id: &str) -> Result<Option<(String, Place)>, QueueError> {
        for keys in &self.every_shard().await? {
            // A deep queue takes many round trips: a generous deadline.
            let place = self
                .run("find a job", FIND_DEADLINE, async move |mut conn| {
                    find(&mut conn, keys, id).await
                })
                .await?;
            if let Some(place) = place {
                return Ok(Some((keys.tag().to_string(), place)));
            }
        }
        Ok(None)
    }
}
