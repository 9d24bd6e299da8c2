//! The contract between `ingest` and `deliver`.
//!
//! The two services share nothing but a Redis queue, so everything both of
//! them must agree on lives here, once:
//!
//! - [`job`]: the job that travels through the queue, and the dead letter a
//!   failed job becomes;
//! - [`headers`]: the request headers a producer may give with an
//!   endpoint, and their rules;
//! - [`template`]: how a URL template is checked (by ingest) and filled (by
//!   deliver);
//! - [`destination`]: which addresses postbacks may be sent to (the guard
//!   against SSRF), applied by deliver at connect time and by ingest to
//!   literal addresses;
//! - [`queue`]: the queue handle, the one way the services reach Redis, and
//!   under it every key and command of the protocol, with the Lua scripts
//!   that make its operations atomic;
//! - [`producer`]: producer keys and signing secrets: format, making,
//!   checking;
//! - [`line_log`]: buffered one-line-per-event logs (delivery log, access log);
//! - [`config`]: reading typed settings from the environment, so that a bad
//!   value stops a program at start with one clear line;
//! - [`stats`]: cluster-wide delivery statistics kept in Redis;
//! - [`url_parts`]: a URL's scheme and authority by byte scans; percent escapes.

pub mod config;
pub mod destination;
pub mod disk;
pub mod headers;
pub mod job;
pub mod line_log;
pub mod producer;
pub mod queue;
pub mod stats;
pub mod template;
pub mod url_parts;

/// Milliseconds since the Unix epoch, the unit of every timestamp in a job.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
