//! Per-host limits, so that one slow or dead endpoint cannot take every
//! delivery slot and stall the others.
//!
//! Each host (`host:port` of the filled-in URL) has a gate: at most
//! `DELIVER_PER_HOST_CONCURRENCY` of its requests run at once, and a few
//! times that many may wait in memory, plus as many as the host finished in
//! the last tenth of a second (a fast host that is merely busy keeps its
//! jobs; a slow or dead one gets only the fixed room). A job for a host
//! whose gate is full is not kept waiting in a slot: the fetcher parks it in
//! Redis (crash-safe, no memory held; see `common::queue`) while other
//! hosts' jobs go ahead, and brings it back once the gate has room.
//!
//! A gate also keeps its host's idle connections (`crate::pool`). A gate
//! with no job and no open connection is forgotten: when a new host comes
//! along, and when the gates are swept every [`PRUNE_EVERY`] by a task of
//! their own.

use crate::pool::Idle;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How many jobs of one host may wait in memory, per allowed request.
const WAITING_PER_SLOT: usize = 4;

/// The jobs a gate admits (running and waiting) before any extra room.
fn fixed_room(limit: usize) -> usize {
    limit * (WAITING_PER_SLOT + 1)
}
/// The window over which a host's completions are counted, in ms.
const WINDOW_MS: u64 = 100;

/// The gate of one host.
pub struct Gate {
    running: Semaphore,
    queued: AtomicUsize,
    limit: usize,
    epoch: Instant,
    /// Start of the current window (ms since `epoch`), requests finished in
    /// it, and in the window before.
    window_start: AtomicU64,
    done_now: AtomicU64,
    done_before: AtomicU64,
    /// The host's connections between requests.
    idle: Arc<Idle>,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
            idle: Arc::new(Idle::new(limit)),
            running: Semaphore::new(limit),
            queued: AtomicUsize::new(0),
            limit,
            epoch: Instant::now(),
            window_start: AtomicU64::new(0),
            done_now: AtomicU64::new(0),
            done_before: AtomicU64::new(0),
        }
    }

    /// Reserves a place for one more job of this host, unless as many wait
    /// already as the gate allows.
    fn try_queue(self: Arc<Self>) -> Option<Place> {
        let allowed = self.allowed();
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < allowed).then_some(n + 1))
            .ok()?;
        Some(Place { gate: self })
    }

    /// How many more jobs [`Hosts::admit`] would admit now.
    fn room(&self) -> usize {
        self.allowed().saturating_sub(self.queued.load(Ordering::Acquire))
    }

    /// How many jobs may be running or waiting at once now.
    fn allowed(&self) -> usize {
        // A host that stopped finishing requests (it was fast, then hung)
        // loses its extra room once its last window is old.
        let now = self.epoch.elapsed().as_millis() as u64;
        let fresh = now.saturating_sub(self.window_start.load(Ordering::Relaxed)) < 2 * WINDOW_MS;
        let extra = if fresh {
            self.done_before.load(Ordering::Relaxed) as usize
        } else {
            0
        };
        fixed_room(self.limit) + extra
    }

    /// Counts a finished request (approximately: a race between two threads
    /// turning the window at once loses a few counts, which is harmless).
    fn finished(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A window with no request at all means the host is not draining.
            let done = if now - start >= 2 * WINDOW_MS {
                0
            } else {
                self.done_now.swap(0, Ordering::Relaxed)
            };
            self.done_now.store(0, Ordering::Relaxed);
            self.done_before.store(done, Ordering::Relaxed);
        }
        self.done_now.fetch_add(1, Ordering::Relaxed);
    }
}

/// A job's place in its host's gate, from [`Hosts::admit`] until the job's
/// request has ended (or it was dropped before it ran).
pub struct Place {
    gate: Arc<Gate>,
}

impl Place {
    /// The host's idle connections.
    pub fn idle(&self) -> &Arc<Idle> {
        &self.gate.idle
    }

    /// Waits for one of the host's request slots.
    pub async fn enter(&self) -> HostSlot<'_> {
        let permit = self.gate.running.acquire().await.expect("host gates are never closed");
        HostSlot {
            gate: &self.gate,
            _permit: permit,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.gate.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running request of a host; counts it finished on drop.
pub struct HostSlot<'a> {
    gate: &'a Gate,
    _permit: SemaphorePermit<'a>,
}

impl Drop for HostSlot<'_> {
    fn drop(&mut self) {
        self.gate.finished();
    }
}

/// How often, at most, the gates of idle hosts are forgotten and their
/// expired connections closed.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The gates of every host seen recently.
pub struct Hosts {
    limit: usize,
    gates: Arc<Mutex<Gates>>,
}

struct Gates {
    by_host: HashMap<String, Arc<Gate>>,
    pruned_at: Instant,
}

