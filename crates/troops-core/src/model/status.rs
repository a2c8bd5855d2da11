//! A node's status document (`status.json`), as it publishes it at `refs/troops/status/<host>`:
//! built from what is on disk (run records, refs, the rollout hold), so the daemon, `troops
//! status` and `troops fleet` all say the same thing; and reading the fleet's documents back.

use std::time::{Duration, SystemTime};

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::model::records::{commit_id, RunRecord, RunStatus, Trigger};
use crate::model::time::Timestamp;

/// Where each node's status chain lives, in the node repo and on the status remote.
pub const REF_PREFIX: &str = "refs/troops/status/";
/// The one file in a status commit's tree.
pub const FILE: &str = "status.json";

/// The largest status document read: a node's is a few KiB, and a hostile one must not cost
/// every other node's memory (its size is read from the object's header, not by inflating it).
pub const MAX_DOC: usize = 256 * 1024;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub schema: u32,
    pub host: String,
    /// The troops that wrote it.
    pub version: String,
    pub roles: Vec<String>,
    /// The node's wave by the plan at its tip; `None`: that plan has no `[rollout]`.
    pub wave: Option<String>,
    pub tip: Option<String>,
    pub deployed: Option<String>,
    pub state: State,
    /// When `state` began: the run's start (deploying), its end (healthy, failed), the hold's first
    /// verdict (held).
    pub since: Option<String>,
    /// The newest run.
    pub run: Option<RunSummary>,
    /// Why the tip does not run yet, when the rollout holds it.
    pub hold: Option<Hold>,
    /// When the node's branch and its remotes forked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Diverged>,
    /// Commits quarantined here (`refs/troops/bad/<sha>`), and why.
    pub quarantined: Vec<Quarantine>,
    /// The newest run's health checks.
    #[serde(default)]
    pub checks: Vec<crate::model::records::CheckRecord>,
    /// What the last recheck found drifted since the newest run (state `drifted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Why nothing automatic runs here, when a person paused the node (state `paused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Why the tip waits, when it is not deployed and the deploy windows are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// What the node tells its peers (`$TROOPS_EXPORTS`), as its last run that succeeded left
    /// them; absent in older documents.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub exports: crate::model::exports::Exports,
    /// The fleet's freeze as this node believes it, while it stands (who froze it, until when, why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    /// Why the tip waits for approvals of this node's wave, and who approved it so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The disruption slot the node's run holds or waits for: "holds disruption slot fleet/1 since
    /// T, lease until U", "waiting for a disruption slot of fleet (2 at once): held by web-3 ...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The node's reboot under way ("begun T (why), holding disruption slot fleet/0; ..."), or how
    /// the last one ended ("last at T: the host came back and its checks passed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<String>,
    /// The node's `status_heartbeat`: a document that has not changed for three of these is stale.
    pub heartbeat_seconds: u64,
    pub updated_at: String,
}

/// The node's branch and every remote that answered have forked (a force-pushed mirror, say):
/// nothing moves until a person says which history is right (README: "When a node and its
/// remotes fork").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    /// The remotes whose branch forked from the node's.
    pub remotes: Vec<String>,
    /// The node's tip they forked from.
    pub tip: String,
    /// When this node first found it so.
    pub since: String,
}

impl Diverged {
    /// "remotes a, b have forked from branch main at 1a2b3c4d5e6f (since T)".
    pub fn sentence(&self, branch: &str) -> String {
        let (noun, verb) = if self.remotes.len() == 1 { ("remote", "has") } else { ("remotes", "have") };
        format!(
            "{noun} {} {verb} forked from branch {branch} at {} (since {}): nothing moves until a person \
             decides which history is right",
            self.remotes.join(", "),
            crate::model::names::short(&self.tip),
            self.since
        )
    }
}

/// Why the rollout keeps a commit from running here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub commit: String,
    /// "wave 2 of 3 (early)".
    pub wave: String,
    /// The gate's sentence: what it waits for, or which failure halted the commit.
    pub why: String,
    /// When the previous wave will have soaked, if that is known.
    pub until: Option<String>,
    /// A failure report halted the commit: only a newer one goes on.
    pub halted: bool,
    /// When this commit was first held here.
    pub since: String,
}

