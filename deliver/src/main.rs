//! The `deliver` binary: the worker (no arguments), or an operator's
//! command: `deliver dead ...`, `deliver destinations ...`, `deliver
//! queue`, `deliver job ID`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use deliver::config::{Config, SETTINGS};
use deliver::dead::DeadCommand;
use deliver::delivery_log::DeliveryLog;
use deliver::destinations::command::DestinationsCommand;
use deliver::{cpu_policy, dead, inspect, startup};
use tokio_util::sync::CancellationToken;

/// deliver: takes postback jobs from Redis and makes their HTTP requests.
///
/// With no command, runs the worker until SIGTERM or SIGINT. Delivery log:
/// one line per attempt on stdout (or DELIVER_LOG_FILE); operational
/// messages on stderr.
#[derive(Parser)]
#[command(name = "deliver", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The dead-letter list: list, show, replay, purge.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// The partners: which are held (breaker open, paused) or disabled;
    /// disable and enable one.
    Destinations {
        #[command(subcommand)]
        command: DestinationsCommand,
    },
    /// The queue at a glance: ready, in flight per worker, retry, parked
    /// per host, dead per reason.
    Queue {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where one job is now, and every delivery attempt of it in this
    /// host's delivery logs.
    Job {
        /// The job id (from ingest's answer or any log line).
        id: String,
        /// The folder of the delivery logs (default: DELIVER_LOG_FILE's,
        /// else DELIVER_LOG_DIR, which the stack's postback.env sets).
        #[arg(long)]
        logs: Option<std::path::PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let help = common::config::help_text("", SETTINGS, "");
    let matches = Cli::command().after_help(help.trim_start().to_string()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    common::config::init_logging();
    let config = common::config::exit_on_error("deliver", Config::from_source(&common::config::Env));
    common::config::warn_retired_settings();
    if cli.command.is_none() {
        // Before the runtime starts its threads, so they all inherit it.
        match cpu_policy::apply(config.cpu_policy) {
            Ok(()) => log::info!("cpu policy: {}", config.cpu_policy.as_str()),
            Err(e) => log::warn!(
                "could not set DELIVER_CPU_POLICY={} ({e}); running under the policy deliver was started with",
                config.cpu_policy.as_str()
            ),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deliver: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli.command {
        None => runtime.block_on(run_worker(config)),
        Some(command) => {
            let mut out = std::io::stdout().lock();
            let (name, result) = match startup::queue(&config) {
                Err(e) => ("deliver", Err(e.to_string())),
                Ok(queue) => runtime.block_on(async {
                    match &command {
                        Command::Dead { command } => ("deliver dead", dead::run(command, &queue, &mut out).await),
                        Command::Destinations { command } => (
                            "deliver destinations",
                            deliver::destinations::command::run(command, &queue, &mut out).await,
                        ),
                        Command::Queue { json } => {
                            ("deliver queue", inspect::queue_report(&queue, *json, &mut out).await)
                        }
                        Command::Job { id, logs, json } => {
                            let logs = inspect::LogPlace::choose(
                                logs.as_deref(),
                                config.log_file.as_deref(),
                                config.log_dir.as_deref(),
                            );
                            let report = inspect::job_report(&queue, id, logs, *json, &mut out).await;
                            ("deliver job", report.map_err(|e| e.to_string()))
                        }
                    }
                }),
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}

async fn run_worker(config: Config) -> i32 {
    let (log, writer) = match &config.log_file {
        None => DeliveryLog::stdout(config.log_format),
        Some(path) => match DeliveryLog::file(config.log_format, path, config.log_max_bytes) {
            Ok(log) => log,
            Err(e) => {
                eprintln!("deliver: cannot open DELIVER_LOG_FILE {}: {e}", path.display());
                return 2;
            }
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    // Not spawned: the consumers' fetchers then run on this thread, taking
    // and handing out the next batch while the runtime's threads deliver,
    // with no hop between threads for each batch.
    let result = startup::run(&config, log, shutdown).await;
    // Every log handle is gone once the worker returns: let the writer
    // flush the last lines before exiting.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    match result {
        Ok(_) => 0,
        Err(e) => {
            log::error!("deliver cannot start: {e}");
            1
        }
    }
}

/// First SIGTERM or SIGINT: graceful shutdown. A second one: exit at once
/// (the unsettled jobs are recovered by the heartbeat mechanism).
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::error!("cannot listen for signals; stop deliver with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    log::info!("signal received: shutting down gracefully (send it again to stop at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    log::warn!("second signal: stopping now");
    std::process::exit(130);
}
