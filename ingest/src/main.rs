//! The `ingest` binary: reads its configuration, then serves.

use clap::{CommandFactory, FromArgMatches, Parser};
use ingest::config::{Config, SETTINGS};
use ingest::startup::Application;

/// ingest: accepts postback requests over HTTP and queues one job per data
/// item on Redis.
#[derive(Parser)]
#[command(name = "ingest", version)]
struct Cli {}

fn main() -> std::io::Result<()> {
    let help = common::config::help_text("", SETTINGS, &ingest::routes::help_line());
    let matches = Cli::command().after_help(help.trim_start().to_string()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    common::config::init_logging();
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
