//! Drift watch: every `[health] recheck` the daemon runs the deployed commit's checks again and,
//! with `[release] verify`, compares the current release's files with the commit's tree. What a
//! recheck finds is the node's drift (`drift.json`): `troops status`, the status document, the
//! fleet and the metrics show it while no run came after, the notify command hears of it once,
//! and with `on_drift = "redeploy"` the daemon answers it with a run of the deployed commit
//! (`Ask::Drift`, `TROOPS_TRIGGER=drift`).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::mech::drift::Drift;
use crate::mech::lock::NodeLock;
use crate::mech::releases::Releases;
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::plan::{OnDrift, Plan};
use crate::model::records::RunStatus;

/// The most drifted files one recheck names; the rest are counted.
const MAX_FILES: usize = 20;

/// What the daemon does after a recheck: when the next is due (`None`: no drift watch), and
/// whether to run the deployed commit again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rechecked {
    pub period: Option<Duration>,
    pub redeploy: bool,
}

/// How often the deployed commit's plan asks for a recheck; `None`: never, or nothing deployed.
pub fn period(node: &Node) -> Option<Duration> {
    let repo = node.repo().ok()?;
    let plan = deployed_plan(&repo, repo.deployed().ok()??)?;
    Some(plan.health.recheck).filter(|p| !p.is_zero())
}

/// One recheck, when the node stands on a successful run of its deployed commit and no run is
/// under way (then there is nothing to recheck: a run's own checks are newer, a failure is news
/// of its own). Writes what it found, and tells the notify command of drift it did not find last
/// time. Probes say how they went to `out`.
pub fn recheck(node: &Node, out: &mut dyn std::io::Write, stop: &AtomicBool) -> Result<Rechecked> {
    let repo = node.repo()?;
    let Some(deployed) = repo.deployed()? else { return Ok(Rechecked::default()) };
    let Some(plan) = deployed_plan(&repo, deployed) else { return Ok(Rechecked::default()) };
    let period = Some(plan.health.recheck).filter(|p| !p.is_zero());
    let nothing = Rechecked { period, redeploy: false };
    if period.is_none() {
        return Ok(nothing);
    }
    let Some(mut lock) = NodeLock::try_acquire(&node.lock_path())? else { return Ok(nothing) };
    lock.describe(&format!("a recheck of {deployed}"));
    let Some(run) =
        node.runs().latest()?.filter(|r| r.status == RunStatus::Succeeded && r.commit == deployed)
    else {
        return Ok(nothing);
    };
    let release = plan.release.as_ref().map(|r| Releases::new(node, r.link.as_deref()));
    let standing = crate::node::run::standing(node, &repo, &plan, &run)?;
    let dir = &standing.dir;
    let mut found = crate::node::run::recheck(node, &run, &plan, dir, out, stop)?;
    if plan.release.as_ref().is_some_and(|r| r.verify)
        && release.as_ref().and_then(Releases::current).is_some()
    {
        let files = repo.differences(deployed, dir)?;
        let more = files.len().saturating_sub(MAX_FILES);
        found.extend(files.into_iter().take(MAX_FILES));
        if more > 0 {
            found.push(format!("and {more} more files"));
        }
    }
    let before = crate::mech::drift::current(node, Some(&run));
    let drift =
        Drift { run: run.id, commit: deployed.to_string(), checked_at: crate::model::records::now(), found };
    crate::mech::drift::save(node, &drift)?;
    drop(lock);
    let drifted = !drift.found.is_empty();
    if drifted && before.as_ref().is_none_or(|b| b.found != drift.found) {
        tracing::warn!(run = run.id, commit = %deployed, drift = %drift.found.join("; "), "the host drifted from its deployed commit");
        crate::node::state::write_textfile(node);
        // Its failure is logged; it never changes what the recheck found.
        let _ = crate::mech::notify::drift(node, run.id, &drift.commit, &drift.found);
    } else if !drifted && before.is_some() {
        crate::node::state::write_textfile(node);
    }
    Ok(Rechecked { period, redeploy: drifted && plan.health.on_drift == OnDrift::Redeploy })
}

/// The deployed commit's plan, if it can be read.
fn deployed_plan(repo: &crate::mech::repo::NodeRepo, deployed: git2::Oid) -> Option<Plan> {
    let text = repo.plan_text(deployed).ok()??;
    Plan::parse(Path::new(crate::model::plan::FILE_NAME), &text, None).ok()
}
