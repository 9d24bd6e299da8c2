//! The delivery log: one line per attempt on stdout, in logfmt or JSON.
//!
//! Lines are written by one buffered writer thread
//! ([`common::line_log::LineLog`]): many lines per syscall under load, no
//! delay when idle. Operational messages (start, stop, outages) go through
//! `log`/env_logger to stderr instead, so the delivery log stays a clean
//! record that tools can parse.
//!
//! No line is ever dropped: while the file cannot be written (a full disk)
//! the lines wait in memory, the worker stops taking jobs
//! ([`DeliveryLog::writable`]), and `/health` and the metrics say so.

use crate::config::LogFormat;
use common::line_log::{push_rfc3339_millis, rfc3339_millis, WhenFull};
use std::fmt::Write as _;

/// One attempt, as logged.
#[derive(Debug)]
pub struct Record<'a> {
    /// When the attempt finished, ms since the epoch.
    pub delivery_time_ms: u64,
    /// Job id.
    pub id: &'a str,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// HTTP method.
    pub method: &'a str,
    /// The URL as delivered.
    pub url: &'a str,
    /// HTTP status, or the failure kind.
    pub status: &'a str,
    /// Time taken, ms.
    pub response_ms: u64,
    /// The (truncated) response body or error message.
    pub response_body: &'a str,
    /// `delivered`, `retry`, `dead` or `malformed`.
    pub outcome: &'a str,
    /// Delay before the next attempt, for `retry`.
    pub retry_in_ms: Option<u64>,
    /// The ingest request's id, for tracing.
    pub request_id: Option<&'a str>,
    /// The producer key's id, if the job has one.
    pub producer: Option<&'a str>,
}

/// A cheap handle for writing delivery log lines.
#[derive(Clone)]
pub struct DeliveryLog {
    format: LogFormat,
    lines: common::line_log::LineLog,
}

impl DeliveryLog {
    /// Starts the writer thread on stdout. It ends when every handle is
    /// dropped, after writing what is left.
    pub fn stdout(format: LogFormat) -> (DeliveryLog, std::thread::JoinHandle<()>) {
        let (lines, writer) = common::line_log::LineLog::stdout(WhenFull::Wait);
        (DeliveryLog { format, lines }, writer)
    }

    /// Starts the writer thread on a file that, with its rotated copies,
    /// takes at most `max_bytes` (see [`common::line_log::LineLog::file`]).
    pub fn file(
        format: LogFormat,
        path: &std::path::Path,
        max_bytes: u64,
    ) -> std::io::Result<(DeliveryLog, std::thread::JoinHandle<()>)> {
        let (lines, writer) = common::line_log::LineLog::file(path, max_bytes, WhenFull::Wait)?;
        Ok((DeliveryLog { format, lines }, writer))
    }

    /// Whether the log's file takes lines: false while the disk is full.
    /// Lines written meanwhile wait in memory (bounded: past that, the
    /// writer waits), so the worker stops taking jobs until it is true.
    pub fn writable(&self) -> bool {
        self.lines.writable()
    }

    /// A view of [`DeliveryLog::writable`] that does not keep the log
    /// open (see [`common::line_log::LineLog::watch`]).
    pub fn watch(&self) -> common::line_log::LineLogWatch {
        self.lines.watch()
    }

    /// Formats and queues one record.
    pub fn write(&self, record: &Record<'_>) {
        // Each thread formats into a line of its own that it keeps: no
        // allocation per attempt.
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            format_into(&mut line, self.format, record);
            self.lines.write(&line);
            // A long response body's line is not kept for ever.
            if line.capacity() > KEPT_LINE_ROOM {
                *line = String::new();
            }
        });
    }
}

/// The most room a thread's line keeps between attempts (a line with a
/// large response body gives the rest back).
const KEPT_LINE_ROOM: usize = 16 * 1024;

/// Formats `record` as one line, newline included.
pub fn format_record(format: LogFormat, r: &Record<'_>) -> String {
    let mut line = String::new();
    format_into(&mut line, format, r);
    line
}

/// [`format_record`] into `line`.
fn format_into(line: &mut String, format: LogFormat, r: &Record<'_>) {
    line.reserve(192 + r.url.len() + r.response_body.len());
    match format {
        LogFormat::Logfmt => {
            line.push_str("delivery_time=");
            push_rfc3339_millis(line, r.delivery_time_ms);
            line.push_str(" id=");
            line.push_str(r.id);
            line.push_str(" attempt=");
            push_number(line, u64::from(r.attempt));
            line.push_str(" method=");
            line.push_str(r.method);
            line.push_str(" url=");
            logfmt_value(line, r.url);
            line.push_str(" status=");
            logfmt_value(line, r.status);
            line.push_str(" response_ms=");
            push_number(line, r.response_ms);
            line.push_str(" outcome=");
            line.push_str(r.outcome);
            if let Some(ms) = r.retry_in_ms {
                line.push_str(" retry_in_ms=");
                push_number(line, ms);
            }
            if let Some(id) = r.request_id {
                line.push_str(" request_id=");
                logfmt_value(line, id);
            }
            if let Some(id) = r.producer {
                line.push_str(" producer=");
                logfmt_value(line, id);
            }
            line.push_str(" response_body=");
            quoted(line, r.response_body, 0);
        }
        LogFormat::Json => {
            let value = serde_json::json!({
                "delivery_time": rfc3339_millis(r.delivery_time_ms),
                "id": r.id,
                "attempt": r.attempt,
                "method": r.method,
                "url": r.url,
                "status": r.status,
                "response_ms": r.response_ms,
                "outcome": r.outcome,
                "retry_in_ms": r.retry_in_ms,
                "request_id": r.request_id,
                "producer": r.producer,
                "response_body": r.response_body,
            });
            line.push_str(&value.to_string());
        }
    }
    line.push('\n');
}

