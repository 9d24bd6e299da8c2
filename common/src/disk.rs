//! Free space of the folders a host fills: the logs' and Redis' data. A
//! full disk stops Redis' writes and the delivery log, so both services
//! export it (`postback_*_disk_free_bytes`) for an alert to fire before.

use std::path::{Path, PathBuf};

/// The folders a service reports the free space of, by name (`log`,
/// `data`).
#[derive(Debug, Clone, Default)]
pub struct Watched {
    folders: Vec<(&'static str, PathBuf)>,
}

impl Watched {
    /// The log folder (where the service writes its own log), and Redis'
    /// data folder on this host (`REDIS_DATA_DIR`), each if known.
    pub fn new(log: Option<&Path>, data: Option<&Path>) -> Self {
        let folders = [("log", log), ("data", data)]
            .into_iter()
            .filter_map(|(name, path)| Some((name, path?.to_path_buf())))
            .collect();
        Watched { folders }
    }

    /// Each folder's name and free bytes now (none if it cannot be read).
    pub fn free(&self) -> impl Iterator<Item = (&'static str, Option<u64>)> + '_ {
        self.folders.iter().map(|(name, path)| (*name, free_bytes(path)))
    }
}

/// Bytes an unprivileged process may still write on `path`'s filesystem
/// (`statvfs`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable
    // statvfs, as statvfs(3) requires; it is read only if the call succeeds.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_folder_is_what_df_says() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temp folder");
        let df = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&dir)
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&df.stdout);
        let df_free: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
        // Other processes write meanwhile: within 64 MiB.
        assert!(free.abs_diff(df_free) < 64 << 20, "statvfs {free}, df {df_free}");
        assert_eq!(free_bytes(Path::new("/no/such/folder")), None);
    }

    #[test]
    fn only_known_folders_are_watched() {
        let watched = Watched::new(None, Some(Path::new("/")));
        let names: Vec<_> = watched.free().map(|(name, free)| (name, free.is_some())).collect();
        assert_eq!(names, [("data", true)]);
    }
}
