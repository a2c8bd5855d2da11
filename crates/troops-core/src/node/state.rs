//! What a node is now, read from disk without taking anything: the one view that `troops status`
//! (text and `--json`), the published status document, the metrics and systemd's status line are
//! all made from, so they never disagree. A run on record as under way is taken as it stands:
//! when nobody holds the node lock its troops is gone, and it is shown as what the next run will
//! make of it (`runs::as_it_stands`), by every one of them alike.

use std::time::SystemTime;

use git2::Oid;

use crate::mech::metrics::{Gauges, LastRun};
use crate::mech::remotes::RemoteState;
use crate::mech::repo::Quarantined;
use crate::mech::runs::{Other, Unreadable};
use crate::model::ask::Ask;
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::records::{CheckStatus, RunRecord, RunStatus};
use crate::model::status::{state_of, Diverged, Hold, Quarantine, RunSummary, State, StatusDoc, SCHEMA};
use crate::policy::schedule::Decision;
use crate::policy::waves::Place;

/// A node as it is now.
#[derive(Debug)]
pub struct NodeState {
    pub host: String,
    /// Its roles by the plan at the tip (the config's alone when that plan cannot be read).
    pub roles: Vec<String>,
    /// Why the plan at the tip cannot be read, when it cannot.
    pub plan_error: Option<String>,
    pub branch: String,
    pub tip: Option<Oid>,
    /// What this process goes by as deployed (root: its ledger).
    pub deployed: Option<Oid>,
    /// What `refs/troops/deployed` says, which another user's run or a hand can move.
    pub deployed_ref: Option<Oid>,
    /// The run under way, if one is (its troops holds the node lock).
    pub running: Option<RunRecord>,
    /// The newest run that is over, as it stands (one whose troops died included).
    pub last: Option<RunRecord>,
    /// Run records that cannot be read, and runs others recorded: shown, never decided from.
    pub unreadable: Vec<Unreadable>,
    pub others: Vec<Other>,
    /// What the node runs next on its own, and why (`schedule`, for a tick).
    pub next: Decision,
    /// What the rollout holds back, when it holds the tip.
    pub hold: Option<Hold>,
    /// This node's wave by the plan at the tip.
    pub wave: Option<Place>,
    pub quarantined: Vec<Quarantined>,
    pub remotes: Vec<Remote>,
    /// When the branch and its remotes have forked (as the last pull cycle found).
    pub diverged: Option<Diverged>,
    /// What the last recheck found drifted since the newest run, if anything.
    pub drift: Option<crate::mech::drift::Drift>,
    /// Why nothing automatic runs, when a person paused the node.
    pub paused: Option<String>,
    /// Why the tip waits for a deploy window of its plan, if it does (a tip that is deployed
    /// waits for nothing: its plan is not read for this).
    pub window_closed: Option<String>,
    /// What the node tells its peers: the exports of its last run that succeeded.
    pub exports: crate::model::exports::Exports,
    /// The fleet's freeze as this node believes it, while it stands.
    pub frozen: Option<String>,
    /// Why the tip waits for approvals of this node's wave, if it does.
    pub approval: Option<String>,
    /// The reboot under way, or how the last one ended (`mech::reboot`).
    pub reboot: Option<String>,
    /// The disruption slot the run under way, or a reboot, holds or waits for.
    pub slot: Option<crate::mech::slot_record::SlotNow>,
    /// The newest freeze document this node refused, and why.
    pub order_refused: Option<String>,
    /// The node's state, and since when.
    pub state: State,
    pub since: Option<String>,
}

/// One remote of the node repo, and what its last fetch said.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub url: String,
    pub last_fetch: Option<RemoteState>,
}

