//! `deliver`: takes postback jobs from the Redis queue and delivers them.
//!
//! One job's way ([`consumer::step`]): a [`consumer`] takes it from its
//! shard of the queue (through `common::queue`, the only door to Redis);
//! the [`deliverer`] dispatches it (to run, to park while its host in
//! [`hosts`] is full, or to the dead letters if it is not a job), fills
//! its URL, makes the request with the [`client`] (only to destinations
//! the [`guard`] allows, on a connection its host's gate keeps in
//! [`pool`]), logs the attempt ([`delivery_log`]), counts it
//! ([`metrics`]) and decides what follows ([`retry`]); the consumer
//! settles that outcome in the queue.
//! [`signing`] signs every request (Standard Webhooks);
//! [`startup`] wires a worker process together; [`admin`] serves its
//! metrics; [`dead`] and [`inspect`] are the operator's commands (dead
//! letters; the queue at a glance, one job's story);
//! [`config`] reads the settings; [`cpu_policy`] asks the kernel to
//! schedule the worker as batch work.

pub mod admin;
pub mod client;
pub mod config;
pub mod consumer;
pub mod cpu_policy;
pub mod credentials;
pub mod dead;
pub mod deliverer;
pub mod delivery_log;
pub mod destinations;
pub mod guard;
pub mod hosts;
pub mod inspect;
pub mod metrics;
pub mod pool;
pub mod retry;
pub mod signing;
pub mod startup;
