//! Prometheus metrics of a node (SPEC "Metrics"). Counters, the run-duration histogram and the
//! last successful fetch of each remote live in `<state>/metrics/counters.json`, so they survive
//! restarts and run pruning; everything else is read fresh (refs, config). Whoever changes the
//! counters (a run, the daemon's fetcher, a hook run in-process by a member of the admin group)
//! does it under a flock on `<state>/metrics/`; the gauges are read fresh from the node by
//! `node::state`, which also writes the `[metrics] textfile` after each change. A node with
//! neither `textfile` nor `listen` keeps no counters. Nothing here ever fails
//! a run or a fetch, nor holds one up: the admin group may write `metrics/`, so the counters are
//! read as every state file is (`state_file`: never through a symlink, never waiting on a FIFO
//! planted there, only up to a bound), and the flock, which a member can hold, is waited for at
//! most [`LOCK_WAIT`]; a problem is logged and the caller goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::{Deserialize, Serialize};

use crate::mech::fetch::Fetched;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;
use crate::model::records::{RunRecord, RunStatus, Trigger};

/// The `Content-Type` of what [`render`] gives (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the `troops_run_duration_seconds` buckets: a run takes seconds to an
/// hour (a step's default timeout is 30m).
pub const DURATION_BUCKETS: [f64; 10] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// The longest a change of the counters waits for another's: each takes milliseconds, so a
/// holder that takes longer is stuck or hostile, and the change is skipped (logged).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What survives restarts and pruning, as stored in `<state>/metrics/counters.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Runs by result (the run's final status: a failed run that was rolled back is
    /// `rolled_back`) and trigger.
    pub runs: BTreeMap<String, BTreeMap<String, u64>>,
    pub run_duration: Histogram,
    /// Fetches by remote and result (`succeeded`, `failed`).
    pub fetches: BTreeMap<String, BTreeMap<String, u64>>,
    /// Unix seconds of each remote's last successful fetch.
    pub last_fetch_success: BTreeMap<String, f64>,
    /// Commits refused for their signature, by reason (`unsigned`, `unknown_key`, ...).
    pub verify_refusals: BTreeMap<String, u64>,
    /// Runs with trigger `rollback`.
    pub rollbacks: u64,
    /// Unix seconds at the end of the last run that succeeded.
    pub last_success_at: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub succeeded: bool,
    /// Unix seconds at its end.
    pub at: f64,
}

/// A histogram with the [`DURATION_BUCKETS`]: the count of observations in each bucket (not
/// cumulative; anything above the last bound is only in `count`), their sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.buckets.len() != DURATION_BUCKETS.len() {
            // Stored with other buckets (or none yet): the old counts cannot be split into these.
            *self = Histogram { buckets: vec![0; DURATION_BUCKETS.len()], ..Histogram::default() };
        }
        if let Some(i) = DURATION_BUCKETS.iter().position(|&bound| value <= bound) {
            self.buckets[i] = self.buckets[i].saturating_add(1);
        }
        self.sum += value;
        self.count = self.count.saturating_add(1);
    }
}

/// What the metrics show of the node now, from the one read of it (`node::state`): the same
/// things `troops status` and the status document say.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub deployed: Option<String>,
    pub tip: Option<String>,
    /// The node's state (`deploying`, `healthy`, ...), as the status document says it.
    pub state: String,
    /// How many commits are quarantined after a failure (as root's ledger says).
    pub quarantined: usize,
    /// The newest run that is over, as it stands (a run whose troops died included).
    pub last_run: Option<LastRun>,
    /// That run's checks: name and whether it passed.
    pub checks: BTreeMap<String, bool>,
    /// Whether the rollout holds this node's tip back.
    pub rollout_held: bool,
    /// Whether the last recheck found the host drifted from its deployed commit.
    pub drifted: bool,
    /// Whether a person paused the node.
    pub paused: bool,
    /// Whether no new tip waits for a deploy window of its plan.
    pub window_open: bool,
    /// Whether a freeze of the fleet this node believes stands.
    pub frozen: bool,
    /// Whether the tip waits for approvals of this node's wave.
    pub awaiting_approval: bool,
    /// The status documents the last fetch of the status refs did not believe, by reason
    /// (`believe::Reason`); reasons with none are left out.
    pub fleet_refused: BTreeMap<String, usize>,
    /// Whether the run under way holds a disruption slot.
    pub slot_held: bool,
    /// Whether the run under way waits for a disruption slot.
    pub slot_waiting: bool,
}

