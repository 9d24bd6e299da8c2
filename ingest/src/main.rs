//! The `ingest` binary: reads its configuration, then serves.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ingest::config::{Config, SETTINGS};
use ingest::keys::KeysCommand;
use ingest::startup::Application;

/// ingest: accepts postback requests over HTTP and queues one job per data
/// item on Redis.
///
/// With no command, serves until SIGTERM or SIGINT.
#[derive(Parser)]
#[command(name = "ingest", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Producer keys: create, list, revoke, rotate-secret.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

fn main() -> std::io::Result<()> {
    let help = common::config::help_text("", SETTINGS, &ingest::routes::help_line());
    let matches = Cli::command().after_help(help.trim_start().to_string()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    common::config::init_logging();
    let config = common::config::exit_on_error("ingest", Config::from_source(&common::config::Env));
    common::config::warn_retired_settings();
    if let Some(Command::Keys { command }) = cli.command {
        std::process::exit(run_keys(&config, &command));
    }
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

/// Runs an `ingest keys` command; the exit code.
fn run_keys(config: &Config, command: &KeysCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ingest keys: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = ingest::startup::queue(config)
        .map_err(|e| e.to_string())
        .and_then(|queue| {
            let mut out = std::io::stdout().lock();
            runtime.block_on(ingest::keys::run(command, &queue, &mut out))
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ingest keys: {e}");
            1
        }
    }
}
