//! The status publisher: a thread of its own that pushes this node's status document to the
//! `status_remote` whenever it says something new (after each run and pull cycle, when the loop
//! pokes it), and once per `status_heartbeat` when nothing changes. A push that fails is logged
//! and tried again a pull interval later, doubling up to a heartbeat; it never holds up a run, which goes on in the worker.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use troops_core::config::Config;
use troops_core::fleet::publish;
use troops_core::fleet::status::StatusDoc;
use troops_core::node::Node;

use super::worker::Event;

#[derive(Default)]
struct Pokes {
    poked: bool,
    stopping: bool,
}

#[derive(Clone)]
pub struct Publisher {
    shared: Arc<(Mutex<Pokes>, Condvar)>,
}

/// What the thread remembers between publishes.
#[derive(Default)]
struct Published {
    doc: Option<StatusDoc>,
    at: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Publisher {
    /// Starts the publisher thread; the daemon loop hears through `events` if it ever ends.
    pub fn start(
        state_dir: PathBuf,
        config: Arc<Mutex<Config>>,
        events: UnboundedSender<Event>,
    ) -> Publisher {
        let publisher = Publisher { shared: Arc::default() };
        let thread = publisher.clone();
        super::worker::supervised("troops-status", events, move || thread.run(&state_dir, &config));
        publisher
    }

    /// Something may have changed: publish if it did.
    pub fn poke(&self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap().poked = true;
        wake.notify_one();
    }

    pub fn stop(&self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap().stopping = true;
        wake.notify_one();
    }

    fn run(&self, state_dir: &std::path::Path, config: &Mutex<Config>) {
        let mut last = Published::default();
        // The first round publishes at once: a restarted daemon says so.
        self.poke();
        loop {
            // Read first: the config's lock is not held while waiting.
            let heartbeat = config.lock().unwrap().status_heartbeat;
            if !self.wait(&last, heartbeat) {
                break;
            }
            // Without a status remote the thread only waits: it allocates nothing, so it keeps no
            // memory arena of its own warm.
            if config.lock().unwrap().status_remote.is_none() {
                continue;
            }
            let config = config.lock().unwrap().clone();
            let Some(remote) = config.status_remote.clone() else { continue };
            let node = Node { state_dir: state_dir.to_owned(), config };
            let doc = match StatusDoc::build(&node) {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the status document");
                    continue;
                }
            };
            let news = last.doc.as_ref().is_none_or(|d| !d.same_news(&doc));
            let due = last.at.is_none_or(|at| at.elapsed() >= heartbeat);
            let backing_off = last.retry_at.is_some_and(|at| Instant::now() < at);
            if !(news || due) || backing_off {
                continue;
            }
            match publish::publish(&node, &doc, &remote, node.config.fetch_timeout) {
                Ok(done) => {
                    tracing::info!(reference = %done.reference, remote = %done.remote, state = %doc.state, deployed = %doc.deployed.as_deref().unwrap_or("none"), ms = done.duration.as_millis() as u64, "status published");
                    last =
                        Published { doc: Some(doc), at: Some(Instant::now()), failures: 0, retry_at: None };
                }
                Err(e) => {
                    last.failures = last.failures.saturating_add(1);
                    // At the pace of the pull cycles, doubling, at most a heartbeat.
                    let doublings = last.failures.saturating_sub(1).min(20);
                    let wait = node.config.interval.saturating_mul(1 << doublings).min(heartbeat);
                    tracing::warn!(error = %e, retry_in = %humantime::format_duration(wait), "status not published");
                    last.retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }

    /// Waits for a poke, the heartbeat or the end of a backoff; false once the daemon stops.
    fn wait(&self, last: &Published, heartbeat: Duration) -> bool {
        let until = last.retry_at.or(last.at.map(|at| at + heartbeat));
        let (lock, wake) = &*self.shared;
        let mut pokes = lock.lock().unwrap();
        while !pokes.poked && !pokes.stopping {
            pokes = match until {
                None => wake.wait(pokes).unwrap(),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    wake.wait_timeout(pokes, left).unwrap().0
                }
            };
        }
        pokes.poked = false;
        !pokes.stopping
    }
}