/// A node's state, as `troops fleet` shows it and the rollout gate reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No run has ended here yet.
    Idle,
    Deploying,
    Soaking,
    Healthy,
    Failed,
    RolledBack,
    /// The rollout keeps the tip from running (see `hold`).
    Held,
    /// A recheck found the host drifted from its deployed commit (see `drift`): not healthy.
    Drifted,
    /// A person paused the node (see `paused`): nothing automatic runs, so not healthy.
    Paused,
    /// A freeze of the fleet holds the node's new tip (see `frozen`).
    Frozen,
    /// A run waits for a disruption slot before its first disruptive step (see `slot`).
    WaitingSlot,
    /// The host reboots, holding a disruption slot, until its checks after the boot pass (see
    /// `reboot`).
    Rebooting,
    /// A state this troops does not know, said by a newer peer (`paused`, ...): readers tolerate
    /// it. Never healthy and never a failure report, so the rollout waits on such a node.
    #[serde(other)]
    Other,
}

/// A commit quarantined on the node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub commit: String,
    pub reason: String,
}

/// The newest run, in short, written as its record writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    #[serde(with = "commit_id")]
    pub commit: Oid,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

impl State {
    /// A report that the node's run of a commit went wrong, which holds that commit for later waves.
    pub fn reports_failure(self) -> bool {
        matches!(self, State::Failed | State::RolledBack)
    }

    /// "failed", "rolled back": for sentences.
    pub fn as_verb(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Deploying => "deploying",
            State::Soaking => "soaking",
            State::Healthy => "healthy",
            State::Failed => "failed",
            State::RolledBack => "rolled back",
            State::Held => "held",
            State::Drifted => "drifted",
            State::Paused => "paused",
            State::Frozen => "frozen",
            State::WaitingSlot => "waiting_slot",
            State::Rebooting => "rebooting",
            State::Other => "in a state this troops does not know",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_verb())
    }
}

/// A node's state and since when, from its newest run, its deployed commit, its tip and the
/// rollout's hold on it. The one place that maps a node's records to a state.
pub fn state_of(
    last: Option<&RunRecord>,
    deployed: Option<Oid>,
    tip: Option<Oid>,
    hold: Option<&Hold>,
) -> (State, Option<String>) {
    let at = |time: Option<Timestamp>| time.map(|t| t.to_string());
    if let Some(run) = last.filter(|r| matches!(r.status, RunStatus::Running | RunStatus::Interrupted)) {
        // An interrupted run is run again: it is under way, not a verdict on its commit.
        return (State::Deploying, at(Some(run.started_at)));
    }
    if let Some(run) = last.filter(|r| r.status == RunStatus::Checking) {
        return (State::Soaking, at(Some(run.started_at)));
    }
    // The hold is of the tip, and the newest run is not one of the held commit (which ends it).
    let held = |commit: Oid| hold.is_some_and(|h| h.commit == commit.to_string());
    if let Some(hold) = hold.filter(|_| tip.is_some_and(held) && last.is_none_or(|r| !held(r.commit))) {
        return (State::Held, Some(hold.since.clone()));
    }
    match last {
        None => (State::Idle, None),
        Some(run) if matches!(run.status, RunStatus::Failed | RunStatus::RolledBack) => {
            (State::Failed, at(run.finished_at))
        }
        // Back on the last good commit after the tip failed here: the tip is what failed.
        Some(run)
            if run.trigger == crate::model::records::Trigger::Rollback
                && run.status == RunStatus::Succeeded =>
        {
            (State::RolledBack, at(run.finished_at))
        }
        Some(run) if Some(run.commit) == deployed => (State::Healthy, at(run.finished_at)),
        Some(_) => (State::Idle, None),
    }
}

impl StatusDoc {
    /// The same document but for when it was written: what decides whether to publish anew.
    pub fn same_news(&self, other: &StatusDoc) -> bool {
        StatusDoc { updated_at: String::new(), ..self.clone() }
            == StatusDoc { updated_at: String::new(), ..other.clone() }
    }

    pub fn deployed_oid(&self) -> Option<Oid> {
        self.deployed.as_deref().and_then(|c| Oid::from_str(c).ok())
    }

    /// Whether the node reports a failure: it failed or rolled back, or its rollout was halted by
    /// another's failure (what `troops fleet --strict` fails on).
    pub fn reports_failure(&self) -> bool {
        self.state.reports_failure() || self.hold.as_ref().is_some_and(|h| h.halted)
    }

