//! A line log written by one thread through a shared buffer.
//!
//! Writers append lines to an in-memory buffer under a short lock; one
//! writer thread empties it into the output every [`FLUSH_EVERY`], or at
//! once when it holds [`FLUSH_AT`] bytes. Under load many lines share one
//! `write` syscall and no writer ever wakes a thread per line (waking one
//! per line cost a tenth of ingest's throughput). The buffer is bounded:
//! past [`MAX_BUFFERED`] bytes writers wait for the thread to catch up.
//! Used for deliver's delivery log and ingest's access log.
//!
//! A write that fails (a full disk) loses nothing: the writer thread keeps
//! the lines it could not write and tries again every [`RETRY_EVERY`],
//! [`LineLog::writable`] reads false meanwhile, and the log says so once
//! when it starts and once when it ends. Lines written meanwhile wait in
//! the buffer, whose bound then decides ([`WhenFull`]): deliver's delivery
//! log, the record of every attempt, makes its writers wait (and deliver
//! stops taking jobs before that); ingest's access log drops what does not
//! fit, and counts it in the log, so that a full disk never stops ingest.

mod rotating_file;
mod timestamp;

pub use timestamp::{push_rfc3339_millis, rfc3339_millis};

use rotating_file::RotatingFile;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that trigger a write at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes past which writers wait (or lines are dropped, see
/// [`WhenFull`]).
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// How often a failed write is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long the last lines are tried once every handle is gone, before
/// what still cannot be written is reported lost (on stderr).
pub const CLOSE_PATIENCE: Duration = Duration::from_secs(10);
/// A log file and its rotated copies are this many files at most: the
/// live one and `name.1` (the newest old one) to `name.9`.
pub const FILES_KEPT: u32 = 10;

/// What a writer does when the buffer is full (the output is slow, or
/// failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for room: no line is ever lost.
    Wait,
    /// Drop the line and count it; the count is logged once the output
    /// takes lines again.
    Drop,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signals the writer thread: a full buffer, or the last handle gone.
    wake: Condvar,
    /// Signals waiting writers: the buffer was emptied.
    drained: Condvar,
    handles: AtomicUsize,
    when_full: WhenFull,
    /// False while the output refuses writes.
    writable: AtomicBool,
    /// Lines dropped for want of room ([`WhenFull::Drop`]), not yet logged.
    dropped: AtomicU64,
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
    pub fn stdout(when_full: WhenFull) -> (LineLog, std::thread::JoinHandle<()>) {
        Self::start(std::io::stdout(), when_full, "standard output".into())
    }

    /// Starts a writer thread appending to the file at `path`, which with
    /// its rotated copies takes at most `max_bytes`: it is rotated at a
    /// [`FILES_KEPT`]th of that, keeping `FILES_KEPT - 1` old files, the
    /// oldest dropped first. Writing straight to the file spares the pipe
    /// to supervisord, which cost it a tenth of a CPU at tens of thousands
    /// of lines a second.
    pub fn file(
        path: &std::path::Path,
        max_bytes: u64,
        when_full: WhenFull,
    ) -> std::io::Result<(LineLog, std::thread::JoinHandle<()>)> {
        let rotate_at = (max_bytes / u64::from(FILES_KEPT)).max(1);
        let file = RotatingFile::open(path.to_path_buf(), rotate_at)?;
        Ok(Self::start(file, when_full, path.display().to_string()))
    }

    /// Starts a writer thread on `out`.
    pub fn to<W: Write + Send + 'static>(out: W, when_full: WhenFull) -> (LineLog, std::thread::JoinHandle<()>) {
        Self::start(out, when_full, "its output".into())
    }

    /// Starts a writer thread on `out`, named `name` in its messages.
    fn start<W: Write + Send + 'static>(
        out: W,
        when_full: WhenFull,
        name: String,
    ) -> (LineLog, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            handles: AtomicUsize::new(1),
            when_full,
            writable: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("line-log".into())
            .spawn(move || write_until_closed(&thread_shared, out, &name))
            .expect("cannot start the log writer thread");
        (LineLog { shared }, writer)
    }

    /// Whether the output took the last write: false while it refuses
    /// them (a full disk), when lines wait in memory.
    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
    }

    /// A view of [`LineLog::writable`] that, unlike a handle, does not
    /// keep the log open.
    pub fn watch(&self) -> LineLogWatch {
        LineLogWatch {
            shared: self.shared.clone(),
        }
    }

    /// Appends one line, formatted by `format` straight into the buffer
    /// (which must end it with a newline).
    pub fn write_with(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
        while buffer.bytes.len() >= MAX_BUFFERED && !buffer.closed {
            if self.shared.when_full == WhenFull::Drop {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
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

/// Whether a [`LineLog`] can write, for those who only watch it (a
/// health page).
#[derive(Clone)]
pub struct LineLogWatch {
    shared: Arc<Shared>,
}

impl LineLogWatch {
    /// [`LineLog::writable`].
    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for LineLogWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineLogWatch")
    }
}

/// The writer thread: moves the buffer to `out` until every handle is
/// gone. Lines that `out` refuses stay in `pending` and are tried again;
/// the buffer is only taken once `pending` is written, so the two together
/// stay within twice [`MAX_BUFFERED`].
fn write_until_closed(shared: &Shared, mut out: impl Write, name: &str) {
    let mut pending = Pending::default();
    let mut failing_since: Option<Instant> = None;
    loop {
        let closed = {
            let mut buffer = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if failing_since.is_some() {
                // A full buffer wakes this thread at every line: the next
                // try still waits its turn.
                let retry = Instant::now() + RETRY_EVERY;
                while !buffer.closed && Instant::now() < retry {
                    let left = retry.saturating_duration_since(Instant::now());
                    buffer = shared
                        .wake
                        .wait_timeout(buffer, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            } else if buffer.bytes.len() < FLUSH_AT && !buffer.closed {
                buffer = shared
                    .wake
                    .wait_timeout(buffer, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if pending.is_empty() {
                std::mem::swap(&mut buffer.bytes, &mut pending.bytes);
            }
            buffer.closed
        };
        shared.drained.notify_all();
        match pending.write_to(&mut out) {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    shared.writable.store(true, Ordering::Relaxed);
                    log::warn!(
                        "the log {name} takes lines again after {:.1} s; none was lost",
                        since.elapsed().as_secs_f64()
                    );
                }
                let dropped = shared.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    log::warn!("{dropped} lines of the log {name} were dropped while it could not keep up (its buffer was full)");
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    shared.writable.store(false, Ordering::Relaxed);
                    log::error!(
                        "cannot write the log {name} ({e}); its lines wait in memory and are tried again every {} s: free disk space",
                        RETRY_EVERY.as_secs()
                    );
                }
            }
        }
        if closed {
            return finish(shared, pending, out, name);
        }
    }
}

/// The last lines, once every handle is gone: tried for up to
/// [`CLOSE_PATIENCE`]; what still cannot be written is reported lost.
fn finish(shared: &Shared, mut pending: Pending, mut out: impl Write, name: &str) {
    let rest = std::mem::take(&mut shared.buffer.lock().unwrap_or_else(|e| e.into_inner()).bytes);
    pending.bytes.extend_from_slice(&rest);
    let deadline = Instant::now() + CLOSE_PATIENCE;
    loop {
        match pending.write_to(&mut out) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                let lines = pending.bytes[pending.written..].iter().filter(|&&b| b == b'\n').count();
                eprintln!("LOST: {lines} lines of the log {name} could not be written before exit ({e})");
                return;
            }
            Err(_) => std::thread::sleep(RETRY_EVERY.min(deadline.saturating_duration_since(Instant::now()))),
        }
    }
}

/// Bytes to write, and how many of them are written.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    written: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.written == self.bytes.len()
    }

    /// Writes what is left; on an error, what was written stays counted.
    fn write_to(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        while !self.is_empty() {
            match out.write(&self.bytes[self.written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.flush()?;
        self.bytes.clear();
        self.written = 0;
        Ok(())
    }
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
        let (log, writer) = LineLog::to(sink.clone(), WhenFull::Wait);
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

    /// An output with `room` bytes of space left, as a filling disk: it
    /// takes what fits, then refuses.
    #[derive(Clone, Default)]
    struct Disk {
        taken: Arc<Mutex<Vec<u8>>>,
        room: Arc<AtomicUsize>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.room.load(Ordering::SeqCst);
            if room == 0 {
                return Err(std::io::Error::other("No space left on device"));
            }
            let n = buf.len().min(room);
            self.room.fetch_sub(n, Ordering::SeqCst);
            self.taken.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_an_output_refuses_wait_and_are_written_once_it_takes_them() {
        let disk = Disk::default();
        // Room for part of the first lines, cutting one in the middle.
        disk.room.store(50, Ordering::SeqCst);
        let (log, writer) = LineLog::to(disk.clone(), WhenFull::Wait);
        assert!(log.writable());
        for i in 0..100 {
            log.write(&format!("line {i}\n"));
        }
        wait_until("the log to say it cannot write", || !log.writable());
        for i in 100..200 {
            log.write(&format!("line {i}\n"));
        }
        assert!(!log.writable());
        disk.room.store(usize::MAX / 2, Ordering::SeqCst);
        wait_until("the log to write again", || log.writable());
        drop(log);
        writer.join().unwrap();
        let text = String::from_utf8(disk.taken.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let expected: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expected, "every line once, in order, none cut");
    }

    #[test]
    fn a_log_that_drops_when_full_never_blocks_its_writers() {
        let disk = Disk::default();
        let (log, writer) = LineLog::to(disk.clone(), WhenFull::Drop);
        let line = format!("{}\n", "x".repeat(1023));
        // Twice the buffer's bound, to an output with no room: a writer
        // that waited would never return.
        for _ in 0..2 * MAX_BUFFERED / 1024 {
            log.write(&line);
        }
        assert!(log.shared.dropped.load(Ordering::Relaxed) > 0);
        // The writer thread is left to the end of the test process: its
        // last lines would wait out CLOSE_PATIENCE.
        drop(writer);
    }

    #[test]
    fn an_idle_line_appears_within_the_flush_period() {
        let sink = Sink::default();
        let (log, _writer) = LineLog::to(sink.clone(), WhenFull::Wait);
        log.write("one\n");
        std::thread::sleep(FLUSH_EVERY * 3);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one\n");
    }
}
