//! What `schedule` decides from, read from disk without taking anything: the refs, quarantine,
//! the newest runs as they stand (one whose troops died included), the rollout's verdict and what
//! a person named. A run decides from it under the lock; `troops status`, `troops wait` and the
//! daemon's retry timer from it as it is.

use std::time::SystemTime;

use git2::Oid;

use crate::mech::repo::NodeRepo;
use crate::model::ask::Ask;
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::records::RunStatus;
use crate::model::time::Timestamp;
use crate::policy::schedule::{self, Asked, Decision, Facts, PastRun};

/// What [`schedule::decide`] needs for `ask`, read from disk: refs, quarantine, the newest runs
/// (the newest, then as long as they are of the same commit), and what a person named.
pub fn facts(node: &Node, repo: &NodeRepo, ask: &Ask) -> Result<Facts> {
    let tip = repo.tip()?;
    let tip_quarantined = match tip {
        Some(tip) => repo.quarantined(tip)?.map(|q| q.reason),
        None => None,
    };
    let runs = node.runs();
    let mut recent: Vec<PastRun> = Vec::new();
    for id in runs.ids()?.into_iter().rev() {
        let Ok(record) = runs.load(id) else { continue };
        let was = record.status;
        let record = crate::mech::runs::as_it_stands(node, record);
        if recent.first().is_some_and(|first| first.commit != record.commit) {
            break;
        }
        recent.push(PastRun {
            id,
            commit: record.commit,
            status: record.status,
            trigger: record.trigger,
            finished_at: record.finished_at.map(Timestamp::time),
            quarantined: repo.quarantined(record.commit)?.is_some(),
            rolled_back: record.rolled_back_by.is_some(),
            abandoned: record.status != was,
        });
        if !matches!(record.status, RunStatus::Failed | RunStatus::RolledBack) {
            break;
        }
    }
    let deployed = repo.deployed()?;
    // The rollout is asked only when the tip may be due: a no-change poll reads no status refs.
    let rollout = match tip {
        Some(tip) if Some(tip) != deployed && tip_quarantined.is_none() => {
            crate::node::rollout::verdict(node, repo, tip)
        }
        _ => None,
    };
    let asked = asked(node, repo, ask)?;
    let paused = paused(node);
    // The holds of a new tip are read only when it may be due, as the rollout is.
    let due = tip.filter(|&tip| Some(tip) != deployed && tip_quarantined.is_none());
    let frozen = due.and_then(|_| crate::node::orders::frozen(node));
    let window = due.and_then(|tip| window_closed(node, repo, tip));
    let approval = due.and_then(|tip| crate::node::orders::awaiting_approval(node, repo, tip));
    // The peers are read only when asked to follow them.
    let fleet = match ask {
        Ask::Fleet => crate::node::fleet::changed(node),
        _ => None,
    };
    let fleet_failed = match deployed {
        Some(deployed) => match crate::node::rollout::fleet_failure(node, repo, deployed) {
            Some(why) => Some(schedule::FleetFailed {
                commit: deployed,
                why,
                back_to: previous_good(node, repo, deployed)?,
            }),
            None => None,
        },
        None => None,
    };
    Ok(Facts {
        fleet,
        fleet_failed,
        branch: repo.branch.clone(),
        tip,
        deployed,
        tip_quarantined,
        recent,
        rollout,
        asked,
        paused,
        frozen,
        window,
        approval,
    })
}

/// Whether the deploy windows of the plan at `tip` are all closed for this host now, and when
/// the next opens.
pub fn window_closed(node: &Node, repo: &NodeRepo, tip: git2::Oid) -> Option<schedule::Held> {
    let plan = crate::node::rollout::plan_at(repo, tip).filter(|p| !p.windows.is_empty())?;
    let roles = crate::model::roles::resolve(&node.config.hostname(), &node.config.roles, Some(&plan));
    match crate::policy::windows::verdict(&plan.windows, &roles, SystemTime::now()) {
        crate::policy::windows::Verdict::Open => None,
        crate::policy::windows::Verdict::Closed { next, windows } => Some(schedule::Held {
            why: match next {
                Some(next) => format!(
                    "outside its deploy windows ({windows}); the next opens at {}",
                    Timestamp::from(next)
                ),
                None => format!("outside its deploy windows ({windows})"),
            },
            until: next,
        }),
    }
}

/// The node's pause, if one stands; a pause file that cannot be read holds the node too, saying
/// why, until it is fixed or `troops resume` removes it.
pub fn paused(node: &Node) -> Option<schedule::Held> {
    match crate::mech::pause::current(node) {
        Ok(pause) => pause.map(|p| schedule::Held { why: p.sentence(), until: p.until.map(Timestamp::time) }),
        Err(e) => Some(schedule::Held {
            why: format!("paused, as far as can be told: {e} (troops resume removes it)"),
            until: None,
        }),
    }
}

/// What a person's ask names, resolved: for `troops deploy` the named revision or the tip, for
/// `troops rollback` the named revision or the newest other good commit; an unknown revision is
/// bad input.
fn asked(node: &Node, repo: &NodeRepo, ask: &Ask) -> Result<Option<Asked>> {
    let commit = match ask {
        Ask::Tick | Ask::Push | Ask::Drift | Ask::Fleet => return Ok(None),
        Ask::Deploy { rev: Some(rev), .. } | Ask::Rollback { to: Some(rev) } => Some(repo.resolve(rev)?),
        Ask::Deploy { rev: None, .. } => repo.tip()?,
        Ask::Rollback { to: None } => match repo.deployed()? {
            Some(deployed) => previous_good(node, repo, deployed)?,
            None => None,
        },
    };
    let quarantined = match commit {
        Some(commit) => repo.quarantined(commit)?.map(|q| q.reason),
        None => None,
    };
    Ok(Some(Asked { commit, quarantined }))
}

/// The newest commit other than `deployed` whose run succeeded and that is not quarantined.
fn previous_good(node: &Node, repo: &NodeRepo, deployed: Oid) -> Result<Option<Oid>> {
    let runs = node.runs();
    for id in runs.ids()?.into_iter().rev() {
        let Ok(record) = runs.load(id) else { continue };
        let commit = record.commit;
        if record.status == RunStatus::Succeeded && commit != deployed && repo.quarantined(commit)?.is_none()
        {
            return Ok(Some(commit));
        }
    }
    Ok(None)
}

/// What `schedule` decides for `ask` now, from the node's state on disk, with no side effect:
/// for `troops status`, the daemon's retry timer and `troops wait`.
pub fn decision(node: &Node, ask: &Ask) -> Result<Decision> {
    let repo = node.repo()?;
    Ok(schedule::decide(ask, &facts(node, &repo, ask)?, SystemTime::now(), &node.config.retry))
}

/// When the daemon should look again on its own: the end of a failed commit's backoff, or of the
/// earlier wave's soak.
pub fn next_due(node: &Node) -> Option<SystemTime> {
    match decision(node, &Ask::Tick).ok()? {
        Decision::Wait { until, .. } | Decision::Hold { until: Some(until), .. } => Some(until),
        _ => None,
    }
}
