//! The `ingest` binary: reads its configuration, then serves.

use ingest::config::{Config, SETTINGS};
use ingest::startup::Application;

const USAGE: &str = "ingest: accepts postback requests over HTTP and queues one job per data item on Redis.

Usage: ingest [--help]";

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        common::config::print_help(USAGE, SETTINGS, &ingest::routes::help_line());
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
