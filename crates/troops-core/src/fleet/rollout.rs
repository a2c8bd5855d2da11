//! The rollout gate on the run path: before a pulled commit runs, the plan of that commit says the
//! waves, the fleet's status refs (fetched with every pull cycle) say how the earlier waves fare,
//! and `waves::gate` decides. A hold is kept in `<state>/rollout.json` for `troops status` and the
//! node's status document. Pushes and `troops deploy` are a person's decision and are never held.

use std::time::SystemTime;

use git2::Oid;
use serde::{Deserialize, Serialize};

use super::waves::{self, Gate, Rollout};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::repo::NodeRepo;
use crate::runs::Trigger;

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

const FILE: &str = "rollout.json";

/// The `[rollout]` of the plan at `commit`, if it has one. A plan that cannot be read or does not
/// parse has none: the run fails on that plan error anyway, and `troops status` shows it.
pub fn rollout_at(repo: &NodeRepo, commit: Oid) -> Option<Rollout> {
    let text = repo.plan_text(commit).ok()??;
    let path = std::path::Path::new(crate::plan::FILE_NAME);
    crate::plan::Plan::parse(path, &text, None).ok()?.rollout
}

/// Whether the rollout decides about this run: pulls and retries, and a push-triggered run of a
/// tip that a pull brought (the daemon notices every move of the branch as a push, its own
/// fast-forwards too; the branch's reflog says who moved it). Never `troops deploy`.
fn gated(repo: &NodeRepo, trigger: Trigger, commit: Oid) -> bool {
    match trigger {
        Trigger::Pull | Trigger::Retry => true,
        Trigger::Manual => false,
        Trigger::Push => {
            repo.tip().ok().flatten() == Some(commit)
                && repo.git.reflog(&repo.branch_ref()).ok().is_some_and(|log| {
                    log.get(0)
                        .and_then(|e| e.message().map(|m| m.starts_with("troops pull:")))
                        .unwrap_or(false)
                })
        }
    }
}

/// The one call on the run path (deploy.rs, under the node lock, once the commit is known):
/// `Some(hold)` when the rollout says this node must not run `commit` yet. Records the hold, or
/// clears it when the commit may run.
pub fn check(node: &Node, repo: &NodeRepo, commit: Oid, trigger: Trigger) -> Result<Option<Hold>> {
    let rollout = match rollout_at(repo, commit) {
        Some(rollout) if gated(repo, trigger, commit) => rollout,
        _ => {
            clear_hold(node)?;
            return Ok(None);
        }
    };
    let me = waves::wave_of(&node.config.hostname(), &rollout);
    let (fleet, _) = super::status::read_all(&repo.git);
    let fleet: Vec<_> = fleet.into_iter().filter(|d| d.host != node.config.hostname()).collect();
    let descends = |a: Oid, b: Oid| a == b || repo.git.graph_descendant_of(a, b).unwrap_or(false);
    let (why, until, halted) = match waves::gate(commit, &me, &fleet, SystemTime::now(), &rollout, descends) {
        Gate::Go => {
            clear_hold(node)?;
            return Ok(None);
        }
        Gate::Wait { why, until } => (why, until, false),
        Gate::Held { why } => (why, None, true),
    };
    let commit = commit.to_string();
    let old = load_hold(node)?;
    let since = match &old {
        Some(old) if old.commit == commit => old.since.clone(),
        _ => crate::runs::now(),
    };
    let until = until.map(|u| humantime::format_rfc3339_millis(u).to_string());
    let hold = Hold { commit, wave: me.to_string(), why, until, halted, since };
    // A node waits through many pull cycles: the file is written when the hold says something new.
    if old.as_ref() != Some(&hold) {
        let json = serde_json::to_vec_pretty(&hold).expect("a hold serializes");
        crate::atomic::write(&node.state_dir.join(FILE), &json)?;
    }
    Ok(Some(hold))
}

/// The hold recorded by the last gate decision, if it held.
pub fn load_hold(node: &Node) -> Result<Option<Hold>> {
    let path = node.state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Env(format!("{}: not a rollout hold: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::path("reading", &path, e)),
    }
}

fn clear_hold(node: &Node) -> Result<()> {
    let path = node.state_dir.join(FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::path("removing", &path, e)),
        _ => Ok(()),
    }
}

/// "wave 2 of 3 (early)" for this node by the plan at `commit`, `None` without a `[rollout]`.
pub fn place(node: &Node, repo: &NodeRepo, commit: Oid) -> Option<waves::Place> {
    rollout_at(repo, commit).map(|r| waves::wave_of(&node.config.hostname(), &r))
}

/// What a trigger that was held learns: "abc123 is held: wave 2 of 3 (early): waiting for ...; nothing runs".
pub fn held_line(hold: &Hold) -> String {
    format!("{} is not run yet: {}; nothing runs", crate::deploy::short(&hold.commit), hold.why)
}
