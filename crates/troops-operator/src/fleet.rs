//! What `troops fleet` shows: every node's status document with what a reader needs beside it
//! (its wave's place, how far behind the branch tip it is, how old its news is), sorted by wave
//! then host, and a one-line summary.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use git2::{Oid, Repository};
use serde::Serialize;

use troops_core::mech::believe::{Belief, Refused};
use troops_core::mech::repo::NodeRepo;
use troops_core::model::names::short;
use troops_core::model::status::{State, StatusDoc};

#[derive(Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub doc: StatusDoc,
    /// The wave's position by the plan at the branch tip (0: the first).
    pub wave_index: Option<usize>,
    /// Commits on the branch tip that the deployed commit lacks; `None`: unknown here.
    pub behind: Option<usize>,
    pub age_seconds: Option<u64>,
    pub stale: bool,
}

#[derive(Debug, Serialize)]
pub struct View {
    /// The branch the nodes are compared with, and its tip.
    pub branch: String,
    pub tip: Option<String>,
    /// The waves' names by the plan at the tip, in order (`Row::wave_index` points here); empty
    /// when it has no `[rollout]` or no tip is known.
    pub waves: Vec<String>,
    /// The believed documents (`believe`), one a host.
    pub nodes: Vec<Row>,
    /// The status refs whose documents are not believed, each with its reason: listed, never obeyed.
    pub refused: Vec<Refused>,
    /// With `[rollout] fleet_rollback` in the plan at the tip: each commit the believed reports
    /// say failed, at quorum, and which reports decided it; every node that runs it rolls back.
    pub fleet_rollbacks: Vec<String>,
    pub summary: String,
}

/// The fleet as the believed documents of the status refs tell it (`belief`), against `tip` (the
/// branch tip of the deploy repo `git` to compare with).
pub fn view(belief: Belief, git: Repository, branch: &str, tip: Option<Oid>, now: SystemTime) -> View {
    let repo = NodeRepo { git, branch: branch.to_owned(), ledger: None, pushed: None };
    let plan = tip.and_then(|t| troops_core::node::rollout::plan_at(&repo, t));
    let fleet_rollbacks = plan.as_ref().map(|p| fleet_rollbacks(&belief, p)).unwrap_or_default();
    let Belief { believed, refused } = belief;
    let docs = believed.into_iter().map(|b| b.doc);
    let rollout = plan.and_then(|p| p.rollout);
    let mut nodes: Vec<Row> = docs
        .map(|doc| {
            let behind = match (tip, doc.deployed_oid()) {
                (Some(tip), Some(deployed)) => {
                    repo.git.graph_ahead_behind(deployed, tip).ok().map(|(_, behind)| behind)
                }
                (Some(tip), None) => repo.git.revwalk().ok().and_then(|mut walk| {
                    walk.push(tip).ok()?;
                    Some(walk.count())
                }),
                (None, _) => None,
            };
            let age = doc.updated_time().and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs());
            Row {
                wave_index: rollout.as_ref().map(|r| troops_core::policy::waves::wave_of(&doc.host, r).index),
                behind,
                age_seconds: age,
                stale: doc.stale(now),
                doc,
            }
        })
        .collect();
    nodes.sort_by(|a, b| {
        (a.wave_index.unwrap_or(usize::MAX), &a.doc.host)
            .cmp(&(b.wave_index.unwrap_or(usize::MAX), &b.doc.host))
    });
    let mut summary = summary(&nodes);
    if !refused.is_empty() {
        summary += &format!(", {} not believed", refused.len());
    }
    let waves = rollout.map(|r| r.waves.into_iter().map(|w| w.name).collect()).unwrap_or_default();
    View {
        branch: branch.to_owned(),
        tip: tip.map(|t| t.to_string()),
        waves,
        nodes,
        refused,
        fleet_rollbacks,
        summary,
    }
}

/// What `fleet_rollback` in `plan` makes of the believed reports: for each commit they report
/// failed, the sentence of the reports that decided its rollback, if they are quorum of a wave.
fn fleet_rollbacks(belief: &Belief, plan: &troops_core::model::plan::Plan) -> Vec<String> {
    use troops_core::policy::waves::{self, Evidence, Report};
    let Some(rollout) = plan.rollout.as_ref().filter(|r| r.fleet_rollback) else { return Vec::new() };
    let reports = belief
        .docs()
        .map(|doc| Report {
            host: doc.host.clone(),
            doc: Ok(doc.clone()),
            changed: None,
            healthy_since: None,
        })
        .collect();
    let evidence = Evidence { reports, blind: None };
    let known = waves::Known::of(plan);
    let failed: std::collections::BTreeSet<Oid> =
        belief.docs().filter(|d| d.state.reports_failure()).filter_map(|d| d.failed_commit()).collect();
    failed
        .into_iter()
        .filter_map(|commit| waves::fleet_failure(commit, &evidence, &known, rollout))
        .map(|(failure, of)| failure.sentence(of, rollout.quorum))
        .collect()
}

/// "42 healthy on abc123, 3 held, 1 failed (web-7: step `migrate` failed (exit 1)), 2 stale".
pub fn summary(nodes: &[Row]) -> String {
    if nodes.is_empty() {
        return "no node has published its status".into();
    }
    let mut healthy: BTreeMap<String, usize> = BTreeMap::new();
    for row in nodes.iter().filter(|r| r.doc.state == State::Healthy) {
        *healthy.entry(row.doc.deployed.as_deref().map_or("nothing".into(), short)).or_default() += 1;
    }
    let mut healthy: Vec<(String, usize)> = healthy.into_iter().collect();
    healthy.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut parts: Vec<String> =
        healthy.iter().map(|(commit, n)| format!("{n} healthy on {commit}")).collect();
    for state in [
        State::Deploying,
        State::WaitingSlot,
        State::Soaking,
        State::Held,
        State::Drifted,
        State::Paused,
        State::Frozen,
        State::Failed,
        State::RolledBack,
        State::Idle,
        State::Other,
    ] {
        let rows: Vec<&Row> = nodes.iter().filter(|r| r.doc.state == state).collect();
        if rows.is_empty() {
            continue;
        }
        let mut part = format!("{} {}", rows.len(), state.as_verb());
        if state.reports_failure() {
            let why: Vec<String> = rows
                .iter()
                .take(3)
                .map(|r| format!("{}: {}", r.doc.host, r.doc.failure().unwrap_or_default()))
                .collect();
            let more = if rows.len() > 3 { "; ..." } else { "" };
            part += &format!(" ({}{more})", why.join("; "));
        }
        parts.push(part);
    }
    let diverged: Vec<&str> =
        nodes.iter().filter(|r| r.doc.diverged.is_some()).map(|r| r.doc.host.as_str()).collect();
    if !diverged.is_empty() {
        parts.push(format!("{} diverged from their remotes ({})", diverged.len(), diverged.join(", ")));
    }
    let stale = nodes.iter().filter(|r| r.stale).count();
    if stale > 0 {
        parts.push(format!("{stale} stale"));
    }
    parts.join(", ")
}

/// "42s", "7m", "3h", "12d": how old a report is, roughly.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
