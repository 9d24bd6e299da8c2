//! The file behind [`super::LineLog::file`]: appended to, and rotated by
//! size between lines, so that the file and its rotated copies stay
//! within the bytes they are given.

use super::FILES_KEPT;
use std::io::Write;

/// An append-only file that rotates itself by size, between lines.
pub(super) struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    rotate_at: u64,
}

impl RotatingFile {
    pub(super) fn open(path: std::path::PathBuf, rotate_at: u64) -> std::io::Result<Self> {
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
        for n in (1..FILES_KEPT - 1).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        *self = RotatingFile::open(self.path.clone(), self.rotate_at)?;
        Ok(())
    }
}

impl Write for RotatingFile {
    /// Writes the whole lines of `buf` that fit under the rotation size
    /// (at least one line), rotating first when none fits: a file never
    /// passes the size unless one line does, and no line is split.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.rotate_at.saturating_sub(self.size) as usize;
        let fits = if buf.len() <= room {
            buf.len()
        } else {
            buf[..room].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let take = if fits > 0 {
            fits
        } else if self.size > 0 {
            self.rotate()?;
            return self.write(buf);
        } else {
            // One line longer than the rotation size, alone in its file.
            buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1)
        };
        let n = self.file.write(&buf[..take])?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LineLog, WhenFull, FLUSH_EVERY};
    use super::*;
    use std::time::Duration;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("line-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_log_file_and_its_rotated_copies_stay_within_their_bytes() {
        let dir = temp_dir("rotate");
        let path = dir.join("delivery.log");
        let (log, writer) = LineLog::file(&path, 1_000, WhenFull::Wait).unwrap();
        // 61-byte lines, several to a write: each file (at most 100 bytes)
        // takes one line, and rotation never cuts one.
        for i in 0..(FILES_KEPT as usize + 5) * 3 {
            log.write(&format!("{i:060}\n"));
            if i % 3 == 2 {
                std::thread::sleep(FLUSH_EVERY + Duration::from_millis(20));
            }
        }
        drop(log);
        writer.join().unwrap();
        let mut total = 0;
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(text.len() <= 100 && text.ends_with('\n') && text.lines().all(|l| l.len() == 60));
            total += text.len();
            files += 1;
        }
        assert_eq!(
            files,
            FILES_KEPT as usize,
            "the live file and {} old ones",
            FILES_KEPT - 1
        );
        assert!(total <= 1_000, "{total} bytes in all");
        let newest = std::fs::read_to_string(&path).unwrap();
        assert_eq!(newest.trim_end(), format!("{:060}", (FILES_KEPT as usize + 5) * 3 - 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
