//! The node lock: one run at a time per node, whoever triggers it (daemon, hook or CLI). An
//! exclusive flock on `<state>/lock`, held by an RAII guard; the holder writes what it is doing
//! into the file so that a waiting trigger can say what it waits for. That text lives only as long
//! as the hold: it is cleared on release, and on acquisition in case the last holder died, so a
//! waiter never names a run that is over. Members of the admin group take the lock too (a push
//! run in-process), so a member can hold it as long as they like: a waiter stops waiting when it is
//! asked to stop (SIGTERM), and shows the holder's text escaped and cut short.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::model::error::{Context, Error, Result};

/// Opens the lock file at `path`, made if missing, as only its owner may open it: 0600, set on what
/// was opened, never through a symlink. A lock nobody else can hold: flock needs only an open
/// file, so a lock on anything the admin group may read (a directory, a repo) is one a member
/// could take and keep, holding up root's fetches or publishes for as long as they like.
pub fn private_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = crate::mech::files::open(
        path,
        OpenOptions::new().create(true).truncate(false).write(true).mode(0o600),
    )
    .ctx(|| format!("opening {}", path.display()))?;
    crate::mech::modes::set_file(&file, path, 0o600)?;
    Ok(file)
}

/// Held while a plan runs; released on drop (or when the process dies).
pub struct NodeLock {
    file: Flock<File>,
}

impl NodeLock {
    /// Takes the lock, waiting while another trigger holds it, until `stop` is set (then an
    /// error: nothing ran); `waiting` is told once, with the holder's description, before the wait
    /// starts.
    pub fn acquire(path: &Path, stop: &AtomicBool, waiting: impl FnOnce(&str)) -> Result<NodeLock> {
        // A reader's glance (`is_held`) holds it for a moment: only a hold that lasts is waited
        // for out loud.
        let glance = std::time::Instant::now() + GLANCE;
        while std::time::Instant::now() < glance {
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            std::thread::sleep(POLL / 4);
        }
        waiting(&holder(path));
        // Polled, not a blocking flock: a blocked flock(2) outlives SIGTERM (the handlers restart
        // it), and a member may hold the lock for ever.
        loop {
            if stop.load(Ordering::SeqCst) {
                return Err(Error::Env(format!(
                    "asked to stop while waiting for the node lock {}; nothing ran",
                    path.display()
                )));
            }
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(lock);
            }
            std::thread::sleep(POLL);
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

    /// Whether someone holds the lock now, asked without taking it from them: a shared flock is
    /// taken and let go at once when nobody holds it, and refused while a run holds it. A lock
    /// file that is not there is held by nobody.
    pub fn is_held(path: &Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) else {
            return false;
        };
        matches!(Flock::lock(file, FlockArg::LockSharedNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
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
    let file = crate::mech::files::open(
        path,
        OpenOptions::new().create(true).truncate(false).read(true).write(true).mode(0o660),
    )
    .ctx(|| format!("opening lock {}", path.display()))?;
    crate::mech::modes::set_file(&file, path, 0o660)?;
    Ok(file)
}

/// How long a reader's glance at the lock may last before a waiter says what it waits for.
const GLANCE: Duration = Duration::from_millis(50);

/// How often a waiter tries the lock again.
const POLL: Duration = Duration::from_millis(20);

/// The most of a holder's description a waiter reads (a member may write anything there).
const MAX_HOLDER_BYTES: u64 = 512;

/// What the current holder wrote (escaped, and cut short), or a plain phrase when it wrote
/// nothing yet.
fn holder(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(file) = crate::mech::files::open(path, OpenOptions::new().read(true)) {
        let _ = file.take(MAX_HOLDER_BYTES).read_to_end(&mut bytes);
    }
    match String::from_utf8_lossy(&bytes).trim() {
        "" => format!("another trigger holding {}", path.display()),
        t => crate::model::shown::escape(t).into_owned(),
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
        let never = AtomicBool::new(false);
        let mut first = NodeLock::acquire(&path, &never, |_| panic!("free lock must not wait")).unwrap();
        first.describe("run 7 (push) of abc");
        assert!(NodeLock::try_acquire(&path).unwrap().is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let never = AtomicBool::new(false);
                NodeLock::acquire(&path, &never, |what| tx.send(what.to_owned()).unwrap()).map(|_| ())
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

    #[test]
    fn a_waiter_stops_when_asked_and_shows_a_hostile_description_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = Flock::lock(open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let mut text = "pid 1: \x1b]0;pwned\x07".to_owned();
        text.push_str(&"x".repeat(1 << 20));
        std::fs::write(&path, &text).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let waiter = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut told = String::new();
                let result = NodeLock::acquire(&path, &stop, |what| told = what.to_owned()).map(|_| ());
                (result, told)
            })
        };
        stop.store(true, Ordering::SeqCst);
        let (result, told) = waiter.join().unwrap();
        let e = result.expect_err("took a lock that is held").to_string();
        assert!(e.contains("asked to stop while waiting for the node lock"), "{e}");
        assert!(told.starts_with("pid 1: \\u{1b}]0;pwned\\u{7}x"), "{told}");
        assert!(told.len() < 600, "read it all: {} bytes", told.len());
        drop(held);
    }
}