/// Everything the metrics show at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub gauges: Gauges,
    pub counters: Counters,
}

/// After a run's record is final (and `refs/troops/deployed` moved if it succeeded): observes its
/// duration and counts the runs of `results` by final status and trigger. `results`
/// is the run itself, unless a rollback of it follows (which knows its final status), and the
/// failed run a rollback undid, with the status the rollback left it (`rolled_back`, or `failed`).
pub fn after_run(node: &Node, record: &RunRecord, results: &[&RunRecord]) {
    let now = unix_now();
    let duration = record.wall_time(SystemTime::now()).map(|d| d.as_secs_f64());
    update(node, |c| {
        for run in results {
            let (result, trigger) = (run.status.to_string(), run.trigger.to_string());
            increment(c.runs.entry(result).or_default().entry(trigger).or_default());
        }
        if let Some(seconds) = duration {
            c.run_duration.observe(seconds);
        }
        if record.trigger == Trigger::Rollback {
            increment(&mut c.rollbacks);
        }
        if record.status == RunStatus::Succeeded {
            c.last_success_at = Some(now);
        }
    });
}

/// After every fetch of the node's remotes: counts each remote's fetch and notes when it last
/// worked. Remotes that are gone from the repo are dropped from the counters.
pub fn after_fetch(node: &Node, fetched: &[Fetched]) {
    let now = unix_now();
    update(node, |c| {
        c.fetches.retain(|remote, _| fetched.iter().any(|f| &f.remote == remote));
        c.last_fetch_success.retain(|remote, _| fetched.iter().any(|f| &f.remote == remote));
        for f in fetched {
            let result = if f.tip.is_ok() { "succeeded" } else { "failed" };
            increment(c.fetches.entry(f.remote.clone()).or_default().entry(result.to_owned()).or_default());
            if f.tip.is_ok() {
                c.last_fetch_success.insert(f.remote.clone(), now);
            }
        }
    });
}

/// A commit refused for its signature, with `reason` the kind of refusal
/// (`verify::Verification::kind`).
pub fn count_refusal(node: &Node, reason: &str) {
    update(node, |c| increment(c.verify_refusals.entry(reason.to_owned()).or_default()));
}

/// The metrics now: `gauges`, and the counters as kept. Counters that cannot be read start from
/// zero (logged).
pub fn snapshot(node: &Node, gauges: Gauges) -> Snapshot {
    Snapshot { gauges, counters: load(&counters_path(node)) }
}

/// The exposition text of `snapshot` (Prometheus text format 0.0.4, no timestamps).
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snapshot.clone()));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// The counters, in `Node::metrics_dir` (which the admin group may write, `init`), with their lock.
fn counters_path(node: &Node) -> PathBuf {
    node.metrics_dir().join("counters.json")
}

/// Changes the counters under the metrics lock; logs what fails. Whoever changed them rewrites the
/// textfile after (`node::state::write_textfile`), from the node as it is then.
fn update(node: &Node, change: impl FnOnce(&mut Counters)) {
    // A node that exports no metrics pays nothing for them (they count from when it starts to).
    let settings = &node.config.metrics;
    if settings.textfile.is_none() && settings.listen.is_none() {
        return;
    }
    let result = (|| {
        let dir = node.metrics_dir();
        crate::mech::modes::dir_all(&dir, 0o750)?;
        let _lock = lock(&dir)?;
        let path = counters_path(node);
        let mut counters = load(&path);
        change(&mut counters);
        state_file::save(&path, &counters)
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics not updated");
    }
}

/// The flock on `dir` that orders changes of the counters, waited for at most [`LOCK_WAIT`]
/// (polled: a blocked flock(2) would outlast SIGTERM, and a member may hold this one for ever).
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = Instant::now() + LOCK_WAIT;
    let mut handle = std::fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    loop {
        match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                handle = file;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Env(format!(
                    "{} stayed locked by another process for {}s",
                    dir.display(),
                    LOCK_WAIT.as_secs()
                )))
            }
            Err((_, e)) => return Err(Error::io(format!("locking {}", dir.display()), e.into())),
        }
    }
}