    /// Why the node reports a failure: the newest run's error, or after a rollback why the tip
    /// was quarantined.
    pub fn failure(&self) -> Option<&str> {
        match self.state {
            State::RolledBack => self
                .quarantined
                .iter()
                .find(|q| Some(&q.commit) == self.tip.as_ref())
                .map(|q| q.reason.as_str()),
            _ => self.run.as_ref().and_then(|run| run.error.as_deref()),
        }
    }

    /// The commit a failure report is about: the newest run's, or after a rollback the tip (the
    /// commit that failed and stays quarantined there).
    pub fn failed_commit(&self) -> Option<Oid> {
        match self.state {
            State::RolledBack => self.tip.as_deref().and_then(|c| Oid::from_str(c).ok()),
            _ => self.run.as_ref().map(|r| r.commit),
        }
    }

    pub fn updated_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.updated_at.trim_end_matches('Z')).ok()
    }

    /// The node's heartbeat: a document that has not changed for three of these is stale.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }

    /// Older than three heartbeats at `now` by its own date, or dated more than a heartbeat after
    /// `now` (a clock that far ahead says nothing about how fresh the news is). For reading only
    /// (`troops fleet`): the rollout gate goes by when this node saw the document change.
    pub fn stale(&self, now: SystemTime) -> bool {
        let limit = self.heartbeat().saturating_mul(3);
        self.updated_time().is_none_or(|t| match now.duration_since(t) {
            Ok(age) => age > limit,
            Err(ahead) => ahead.duration() > self.heartbeat(),
        })
    }
}

/// The schema this troops writes and reads; a document of a newer one is unreadable here, not
/// half understood.
pub const SCHEMA: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use Hold;

    fn run(commit: &str, status: RunStatus) -> RunRecord {
        RunRecord::for_test(1, commit, status)
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn state_of_as_a_table() {
        let oid = |c: Option<&str>| c.map(|c| Oid::from_str(c).unwrap());
        let hold = Hold {
            commit: oid(Some("c2")).unwrap().to_string(),
            wave: "wave 2 of 2 (later)".into(),
            why: "waiting".into(),
            until: None,
            halted: false,
            since: "held".into(),
        };
        let (ok1, failed1, running2) =
            (run("c1", RunStatus::Succeeded), run("c1", RunStatus::Failed), run("c2", RunStatus::Running));
        let (interrupted, ok2) = (run("c1", RunStatus::Interrupted), run("c2", RunStatus::Succeeded));
        let checking2 = run("c2", RunStatus::Checking);
        let rollback1 = RunRecord {
            trigger: crate::model::records::Trigger::Rollback,
            ..run("c1", RunStatus::Succeeded)
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<&RunRecord>, Option<&str>, Option<&str>, Option<&Hold>, State, Option<&str>)> = vec![
            ("a new node", None, None, None, None, State::Idle, None),
            ("succeeded and deployed", Some(&ok1), Some("c1"), Some("c1"), None, State::Healthy, Some("end")),
            ("failed", Some(&failed1), None, Some("c1"), None, State::Failed, Some("end")),
            ("running", Some(&running2), Some("c1"), Some("c2"), None, State::Deploying, Some("start")),
            ("interrupted: run again, not a verdict", Some(&interrupted), None, Some("c1"), None, State::Deploying, Some("start")),
            ("held on the tip", Some(&ok1), Some("c1"), Some("c2"), Some(&hold), State::Held, Some("held")),
            ("a hold of an older tip is over", Some(&ok1), Some("c1"), Some("c3"), Some(&hold), State::Healthy, Some("end")),
            ("held after the canary failed here too", Some(&failed1), None, Some("c2"), Some(&hold), State::Held, Some("held")),
            ("a run of the held commit by a person ends the hold", Some(&ok2), Some("c2"), Some("c2"), Some(&hold), State::Healthy, Some("end")),
            ("checks and soak under way", Some(&checking2), Some("c1"), Some("c2"), None, State::Soaking, Some("start")),
            ("back on the last good commit", Some(&rollback1), Some("c1"), Some("c2"), None, State::RolledBack, Some("end")),
        ];
        // Since: the run's start or end, as its record writes it, or the hold's.
        let since_as_written = |since: Option<&str>| {
            since.map(|s| match s {
                "start" => RunRecord::TEST_START.to_owned(),
                "end" => RunRecord::TEST_END.to_owned(),
                held => held.to_owned(),
            })
        };
        for (case, last, deployed, tip, hold, state, since) in cases {
            let found = state_of(last, oid(deployed), oid(tip), hold);
            assert_eq!(found, (state, since_as_written(since)), "{case}");
        }
    }
}
