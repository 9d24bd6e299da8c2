//! The worker process, wired: the queue handle, one [`Deliverer`], one
//! consumer per shard (and one more for each shard the queue has beyond
//! `POSTBACK_SHARDS`), the admin listener and the statistics flusher.
//! `main` calls [`run`]; so do tests that want a whole worker in-process.

use crate::config::Config;
use crate::consumer::{self, Stopped};
use crate::deliverer::Deliverer;
use crate::delivery_log::DeliveryLog;
use crate::destinations::Destinations;
use crate::metrics::Metrics;
use crate::signing::Signer;
use common::queue::{Queue, QueueConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The deadline of every Redis command but a blocking take's wait.
const REDIS_TIMEOUT: Duration = Duration::from_secs(4);
/// How often start-up looks whether the signing secrets have been read.
const SECRETS_POLL: Duration = Duration::from_millis(20);
/// How often the worker looks whether the queue has more shards than it
/// consumes (another process with a larger `POSTBACK_SHARDS`, or one that
/// had it before it was lowered).
const SHARDS_CHECK: Duration = Duration::from_secs(5);
/// How long the last statistics flush may take at shutdown.
const STATS_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The queue handle could not be built (a `REDIS_URL` it cannot use).
    #[error("redis: {0}")]
    Redis(#[from] common::queue::QueueError),
    /// The admin listener could not bind.
    #[error("cannot listen on DELIVER_ADMIN_BIND {0}: {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
}

/// A unique id for this process: host, pid and a random suffix (a restarted
/// process must never take over a predecessor's in-flight list while that
/// list may still be in use).
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}-{}-{:04x}", host.trim(), std::process::id(), fastrand::u16(..))
}

/// The queue handle deliver uses.
pub fn queue(config: &Config) -> Result<Queue, common::queue::QueueError> {
    Queue::new(&QueueConfig {
        url: config.redis_url.clone(),
        tls: config.redis_tls.clone(),
        name: config.queue.clone(),
        timeout: REDIS_TIMEOUT,
        longest_block: consumer::BLOCK_WAIT,
        shards: config.shards,
        // Only producers wait for replicas.
        replica_acks: 0,
        replica_timeout: Duration::ZERO,
    })
}

/// Looks every [`SHARDS_CHECK`] for shards the queue has had beyond those
/// `consuming` (a shard no longer pushed to still gets drained), and sends
/// each new one to `found` once; until the task is aborted.
async fn watch_shards(
    queue: Queue,
    mut consuming: Vec<String>,
    found: tokio::sync::mpsc::Sender<common::queue::QueueKeys>,
) {
    // The configured shards are consumed from the start; the first look for
    // others comes one period later.
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + SHARDS_CHECK, SHARDS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        check.tick().await;
        // Not while Redis is away: the consumers' own retries say so.
        if queue.is_down() {
            continue;
        }
        let Ok(all) = queue.record_shards().await else { continue };
        for keys in all {
            if !consuming.iter().any(|tag| tag == keys.tag()) {
                log::info!("consuming shard {{{}}} too: the queue has had it", keys.tag());
                consuming.push(keys.tag().to_string());
                if found.send(keys).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs a worker until `shutdown` is cancelled, then stops gracefully.
pub async fn run(config: &Config, log: DeliveryLog, shutdown: CancellationToken) -> Result<Stopped, StartError> {
    let metrics = Arc::new(Metrics::new());
    let log_dir = match &config.log_file {
        Some(file) => file.parent(),
        None => config.log_dir.as_deref(),
    };
    metrics.watch_disks(common::disk::Watched::new(log_dir, config.data_dir.as_deref()));
    let signer = Arc::new(Signer::new(config.signing_secret.as_deref(), config.secret_overlap));
    let queue = queue(config)?;
    let id = new_worker_id();
    let destinations = Arc::new(Destinations::new(
        config.breaker.clone(),
        &id,
        config.probe_timeout(),
        metrics.clone(),
    ));
    let log_watch = log.watch();
    let deliverer =
        Arc::new(Deliverer::new(config, log, metrics.clone(), signer.clone())?.with_destinations(destinations.clone()));
    log::info!(
        "deliver worker {id} started on queue {:?} (concurrency {}, timeout {} ms)",
        config.queue,
        config.concurrency,
        config.timeout.as_millis()
    );

    let admin = crate::admin::bind(config.admin_bind)
        .await
        .map_err(|e| StartError::Admin(config.admin_bind, e))?;
    log::info!(
        "admin listening on {} (/metrics, /health, /stats)",
        admin
            .local_addr()
            .map_err(|e| StartError::Admin(config.admin_bind, e))?
    );
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(crate::admin::AdminState {
            metrics: metrics.clone(),
            queue: queue.clone(),
            worker: id.clone(),
            delivery_log: log_watch,
        }),
    ));
    let stop_stats = CancellationToken::new();
    let stats = tokio::spawn(crate::metrics::flush_stats(
        metrics.clone(),
        queue.handle(),
        stop_stats.clone(),
    ));

    // Know which destinations are held or disabled before taking a job.
    crate::destinations::sync(&queue, &destinations).await;
    let stop_destinations = CancellationToken::new();
    let destinations_task = tokio::spawn(crate::destinations::run(
        queue.handle(),
        destinations,
        stop_destinations.clone(),
    ));

    // Sign nothing before the producers' secrets are known.
    let secrets = tokio::spawn(crate::signing::refresh(signer.clone(), queue.handle()));
    let switches = queue.handle();
    let switch_follower = tokio::spawn(async move { switches.follow_master_switches().await });
    while !signer.is_loaded() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SECRETS_POLL) => {}
        }
    }

    // Not spawned: the consumers' fetchers run on the caller's thread
    // (main's), taking and handing out the next batch while the runtime's
    // threads deliver.
    let settings = consumer::Settings::of(config);
    let start = |shard| consumer::run(shard, deliverer.clone(), settings.clone(), shutdown.clone());
    let workers = queue.workers(&id, config.heartbeat_ttl);
    let consuming: Vec<String> = workers.iter().map(|w| w.shard().to_string()).collect();
    let mut consumers: futures_util::stream::FuturesUnordered<_> = workers.into_iter().map(start).collect();
    // A task of its own, so that its round trips never pause the fetchers.
    let (found, mut more_shards) = tokio::sync::mpsc::channel(common::config::MAX_SHARDS);
    let watcher = tokio::spawn(watch_shards(queue.clone(), consuming, found));
    let mut stopped = Stopped::default();
    loop {
        tokio::select! {
            one = futures_util::StreamExt::next(&mut consumers) => match one {
                Some(one) => {
                    stopped.cut_short += one.cut_short;
                    stopped.returned += one.returned;
                }
                None => break,
            },
            Some(keys) = more_shards.recv(), if !shutdown.is_cancelled() => {
                consumers.push(start(queue.worker(keys, &id, config.heartbeat_ttl)));
            }
        }
    }
    watcher.abort();

    stop_stats.cancel();
    stop_destinations.cancel();
    let _ = tokio::time::timeout(STATS_FLUSH_DEADLINE, stats).await;
    let _ = tokio::time::timeout(STATS_FLUSH_DEADLINE, destinations_task).await;
    secrets.abort();
    switch_follower.abort();
    admin.abort();
    log::info!(
        "stopped: {} deliveries cut short by the grace period, {} unsettled jobs returned to the queue",
        stopped.cut_short,
        stopped.returned
    );
    Ok(stopped)
}