/// `n` in decimal.
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// A byte that a logfmt value cannot hold bare: quoted, not escaped (a
/// space, `=`).
const QUOTE: u8 = 1;
/// A byte that must be escaped, or starts a character that may need it
/// (`"`, `\`, control characters, anything not ASCII).
const ESCAPE: u8 = 2;
/// What each byte needs, looked up once per byte (a URL is scanned on every
/// delivery).
const BYTE_NEEDS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b' ' | b'=' => QUOTE,
            b'"' | b'\\' => ESCAPE,
            0x21..=0x7e => 0,
            _ => ESCAPE,
        };
        b += 1;
    }
    table
};

/// A logfmt value: bare when it is a plain token, quoted otherwise.
fn logfmt_value(out: &mut String, value: &str) {
    match value.bytes().position(|b| BYTE_NEEDS[usize::from(b)] != 0) {
        None if !value.is_empty() => out.push_str(value),
        // What came before the first such byte needs no escape either.
        first => quoted(out, value, first.unwrap_or(0)),
    }
}

/// A double-quoted value with `"`, `\` and control characters escaped, so
/// a response body can never break the one-line-per-attempt shape. The
/// first `clean` bytes are known to need no escape.
fn quoted(out: &mut String, value: &str, clean: usize) {
    out.push('"');
    out.push_str(&value[..clean]);
    // Runs of printable ASCII are copied whole; only the character after
    // each run is looked at.
    let mut rest = &value[clean..];
    while let Some(at) = rest.bytes().position(|b| BYTE_NEEDS[usize::from(b)] == ESCAPE) {
        out.push_str(&rest[..at]);
        // Everything before `at` is ASCII, so `at` starts a character.
        let Some(c) = rest[at..].chars().next() else { break };
        escaped(out, c);
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// One character of a quoted value: `"`, `\` and control characters
/// escaped, anything else as it is.
fn escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_exactly_what_the_char_by_char_rule_does() {
        fn reference(value: &str) -> String {
            let mut out = String::from("\"");
            value.chars().for_each(|c| escaped(&mut out, c));
            out.push('"');
            out
        }
        // The rule itself, spelled out once.
        assert_eq!(
            reference("say \"hi\"\\\tbell\u{7}del\u{7f}c1\u{85}\u{e9}"),
            "\"say \\\"hi\\\"\\\\\\tbell\\u{7}del\\u{7f}c1\\u{85}\u{e9}\""
        );
        for value in [
            "",
            "plain",
            "http://h/?a=1&b=%20",
            "say \"hi\"\\ there",
            "line\nnext\r\tend",
            "bell\u{7}del\u{7f}c1\u{85}",
            "caf\u{e9} \u{1f600} \u{2028} done",
            "\u{e9}",
            "\"",
            "req-1",
            "a=b\"c d",
            "two words",
        ] {
            let mut out = String::new();
            quoted(&mut out, value, 0);
            assert_eq!(out, reference(value), "for {value:?}");
            // As a logfmt value: bare only when nothing needs quoting.
            let mut out = String::new();
            logfmt_value(&mut out, value);
            let bare = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
            let expected = if bare { value.to_string() } else { reference(value) };
            assert_eq!(out, expected, "logfmt value {value:?}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 5000, u64::MAX] {
            let mut out = String::from("x=");
            push_number(&mut out, n);
            assert_eq!(out, format!("x={n}"));
        }
    }

    fn record<'a>(body: &'a str) -> Record<'a> {
        Record {
            delivery_time_ms: 1_764_308_665_123,
            id: "abc",
            attempt: 2,
            method: "GET",
            url: "http://h/?a=1&b=%20",
            status: "500",
            response_ms: 12,
            response_body: body,
            outcome: "retry",
            retry_in_ms: Some(5000),
            request_id: Some("req-1"),
            producer: Some("0123456789ab"),
        }
    }

    #[test]
    fn logfmt_line_has_every_field_and_stays_on_one_line() {
        let line = format_record(LogFormat::Logfmt, &record("oops \"x\"\nnext"));
        assert_eq!(
            line,
            "delivery_time=2025-11-28T05:44:25.123Z id=abc attempt=2 method=GET url=\"http://h/?a=1&b=%20\" status=500 response_ms=12 outcome=retry retry_in_ms=5000 request_id=req-1 producer=0123456789ab response_body=\"oops \\\"x\\\"\\nnext\"\n"
        );
    }

    #[test]
    fn json_line_has_the_same_fields() {
        let line = format_record(LogFormat::Json, &record("ok"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], "500");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["url"], "http://h/?a=1&b=%20");
        assert_eq!(v["response_body"], "ok");
        assert_eq!(v["delivery_time"], "2025-11-28T05:44:25.123Z");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }
}