/// Reads the node at once, taking no lock but a glance at whether the node lock is held.
pub fn read(node: &Node) -> Result<NodeState> {
    let repo = node.repo()?;
    let tip = repo.tip()?;
    let deployed = repo.deployed()?;
    let (roles, plan_error) = match node.roles(None) {
        Ok(roles) => (roles.into_iter().collect(), None),
        Err(e) => (node.config.roles.clone(), Some(e.to_string())),
    };
    let fetched = crate::mech::remotes::load(node);
    let remotes = repo
        .git
        .remotes()
        .map_err(|e| crate::Error::git(format!("listing the remotes of {}", node.repo_path().display()), e))?
        .iter()
        .flatten()
        .map(|name| Remote {
            name: name.to_owned(),
            url: repo.git.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default(),
            last_fetch: fetched.remotes.get(name).cloned(),
        })
        .collect();
    let history = node.runs().all()?;
    let mut newest_first = history.records.into_iter().rev();
    let (running, last) = match newest_first.next().map(|r| crate::mech::runs::as_it_stands(node, r)) {
        Some(r) if r.status.unfinished() => (Some(r), newest_first.next()),
        last => (None, last),
    };
    let hold = crate::node::rollout::load_hold(node)?;
    let wave = tip.and_then(|tip| crate::node::rollout::place(node, &repo, tip));
    let newest = running.as_ref().or(last.as_ref());
    let (state, since) = state_of(newest, deployed, tip, hold.as_ref());
    let drift = crate::mech::drift::current(node, newest).filter(|_| state == State::Healthy);
    let (state, since) = match &drift {
        Some(drift) => (State::Drifted, Some(drift.checked_at.clone())),
        None => (state, since),
    };
    // Paused says more than healthy, idle or held (each of which it keeps so); what runs or
    // failed says more than paused.
    let paused = crate::node::facts::paused(node).map(|p| p.why);
    let (state, since) = match &paused {
        Some(_) if matches!(state, State::Healthy | State::Idle | State::Held | State::Drifted) => {
            (State::Paused, crate::mech::pause::current(node).ok().flatten().map(|p| p.since.to_string()))
        }
        _ => (state, since),
    };
    // A freeze says more than healthy, idle or held when it holds a new tip; a pause says more.
    let frozen = crate::node::orders::frozen(node).map(|f| f.why);
    let due = tip.filter(|&t| Some(t) != deployed && repo.quarantined(t).ok().flatten().is_none());
    let state = match &frozen {
        Some(_)
            if due.is_some()
                && matches!(state, State::Healthy | State::Idle | State::Held | State::Drifted) =>
        {
            State::Frozen
        }
        _ => state,
    };
    let approval =
        due.and_then(|tip| crate::node::orders::awaiting_approval(node, &repo, tip)).map(|a| a.why);
    // What the run under way, or else a reboot, does about a disruption slot; waiting for one
    // says more than deploying, or than healthy for a reboot. A reboot under way says more than
    // healthy, idle, held, drifted, paused or frozen: the host is out of service.
    let slot = match &running {
        Some(r) => crate::mech::slot_record::current(node, r.id),
        None => crate::mech::slot_record::rebooting(node),
    };
    let (reboot, reboot_unreadable) = match crate::mech::reboot::load(node) {
        Ok(reboot) => (reboot, None),
        Err(e) => (None, Some(format!("{e}; {}", crate::mech::reboot::UNREADABLE))),
    };
    let rebooting = reboot.as_ref().filter(|r| r.ended.is_none() && running.is_none());
    let quiet = matches!(
        state,
        State::Healthy | State::Idle | State::Held | State::Drifted | State::Paused | State::Frozen
    );
    let (state, since) = match (&slot, rebooting) {
        (_, Some(r)) if quiet => (State::Rebooting, Some(r.begun_at.to_string())),
        (Some(s), _) if s.waiting.is_some() && (state == State::Deploying || (s.reboot && quiet)) => {
            (State::WaitingSlot, since)
        }
        _ => (state, since),
    };
    Ok(NodeState {
        host: node.config.hostname(),
        roles,
        plan_error,
        branch: node.config.branch.clone(),
        tip,
        deployed,
        deployed_ref: repo.deployed_ref()?,
        running,
        last,
        unreadable: history.unreadable,
        others: history.others,
        next: crate::node::facts::decision(node, &Ask::Tick)?,
        hold: hold.filter(|_| state == State::Held),
        wave,
        quarantined: repo.all_quarantined()?,
        remotes,
        // Until the next pull, what the last one found holds only while the branch is where it was.
        diverged: fetched.diverged.clone().filter(|d| tip.is_some_and(|t| t.to_string() == d.tip)),
        drift,
        paused,
        window_closed: tip
            .filter(|tip| Some(*tip) != deployed)
            .and_then(|tip| crate::node::facts::window_closed(node, &repo, tip))
            .map(|w| w.why),
        exports: match crate::mech::exports::kept(node) {
            Ok(kept) => kept.map(|k| k.exports).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "the node's exports cannot be read; none are published");
                Default::default()
            }
        },
        frozen,
        approval,
        reboot: reboot.map(|r| r.sentence()).or(reboot_unreadable),
        slot,
        order_refused: crate::node::orders::load(node).ok().and_then(|f| f.refused.into_iter().next()).map(
            |r| {
                format!(
                    "remote {}: the freeze document {} is refused: {}",
                    r.remote,
                    &r.commit[..r.commit.len().min(12)],
                    r.why
                )
            },
        ),
        state,
        since,
    })
}

impl NodeState {
    /// The newest run, under way or over.
    pub fn newest(&self) -> Option<&RunRecord> {
        self.running.as_ref().or(self.last.as_ref())
    }

