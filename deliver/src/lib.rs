//! `deliver`: takes postback jobs from the Redis queue and delivers them.
//!
//! [`worker`] is the loop; [`client`] makes the outbound requests, [`hosts`]
//! keeps one endpoint from taking every slot;
//! [`retry`] decides what follows a failure; [`delivery_log`] writes one line
//! per attempt; [`dead`] is the operator's command line for dead letters;
//! [`metrics`] counts what happens and [`admin`] serves it; [`config`] reads
//! the settings; [`cpu_policy`] asks the kernel to schedule the worker as
//! batch work.

pub mod admin;
pub mod client;
pub mod config;
pub mod cpu_policy;
pub mod dead;
pub mod delivery_log;
pub mod hosts;
pub mod metrics;
pub mod retry;
pub mod worker;
