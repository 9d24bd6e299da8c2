//! One delivery: decide what a taken job is to become, fill its URL, make
//! the request, log the attempt, count it, and say how to settle the job.
//!
//! A [`Deliverer`] holds everything an attempt needs and nothing of the
//! queue: the HTTP client, the retry policy, the host gates and the global
//! limit on requests in flight, the delivery log and the metrics. The
//! consumers of every shard share one, so the limits hold across shards.
//!
//! A taken job goes [`Deliverer::dispatch`] → [`Dispatch::Run`] →
//! [`Deliverer::run`] → a [`Settlement`]; parked and malformed jobs get
//! theirs from `dispatch` directly. Tests call [`Deliverer::deliver_one`],
//! which takes the same way, against a real sink.

mod letters;

use crate::client::{parse_url, Attempt, HttpClient};
use crate::config::Config;
use crate::credentials::SplitUrl;
use crate::delivery_log::{DeliveryLog, Record};
use crate::destinations::{Admission, Attempted, Destinations, Parked};
use crate::hosts::{destination_of, Hosts, Place};
use crate::metrics::{AttemptRecord, Metrics};
use crate::pool::Idle;
use crate::retry::{RetryPolicy, Verdict};
use crate::signing::Signer;
use bytes::Bytes;
use common::job::{DeadReason, Job};
use common::queue::destinations::Policy;
use common::queue::Settlement;
use letters::dead_letter;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Room reserved in a URL beyond its template for the filled-in values, so
/// that most fills do not grow the string.
const URL_SLACK: usize = 64;

/// What is to become of a job just taken, decided before any request.
pub enum Dispatch {
    /// Deliver it: its host's gate has a place for it.
    Run(Delivery),
    /// Hold it in Redis ([`Settlement::Park`]), not in memory, with no
    /// attempt spent: its destination has all it may have in flight and
    /// waiting, its breaker is open, or it asked for a pause.
    Park(Settlement),
    /// A dead letter ([`Settlement::Dead`]) with no attempt made: not a
    /// job, or its destination is disabled.
    Dead(Settlement),
}

/// What the fetcher is to take back from parking in one look.
#[derive(Debug, Default)]
pub struct Unpark {
    /// `(host, n)`: jobs to take back now.
    pub wanted: Vec<(String, usize)>,
    /// Hosts whose breaker's probe is due: claim it, then take back one.
    pub probes: Vec<String>,
    /// Rate-limited hosts and how many their gates would take: lease that
    /// many requests at the policy's rate, then take back as many.
    pub leases: Vec<(String, Policy, usize)>,
}

/// A job admitted by its host's gate, ready for [`Deliverer::run`]. Holds
/// its place in the gate until it has run or is dropped.
pub struct Delivery {
    job: Job,
    url: String,
    place: Place,
    /// The breaker's probe of its destination.
    probe: bool,
    /// Its destination (`hosts::destination_of`), worked out once.
    destination: String,
}

/// What an attempt needs: client, policy, limits, log and metrics.
pub struct Deliverer {
    client: HttpClient,
    policy: RetryPolicy,
    hosts: Hosts,
    /// Requests in flight at once over all hosts (`DELIVER_CONCURRENCY`).
    running: Semaphore,
    log: DeliveryLog,
    metrics: Arc<Metrics>,
    signer: Arc<Signer>,
    /// The shared destinations' state; none for a deliverer on its own
    /// (a single delivery: every destination closed, nothing reported).
    destinations: Option<Arc<Destinations>>,
    unmatched_default: String,
}