    /// The document this node publishes to the fleet.
    pub fn status_doc(&self, node: &Node) -> StatusDoc {
        let newest = self.newest();
        StatusDoc {
            schema: SCHEMA,
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles: self.roles.clone(),
            wave: self.wave.as_ref().map(|w| w.name.clone()),
            tip: self.tip.map(|t| t.to_string()),
            deployed: self.deployed.map(|d| d.to_string()),
            state: self.state,
            since: self.since.clone(),
            run: newest.map(|r| RunSummary {
                id: r.id,
                commit: r.commit,
                trigger: r.trigger,
                status: r.status,
                started_at: r.started_at,
                finished_at: r.finished_at,
                error: r.error.clone(),
            }),
            hold: self.hold.clone(),
            diverged: self.diverged.clone(),
            quarantined: self
                .quarantined
                .iter()
                .map(|q| Quarantine { commit: q.commit.to_string(), reason: q.reason.clone() })
                .collect(),
            checks: newest.map(|r| r.checks.clone()).unwrap_or_default(),
            drift: self.drift.as_ref().map(|d| d.found.clone()).unwrap_or_default(),
            paused: self.paused.clone(),
            window: self.window_closed.clone(),
            exports: self.exports.clone(),
            frozen: self.frozen.clone(),
            approval: self.approval.clone(),
            slot: self.slot.as_ref().map(|s| s.sentence()),
            reboot: self.reboot.clone(),
            heartbeat_seconds: node.config.status_heartbeat.as_secs(),
            updated_at: crate::model::records::now(),
        }
    }

    /// What the metrics show of the node now (the counters are kept apart, `metrics`).
    pub fn gauges(&self) -> Gauges {
        let last = self.last.as_ref();
        let ended = |r: &RunRecord| {
            r.finished_at.unwrap_or(r.started_at).time().duration_since(SystemTime::UNIX_EPOCH).ok()
        };
        Gauges {
            deployed: self.deployed.map(|d| d.to_string()),
            tip: self.tip.map(|t| t.to_string()),
            state: self.state.to_string(),
            quarantined: self.quarantined.len(),
            last_run: last.map(|r| LastRun {
                succeeded: r.status == RunStatus::Succeeded,
                at: ended(r).map_or(0.0, |d| d.as_secs_f64()),
            }),
            checks: last
                .map(|r| {
                    r.checks
                        .iter()
                        .filter(|c| !matches!(c.status, CheckStatus::Skipped | CheckStatus::NotRun))
                        .map(|c| {
                            (c.name.clone(), matches!(c.status, CheckStatus::Passed | CheckStatus::Passing))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            rollout_held: self.hold.is_some(),
            drifted: self.drift.is_some(),
            paused: self.paused.is_some(),
            window_open: self.window_closed.is_none(),
            frozen: self.frozen.is_some(),
            awaiting_approval: self.approval.is_some(),
            fleet_refused: std::collections::BTreeMap::new(),
            slot_held: self.slot.as_ref().is_some_and(|s| s.held.is_some()),
            slot_waiting: self.slot.as_ref().is_some_and(|s| s.waiting.is_some()),
        }
    }

    /// What systemd's status line says of the node: its state and what is deployed.
    pub fn summary(&self) -> String {
        let deployed =
            self.deployed.map_or("nothing".to_owned(), |d| crate::model::names::short(d).to_owned());
        format!("{}; deployed {deployed}", self.state)
    }
}

/// This node's status document now, from disk.
pub fn status_doc(node: &Node) -> Result<StatusDoc> {
    Ok(read(node)?.status_doc(node))
}

/// The metrics of this node now, as the textfile and `/metrics` show them.
pub fn metrics(node: &Node) -> Result<String> {
    let mut gauges = read(node)?.gauges();
    let refused = crate::mech::believe::Newest::load(&node.believed_path()).refused;
    gauges.fleet_refused = refused.into_iter().map(|(reason, n)| (reason.as_str().to_owned(), n)).collect();
    Ok(crate::mech::metrics::render(&crate::mech::metrics::snapshot(node, gauges)))
}

/// After something changed the node outside a run (a slot taken or given back, a reboot's
/// progress): the metrics textfile and the status document say so now (the document in the
/// background: nobody waits for it).
pub fn changed(node: &Node) {
    write_textfile(node);
    crate::mech::statusrefs::in_background(node);
}

/// Rewrites the `[metrics] textfile`, if there is one, after whatever changed the node; a
/// failure is reported (the metrics never change a run's result).
pub fn write_textfile(node: &Node) {
    let Some(path) = &node.config.metrics.textfile else { return };
    let written = metrics(node).and_then(|text| {
        // node_exporter runs as its own user: the file is for everyone to read. It is an
        // observation the next change writes anew (a held node's every tick, say): replaced
        // atomically, never flushed to disk.
        crate::mech::files::replace(path, text.as_bytes(), 0o644, crate::mech::files::Durability::Unsynced)
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "metrics not updated");
    }
}
