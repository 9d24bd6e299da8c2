//! The `deliver` binary: the worker (no arguments) or the dead-letter
//! commands (`deliver dead ...`).

use deliver::config::{Config, SETTINGS};
use deliver::delivery_log::DeliveryLog;
use deliver::{cpu_policy, dead, startup};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "deliver: takes postback jobs from Redis and makes their HTTP requests.

Usage:
  deliver                      run the worker until SIGTERM or SIGINT
  deliver dead list [--limit N]   list dead letters, newest first (default 100, 0 = all)
  deliver dead replay (--all | ID...)   requeue dead letters with a fresh attempt count
  deliver dead purge              empty the dead-letter list

Delivery log: one line per attempt on stdout (or DELIVER_LOG_FILE); operational messages on stderr.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        common::config::print_help(USAGE, SETTINGS, "");
        return;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = common::config::exit_on_error("deliver", Config::from_source(&common::config::Env));
    if args.is_empty() {
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
    let code = match args.first().map(String::as_str) {
        None => runtime.block_on(run_worker(config)),
        Some("dead") => match dead::parse(&args[1..]) {
            Ok(command) => {
                let mut out = std::io::stdout().lock();
                let result = startup::queue(&config).map_err(|e| e.to_string());
                match result.and_then(|queue| runtime.block_on(dead::run(&command, &queue, &mut out))) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("deliver dead: {e}");
                        1
                    }
                }
            }
            Err(usage) => {
                eprintln!("{usage}");
                2
            }
        },
        Some(other) => {
            eprintln!("deliver: unknown command {other:?}; see deliver --help");
            2
        }
    };
    std::process::exit(code);
}

async fn run_worker(config: Config) -> i32 {
    let (log, writer) = match &config.log_file {
        None => DeliveryLog::stdout(config.log_format),
        Some(path) => match DeliveryLog::file(config.log_format, path) {
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
    // and handing out the next batch while the runtime's threads deliver
    // (a spawned worker drained slower on two cores; docs/PERFORMANCE.md).
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
