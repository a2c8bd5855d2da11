//! The rollout on the run path: the plan of a pulled commit says the waves, the fleet's status refs
//! (fetched with every pull cycle) say how the earlier waves fare, and `waves::gate` answers; the
//! answer is one of the facts `schedule` decides on (pushes and `troops deploy` are a person's
//! decision and are never held). A hold is kept in `<state>/rollout.json` for `troops status`,
//! the node's status document and the `troops_rollout_held` metric.

use std::time::SystemTime;

use git2::Oid;

use crate::mech::repo::NodeRepo;
use crate::mech::sightings::Sightings;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::plan::rollout::Rollout;
use crate::model::status::Hold;
use crate::policy::schedule::RolloutHold;
use crate::policy::waves::{self, Evidence, Gate, Report};

/// The `[rollout]` of the plan at `commit`, if it has one. A plan that cannot be read or does not
/// parse has none: the run fails on that plan error anyway, and `troops status` shows it.
pub fn rollout_at(repo: &NodeRepo, commit: Oid) -> Option<Rollout> {
    plan_at(repo, commit)?.rollout
}

/// The plan at `commit`, if it has one that parses.
pub fn plan_at(repo: &NodeRepo, commit: Oid) -> Option<crate::model::plan::Plan> {
    let text = repo.plan_text(commit).ok()??;
    let path = std::path::Path::new(crate::model::plan::FILE_NAME);
    crate::model::plan::Plan::parse(path, &text, None).ok()
}

/// The rollout's say on running `commit` here: `None` when the plan at it has no `[rollout]` or
/// the gate says go; else what holds it back. Reads; writes nothing.
pub fn verdict(node: &Node, repo: &NodeRepo, commit: Oid) -> Option<RolloutHold> {
    let plan = plan_at(repo, commit)?;
    let rollout = plan.rollout.as_ref()?;
    let me = waves::wave_of(&node.config.hostname(), rollout);
    let evidence = if me.index == 0 { Evidence::default() } else { evidence(node) };
    let known = waves::Known::of(&plan);
    let descends = |a: Oid, b: Oid| a == b || repo.git.graph_descendant_of(a, b).unwrap_or(false);
    let wave = me.to_string();
    match waves::gate(commit, &me, &evidence, &known, SystemTime::now(), rollout, descends) {
        Gate::Go => None,
        Gate::Wait { why, until } => Some(RolloutHold { wave, why, until, halted: false }),
        Gate::Held { why } => Some(RolloutHold { wave, why, until: None, halted: true }),
    }
}

/// With `[rollout] fleet_rollback` in the plan at `deployed`: why the fleet's believed reports
/// say, at quorum, that `deployed` failed (`waves::fleet_failure`), if they do. Reads the status
/// refs only for a node with a `status_remote` and such a plan.
pub fn fleet_failure(node: &Node, repo: &NodeRepo, deployed: Oid) -> Option<String> {
    node.config.status_remote.as_ref()?;
    let plan = plan_at(repo, deployed)?;
    let rollout = plan.rollout.as_ref().filter(|r| r.fleet_rollback)?;
    let (failure, of) = waves::fleet_failure(deployed, &evidence(node), &waves::Known::of(&plan), rollout)?;
    Some(failure.sentence(of, rollout.quorum))
}

/// What this node knows of the others' status: the documents it believes of their refs in the
/// status repo as its last fetch left them (`believe`; the refused ones with why), with when it
/// saw each change (`sightings`), and whether that fetch worked.
fn evidence(node: &Node) -> Evidence {
    let sightings = Sightings::load(&node.sightings_path());
    let blind = match (&node.config.status_remote, &sightings.fetch) {
        (None, _) => {
            Some("this node has no `status_remote` to read the earlier waves' status from".to_owned())
        }
        (Some(remote), Some(fetch)) if fetch.remote == *remote => {
            fetch.error.as_ref().map(|e| format!("the status remote {remote} could not be fetched: {e}"))
        }
        (Some(remote), _) => Some(format!("the status refs were not fetched from remote {remote} here yet")),
    };
    let me = node.config.hostname();
    let reports = match git2::Repository::open_bare(node.status_repo_path()) {
        Ok(git) => {
            let belief = crate::mech::believe::on_node(node, &git);
            let believed = belief.believed.into_iter().map(|b| {
                let changed = sightings.changed(&b.doc.host, b.commit);
                let healthy_since =
                    b.doc.deployed_oid().and_then(|on| sightings.healthy_since(&b.doc.host, b.commit, on));
                Report { host: b.doc.host.clone(), doc: Ok(b.doc), changed, healthy_since }
            });
            let refused = belief.refused.into_iter().map(|r| Report {
                doc: Err(format!("{}: {}", r.reason, r.detail)),
                host: r.host,
                changed: None,
                healthy_since: None,
            });
            believed.chain(refused).filter(|report| report.host != me).collect()
        }
        Err(_) => Vec::new(),
    };
    Evidence { reports, blind }
}

/// Keeps what the rollout holds (`schedule`'s hold of `commit`, with this node's `wave` and the
/// gate's answer), or clears it: for `troops status`, the node's status document and the metric.
/// The file is written only when the hold says something new: a node waits through many polls.
/// True when the node went from held to not held or back (what the metrics show).
pub fn record(node: &Node, held: Option<(Oid, &RolloutHold)>) -> Result<bool> {
    let old = load_hold(node)?;
    let Some((commit, held)) = held else {
        if old.is_some() {
            clear_hold(node)?;
        }
        return Ok(old.is_some());
    };
    let commit = commit.to_string();
    let since = match &old {
        Some(old) if old.commit == commit => old.since.clone(),
        _ => crate::model::records::now(),
    };
    let until = held.until.map(|u| humantime::format_rfc3339_millis(u).to_string());
    let hold =
        Hold { commit, wave: held.wave.clone(), why: held.why.clone(), until, halted: held.halted, since };
    if old.as_ref() != Some(&hold) {
        state_file::save(&node.rollout_path(), &hold)?;
    }
    Ok(old.is_none())
}

impl StateFile for Hold {
    const WHAT: &'static str = "a rollout hold";
    const SCHEMA: u32 = 1;
    /// Far more than a hold's few sentences.
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
}

/// The hold recorded by the last gate decision, if it held.
pub fn load_hold(node: &Node) -> Result<Option<Hold>> {
    state_file::load(&node.rollout_path())
}

fn clear_hold(node: &Node) -> Result<()> {
    let path = node.rollout_path();
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::path("removing", &path, e)),
        _ => Ok(()),
    }
}

/// "wave 2 of 3 (early)" for this node by the plan at `commit`, `None` without a `[rollout]`.
pub fn place(node: &Node, repo: &NodeRepo, commit: Oid) -> Option<waves::Place> {
    rollout_at(repo, commit).map(|r| waves::wave_of(&node.config.hostname(), &r))
}
