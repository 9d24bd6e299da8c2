//! Typed settings from the environment.
//!
//! Each binary has one configuration struct built with these helpers. A
//! value that does not parse stops the program at start with one line that
//! names the variable and the problem ([`ConfigError`]), and exit code 2
//! ([`exit_on_error`]), instead of failing later in a request.

use std::str::FromStr;
use std::time::Duration;

/// One setting, written once: its variable, its default (the value used
/// when it is unset), how `--help` and the docs show that default when it
/// is not a plain value, and what it means. Each binary lists its settings
/// in one table of these; parsing, `--help` and the docs check
/// (`settings_match_docs`) all read that table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable.
    pub var: &'static str,
    /// The value used when it is unset; empty for "none".
    pub default: &'static str,
    /// How the default is shown when it is not a plain value (`none`,
    /// `CPUs ÷ INGEST_PROCS`); empty to show `default` itself.
    pub shown: &'static str,
    /// What it means, in a few words.
    pub meaning: &'static str,
}

impl Setting {
    /// A setting whose default is shown as it is.
    pub const fn new(var: &'static str, default: &'static str, meaning: &'static str) -> Self {
        Setting {
            var,
            default,
            shown: "",
            meaning,
        }
    }

    /// The same setting with its default shown as `shown`.
    pub const fn shown_as(self, shown: &'static str) -> Self {
        Setting { shown, ..self }
    }

    /// The default as `--help` and the docs show it.
    pub fn shown_default(&self) -> &'static str {
        match (self.shown, self.default) {
            ("", "") => "none",
            ("", default) => default,
            (shown, _) => shown,
        }
    }

    /// The value in `src` (even if empty: `DELIVER_RETRY_SCHEDULE=` means
    /// no retries), or the default when unset; `None` when unset with no
    /// default.
    pub fn value(&self, src: &(impl Source + ?Sized)) -> Option<String> {
        src.get(self.var)
            .or_else(|| (!self.default.is_empty()).then(|| self.default.to_string()))
    }
}

/// `REDIS_URL`.
pub const REDIS_URL: Setting = Setting::new(
    "REDIS_URL",
    "redis://127.0.0.1:6379",
    "Redis holding the queue: redis://[user:password@]host:port[/db], redis+unix:///path?pass=P, \
     redis-sentinel://[:password@]host:port[,host:port...][/db]#MASTER or \
     redis-cluster://[:password@]host:port[,host:port...]; rediss://, rediss-sentinel://, rediss-cluster:// for TLS",
);
/// `REDIS_TLS_CA_FILE` (see [`crate::queue::tls`]).
pub const REDIS_TLS_CA_FILE: Setting = Setting::new(
    "REDIS_TLS_CA_FILE",
    "",
    "PEM CA certificates trusted for Redis' TLS besides the system's roots",
);
/// `REDIS_TLS_CERT_FILE`.
pub const REDIS_TLS_CERT_FILE: Setting = Setting::new(
    "REDIS_TLS_CERT_FILE",
    "",
    "PEM client certificate (chain) shown to a Redis that asks for one (tls-auth-clients)",
);
/// `REDIS_TLS_KEY_FILE`.
pub const REDIS_TLS_KEY_FILE: Setting =
    Setting::new("REDIS_TLS_KEY_FILE", "", "PEM private key of REDIS_TLS_CERT_FILE");
/// `POSTBACK_SHARDS`.
pub const POSTBACK_SHARDS: Setting = Setting::new(
    "POSTBACK_SHARDS",
    "1",
    "sub-queues the queue is split into, each in a Redis Cluster slot of its own",
);
/// `POSTBACK_QUEUE`.
pub const POSTBACK_QUEUE: Setting = Setting::new("POSTBACK_QUEUE", "default", "queue name; keys are postback:{NAME}:*");
/// `RUST_LOG`, read by env_logger.
pub const RUST_LOG: Setting = Setting::new("RUST_LOG", "info", "log filter for operational messages (stderr)");

