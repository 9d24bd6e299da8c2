//! A line log written by one thread through a buffer.
//!
//! Lines go through a bounded channel to a writer thread that writes them
//! into a 64 KiB buffer and flushes when the channel runs dry: under load
//! many lines share one `write` syscall, and when idle each line still
//! appears at once. Senders wait when the channel is full, so memory stays
//! bounded. Used for deliver's delivery log and ingest's access log.

use std::io::Write;
use tokio::sync::mpsc;

/// Lines waiting for the writer at most.
const BUFFERED_LINES: usize = 8192;

/// A cheap, cloneable handle for sending lines to the writer thread.
#[derive(Clone, Debug)]
pub struct LineLog {
    tx: mpsc::Sender<String>,
}

impl LineLog {
    /// Starts a writer thread on standard output. It ends, after writing
    /// what is left, when every handle is dropped.
    pub fn stdout() -> (LineLog, std::thread::JoinHandle<()>) {
        Self::to(std::io::stdout())
    }

    /// Starts a writer thread on `out`.
    pub fn to<W: Write + Send + 'static>(out: W) -> (LineLog, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<String>(BUFFERED_LINES);
        let writer = std::thread::Builder::new()
            .name("line-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Some(line) = rx.blocking_recv() {
                    let _ = out.write_all(line.as_bytes());
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })
            .expect("cannot start the log writer thread");
        (LineLog { tx }, writer)
    }

    /// Queues one line (which must end with a newline), waiting if the
    /// writer is behind.
    pub async fn write(&self, line: String) {
        let _ = self.tx.send(line).await;
    }
}

/// `2026-11-28T05:44:25.123Z` from ms since the epoch (UTC): the timestamp
/// format of every log line.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_764_308_665_123), "2025-11-28T05:44:25.123Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
