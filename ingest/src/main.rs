//! The `ingest` binary: reads its configuration, then serves.

use ingest::config::{Config, SETTINGS};
use ingest::startup::Application;

/// Prints the usage; a closed pipe (`| head`) is not an error.
fn print_help() {
    use std::fmt::Write as _;
    let mut help = String::new();
    let _ = writeln!(
        help,
        "ingest: accepts postback requests over HTTP and queues one job per data item on Redis.\n"
    );
    let _ = writeln!(help, "Usage: ingest [--help]\n\nSettings (environment variables):");
    for (var, default, meaning) in common::config::SHARED_SETTINGS.iter().chain(SETTINGS) {
        let _ = writeln!(help, "  {var:<26} default {default:<24} {meaning}");
    }
    let _ = writeln!(
        help,
        "\nRoutes: POST /ingest (also /ingest.php, /i); GET /health, /metrics, /stats, /dashboard"
    );
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(help.as_bytes());
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print_help();
        return Ok(());
    }
    if let Some(arg) = args.first() {
        eprintln!("ingest: unknown argument {arg:?}; see ingest --help");
        std::process::exit(2);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = common::config::exit_on_error("ingest", Config::from_source(&common::config::Env));
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&config)?;
        let socket = config
            .socket
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default();
        log::info!(
            "ingest listening on {}{socket} (queue {:?}, {} workers)",
            config.bind,
            config.queue,
            config.workers
        );
        app.run_until_stopped().await?;
        log::info!("ingest stopped");
        Ok(())
    })
}
