//! The pusher's end of what the hook says: its stderr, which git relays to the pusher as `remote:`
//! lines. A pusher who stops reading (Ctrl-Z on `git push`, a stalled SSH connection) fills the
//! pipe, and a plain write would then block for ever; with no daemon the run writes its output
//! through here too, so the run would stall with it. Each write waits for room at most its
//! patience ([`PATIENCE`]); past it, or once a write fails (the pusher is gone), nothing more is
//! written to the pusher, and the run goes on into its log (`troops log` has all of it).

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long one write waits for a pusher who reads nothing: as long as the daemon waits for a
/// client that reads nothing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The most written at once: a pipe with room for one more page (what `poll` says) takes this
/// much without blocking. git gives a hook a pipe.
const CHUNK: usize = libc::PIPE_BUF;

pub struct Pusher<'fd> {
    fd: BorrowedFd<'fd>,
    patience: Duration,
    /// Set once the pusher stopped reading or went away: from then on, writes are dropped.
    given_up: AtomicBool,
}

impl<'fd> Pusher<'fd> {
    /// The pusher at `fd` (the hook's stderr), waited for at most `patience` per write.
    pub fn new(fd: BorrowedFd<'fd>, patience: Duration) -> Pusher<'fd> {
        Pusher { fd, patience, given_up: AtomicBool::new(false) }
    }

    /// Waits until the pipe has room, at most the patience; false if it never had.
    fn room(&self) -> std::io::Result<bool> {
        let deadline = Instant::now() + self.patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut [PollFd::new(self.fd, PollFlags::POLLOUT)], ms) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) if Instant::now() >= deadline => return Ok(false),
                Ok(0) => continue,
                // Writable, or the reader is gone (POLLERR), which the write then says.
                Ok(_) => return Ok(true),
            }
        }
    }
}

impl Write for &Pusher<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.given_up.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        let written = self.room().and_then(|room| match room {
            false => Ok(None),
            true => loop {
                match nix::unistd::write(self.fd, &buf[..buf.len().min(CHUNK)]) {
                    Err(Errno::EINTR) => continue,
                    result => break result.map(Some).map_err(std::io::Error::from),
                }
            },
        });
        match written {
            Ok(Some(n)) => Ok(n),
            Ok(None) => {
                self.given_up.store(true, Ordering::Relaxed);
                Ok(buf.len())
            }
            Err(e) => {
                self.given_up.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pusher_who_reads_nothing_is_given_up_after_the_patience_and_not_waited_for_again() {
        let (reader, writer) = std::io::pipe().unwrap();
        let pusher = Pusher::new(writer.as_fd(), Duration::from_millis(200));
        let started = Instant::now();
        // Far more than any pipe holds, in the pieces a run writes.
        let line = [b'x'; 1000];
        for _ in 0..2000 {
            (&pusher).write_all(&line).unwrap();
        }
        let waited = started.elapsed();
        assert!(pusher.given_up.load(Ordering::Relaxed));
        assert!(waited >= Duration::from_millis(200), "gave up before its patience: {waited:?}");
        assert!(waited < troops_testkit::BUDGET, "waited once per write: {waited:?}");
        drop(reader);
    }

    #[test]
    fn a_pusher_who_reads_gets_everything() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let pusher = Pusher::new(writer.as_fd(), Duration::from_secs(60));
        let read = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
            all
        });
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        (&pusher).write_all(&text).unwrap();
        assert!(!pusher.given_up.load(Ordering::Relaxed));
        drop(writer);
        assert_eq!(read.join().unwrap(), text);
    }
}