/// `POSTBACK_ALLOW_DESTINATIONS` (see [`crate::destination`]).
pub const ALLOW_DESTINATIONS: Setting = Setting::new(
    "POSTBACK_ALLOW_DESTINATIONS",
    "",
    "non-public destinations postbacks may go to: IPs or CIDRs, each with an optional :port",
);
/// `POSTBACK_DENY_DESTINATIONS` (see [`crate::destination`]).
pub const DENY_DESTINATIONS: Setting = Setting::new(
    "POSTBACK_DENY_DESTINATIONS",
    "",
    "destinations postbacks never go to (wins over the allowlist)",
);

/// `REDIS_DATA_DIR`.
pub const DATA_DIR: Setting = Setting::new(
    "REDIS_DATA_DIR",
    "",
    "Redis' data folder on this host, whose free space /metrics shows (the stack sets it)",
)
.shown_as("unset");

/// The settings both services read.
pub const SHARED_SETTINGS: &[Setting] = &[
    REDIS_URL,
    REDIS_TLS_CA_FILE,
    REDIS_TLS_CERT_FILE,
    REDIS_TLS_KEY_FILE,
    POSTBACK_QUEUE,
    POSTBACK_SHARDS,
    ALLOW_DESTINATIONS,
    DENY_DESTINATIONS,
    DATA_DIR,
    RUST_LOG,
];

/// Reads `REDIS_DATA_DIR`: none when empty.
pub fn data_dir(src: &(impl Source + ?Sized)) -> Option<std::path::PathBuf> {
    Some(string(src, &DATA_DIR))
        .filter(|dir| !dir.is_empty())
        .map(Into::into)
}

/// A service's `--help`: `usage`, then every setting (the shared ones
/// first, then `own`) with its default and meaning, then `notes`.
pub fn help_text(usage: &str, own: &[Setting], notes: &str) -> String {
    use std::fmt::Write as _;
    let mut help = format!("{usage}\n\nSettings (environment variables):\n");
    for setting in SHARED_SETTINGS.iter().chain(own) {
        let _ = writeln!(
            help,
            "  {:<28} default {:<24} {}",
            setting.var,
            setting.shown_default(),
            setting.meaning
        );
    }
    if !notes.is_empty() {
        let _ = write!(help, "\n{notes}\n");
    }
    help
}

/// Starts env_logger with `RUST_LOG`'s default.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(RUST_LOG.default)).init();
}

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}={value:?}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: String,
    /// Its value as given.
    pub value: String,
    /// What is wrong with it and what is expected.
    pub problem: String,
}

impl ConfigError {
    /// Builds an error for `var` holding `value`.
    pub fn new(var: &str, value: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            var: var.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }
}

/// Where settings come from: the process environment, or a fixed list in
/// tests (so tests never touch the shared process environment).
pub trait Source {
    /// The value of `var`, if set.
    fn get(&self, var: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string())
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, var: &str) -> Option<String> {
        Source::get(self.as_slice(), var)
    }
}

/// Reads a setting as a string: its value, or its default (empty when
/// both are).
pub fn string(src: &(impl Source + ?Sized), setting: &Setting) -> String {
    setting.value(src).unwrap_or_default()
}

/// Reads a setting with `FromStr`; `what` describes the expected value in
/// the error ("a whole number", "host:port").
pub fn parsed<T: FromStr>(src: &(impl Source + ?Sized), setting: &Setting, what: &str) -> Result<T, ConfigError> {
    let value = string(src, setting);
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(setting.var, &value, format!("expected {what}")))
}

/// Reads a count that must be at least `min`.
pub fn count(src: &(impl Source + ?Sized), setting: &Setting, min: usize) -> Result<usize, ConfigError> {
    at_least(setting, parsed(src, setting, "a whole number")?, min)
}

