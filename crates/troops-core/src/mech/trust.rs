//! What a troops process may go by among the files members of the admin group can write (run
//! records in `runs/`, metrics counters, the lock's text; see `init::share_with_group`). Two
//! rules, the first kept here and the second in `files`, so that every reader applies the same
//! ones:
//! - a record is believed only when the node's owner (root, who ran `troops init`) or this
//!   process's own user wrote it: root decides from what root wrote, and a member's in-process run
//!   from root's records and its own;
//! - such a file is opened without following a symlink and without blocking (a FIFO or a device
//!   planted at its name is refused, not waited on), must be a regular file, and is read up to a
//!   bound, so no file type or size a member chose holds a root process up.

use std::os::unix::fs::MetadataExt;
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

#[cfg(test)]
mod tests {
    use super::*;

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
