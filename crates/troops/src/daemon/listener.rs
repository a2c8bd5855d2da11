//! One control connection's share of the daemon's output, bounded: the worker never waits for a
//! client, and a client that reads slowly or not at all costs at most `LIMIT` bytes. What does not
//! fit is dropped for that client alone, and one notice takes its place.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What one listener may hold unread; beyond it, its output is skipped until it catches up.
const LIMIT: usize = 256 * 1024;

/// What the connection writes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Output(String),
    /// This many bytes of output did not fit and were dropped.
    Skipped(usize),
    Done {
        exit: i32,
        error: Option<String>,
    },
}

#[derive(Default)]
struct Mailbox {
    pieces: VecDeque<Piece>,
    bytes: usize,
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
    /// Queues `text`, or counts it as skipped when it does not fit (a first piece always fits,
    /// so a late joiner gets the replay whole). False once the connection is gone.
    pub fn output(&self, text: &str) -> bool {
        let mut mailbox = self.0.mailbox.lock().unwrap();
        if mailbox.closed {
            return false;
        }
        if mailbox.bytes > 0 && mailbox.bytes + text.len() > LIMIT {
            match mailbox.pieces.back_mut() {
                Some(Piece::Skipped(n)) => *n += text.len(),
                _ => mailbox.pieces.push_back(Piece::Skipped(text.len())),
            }
        } else {
            mailbox.bytes += text.len();
            mailbox.pieces.push_back(Piece::Output(text.to_owned()));
        }
        drop(mailbox);
        self.0.wake.notify_one();
        true
    }

    /// The end, which is always kept.
    pub fn done(&self, exit: i32, error: Option<String>) {
        self.0.mailbox.lock().unwrap().pieces.push_back(Piece::Done { exit, error });
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

    #[test]
    fn a_reader_that_does_not_keep_up_gets_one_notice_per_gap_and_the_end() {
        let (listener, mut inbox) = channel();
        let chunk = "x".repeat(LIMIT / 4);
        for _ in 0..10 {
            assert!(listener.output(&chunk));
        }
        listener.done(1, None);
        drop(listener);
        let pieces = drain(&mut inbox);
        assert_eq!(pieces.len(), 6);
        assert!(pieces[..4].iter().all(|p| *p == Piece::Output(chunk.clone())));
        assert_eq!(pieces[4], Piece::Skipped(6 * chunk.len()));
        assert_eq!(pieces[5], Piece::Done { exit: 1, error: None });
    }

    #[test]
    fn a_reader_that_caught_up_gets_output_again_after_the_notice() {
        let (listener, mut inbox) = channel();
        let big = "y".repeat(LIMIT);
        listener.output(&big);
        listener.output("lost\n");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(runtime.block_on(inbox.next()), Some(Piece::Output(big)));
        listener.output("kept\n");
        drop(listener);
        assert_eq!(drain(&mut inbox), [Piece::Skipped(5), Piece::Output("kept\n".into())]);
    }

    #[test]
    fn a_gone_connection_stops_the_worker_keeping_output() {
        let (listener, inbox) = channel();
        drop(inbox);
        assert!(!listener.output("nobody reads this"));
    }
}
