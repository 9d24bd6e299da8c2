//! `ingest keys ...`: the operator's commands for producer keys, on the
//! same `REDIS_URL` as the service. A key's secret part is printed once,
//! by `create`, and never again; lists name keys by id.

use common::producer::{new_key, new_signing_secret, ProducerRecord};
use common::queue::Queue;
use serde_json::json;
use std::io::Write;

/// An `ingest keys` command (parsed by clap, which makes its help).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a producer key and its signing secret (the key is shown once).
    Create {
        /// A name for whoever uses the key.
        name: String,
        /// Requests a second allowed over all ingest processes.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// Print JSON: {"id","name","key","signing_secret"}.
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, name, created, rate, state (never a key or secret).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every ingest process refuses it within seconds.
    Revoke {
        /// The key's id.
        id: String,
    },
    /// Give a key a new signing secret; deliveries carry both signatures
    /// for DELIVER_SECRET_OVERLAP.
    RotateSecret {
        /// The key's id.
        id: String,
        /// Print JSON: {"id","signing_secret"}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `command` against the key store, writing its report to `out`.
pub async fn run(command: &KeysCommand, queue: &Queue, out: &mut impl Write) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let redis = |e: common::queue::QueueError| format!("{e}; is REDIS_URL right?");
    match command {
        KeysCommand::Create { name, rate, json } => {
            let made = new_key().map_err(|_| "the system's random source failed".to_string())?;
            queue.create_producer(&made, name, *rate).await.map_err(redis)?;
            if *json {
                let answer =
                    json!({"id": made.id, "name": name, "key": made.key, "signing_secret": made.signing_secret});
                writeln!(out, "{answer}").map_err(io)?;
            } else {
                writeln!(out, "created key {} ({name})", made.id).map_err(io)?;
                writeln!(out, "key:            {}", made.key).map_err(io)?;
                writeln!(out, "signing secret: {}", made.signing_secret).map_err(io)?;
                writeln!(out, "Both are shown only now: keep them where the producer reads them.").map_err(io)?;
            }
        }
        KeysCommand::List { json } => {
            let (_, mut records) = queue.producers().await.map_err(redis)?;
            records.sort_by_key(|r| r.created_ms);
            if *json {
                writeln!(out, "{}", serde_json::to_string(&records).unwrap_or_default()).map_err(io)?;
            } else {
                for record in &records {
                    writeln!(out, "{}", list_line(record)).map_err(io)?;
                }
                writeln!(out, "# {} keys", records.len()).map_err(io)?;
            }
        }
        KeysCommand::Revoke { id } => match queue.revoke_producer(id).await.map_err(redis)? {
            0 => return Err(format!("no key with id {id} (see `ingest keys list`)")),
            2 => writeln!(out, "key {id} was revoked already").map_err(io)?,
            _ => writeln!(out, "revoked key {id}; ingest refuses it within 5 seconds").map_err(io)?,
        },
        KeysCommand::RotateSecret { id, json } => {
            let secret = new_signing_secret().map_err(|_| "the system's random source failed".to_string())?;
            if !queue.rotate_producer_secret(id, &secret).await.map_err(redis)? {
                return Err(format!("no key with id {id} (see `ingest keys list`)"));
            }
            if *json {
                writeln!(out, "{}", json!({"id": id, "signing_secret": secret})).map_err(io)?;
            } else {
                writeln!(out, "new signing secret of key {id}: {secret}").map_err(io)?;
                writeln!(
                    out,
                    "Deliveries carry the old and the new signature for DELIVER_SECRET_OVERLAP (default 24h)."
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

/// One line of `ingest keys list`.
fn list_line(record: &ProducerRecord) -> String {
    let time = |ms: u64| common::line_log::rfc3339_millis(ms);
    format!(
        "id={} name={:?} created={} rate={} state={}",
        record.id,
        record.name,
        time(record.created_ms),
        record.rate.map_or("none".to_string(), |r| format!("{r}/s")),
        record
            .revoked_ms
            .map_or("active".to_string(), |ms| format!("revoked at {}", time(ms))),
    )
}
