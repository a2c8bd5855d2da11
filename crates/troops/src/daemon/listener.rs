//! One control connection's share of the daemon's output, bounded: the worker never waits for a
//! client, and a client that reads slowly or not at all costs at most `LIMIT` bytes. What does not
//! fit is dropped for that client alone until it has read all it holds; one notice takes the
//! gap's place, followed by the gap's last lines (a run's summary, when the gap reaches its end).
//! All connections together hold at most `TOTAL_LIMIT`, so many stalled clients cost no more than
//! a few.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use troops_core::mech::control::Done;

/// What one listener may hold unread; beyond it, its output is skipped until it catches up.
const LIMIT: usize = 256 * 1024;
/// What all listeners together may hold unread; beyond it, every new piece is skipped (even a
/// late joiner's replay) until readers catch up.
const TOTAL_LIMIT: usize = 4 * 1024 * 1024;
/// How much of the end of a gap is kept, to be shown after its notice.
const TAIL: usize = 4096;

/// The bytes of output all mailboxes hold.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// What the connection writes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Output(String),
    Skipped(Gap),
    Done(Done),
}

/// Output that did not fit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gap {
    /// All of it, in bytes.
    bytes: usize,
    /// Its last `TAIL` bytes (or fewer).
    tail: String,
    /// The output before it ended in the middle of a line.
    mid_line: bool,
}

impl Gap {
    /// A gap in output that, before it, ended in the middle of a line if `mid_line`.
    pub fn after(mid_line: bool) -> Gap {
        Gap { mid_line, ..Gap::default() }
    }

    /// Whether any output fell into it.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The notice, on a line of its own, then the gap's last whole lines; `log` is the command
    /// that shows the whole log. A gap short enough to be kept whole is just its output.
    pub fn render(&self, log: &str) -> String {
        if self.tail.len() == self.bytes {
            return self.tail.clone();
        }
        let tail = self.tail.split_once('\n').map_or("", |(_, lines)| lines);
        let skipped = self.bytes - tail.len();
        let newline = if self.mid_line { "\n" } else { "" };
        format!("{newline}troops: {skipped} bytes of output skipped; the whole log: {log}\n{tail}")
    }

    pub fn add(&mut self, text: &str) {
        self.bytes += text.len();
        self.tail.push_str(text);
        if self.tail.len() > TAIL {
            let mut cut = self.tail.len() - TAIL;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
        }
    }
}

#[derive(Default)]
struct Mailbox {
    pieces: VecDeque<Piece>,
    /// The bytes of output held.
    bytes: usize,
    /// Output is being skipped, until the client has read all that is held.
    skipping: bool,
    /// The last output held ended in the middle of a line.
    mid_line: bool,
    /// The connection is gone: nothing more is kept for it.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    mailbox: Mutex<Mailbox>,
    wake: Notify,
}

/// The worker's end.
#[derive(Clone)]
pub struct Listener(Arc<Shared>);

/// The connection's end. Dropping it tells the worker to keep nothing more for this connection.
pub struct Inbox(Arc<Shared>);

pub fn channel() -> (Listener, Inbox) {
    let shared = Arc::new(Shared::default());
    (Listener(shared.clone()), Inbox(shared))
}

impl Listener {
    /// Queues `text`, or adds it to a gap when it does not fit (a first piece fits while all
    /// listeners hold little, so a late joiner gets the replay whole). False once the connection
    /// is gone.
    pub fn output(&self, text: &str) -> bool {
        let mut mailbox = self.0.mailbox.lock().unwrap();
        if mailbox.closed {
            return false;
        }
        let full = mailbox.bytes > 0 && (mailbox.skipping || mailbox.bytes + text.len() > LIMIT);
        if full || HELD.load(Ordering::Relaxed) + text.len() > TOTAL_LIMIT {
            mailbox.skipping = true;
            let mid_line = mailbox.mid_line;
            match mailbox.pieces.back_mut() {
                Some(Piece::Skipped(gap)) => gap.add(text),
                _ => {
                    let mut gap = Gap::after(mid_line);
                    gap.add(text);
                    mailbox.pieces.push_back(Piece::Skipped(gap));
                }
            }
        } else if !text.is_empty() {
            mailbox.skipping = false;
            mailbox.bytes += text.len();
            HELD.fetch_add(text.len(), Ordering::Relaxed);
            mailbox.mid_line = !text.ends_with('\n');
            mailbox.pieces.push_back(Piece::Output(text.to_owned()));
        }
        drop(mailbox);
        self.0.wake.notify_one();
        true
    }