impl Deliverer {
    /// A deliverer with `config`'s client, policy and limits, writing to
    /// `log`, counting into `metrics`, signing with `signer`.
    pub fn new(
        config: &Config,
        log: DeliveryLog,
        metrics: Arc<Metrics>,
        signer: Arc<Signer>,
    ) -> Result<Self, crate::client::ClientError> {
        let client = HttpClient::new(
            config.timeout,
            config.log_body_max,
            config.extra_ca_file.as_deref(),
            config.destinations.clone(),
        )?;
        Ok(Deliverer {
            client,
            policy: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                jitter_pct: config.retry_jitter_pct,
                retry_after_max: config.retry_after_max,
            },
            hosts: Hosts::new(config.per_host_concurrency),
            running: Semaphore::new(config.concurrency),
            log,
            metrics,
            signer,
            destinations: None,
            unmatched_default: config.unmatched_default.clone(),
        })
    }

    /// Whether the delivery log takes lines: false while its disk is full,
    /// when the worker must take no more jobs (see [`DeliveryLog`]).
    pub fn log_writable(&self) -> bool {
        self.log.writable()
    }

    /// The same, following the shared destinations' state through
    /// `destinations` (the worker's; without it every destination is
    /// closed, as for a single delivery).
    pub fn with_destinations(mut self, destinations: Arc<Destinations>) -> Self {
        self.destinations = Some(destinations);
        self
    }

    /// Decides what becomes of `taken`, a job as the queue handed it over:
    /// delivered, held (its destination is full, open or paused) or dead
    /// (not a job, or its destination is disabled).
    pub fn dispatch(&self, taken: &[u8]) -> Dispatch {
        let job = match Job::decode(taken) {
            Ok(job) => job,
            Err(error) => return Dispatch::Dead(self.malformed(taken, &error.to_string())),
        };
        let url = self.url_of(&job);
        let host = destination_of(&url);
        let admission = self.destinations.as_ref().map_or(Admission::Go, |d| d.admit(&host));
        let probe = match admission {
            Admission::Go => false,
            Admission::Probe => true,
            Admission::Hold => {
                self.metrics.held();
                return Dispatch::Park(Settlement::Park {
                    host: host.into_owned(),
                });
            }
            Admission::Disabled => return Dispatch::Dead(self.refused(&job, &url)),
        };
        let limit = self.destinations.as_ref().and_then(|d| d.concurrency(&host));
        let Some(place) = self.hosts.admit(&host, limit) else {
            if probe {
                // Whichever of its jobs comes next is the probe.
                self.probe_granted(&host);
            }
            self.metrics.parked();
            return Dispatch::Park(Settlement::Park {
                host: host.into_owned(),
            });
        };
        Dispatch::Run(Delivery {
            destination: host.into_owned(),
            job,
            url,
            place,
            probe,
        })
    }

    /// Of the hosts with parked jobs, how many each may have back now,
    /// `free` in all at most (see [`Unpark`]).
    pub fn plan_unpark(&self, hosts: Vec<String>, mut free: usize) -> Unpark {
        let mut plan = Unpark::default();
        for host in hosts {
            let parked = self.destinations.as_ref().map_or(Parked::Free, |d| d.parked(&host));
            let n = match parked {
                Parked::Free => self.hosts.room(&host).min(free),
                // Taken back to become dead letters.
                Parked::Drain => free,
                Parked::Held => 0,
                Parked::ProbeDue => {
                    plan.probes.push(host);
                    continue;
                }
                Parked::Lease(policy) => {
                    let n = self.hosts.room(&host).min(free);
                    if n > 0 {
                        plan.leases.push((host, policy, n));
                    }
                    continue;
                }
            };
            if n > 0 {
                free -= n;
                plan.wanted.push((host, n));
            }
        }
        plan
    }

    /// `n` requests of rate-limited `host` were leased for this process.
    pub fn leased(&self, host: &str, n: usize) {
        if let Some(destinations) = &self.destinations {
            destinations.leased(host, n);
        }
    }

    /// This process holds the probe of `host`'s breaker: one of its jobs
    /// may go.
    pub fn probe_granted(&self, host: &str) {
        if let Some(destinations) = &self.destinations {
            destinations.probe_granted(host);
        }
    }

    /// How long a probe claim holds before another process may claim it.
    pub fn probe_timeout(&self) -> std::time::Duration {
        self.destinations
            .as_ref()
            .map_or(std::time::Duration::ZERO, |d| d.probe_timeout())
    }

    /// Counts jobs taken back from parking.
    pub fn unparked(&self, n: usize) {
        self.metrics.unparked(n);
    }

    /// Delivers an admitted job: waits for a request slot of its host and a
    /// global one, makes the attempt, and returns what is to become of the
    /// job: logged, counted, decided.
    pub async fn run(&self, mut delivery: Delivery) -> Settlement {
        // `delivery` stays whole: taking it apart would keep a second copy
        // of the job in the task's future, which tokio moves on spawn.
        let _host = delivery.place.enter().await;
        // Never closed: an error would only mean no limit.
        let _running = self.running.acquire().await.ok();
        let _in_flight = self.metrics.start_delivery();
        let url = std::mem::take(&mut delivery.url);
        self.attempt(
            &delivery.job,
            url,
            delivery.probe,
            &delivery.destination,
            delivery.place.idle(),
        )
        .await
    }

    /// Delivers `job` the way the consumer does ([`Deliverer::dispatch`],
    /// then [`Deliverer::run`]), for tests and `deliver job`.
    pub async fn deliver_one(&self, job: &Job) -> Settlement {
        match self.dispatch(job.encode().as_bytes()) {
            Dispatch::Run(delivery) => self.run(delivery).await,
            Dispatch::Park(settlement) | Dispatch::Dead(settlement) => settlement,
        }
    }

    /// The job's URL with its data filled in.
    fn url_of(&self, job: &Job) -> String {
        let mut url = String::with_capacity(job.url.len() + URL_SLACK);
        common::template::render_into(&mut url, &job.url, &job.fields(), &self.unmatched_default);
        url
    }

    /// The attempt itself. Only what the request needs is held while it
    /// runs (its future is part of every delivery task, which tokio copies
    /// when it spawns and completes one): the request is made ready, and
    /// its outcome dealt with, in plain functions either side.
    async fn attempt(&self, job: &Job, url: String, probe: bool, destination: &str, idle: &Arc<Idle>) -> Settlement {
        let (split, request) = self.prepare(job, url, idle);
        let outcome = request.await;
        self.conclude(job, &split, outcome, probe, destination)
    }

    /// The request for `job` at `url`, ready to send on one of `idle`'s
    /// connections (or a new one), and the URL split from its credentials.
    fn prepare<'a>(
        &'a self,
        job: &Job,
        url: String,
        idle: &'a Arc<Idle>,
    ) -> (SplitUrl, impl Future<Output = Attempt> + 'a) {
        let body = job
            .method
            .has_body()
            .then(|| Bytes::copy_from_slice(job.data.get().as_bytes()));
        let mut split = crate::credentials::extract(url);
        let uri = parse_url(&split.url);
        // Signed: the body as sent, or for a request without one, its
        // target (path and query) as sent.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let payload = match (&body, &uri) {
            (Some(body), _) => Some(&body[..]),
            (None, Ok(uri)) => Some(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes()),
            (None, Err(_)) => None,
        };
        let signed = payload.and_then(|p| self.signer.headers(job, p, now.as_secs(), now.as_millis() as u64));
        // Every header goes into the request's map by value: no copy of a
        // value (a copy of a signature's bytes cost an allocation), and
        // room for all of them from the start.
        let more =
            signed.as_ref().map_or(0, |s| s.len()) + usize::from(split.authorization.is_some()) + job.headers.len();
        let mut headers = crate::client::request_headers(more, body.is_some());
        for (name, value) in signed.into_iter().flatten() {
            headers.insert(name, value);
        }
        // The producer's own Authorization wins over the URL's credentials
        // (ingest refuses a request with both).
        if let Some(basic) = split.authorization.take() {
            if !job.headers.contains("authorization") {
                headers.insert(http::header::AUTHORIZATION, basic);
            }
        }
        for (name, value) in producer_headers(job) {
            headers.insert(name, value);
        }
        (split, self.client.send_to(job.method, uri, body, headers, idle))
    }

    /// What becomes of `job` after `outcome`: logged, counted, decided.
    fn conclude(&self, job: &Job, split: &SplitUrl, outcome: Attempt, probe: bool, destination: &str) -> Settlement {
        // From here on the URL is the one to show: no password in it.
        let url = split.shown();
        let verdict = self.policy.decide(job.attempt, &outcome);
        let now = common::now_ms();
        if let (Some(destinations), Some(failed)) = (&self.destinations, crate::retry::partner_failed(&outcome)) {
            let attempted = Attempted {
                failed,
                delivered: verdict == Verdict::Delivered,
                answered_ms: outcome.result.is_ok().then_some(outcome.elapsed.as_millis() as u64),
                pause_until: self.policy.pause_for(&outcome).map(|d| now + d.as_millis() as u64),
                probe,
            };
            destinations.record(destination, attempted);
        }

        let (status, response_body) = match &outcome.result {
            Ok(answer) => (answer.status.to_string(), answer.body.as_str()),
            Err(failure) => (failure.kind.as_str().to_string(), failure.message.as_str()),
        };
        self.log.write(&Record {
            delivery_time_ms: now,
            id: &job.id,
            attempt: job.attempt,
            method: job.method.as_str(),
            url,
            status: &status,
            response_ms: outcome.elapsed.as_millis() as u64,
            response_body,
            outcome: verdict.outcome().as_str(),
            retry_in_ms: verdict.retry_in().map(|d| d.as_millis() as u64),
            request_id: job.request_id.as_deref(),
            producer: job.producer.as_deref(),
        });
        self.metrics.attempt(&AttemptRecord {
            outcome: verdict.outcome(),
            status: outcome.result.as_ref().ok().map(|a| a.status),
            response: outcome.elapsed,
            enqueued_at_ms: job.enqueued_at,
            now_ms: now,
            dead_reason: verdict.dead_reason().map(DeadReason::as_str),
            failure: (verdict != Verdict::Delivered).then_some((
                job.id.as_str(),
                job.method.as_str(),
                url,
                status.as_str(),
                response_body,
            )),
        });

        if let Some(delay) = verdict.retry_in() {
            let next = Job {
                attempt: job.attempt + 1,
                ..job.clone()
            }
            .encode();
            return Settlement::Retry { next, delay };
        }
        let Some(reason) = verdict.dead_reason() else {
            return Settlement::Ack;
        };
        let detail = (!response_body.is_empty()).then(|| response_body.to_string());
        dead_letter(job, reason, job.attempt, status, url, detail, now)
    }
}

/// The job's own headers as the client sends them. Job::decode checked
/// them (the rules of `common::headers`), so none is dropped here but by a
/// bug.
fn producer_headers(job: &Job) -> impl Iterator<Item = (http::HeaderName, http::HeaderValue)> + '_ {
    job.headers.iter().filter_map(|(name, value)| {
        Some((
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            http::HeaderValue::from_str(value).ok()?,
        ))
    })
}
