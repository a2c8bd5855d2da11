//! The status publisher's timing, kept by the daemon's loop: a round (build this node's status
//! document, push it to the `status_remote` when it says something new or a heartbeat is due) runs
//! as a job after each run and pull cycle, and once per `status_heartbeat` when nothing changes.
//! A push that fails is tried again a pull interval later, doubling up to a heartbeat; it never
//! holds up a run. Without a status remote nothing runs and nothing is kept.

use tokio::time::Instant;
use troops_core::mech::statusrefs;
use troops_core::model::config::Config;
use troops_core::model::node::Node;
use troops_core::model::status::StatusDoc;

#[derive(Default)]
pub struct Publisher {
    /// The last document published, and when.
    last: Option<(StatusDoc, Instant)>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Something may have changed since the last round.
    poked: bool,
    /// A round is under way.
    busy: bool,
}

/// One round, carried to a job and back.
pub struct Round {
    last: Option<StatusDoc>,
    heartbeat_due: bool,
    remote: String,
    outcome: Outcome,
}

enum Outcome {
    NotRun,
    /// Nothing new, and no heartbeat due.
    Unchanged,
    Published(Box<StatusDoc>),
    Failed,
}

impl Publisher {
    /// Something may have changed: publish if it did.
    pub fn poke(&mut self) {
        self.poked = true;
    }

    /// When the loop should start the next round: at once after a poke, at the heartbeat, never
    /// before a backoff ends; `None` while one runs or without a status remote.
    pub fn due(&self, config: &Config) -> Option<Instant> {
        if self.busy || config.status_remote.is_none() {
            return None;
        }
        let heartbeat = self.last.as_ref().map_or_else(Instant::now, |(_, at)| *at + config.status_heartbeat);
        let due = if self.poked { Instant::now() } else { heartbeat };
        Some(self.retry_at.map_or(due, |retry| due.max(retry)))
    }

    /// Starts a round, if one is due.
    pub fn start(&mut self, config: &Config) -> Option<Round> {
        let remote = config.status_remote.clone()?;
        if self.busy {
            return None;
        }
        self.busy = true;
        self.poked = false;
        let heartbeat_due = self.last.as_ref().is_none_or(|(_, at)| at.elapsed() >= config.status_heartbeat);
        Some(Round {
            last: self.last.as_ref().map(|(doc, _)| doc.clone()),
            heartbeat_due,
            remote,
            outcome: Outcome::NotRun,
        })
    }

    /// A round ended.
    pub fn ended(&mut self, round: Round, config: &Config) {
        self.busy = false;
        match round.outcome {
            Outcome::NotRun | Outcome::Unchanged => {}
            Outcome::Published(doc) => {
                self.last = Some((*doc, Instant::now()));
                self.failures = 0;
                self.retry_at = None;
            }
            Outcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                // At the pace of the pull cycles, doubling, at most a heartbeat.
                let doublings = self.failures.saturating_sub(1).min(20);
                let wait = config.interval.saturating_mul(1 << doublings).min(config.status_heartbeat);
                tracing::warn!(retry_in = %humantime::format_duration(wait), "status not published");
                self.retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

impl Round {
    /// Builds the document and publishes it when it is news or a heartbeat is due (blocking).
    pub fn run(mut self, node: &Node) -> Round {
        let built = statusrefs::Turn::take(node)
            .and_then(|turn| Ok((turn, troops_core::node::state::status_doc(node)?)));
        let (turn, doc) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(error = %e, "status not built");
                self.outcome = Outcome::NotRun;
                return self;
            }
        };
        let news = self.last.as_ref().is_none_or(|d| !d.same_news(&doc));
        if !(news || self.heartbeat_due) {
            self.outcome = Outcome::Unchanged;
            return self;
        }
        self.outcome = match turn.publish(node, &doc, &self.remote, node.config.fetch_timeout) {
            Ok(done) => {
                tracing::info!(reference = %done.reference, remote = %done.remote, state = %doc.state, deployed = %doc.deployed.as_deref().unwrap_or("none"), ms = done.duration.as_millis() as u64, "status published");
                Outcome::Published(Box::new(doc))
            }
            Err(e) => {
                tracing::warn!(error = %e, "status not published");
                Outcome::Failed
            }
        };
        self
    }
}
