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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
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
    /// already as the gate allows. The job must then call [`Gate::enter`].
    pub fn try_queue(&self) -> bool {
        let allowed = self.allowed();
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < allowed).then_some(n + 1))
            .is_ok()
    }

    /// How many more jobs [`Gate::try_queue`] would admit now.
    pub fn room(&self) -> usize {
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

    /// Waits for one of the host's request slots (after [`Gate::try_queue`]).
    pub async fn enter(&self) -> HostSlot<'_> {
        let permit = self.running.acquire().await.expect("host gates are never closed");
        HostSlot {
            gate: self,
            _permit: permit,
        }
    }
}

/// A running request of a host; frees its place on drop.
pub struct HostSlot<'a> {
    gate: &'a Gate,
    _permit: SemaphorePermit<'a>,
}

impl Drop for HostSlot<'_> {
    fn drop(&mut self) {
        self.gate.finished();
        self.gate.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gates of every host seen recently.
pub struct Hosts {
    limit: usize,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Hosts {
    /// Gates allowing `limit` requests at once per host.
    pub fn new(limit: usize) -> Self {
        Hosts {
            limit: limit.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The gate of `host`.
    pub fn gate(&self, host: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gates.get(host) {
            return gate.clone();
        }
        let gate = Arc::new(Gate::new(self.limit));
        gates.insert(host.to_string(), gate.clone());
        gate
    }

    /// How many more jobs of `host` its gate would admit now (a host without
    /// a gate has all the room a new gate has).
    pub fn room(&self, host: &str) -> usize {
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        match gates.get(host) {
            Some(gate) => gate.room(),
            None => fixed_room(self.limit),
        }
    }

    /// Forgets idle hosts, so the map does not grow with every host ever seen.
    pub fn prune(&self) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|_, gate| Arc::strong_count(gate) > 1 || gate.queued.load(Ordering::Acquire) > 0);
    }
}

/// The `host:port` part of a URL (lower-cased by nobody: hosts are compared
/// as the producer wrote them).
pub fn host_of(url: &str) -> &str {
    let rest = common::url_parts::split_scheme(url).map_or(url, |(_, rest)| rest);
    let authority = common::url_parts::authority(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_refuses_more_waiting_jobs() {
        let hosts = Hosts::new(2);
        let gate = hosts.gate("h:80");
        for _ in 0..2 * (WAITING_PER_SLOT + 1) {
            assert!(gate.try_queue());
        }
        assert!(!gate.try_queue(), "the gate holds its limit plus the waiting room");
        assert_eq!(hosts.room("h:80"), 0);
        assert_eq!(hosts.room("unseen:80"), 2 * (WAITING_PER_SLOT + 1));
        assert!(hosts.gate("other:80").try_queue(), "other hosts are not affected");
    }

    /// Has `gate` finish `n` requests in each of three windows.
    async fn steady(gate: &Gate, n: usize) {
        for _ in 0..3 {
            for _ in 0..n {
                assert!(gate.try_queue());
                drop(gate.enter().await);
            }
            std::thread::sleep(std::time::Duration::from_millis(WINDOW_MS + 5));
        }
        assert!(gate.try_queue());
        drop(gate.enter().await);
    }

    fn admitted(gate: &Gate) -> usize {
        let mut n = 0;
        while gate.try_queue() {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_host_that_drains_fast_may_keep_more_jobs_waiting() {
        let hosts = Hosts::new(1);
        let gate = hosts.gate("fast:80");
        steady(&gate, 50).await;
        let n = admitted(&gate);
        assert!(
            n > WAITING_PER_SLOT + 1,
            "only {n} admitted for a host finishing ~50 per window"
        );
    }

    #[tokio::test]
    async fn a_host_that_stopped_finishing_loses_its_extra_room() {
        let hosts = Hosts::new(1);
        let gate = hosts.gate("stalled:80");
        steady(&gate, 50).await;
        std::thread::sleep(std::time::Duration::from_millis(3 * WINDOW_MS));
        assert_eq!(admitted(&gate), WAITING_PER_SLOT + 1);
    }

    #[tokio::test]
    async fn entering_and_leaving_frees_the_place() {
        let hosts = Hosts::new(1);
        let gate = hosts.gate("h:80");
        assert!(gate.try_queue());
        {
            let _slot = gate.enter().await;
            assert_eq!(gate.queued.load(Ordering::Acquire), 1);
            assert_eq!(gate.room(), WAITING_PER_SLOT);
        }
        assert_eq!(gate.queued.load(Ordering::Acquire), 0);
        assert_eq!(gate.room(), WAITING_PER_SLOT + 1);
        drop(gate);
        hosts.prune();
        assert!(hosts.gates.lock().unwrap().is_empty());
    }

    #[test]
    fn hosts_exclude_credentials_path_and_query() {
        assert_eq!(host_of("http://u:p@example.com:8080/a?b"), "example.com:8080");
        assert_eq!(host_of("https://h/x"), "h");
    }
}