impl Gates {
    /// Closes expired idle connections and forgets the gates with no job
    /// (no place held) and no connection.
    fn prune(&mut self) {
        self.by_host.retain(|_, gate| {
            gate.idle.sweep();
            Arc::strong_count(gate) > 1 || !gate.idle.is_empty()
        });
        self.pruned_at = Instant::now();
    }
}

impl Hosts {
    /// Gates allowing `limit` requests at once per host. Inside a tokio
    /// runtime, a task sweeps them every [`PRUNE_EVERY`] until the
    /// `Hosts` is dropped (without one, they are swept when a new host
    /// comes along, and idle connections closed when next looked at).
    pub fn new(limit: usize) -> Self {
        let gates = Arc::new(Mutex::new(Gates {
            by_host: HashMap::new(),
            pruned_at: Instant::now(),
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&gates)));
        }
        Hosts {
            limit: limit.max(1),
            gates,
        }
    }

    /// A place for one more job of `host`, unless its gate has as many
    /// running and waiting as it allows: `limit` requests at once (an
    /// operator's setting for the host), or the default.
    pub fn admit(&self, host: &str, limit: Option<usize>) -> Option<Place> {
        self.gate(host, limit.unwrap_or(self.limit).max(1)).try_queue()
    }

    /// The gate of `host` with `limit`, made on its first job (or anew when
    /// the limit changed: places in the old one are given back to it). A
    /// new host is also when idle hosts' gates are forgotten, so the map
    /// does not grow with every host ever seen.
    fn gate(&self, host: &str, limit: usize) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gates.by_host.get(host).filter(|gate| gate.limit == limit) {
            return gate.clone();
        }
        if let Some(gate) = gates.by_host.remove(host) {
            // The limit changed: a gate of its own from now on.
            drop(gate);
            let gate = Arc::new(Gate::new(limit));
            gates.by_host.insert(host.to_string(), gate.clone());
            return gate;
        }
        if gates.pruned_at.elapsed() >= PRUNE_EVERY {
            gates.prune();
        }
        let gate = Arc::new(Gate::new(limit));
        gates.by_host.insert(host.to_string(), gate.clone());
        gate
    }

    /// How many more jobs of `host` its gate would admit now (a host without
    /// a gate has all the room a new gate has).
    pub fn room(&self, host: &str) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        match gates.by_host.get(host) {
            Some(gate) => gate.room(),
            None => fixed_room(self.limit),
        }
    }
}

/// Prunes `gates` every [`PRUNE_EVERY`] while they exist.
async fn sweep(gates: Weak<Mutex<Gates>>) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(gates) = gates.upgrade() else { return };
        gates.lock().unwrap_or_else(|e| e.into_inner()).prune();
    }
}