    /// The end, which is always kept.
    pub fn done(&self, done: Done) {
        self.0.mailbox.lock().unwrap().pieces.push_back(Piece::Done(done));
        self.0.wake.notify_one();
    }
}

impl Drop for Listener {
    /// The last worker-side handle going away ends the inbox (see `Inbox::next`).
    fn drop(&mut self) {
        self.0.wake.notify_one();
    }
}

impl Inbox {
    /// The next piece, waiting for it; `None` when no worker-side handle is left to send one.
    pub async fn next(&mut self) -> Option<Piece> {
        loop {
            {
                let mut mailbox = self.0.mailbox.lock().unwrap();
                if let Some(piece) = mailbox.pieces.pop_front() {
                    if let Piece::Output(text) = &piece {
                        mailbox.bytes -= text.len();
                        HELD.fetch_sub(text.len(), Ordering::Relaxed);
                    }
                    return Some(piece);
                }
                if Arc::strong_count(&self.0) == 1 {
                    return None;
                }
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut mailbox = self.0.mailbox.lock().unwrap();
        mailbox.closed = true;
        mailbox.pieces.clear();
        HELD.fetch_sub(mailbox.bytes, Ordering::Relaxed);
        mailbox.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(inbox: &mut Inbox) -> Vec<Piece> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut pieces = Vec::new();
            while let Some(piece) = inbox.next().await {
                pieces.push(piece);
            }
            pieces
        })
    }

    fn next(inbox: &mut Inbox) -> Option<Piece> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(inbox.next())
    }

    #[test]
    fn a_reader_that_reads_nothing_gets_one_notice_then_the_last_lines_and_the_end() {
        let (listener, mut inbox) = channel();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..10_000 {
            assert!(listener.output(&line));
        }
        listener.output("troops: run 1 succeeded\n");
        listener.done(Done { exit: troops_core::Exit::Success, error: None });
        drop(listener);
        let pieces = drain(&mut inbox);
        let kept = pieces.iter().filter(|p| matches!(p, Piece::Output(_))).count();
        assert_eq!(kept, LIMIT / line.len());
        let [.., Piece::Skipped(gap), Piece::Done(Done { exit: troops_core::Exit::Success, error: None })] =
            &pieces[..]
        else {
            panic!("{:?}", &pieces[kept..]);
        };
        let shown = gap.render("troops log 1");
        let tail_lines = (TAIL - "troops: run 1 succeeded\n".len()) / line.len();
        let skipped = (10_000 - kept - tail_lines) * line.len();
        assert!(
            shown.starts_with(&format!(
                "troops: {skipped} bytes of output skipped; the whole log: troops log 1\n"
            )),
            "{}",
            &shown[..200]
        );
        assert!(shown.ends_with(&format!("{line}troops: run 1 succeeded\n")));
    }

    #[test]
    fn a_reader_that_caught_up_gets_output_again_after_the_notice() {
        let (listener, mut inbox) = channel();
        let big = "y".repeat(LIMIT);
        listener.output(&big);
        listener.output(&format!("{}\nlast line of the gap\n", "z".repeat(TAIL)));
        assert_eq!(next(&mut inbox), Some(Piece::Output(big)));
        listener.output("kept\n");
        drop(listener);
        let pieces = drain(&mut inbox);
        let [Piece::Skipped(gap), Piece::Output(kept)] = &pieces[..] else { panic!("{pieces:?}") };
        let notice = format!("troops: {} bytes of output skipped; the whole log: troops log 2", TAIL + 1);
        assert_eq!(gap.render("troops log 2"), format!("\n{notice}\nlast line of the gap\n"));
        assert_eq!(kept, "kept\n");
    }

    #[test]
    fn a_gone_connection_stops_the_worker_keeping_output() {
        let (listener, inbox) = channel();
        drop(inbox);
        assert!(!listener.output("nobody reads this"));
    }
}
