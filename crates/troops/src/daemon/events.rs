//! What the daemon's loop hears, on one channel: requests from its socket, the output and ends
//! of its jobs, and what they read. A floor below the loop, so jobs and connections can send
//! without knowing the loop.

use std::time::SystemTime;

use git2::Oid;
use tokio::sync::{mpsc, oneshot};
use troops_core::mech::control::{DaemonStatus, Done, Request};
use troops_core::model::config::Config;

use super::listener::Listener;
use super::publisher;

/// Everything the loop hears.
pub enum Event {
    /// A client's request, with the branch tip when it arrived (for a push to join the run of it).
    Request { request: Request, listener: Listener, tip: Option<Oid> },
    /// `troops status` asks how the daemon is.
    Status(oneshot::Sender<DaemonStatus>),
    /// Output of the run under way.
    RunOutput(String),
    /// The run under way read the branch tip it runs.
    RunTip(Option<Oid>),
    /// The run under way ended.
    RunDone(RunEnd),
    /// Output of the pull cycle under way.
    FetchOutput(String),
    /// The pull cycle under way ended: the tip it left, and whether no remote could be fetched.
    Pulled(Result<Pulled, Done>),
    /// The status publisher's round ended.
    Published(Box<publisher::Round>),
    /// The branch tip, read after a move settled.
    TipRead(Option<Oid>),
    /// The config file, read again.
    Reloaded(Box<Option<Config>>),
    /// When a failed commit is due again, read at start.
    NextDue(Option<SystemTime>),
    /// A recheck ended, or the recheck period was read (after a run, at start).
    Rechecked(troops_core::node::drift::Rechecked),
    /// A notify command ended.
    Told,
    /// Why `/metrics` is not served (another process holds its port), or `None`: it is again.
    MetricsServed(Option<String>),
    /// A job panicked: nothing can be trusted to run any more.
    Panicked(&'static str),
}

/// The events' sending end, for jobs and connections.
pub type Events = mpsc::UnboundedSender<Event>;

/// How a run ended, for its listeners, the retry timer and systemd.
pub struct RunEnd {
    pub done: Done,
    /// When a failed commit is due again, as the disk says after the run.
    pub next_due: Option<SystemTime>,
    /// What systemd's STATUS says after it: what is deployed, whether a failed commit waits.
    pub summary: String,
    /// Runs worth a notification, in order.
    pub tell: Vec<u64>,
}

/// What a pull cycle left: the tip, and whether it could fetch no remote.
pub struct Pulled {
    pub tip: Option<Oid>,
    pub no_remote: bool,
    /// What the watched exports call for after the cycle's fetch of the status refs.
    pub fleet: Option<troops_core::policy::watch::Verdict>,
}
