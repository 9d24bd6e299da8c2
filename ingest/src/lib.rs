//! `ingest`: the HTTP front door of the postback service.
//!
//! A producer posts an endpoint and a list of data objects; ingest checks
//! the request ([`request`], with `repeated_key` for the items' keys), queues one job per object in a single Redis
//! round trip, and answers 202 with the job ids ([`routes`]). It also
//! serves the operator's pages ([`pages`]): `/health`, `/metrics` ([`metrics`]), `/stats` and the
//! `/dashboard`. [`middleware`] gives every request its id, metrics and
//! access line; [`startup`] builds the app; [`server`] serves it on a TCP
//! port and on the Unix socket nginx reaches it by ([`unix_stream`]). It
//! reaches Redis only through `common::queue::Queue`, and never makes an
//! outbound request itself: that is `deliver`'s job, on the other side of
//! the queue.

pub mod auth;
pub mod backlog;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod middleware;
pub mod pages;
mod repeated_key;
pub mod request;
pub mod routes;
pub mod server;
pub mod startup;
pub mod unix_stream;
