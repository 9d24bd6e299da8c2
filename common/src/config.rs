//! Typed settings from the environment.
//!
//! Each binary has one configuration struct built with these helpers. A
//! value that does not parse stops the program at start with one line that
//! names the variable and the problem ([`ConfigError`]), and exit code 2
//! ([`exit_on_error`]), instead of failing later in a request.

use std::str::FromStr;
use std::time::Duration;

/// The settings both services read, for their `--help`: variable,
/// default, meaning.
pub const SHARED_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "REDIS_URL",
        "redis://127.0.0.1:6379",
        "Redis holding the queue (redis://[user:password@]host:port[/db])",
    ),
    ("POSTBACK_QUEUE", "default", "queue name; keys are postback:{NAME}:*"),
];

/// A service's `--help`: `usage`, then every setting (the shared ones
/// first, then `own`) with its default and meaning, then `notes`.
pub fn help_text(usage: &str, own: &[(&str, &str, &str)], notes: &str) -> String {
    use std::fmt::Write as _;
    let mut help = format!("{usage}\n\nSettings (environment variables):\n");
    for (var, default, meaning) in SHARED_SETTINGS.iter().chain(own) {
        let _ = writeln!(help, "  {var:<28} default {default:<24} {meaning}");
    }
    if !notes.is_empty() {
        let _ = write!(help, "\n{notes}\n");
    }
    help
}

/// Prints [`help_text`] on standard output; a closed pipe (`| head`) is
/// not an error.
pub fn print_help(usage: &str, own: &[(&str, &str, &str)], notes: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout()
        .lock()
        .write_all(help_text(usage, own, notes).as_bytes());
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

/// Reads `var` as a string, or `default` when unset.
pub fn string(src: &(impl Source + ?Sized), var: &str, default: &str) -> String {
    src.get(var).unwrap_or_else(|| default.to_string())
}

/// Reads `var` with `FromStr`; `what` describes the expected value in the
/// error ("a whole number", "host:port").
pub fn parsed<T: FromStr>(src: &(impl Source + ?Sized), var: &str, default: T, what: &str) -> Result<T, ConfigError> {
    match src.get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(var, &v, format!("expected {what}"))),
    }
}

/// Reads a count that must be at least `min`.
pub fn count(src: &(impl Source + ?Sized), var: &str, default: usize, min: usize) -> Result<usize, ConfigError> {
    let n = parsed(src, var, default, "a whole number")?;
    if n < min {
        return Err(ConfigError::new(var, &n.to_string(), format!("must be at least {min}")));
    }
    Ok(n)
}

/// The default thread count of one of the `procs_var` processes of a
/// service that share this machine (supervisord's `numprocs`): the CPUs
/// divided among them, at least one. Measured on two cores: two deliver
/// processes of one runtime thread each drained ~20 % more jobs per second
/// than two of two threads, at ~18 % less CPU per job.
pub fn threads_per_process(src: &(impl Source + ?Sized), procs_var: &str) -> Result<usize, ConfigError> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let procs = count(src, procs_var, 1, 1)?;
    Ok((cpus / procs).max(1))
}

/// Reads a duration given in milliseconds (`DELIVER_TIMEOUT_MS=2500`),
/// which must be above zero.
pub fn millis(src: &(impl Source + ?Sized), var: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    let ms = parsed(src, var, default_ms, "a whole number of milliseconds")?;
    if ms == 0 {
        return Err(ConfigError::new(var, "0", "must be above zero"));
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
pub fn durations(src: &(impl Source + ?Sized), var: &str, default: &str) -> Result<Vec<Duration>, ConfigError> {
    let value = string(src, var, default);
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|part| parse_duration(part).map_err(|problem| ConfigError::new(var, &value, problem)))
        .collect()
}

/// Checks a queue name: every Redis key of the queue embeds it inside a
/// Redis Cluster hash tag, so it must not contain braces.
pub fn queue_name(src: &(impl Source + ?Sized)) -> Result<String, ConfigError> {
    let name = string(src, "POSTBACK_QUEUE", "default");
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ConfigError::new(
            "POSTBACK_QUEUE",
            &name,
            "expected 1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    Ok(name)
}

/// Checks `REDIS_URL` (default `redis://127.0.0.1:6379`).
pub fn redis_url(src: &(impl Source + ?Sized)) -> Result<String, ConfigError> {
    let url = string(src, "REDIS_URL", "redis://127.0.0.1:6379");
    use deadpool_redis::redis::IntoConnectionInfo;
    url.as_str()
        .into_connection_info()
        .map_err(|e| ConfigError::new("REDIS_URL", &url, format!("not a Redis URL ({e})")))?;
    Ok(url)
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

    #[test]
    fn help_lists_every_setting_between_usage_and_notes() {
        let help = help_text("svc: does things", &[("SVC_X", "3", "how many")], "Routes: /x");
        assert!(help.starts_with("svc: does things\n\nSettings (environment variables):\n"));
        for (var, ..) in SHARED_SETTINGS {
            assert!(help.contains(&format!("  {var} ")), "{var} missing:\n{help}");
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
    fn a_bad_value_names_the_variable() {
        let env = [("DELIVER_CONCURRENCY", "lots")];
        let err = count(&env, "DELIVER_CONCURRENCY", 256, 1).unwrap_err();
        assert_eq!(err.to_string(), "DELIVER_CONCURRENCY=\"lots\": expected a whole number");
        assert_eq!(
            count(&[("X", "0")], "X", 1, 1).unwrap_err().problem,
            "must be at least 1"
        );
        assert_eq!(count(&env, "OTHER", 256, 1), Ok(256));
    }

    #[test]
    fn schedules_and_queue_names() {
        let env = [("S", "5s,30s,2m"), ("POSTBACK_QUEUE", "a{b}")];
        assert_eq!(durations(&env, "S", "").unwrap().len(), 3);
        assert!(durations(&[("S", "5s,x")], "S", "").is_err());
        assert!(queue_name(&env).is_err());
        assert_eq!(queue_name(&[("POSTBACK_QUEUE", "clicks-eu")]).unwrap(), "clicks-eu");
        assert!(redis_url(&[("REDIS_URL", "nonsense://")]).is_err());
        assert!(redis_url(&[("REDIS_URL", "redis://:pw@127.0.0.1:6390/0")]).is_ok());
    }
}
