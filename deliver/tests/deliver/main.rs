//! deliver's integration tests, in one test binary: real Redis servers,
//! real HTTP sinks, the real `deliver` binary and an in-process ingest,
//! each started on free loopback ports by the test that needs it.

mod cli;
mod deliver_one;
mod destinations;
mod guard;
mod ha;
mod headers;
mod inspect;
mod observability;
mod pipeline;
mod reliability;
mod signing;
mod step;
mod support;
mod tls;