/// Reads a count with no fixed default (empty in the table): `computed`
/// when unset.
pub fn count_or(
    src: &(impl Source + ?Sized),
    setting: &Setting,
    computed: usize,
    min: usize,
) -> Result<usize, ConfigError> {
    match setting.value(src) {
        None => Ok(computed),
        Some(_) => count(src, setting, min),
    }
}

fn at_least(setting: &Setting, n: usize, min: usize) -> Result<usize, ConfigError> {
    if n < min {
        return Err(ConfigError::new(
            setting.var,
            &n.to_string(),
            format!("must be at least {min}"),
        ));
    }
    Ok(n)
}

/// The default thread count of one of the `procs` processes of a service
/// that share this machine (supervisord's `numprocs`): the CPUs divided
/// among them, at least one: more runtime threads than cores only take
/// turns on them.
pub fn threads_per_process(src: &(impl Source + ?Sized), procs: &Setting) -> Result<usize, ConfigError> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    Ok((cpus / count(src, procs, 1)?).max(1))
}

/// Reads a duration given in milliseconds (`DELIVER_TIMEOUT_MS=2500`),
/// which must be above zero.
pub fn millis(src: &(impl Source + ?Sized), setting: &Setting) -> Result<Duration, ConfigError> {
    let ms: u64 = parsed(src, setting, "a whole number of milliseconds")?;
    if ms == 0 {
        return Err(ConfigError::new(setting.var, "0", "must be above zero"));
    }
    Ok(Duration::from_millis(ms))
}

/// Parses a human duration: a whole number followed by `ms`, `s`, `m`, `h`
/// or `d` (`250ms`, `5s`, `2m`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} needs a unit: ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms_per_unit)))
}

/// Reads a comma-separated list of durations (`5s,30s,2m`).
pub fn durations(src: &(impl Source + ?Sized), setting: &Setting) -> Result<Vec<Duration>, ConfigError> {
    let value = string(src, setting);
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|part| parse_duration(part).map_err(|problem| ConfigError::new(setting.var, &value, problem)))
        .collect()
}

/// Reads a yes/no setting (1/0, true/false, yes/no, on/off).
pub fn flag(src: &(impl Source + ?Sized), setting: &Setting) -> Result<bool, ConfigError> {
    match string(src, setting).to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::new(setting.var, other, "expected true or false")),
    }
}

