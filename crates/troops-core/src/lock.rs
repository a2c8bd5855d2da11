//! The node lock: one run at a time per node, whoever triggers it (daemon, hook or CLI). An
//! exclusive flock on `<state>/lock`, held by an RAII guard; the holder writes what it is doing
//! into the file so that a waiting trigger can say what it waits for. That text lives only as long
//! as the hold: it is cleared on release, and on acquisition in case the last holder died, so a
//! waiter never names a run that is over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Context, Error, Result};

/// Held while a plan runs; released on drop (or when the process dies).
pub struct NodeLock {
    file: Flock<File>,
}

impl NodeLock {
    /// Takes the lock, waiting if another trigger holds it; `waiting` is told once, with the
    /// holder's description, before the wait starts.
    pub fn acquire(path: &Path, waiting: impl FnOnce(&str)) -> Result<NodeLock> {
        match Self::try_acquire(path)? {
            Some(lock) => Ok(lock),
            None => {
                waiting(&holder(path));
                let file = open(path)?;
                let file = Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| Error::io(format!("locking {}", path.display()), e.into()))?;
                Ok(NodeLock::held(file))
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_acquire(path: &Path) -> Result<Option<NodeLock>> {
        match Flock::lock(open(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Some(NodeLock::held(file))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).ctx(|| format!("locking {}", path.display())),
        }
    }

    /// A new hold starts with no description: what an earlier holder wrote is over.
    fn held(file: Flock<File>) -> NodeLock {
        let _ = file.set_len(0);
        NodeLock { file }
    }

    /// Says what the holder is doing, for whoever waits.
    pub fn describe(&mut self, what: &str) {
        // Best effort: the description only feeds a message.
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = writeln!(self.file, "pid {}: {what}", std::process::id());
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        // Cleared while still held (the flock goes with the field, after this), so the next
        // waiter cannot read this holder's description once it is gone.
        let _ = self.file.set_len(0);
    }
}

/// The lock file, shared with the admin group (0660), never opened through a symlink.
fn open(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o660)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("opening lock {}", path.display()))
}

/// What the current holder wrote, or a plain phrase when it wrote nothing yet.
fn holder(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    match text.trim() {
        "" => format!("another trigger holding {}", path.display()),
        t => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_and_is_told_for_what() {
        let dir = std::env::temp_dir().join(format!("troops-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let mut first = NodeLock::acquire(&path, |_| panic!("free lock must not wait")).unwrap();
        first.describe("run 7 (push) of abc");
        assert!(NodeLock::try_acquire(&path).unwrap().is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                NodeLock::acquire(&path, |what| tx.send(what.to_owned()).unwrap()).map(|_| ())
            })
        };
        let told = rx.recv().unwrap();
        assert!(told.ends_with(": run 7 (push) of abc"), "{told}");
        drop(first);
        waiter.join().unwrap().unwrap();
        let after = holder(&path);
        assert_eq!(after, format!("another trigger holding {}", path.display()), "released, yet described");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