/// The destination of a URL: its `host:port`, the host in lower case and
/// the port written out (80 for http, 443 for https, when the URL names
/// none), so that every spelling of one partner is one destination, for
/// its gate, its breaker and the operator's commands. Borrowed from the
/// URL when it is already written so.
pub fn destination_of(url: &str) -> Cow<'_, str> {
    let (scheme, rest) = common::url_parts::split_scheme(url).unwrap_or(("", url));
    let authority = common::url_parts::authority(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    // The port's colon comes after an IPv6 address's closing bracket.
    let port_at = host_port.rfind(':').filter(|&i| !host_port[i..].contains(']'));
    let has_port = port_at.is_some_and(|i| i + 1 < host_port.len());
    if has_port && !host_port.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(host_port);
    }
    let host = port_at.map_or(host_port, |i| if has_port { host_port } else { &host_port[..i] });
    let mut key = host.to_ascii_lowercase();
    if !has_port {
        key.push_str(if scheme.eq_ignore_ascii_case("https") {
            ":443"
        } else {
            ":80"
        });
    }
    Cow::Owned(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_refuses_more_waiting_jobs() {
        let hosts = Hosts::new(2);
        let places: Vec<Place> = (0..2 * (WAITING_PER_SLOT + 1))
            .map(|_| hosts.admit("h:80", None).expect("room"))
            .collect();
        assert!(
            hosts.admit("h:80", None).is_none(),
            "the gate holds its limit plus the waiting room"
        );
        assert_eq!(hosts.room("h:80"), 0);
        assert_eq!(hosts.room("unseen:80"), 2 * (WAITING_PER_SLOT + 1));
        assert!(hosts.admit("other:80", None).is_some(), "other hosts are not affected");
        drop(places);
        assert_eq!(
            hosts.room("h:80"),
            2 * (WAITING_PER_SLOT + 1),
            "dropped places are given back"
        );
    }

    /// Has `host` finish `n` requests in each of three windows.
    async fn steady(hosts: &Hosts, host: &str, n: usize) {
        for _ in 0..3 {
            for _ in 0..n {
                let place = hosts.admit(host, None).expect("room");
                drop(place.enter().await);
            }
            std::thread::sleep(std::time::Duration::from_millis(WINDOW_MS + 5));
        }
        let place = hosts.admit(host, None).expect("room");
        drop(place.enter().await);
    }

    fn admitted(hosts: &Hosts, host: &str) -> usize {
        let mut held = Vec::new();
        while let Some(place) = hosts.admit(host, None) {
            held.push(place);
        }
        held.len()
    }

    #[tokio::test]
    async fn a_host_that_drains_fast_may_keep_more_jobs_waiting() {
        let hosts = Hosts::new(1);
        steady(&hosts, "fast:80", 50).await;
        let n = admitted(&hosts, "fast:80");
        assert!(
            n > WAITING_PER_SLOT + 1,
            "only {n} admitted for a host finishing ~50 per window"
        );
    }

    #[tokio::test]
    async fn a_host_that_stopped_finishing_loses_its_extra_room() {
        let hosts = Hosts::new(1);
        steady(&hosts, "stalled:80", 50).await;
        std::thread::sleep(std::time::Duration::from_millis(3 * WINDOW_MS));
        assert_eq!(admitted(&hosts, "stalled:80"), WAITING_PER_SLOT + 1);
    }

    #[tokio::test]
    async fn entering_and_leaving_frees_the_place() {
        let hosts = Hosts::new(1);
        let place = hosts.admit("h:80", None).expect("room");
        {
            let _slot = place.enter().await;
            assert_eq!(hosts.room("h:80"), WAITING_PER_SLOT);
        }
        assert_eq!(hosts.room("h:80"), WAITING_PER_SLOT, "the place is held until dropped");
        drop(place);
        assert_eq!(hosts.room("h:80"), WAITING_PER_SLOT + 1);
    }

    #[test]
    fn a_host_s_own_limit_replaces_the_default_and_a_change_makes_a_new_gate() {
        let hosts = Hosts::new(4);
        let held: Vec<Place> = (0..fixed_room(1))
            .map(|_| hosts.admit("h:80", Some(1)).expect("room"))
            .collect();
        assert!(
            hosts.admit("h:80", Some(1)).is_none(),
            "a limit of 1 holds its room only"
        );
        assert_eq!(hosts.room("h:80"), 0);
        let more = hosts.admit("h:80", Some(2)).expect("a raised limit: a gate of its own");
        assert_eq!(
            hosts.room("h:80"),
            fixed_room(2) - 1,
            "the new gate counts only its own places"
        );
        drop((held, more));
        let other = hosts.admit("other:80", None).expect("room");
        assert_eq!(hosts.room("other:80"), fixed_room(4) - 1, "others keep the default");
        drop(other);
    }

    #[test]
    fn idle_hosts_are_forgotten_when_a_new_one_comes_after_a_while() {
        let hosts = Hosts::new(1);
        let busy = hosts.admit("busy:80", None).expect("room");
        drop(hosts.admit("idle:80", None));
        hosts.gates.lock().unwrap().pruned_at -= PRUNE_EVERY;
        drop(hosts.admit("new:80", None));
        let gates = hosts.gates.lock().unwrap();
        let mut known: Vec<&str> = gates.by_host.keys().map(String::as_str).collect();
        known.sort();
        assert_eq!(known, ["busy:80", "new:80"], "idle:80 is forgotten, busy:80 is kept");
        drop(busy);
    }

    #[tokio::test]
    async fn a_host_with_a_kept_connection_keeps_its_gate_until_the_connection_expires() {
        let hosts = Hosts::new(1);
        let place = hosts.admit("kept:80", None).expect("room");
        let (sender, _server) = crate::pool::tests::connection().await;
        place.idle().put(sender, false);
        drop(place);
        let mut gates = hosts.gates.lock().unwrap();
        gates.prune();
        assert!(gates.by_host.contains_key("kept:80"), "its connection is still of use");
        gates.by_host["kept:80"]
            .idle
            .kept_since_shift(crate::pool::IDLE_CONNECTION);
        gates.prune();
        assert!(
            gates.by_host.is_empty(),
            "an expired connection is closed, and its gate forgotten"
        );
    }

    #[test]
    fn a_destination_is_the_lower_case_host_and_its_port() {
        assert_eq!(destination_of("http://u:p@example.com:8080/a?b"), "example.com:8080");
        assert!(matches!(destination_of("http://example.com:8080/a"), Cow::Borrowed(_)));
        assert_eq!(destination_of("https://h/x"), "h:443");
        assert_eq!(destination_of("http://Partner.Example/x"), "partner.example:80");
        assert_eq!(
            destination_of("HTTPS://P.example:/x"),
            "p.example:443",
            "an empty port is the default"
        );
        assert_eq!(destination_of("http://[2001:DB8::1]:81/x"), "[2001:db8::1]:81");
        assert_eq!(destination_of("http://[2001:db8::1]/x"), "[2001:db8::1]:80");
    }
}