/// Checks a queue name: every Redis key of the queue embeds it inside a
/// Redis Cluster hash tag, so it must not contain braces.
pub fn queue_name(src: &(impl Source + ?Sized)) -> Result<String, ConfigError> {
    let name = string(src, &POSTBACK_QUEUE);
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ConfigError::new(
            POSTBACK_QUEUE.var,
            &name,
            "expected 1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    Ok(name)
}

/// Checks `REDIS_URL`.
pub fn redis_url(src: &(impl Source + ?Sized)) -> Result<String, ConfigError> {
    let url = string(src, &REDIS_URL);
    use deadpool_redis::redis::IntoConnectionInfo;
    // The error shows where Redis was looked for, never a password.
    match crate::queue::Target::parse(&url) {
        Err(problem) => Err(ConfigError::new(REDIS_URL.var, "(hidden)", problem.to_string())),
        Ok(crate::queue::Target::Server(_)) => match url.as_str().into_connection_info() {
            Ok(_) => Ok(url),
            Err(e) => Err(ConfigError::new(
                REDIS_URL.var,
                "(hidden)",
                format!("not a Redis URL ({e})"),
            )),
        },
        Ok(_) => Ok(url),
    }
}

/// Reads the `REDIS_TLS_*_FILE` settings of the TLS `REDIS_URL` `url`
/// (checked by [`redis_url`]) and the files they name. Files set for a
/// URL without TLS are an error: whoever set them believes the traffic is
/// encrypted.
pub fn redis_tls(src: &(impl Source + ?Sized), url: &str) -> Result<crate::queue::RedisTls, ConfigError> {
    let settings = [&REDIS_TLS_CA_FILE, &REDIS_TLS_CERT_FILE, &REDIS_TLS_KEY_FILE];
    let [ca, cert, key] = settings.map(|setting| {
        Some(string(src, setting))
            .filter(|path| !path.is_empty())
            .map(std::path::PathBuf::from)
    });
    // The first one set names the problem.
    let Some(setting) = settings.into_iter().find(|setting| !string(src, setting).is_empty()) else {
        return Ok(crate::queue::RedisTls::default());
    };
    if !crate::queue::Target::parse(url).is_ok_and(|target| target.uses_tls()) {
        return Err(ConfigError::new(
            setting.var,
            &string(src, setting),
            "set, but REDIS_URL does not use TLS: write it as rediss://, rediss-sentinel:// or rediss-cluster://",
        ));
    }
    crate::queue::RedisTls::load(ca.as_deref(), cert.as_deref(), key.as_deref())
        .map_err(|problem| ConfigError::new(setting.var, &string(src, setting), problem))
}

/// Reads `POSTBACK_SHARDS`: 1 to [`MAX_SHARDS`].
pub fn shards(src: &(impl Source + ?Sized)) -> Result<usize, ConfigError> {
    let shards = count(src, &POSTBACK_SHARDS, 1)?;
    if shards > MAX_SHARDS {
        return Err(ConfigError::new(
            POSTBACK_SHARDS.var,
            &shards.to_string(),
            format!("at most {MAX_SHARDS}: each shard is one blocking consumer in every deliver process"),
        ));
    }
    Ok(shards)
}

/// The most shards a queue may be split into: every deliver process runs
/// a consumer, with a connection of its own, per shard.
pub const MAX_SHARDS: usize = 64;

/// Reads the destination guard's two lists.
pub fn destinations(src: &(impl Source + ?Sized)) -> Result<crate::destination::DestinationPolicy, ConfigError> {
    let (allow, deny) = (string(src, &ALLOW_DESTINATIONS), string(src, &DENY_DESTINATIONS));
    crate::destination::DestinationPolicy::parse(&allow, &deny).map_err(|problem| {
        let (var, value) = match crate::destination::DestinationPolicy::parse(&allow, "") {
            Err(_) => (ALLOW_DESTINATIONS.var, &allow),
            Ok(_) => (DENY_DESTINATIONS.var, &deny),
        };
        ConfigError::new(var, value, problem)
    })
}

/// Settings no longer read, each with what to do: a service that finds
/// one set warns at start, so that nobody believes it still bounds
/// something.
pub const RETIRED_SETTINGS: &[(&str, &str)] = &[(
    "INGEST_REDIS_POOL",
    "it bounded nothing: ingest keeps one Redis connection per worker thread (docs/ARCHITECTURE.md, \"Redis connections\"); remove it",
)];

/// One warning for each of [`RETIRED_SETTINGS`] set in `src`.
pub fn retired_settings(src: &(impl Source + ?Sized)) -> Vec<String> {
    RETIRED_SETTINGS
        .iter()
        .filter(|(var, _)| src.get(var).is_some())
        .map(|(var, what)| format!("{var} is set but no longer read: {what}"))
        .collect()
}

/// Logs a warning for each retired setting in the environment.
pub fn warn_retired_settings() {
    for warning in retired_settings(&Env) {
        log::warn!("{warning}");
    }
}

/// Prints a configuration error as one line on stderr and exits with code 2.
pub fn exit_on_error<T>(program: &str, result: Result<T, ConfigError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => {
            eprintln!("{program}: configuration error: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC_X: Setting = Setting::new("SVC_X", "3", "how many");

    #[test]
    fn a_retired_setting_is_named_with_what_to_do() {
        let warnings = retired_settings(&[("INGEST_REDIS_POOL", "16"), ("SVC_X", "1")][..]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("INGEST_REDIS_POOL is set but no longer read"),
            "{warnings:?}"
        );
        assert!(warnings[0].ends_with("remove it"), "{warnings:?}");
        assert!(retired_settings(&[("SVC_X", "1")][..]).is_empty());
    }

    #[test]
    fn help_lists_every_setting_between_usage_and_notes() {
        let help = help_text("svc: does things", &[SVC_X], "Routes: /x");
        assert!(help.starts_with("svc: does things\n\nSettings (environment variables):\n"));
        for setting in SHARED_SETTINGS {
            assert!(
                help.contains(&format!("  {} ", setting.var)),
                "{} missing:\n{help}",
                setting.var
            );
        }
        assert!(help.contains("  SVC_X "), "{help}");
        assert!(help.contains(" how many\n"), "{help}");
        assert!(help.ends_with("\nRoutes: /x\n"), "{help}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 6h "), Ok(Duration::from_secs(6 * 3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_default_comes_from_the_table() {
        const CONCURRENCY: Setting = Setting::new("DELIVER_CONCURRENCY", "256", "");
        let env = [("DELIVER_CONCURRENCY", "lots")];
        let err = count(&env, &CONCURRENCY, 1).unwrap_err();
        assert_eq!(err.to_string(), "DELIVER_CONCURRENCY=\"lots\": expected a whole number");
        assert_eq!(
            count(&[("DELIVER_CONCURRENCY", "0")], &CONCURRENCY, 1)
                .unwrap_err()
                .problem,
            "must be at least 1"
        );
        assert_eq!(count(&[("OTHER", "1")], &CONCURRENCY, 1), Ok(256));
        const THREADS: Setting = Setting::new("THREADS", "", "").shown_as("CPUs");
        assert_eq!(count_or(&[("OTHER", "1")], &THREADS, 7, 1), Ok(7));
        assert_eq!(count_or(&[("THREADS", "3")], &THREADS, 7, 1), Ok(3));
        assert_eq!(THREADS.shown_default(), "CPUs");
        assert_eq!(Setting::new("X", "", "").shown_default(), "none");
    }

    #[test]
    fn schedules_and_queue_names() {
        const S: Setting = Setting::new("S", "", "");
        let env = [("S", "5s,30s,2m"), ("POSTBACK_QUEUE", "a{b}")];
        assert_eq!(durations(&env, &S).unwrap().len(), 3);
        assert!(durations(&[("S", "5s,x")], &S).is_err());
        assert!(queue_name(&env).is_err());
        assert_eq!(queue_name(&[("POSTBACK_QUEUE", "clicks-eu")]).unwrap(), "clicks-eu");
        assert!(redis_url(&[("REDIS_URL", "nonsense://")]).is_err());
        assert!(redis_url(&[("REDIS_URL", "redis://:pw@127.0.0.1:6390/0")]).is_ok());
        assert!(redis_url(&[("REDIS_URL", "redis-sentinel://:pw@10.0.0.1,10.0.0.2:26380#postback")]).is_ok());
        assert!(redis_url(&[("REDIS_URL", "redis-cluster://10.0.0.1:7000,10.0.0.2:7000")]).is_ok());
        let error = redis_url(&[("REDIS_URL", "redis-sentinel://:secret@10.0.0.1")]).unwrap_err();
        assert!(error.to_string().contains("master's name"), "{error}");
        assert!(
            !error.to_string().contains("secret"),
            "no password in the message: {error}"
        );
        assert_eq!(shards(&[]).unwrap(), 1);
        assert_eq!(shards(&[("POSTBACK_SHARDS", "6")]).unwrap(), 6);
        assert!(shards(&[("POSTBACK_SHARDS", "0")]).is_err());
        assert!(shards(&[("POSTBACK_SHARDS", "65")]).is_err());
    }
}