fn increment(n: &mut u64) {
    *n = n.saturating_add(1);
}

impl StateFile for Counters {
    const WHAT: &'static str = "a counters file";
    const SCHEMA: u32 = 1;
    /// Nothing troops writes comes near it.
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
}

/// The counters at `path`; none yet, or a file that cannot be read as counters: zero (said in
/// the log).
fn load(path: &Path) -> Counters {
    state_file::load(path)
        .unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "{e}; the counters start from zero");
            None
        })
        .unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let (c, g) = (&self.counters, &self.gauges);
        let mut info = |name: &str, help: &str, labels: Option<[(&str, &str); 1]>| {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Info)?;
            match labels {
                Some(labels) => metric.encode_info(&labels),
                None => Ok(()),
            }
        };
        info("troops_build", "The version of troops", Some([("version", env!("CARGO_PKG_VERSION"))]))?;
        info(
            "troops_deployed",
            "The commit of refs/troops/deployed, the last commit whose run succeeded",
            g.deployed.as_deref().map(|commit| [("commit", commit)]),
        )?;
        info(
            "troops_tip",
            "The commit at the tip of the followed branch",
            g.tip.as_deref().map(|commit| [("commit", commit)]),
        )?;

        let mut gauge = |name: &str, help: &str, value: Option<f64>| match value {
            Some(value) => ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?),
            None => encoder.encode_descriptor(name, help, None, MetricType::Gauge).map(drop),
        };
        let last = g.last_run;
        gauge(
            "troops_last_run_success",
            "1 if the last run succeeded, 0 if it did not",
            last.map(|l| if l.succeeded { 1.0 } else { 0.0 }),
        )?;
        gauge(
            "troops_last_run_timestamp_seconds",
            "When the last run ended (Unix time)",
            last.map(|l| l.at),
        )?;
        gauge(
            "troops_last_success_timestamp_seconds",
            "When the last successful run ended (Unix time)",
            c.last_success_at,
        )?;

        let mut runs = encoder.encode_descriptor(
            "troops_runs",
            "Runs by result (the run's final status) and trigger",
            None,
            MetricType::Counter,
        )?;
        for (result, by_trigger) in &c.runs {
            for (trigger, n) in by_trigger {
                let labels = [("result", result.as_str()), ("trigger", trigger.as_str())];
                ConstCounter::new(*n).encode(runs.encode_family(&labels)?)?;
            }
        }

        let h = &c.run_duration;
        let mut duration = encoder.encode_descriptor(
            "troops_run_duration_seconds",
            "How long runs took, from the run record's start to its end",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = if h.buckets.len() == DURATION_BUCKETS.len() {
            DURATION_BUCKETS.iter().copied().zip(h.buckets.iter().copied()).collect()
        } else {
            DURATION_BUCKETS.iter().map(|&bound| (bound, 0)).collect()
        };
        // The numbers come from a file the admin group may write: the encoder adds the buckets
        // up, so they are cut to what adds up to `count` at most.
        let mut room = h.count;
        let buckets: Vec<(f64, u64)> = buckets
            .into_iter()
            .map(|(bound, n)| {
                let n = n.min(room);
                room -= n;
                (bound, n)
            })
            .collect();
        let buckets: Vec<(f64, u64)> = buckets.into_iter().chain([(f64::INFINITY, room)]).collect();
        duration
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)?;

        let mut fetches = encoder.encode_descriptor(
            "troops_fetch",
            "Fetches of each remote by result (succeeded, failed)",
            None,
            MetricType::Counter,
        )?;
        for (remote, by_result) in &c.fetches {
            for (result, n) in by_result {
                let labels = [("remote", remote.as_str()), ("result", result.as_str())];
                ConstCounter::new(*n).encode(fetches.encode_family(&labels)?)?;
            }
        }
        let mut last_fetch = encoder.encode_descriptor(
            "troops_last_fetch_success_timestamp_seconds",
            "When each remote was last fetched successfully (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        for (remote, at) in &c.last_fetch_success {
            ConstGauge::new(*at).encode(last_fetch.encode_family(&[("remote", remote.as_str())])?)?;
        }

        let mut refusals = encoder.encode_descriptor(
            "troops_verify_refusals",
            "Commits refused for their signature, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &c.verify_refusals {
            ConstCounter::new(*n).encode(refusals.encode_family(&[("reason", reason.as_str())])?)?;
        }

        let mut checks = encoder.encode_descriptor(
            "troops_check_up",
            "1 if the check passed in the last run, 0 if it failed",
            None,
            MetricType::Gauge,
        )?;
        for (check, up) in &g.checks {
            ConstGauge::new(i64::from(*up)).encode(checks.encode_family(&[("check", check.as_str())])?)?;
        }

        ConstCounter::new(c.rollbacks).encode(encoder.encode_descriptor(
            "troops_rollbacks",
            "Runs that rolled back to the last good commit",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(g.quarantined as i64).encode(encoder.encode_descriptor(
            "troops_quarantined_commits",
            "Commits quarantined after a failure (refs/troops/bad/*), never run again by a pull",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.rollout_held)).encode(encoder.encode_descriptor(
            "troops_rollout_held",
            "1 if the rollout holds this node's next commit back",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.drifted)).encode(encoder.encode_descriptor(
            "troops_drifted",
            "1 if the last recheck found the host drifted from its deployed commit",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.paused)).encode(encoder.encode_descriptor(
            "troops_paused",
            "1 if a person paused the node (troops pause): nothing automatic runs a commit",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.window_open)).encode(encoder.encode_descriptor(
            "troops_window_open",
            "0 while a new tip waits for a deploy window of its plan (troops status says until when)",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.frozen)).encode(encoder.encode_descriptor(
            "troops_frozen",
            "1 while a signed freeze of the fleet stands (troops freeze): no new commit runs by itself",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.awaiting_approval)).encode(encoder.encode_descriptor(
            "troops_awaiting_approval",
            "1 while the tip waits for trusted approvals of this node's wave (troops approve)",
            None,
            MetricType::Gauge,
        )?)?;
        let mut refused = encoder.encode_descriptor(
            "troops_fleet_refused",
            "Status documents of the fleet not believed at the last fetch, by reason (unsigned, wrong_key, rewound, ...)",
            None,
            MetricType::Gauge,
        )?;
        for reason in crate::mech::believe::Reason::ALL {
            let n = g.fleet_refused.get(reason.as_str()).copied().unwrap_or(0);
            ConstGauge::new(n as i64).encode(refused.encode_family(&[("reason", reason.as_str())])?)?;
        }
        ConstGauge::new(i64::from(g.slot_held)).encode(encoder.encode_descriptor(
            "troops_slot_held",
            "1 while the run under way holds a disruption slot (its disruptive steps and checks)",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(g.slot_waiting)).encode(encoder.encode_descriptor(
            "troops_slot_waiting",
            "1 while the run under way waits for a disruption slot (troops status says for whom)",
            None,
            MetricType::Gauge,
        )?)?;
        let mut state = encoder.encode_descriptor(
            "troops_state",
            "1 for the node's state (as troops status and its status document say it)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(state.encode_family(&[("state", g.state.as_str())])?)
    }
}

#[cfg(test)]
mod tests;
