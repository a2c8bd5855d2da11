//! What a troops process may go by among the files members of the admin group can write (run
//! records in `runs/`, metrics counters, the lock's text; see `init::share_with_group`). Two
//! rules, kept here so that every reader applies the same ones:
//! - a record is believed only when the node's owner (root, who ran `troops init`) or this
//!   process's own user wrote it: root decides from what root wrote, and a member's in-process run
//!   from root's records and its own;
//! - such a file is opened without following a symlink and without blocking (a FIFO or a device
//!   planted at its name is refused, not waited on), must be a regular file, and is read up to a
//!   bound, so no file type or size a member chose holds a root process up.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Who a process believes: the node's owner, and itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Believer {
    owner: u32,
    me: u32,
}

impl Believer {
    /// For the shared directory `dir` (`runs/`, `metrics/`), which only its owner, the node's
    /// owner, could have made.
    pub fn of(dir: &Path) -> std::io::Result<Believer> {
        let owner = std::fs::metadata(dir)?.uid();
        Ok(Believer { owner, me: nix::unistd::geteuid().as_raw() })
    }

    /// Whether a file or directory of user `uid` is one this process goes by.
    pub fn believes(&self, uid: u32) -> bool {
        uid == self.owner || uid == self.me
    }

    /// Whether `uid` is this process's own user: what it may rewrite or remove.
    pub fn is_me(&self, uid: u32) -> bool {
        uid == self.me
    }

    /// Whether this process is the node's owner (root, on a node `troops init` shared).
    pub fn is_owner(&self) -> bool {
        self.me == self.owner
    }
}

/// Reads the state file at `path`, which someone else may have put there: not through a symlink,
/// not blocking on what is no regular file (a FIFO, a device, a directory: refused with
/// `InvalidData`), and not beyond `max` bytes (more is `InvalidData` too). `NotFound` when there is
/// nothing at `path`.
pub fn read_state_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = open_state_file(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes, so not one troops wrote"),
        ));
    }
    Ok(bytes)
}

/// Opens the state file at `path` to read, as [`read_state_file`] does, checked to be a regular
/// file; reads from it block again (a regular file never waits anyway).
pub fn open_state_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW on a symlink.
            Some(libc::ELOOP) => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a symlink, not a regular file")
            }
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_symlink_a_directory_or_a_huge_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "{}").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        // No writer ever opens the FIFO: a blocking open would never return.
        for path in [&fifo, &link, &dir.path().to_path_buf(), &big] {
            let e = read_state_file(path, 100).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{}: {e}", path.display());
        }
        assert_eq!(read_state_file(&real, 100).unwrap(), b"{}");
        let gone = read_state_file(&dir.path().join("gone"), 100).unwrap_err();
        assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn the_owner_and_this_process_are_believed_nobody_else() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let believer = Believer::of(dir.path()).unwrap();
        assert!(believer.believes(me) && believer.is_owner() && believer.is_me(me));
        assert!(!believer.believes(me.wrapping_add(4242)));
        let other = Believer { owner: 0, me: 4242 };
        assert!(other.believes(0) && other.believes(4242) && !other.believes(4243));
        assert!(!other.is_owner() && !other.is_me(0));
    }
}
