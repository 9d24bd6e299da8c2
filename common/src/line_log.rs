//! A line log written by one thread through a shared buffer.
//!
//! Writers append lines to an in-memory buffer under a short lock; one
//! writer thread empties it into the output every [`FLUSH_EVERY`], or at
//! once when it holds [`FLUSH_AT`] bytes. Under load many lines share one
//! `write` syscall and no writer ever wakes a thread per line (waking one
//! per line cost a tenth of ingest's throughput). The buffer is bounded:
//! past [`MAX_BUFFERED`] bytes writers wait for the thread to catch up.
//! Used for deliver's delivery log and ingest's access log.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that trigger a write at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes past which writers wait.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// A log file is rotated when it reaches this size ...
pub const ROTATE_AT: u64 = 200 * 1024 * 1024;
/// ... keeping this many old files (`name.1` the newest).
pub const ROTATED_KEPT: u32 = 10;

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signals the writer thread: a full buffer, or the last handle gone.
    wake: Condvar,
    /// Signals waiting writers: the buffer was emptied.
    drained: Condvar,
    handles: AtomicUsize,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

/// A cheap, cloneable handle for writing lines.
pub struct LineLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LineLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineLog")
    }
}

impl Clone for LineLog {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::AcqRel);
        LineLog {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for LineLog {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buffer.closed = true;
            self.shared.wake.notify_one();
        }
    }
}

impl LineLog {
    /// Starts a writer thread on standard output. It ends, after writing
    /// what is left, when every handle is dropped.
    pub fn stdout() -> (LineLog, std::thread::JoinHandle<()>) {
        Self::to(std::io::stdout())
    }

    /// Starts a writer thread appending to the file at `path`, rotating it
    /// at [`ROTATE_AT`] bytes and keeping [`ROTATED_KEPT`] old files, as
    /// supervisord does for what it captures. Writing straight to the file
    /// spares the pipe to supervisord, which cost it a tenth of a CPU at
    /// tens of thousands of lines a second.
    pub fn file(path: &std::path::Path) -> std::io::Result<(LineLog, std::thread::JoinHandle<()>)> {
        Ok(Self::to(RotatingFile::open(path.to_path_buf(), ROTATE_AT)?))
    }

    /// Starts a writer thread on `out`.
    pub fn to<W: Write + Send + 'static>(mut out: W) -> (LineLog, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            handles: AtomicUsize::new(1),
        });
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("line-log".into())
            .spawn(move || {
                let shared = thread_shared;
                let mut spare = Vec::with_capacity(FLUSH_AT);
                loop {
                    let closed = {
                        let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
                        if buffer.bytes.len() < FLUSH_AT && !buffer.closed {
                            buffer = shared
                                .wake
                                .wait_timeout(buffer, FLUSH_EVERY)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        std::mem::swap(&mut buffer.bytes, &mut spare);
                        buffer.closed
                    };
                    shared.drained.notify_all();
                    if !spare.is_empty() {
                        let _ = out.write_all(&spare);
                        let _ = out.flush();
                        spare.clear();
                    }
                    if closed {
                        let rest = std::mem::take(&mut shared.buffer.lock().unwrap_or_else(|e| e.into_inner()).bytes);
                        let _ = out.write_all(&rest);
                        let _ = out.flush();
                        return;
                    }
                }
            })
            .expect("cannot start the log writer thread");
        (LineLog { shared }, writer)
    }

    /// Appends one line, formatted by `format` straight into the buffer
    /// (which must end it with a newline).
    pub fn write_with(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        while buffer.bytes.len() >= MAX_BUFFERED && !buffer.closed {
            buffer = self.shared.drained.wait(buffer).unwrap_or_else(|e| e.into_inner());
        }
        format(&mut buffer.bytes);
        if buffer.bytes.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }

    /// Appends one line (which must end with a newline).
    pub fn write(&self, line: &str) {
        self.write_with(|buffer| buffer.extend_from_slice(line.as_bytes()));
    }
}

/// An append-only file that rotates itself by size.
struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    rotate_at: u64,
}

impl RotatingFile {
    fn open(path: std::path::PathBuf, rotate_at: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            rotate_at,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            std::path::PathBuf::from(name)
        };
        for n in (1..ROTATED_KEPT).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        *self = RotatingFile::open(self.path.clone(), self.rotate_at)?;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size >= self.rotate_at {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `2026-11-28T05:44:25.123Z` from ms since the epoch (UTC): the timestamp
/// format of every log line.
pub fn rfc3339_millis(ms: u64) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, ms);
    out
}

/// Appends [`rfc3339_millis`]`(ms)` to `out`. Log lines come many to a
/// second, so each thread keeps the date-and-seconds part of the last
/// second it formatted and only adds the milliseconds.
pub fn push_rfc3339_millis(out: &mut String, ms: u64) {
    thread_local! {
        static LAST_SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = ms / 1000;
    LAST_SECOND.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            last.1.clear();
            push_date_and_seconds(&mut last.1, secs);
            last.0 = secs;
        }
        out.push_str(&last.1);
    });
    let millis = (ms % 1000) as u32;
    for digit in [millis / 100, millis / 10 % 10, millis % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch (UTC).
fn push_date_and_seconds(out: &mut String, secs: u64) {
    use std::fmt::Write as _;
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
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_once_the_last_handle_is_gone() {
        let sink = Sink::default();
        let (log, writer) = LineLog::to(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        log.write(&format!("{t} {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        writer.join().unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 40_000);
    }

    #[test]
    fn a_log_file_rotates_by_size_and_keeps_a_bounded_number() {
        let dir = std::env::temp_dir().join(format!("line-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("delivery.log");
        let (log, writer) = LineLog::to(RotatingFile::open(path.clone(), 100).unwrap());
        for i in 0..(ROTATED_KEPT as usize + 5) * 2 {
            log.write(&format!("{i:060}\n"));
            std::thread::sleep(FLUSH_EVERY + Duration::from_millis(20));
        }
        drop(log);
        writer.join().unwrap();
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            files,
            ROTATED_KEPT as usize + 1,
            "the live file and {ROTATED_KEPT} old ones"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_idle_line_appears_within_the_flush_period() {
        let sink = Sink::default();
        let (log, _writer) = LineLog::to(sink.clone());
        log.write("one\n");
        std::thread::sleep(FLUSH_EVERY * 3);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one\n");
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_764_308_665_123), "2025-11-28T05:44:25.123Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // The per-thread cache of the last second follows the clock both ways.
        assert_eq!(rfc3339_millis(1_764_308_665_999), "2025-11-28T05:44:25.999Z");
        assert_eq!(rfc3339_millis(1_764_308_666_000), "2025-11-28T05:44:26.000Z");
        assert_eq!(rfc3339_millis(1_764_308_665_007), "2025-11-28T05:44:25.007Z");
    }
}
