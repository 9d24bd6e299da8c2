//! Per-host limits, so that one slow or dead endpoint cannot take every
//! delivery slot and stall the others.
//!
//! Each host (`host:port` of the filled-in URL) has a gate: at most
//! `DELIVER_PER_HOST_CONCURRENCY` of its requests run at once, and a few
//! times that many may wait in memory. A job for a host whose gate is full
//! is not kept waiting in a slot: the fetcher sends it to the back of the
//! queue, where it waits in Redis (crash-safe, no memory held) while other
//! hosts' jobs go ahead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How many jobs of one host may wait in memory, per allowed request.
const WAITING_PER_SLOT: usize = 4;

/// The gate of one host.
pub struct Gate {
    running: Semaphore,
    queued: AtomicUsize,
    limit: usize,
}

impl Gate {
    /// Reserves a place for one more job of this host, unless as many wait
    /// already as the gate allows. The job must then call [`Gate::enter`].
    pub fn try_queue(&self) -> bool {
        let allowed = self.limit * (WAITING_PER_SLOT + 1);
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < allowed).then_some(n + 1))
            .is_ok()
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
        let gate = Arc::new(Gate {
            running: Semaphore::new(self.limit),
            queued: AtomicUsize::new(0),
            limit: self.limit,
        });
        gates.insert(host.to_string(), gate.clone());
        gate
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
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
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
        assert!(hosts.gate("other:80").try_queue(), "other hosts are not affected");
    }

    #[tokio::test]
    async fn entering_and_leaving_frees_the_place() {
        let hosts = Hosts::new(1);
        let gate = hosts.gate("h:80");
        assert!(gate.try_queue());
        {
            let _slot = gate.enter().await;
            assert_eq!(gate.queued.load(Ordering::Acquire), 1);
        }
        assert_eq!(gate.queued.load(Ordering::Acquire), 0);
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
