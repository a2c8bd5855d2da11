//! What the run of one commit came to, for whoever cannot see the run's exit code: `git push`
//! exits 0 whatever its run did (git ignores a post-receive hook's status), so CI that pushes asks
//! the node (`troops wait COMMIT`, over SSH). Read from what the node keeps on disk (run records,
//! the lock, the deployed ref, quarantine), never from the daemon, so it answers the same whoever
//! ran the run. [`progress`] is one look; the caller looks again until it has ended.

use git2::Oid;

use crate::model::ask::Ask;
use crate::model::error::{Exit, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::records::{RunRecord, RunStatus};
use crate::node::run::summary;
use crate::policy::schedule::Decision;

/// How the run of a commit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not over yet: what it waits for.
    Pending(String),
    /// Over: the exit code (0 deployed; 1 failed, rolled back or quarantined) and the lines that
    /// say so, the run's summary first.
    Ended { exit: Exit, lines: Vec<String> },
}

/// How the run of `commit` stands now: its newest run, once that has ended (and, if it failed,
/// once the rollback it led to has ended too). A quarantined commit has failed. A commit that
/// never ran by itself because the branch moved on past it first (pushes coalesce) stands or
/// falls with the tip that holds it; one the node has deployed without a run on record (pruned)
/// succeeded. Anything else is still to come: the node has not got the commit yet, it is not on
/// the branch yet, or it waits for its turn (the rollout, a run under way).
pub fn progress(node: &Node, commit: Oid) -> Result<Progress> {
    let repo = node.repo()?;
    let name = short(commit);
    if repo.git.find_commit(commit).is_err() {
        return Ok(Progress::Pending(format!("{name} is not in the node repo yet (not pushed or fetched)")));
    }
    let runs = node.runs();
    let (newest, run) = newest_runs(node, commit)?;
    if let Some(run) = run.as_ref().filter(|r| r.status.unfinished()) {
        return Ok(Progress::Pending(format!("run {} of {name} is {}", run.id, run.status)));
    }
    // A failed run's rollback follows it at once, under the same lock: its end is the end.
    if let (Some(run), Some(newest)) = (&run, &newest) {
        if newest.status.unfinished() && newest.rollback_of == Some(run.id) {
            return Ok(Progress::Pending(format!(
                "run {} of {name} failed; run {}, its rollback, is {}",
                run.id, newest.id, newest.status
            )));
        }
    }
    let mut lines: Vec<String> = run.iter().map(|r| format!("troops: {}", summary(r))).collect();
    if let Some(rollback) = run.as_ref().and_then(|r| r.rolled_back_by).and_then(|id| runs.load(id).ok()) {
        lines.push(format!(
            "troops: rolled back to {} by run {}, which {} (troops log {})",
            short(rollback.commit),
            rollback.id,
            rollback.status,
            rollback.id
        ));
    }
    if let Some(quarantined) = repo.quarantined(commit)? {
        lines.push(format!("troops: {name} is quarantined: {}", quarantined.reason));
        return Ok(Progress::Ended { exit: Exit::Failed, lines });
    }
    let tip = repo.tip()?;
    match &run {
        Some(run) => Ok(match run.status {
            RunStatus::Succeeded => Progress::Ended { exit: Exit::Success, lines },
            // Run again by the node's next trigger (the daemon at once), as the tip.
            RunStatus::Interrupted if tip == Some(commit) => Progress::Pending(format!(
                "run {} of {name} was interrupted; {name} runs again at the node's next trigger",
                run.id
            )),
            _ => Progress::Ended { exit: Exit::Failed, lines },
        }),
        None if repo.deployed()? == Some(commit) => Ok(Progress::Ended {
            exit: Exit::Success,
            lines: vec![format!("troops: {name} is deployed (its run is no longer on record)")],
        }),
        None => match tip {
            Some(tip) if tip == commit => Ok(Progress::Pending(format!(
                "{name} has not run yet: {}",
                match crate::node::facts::decision(node, &Ask::Tick)? {
                    Decision::Run(now) => format!("it runs next ({})", now.why),
                    Decision::Wait { why, .. } => format!("waiting: {why}"),
                    Decision::Hold { why, .. } => format!("held: {why}"),
                    Decision::Idle { why } | Decision::Refuse { why } => why,
                }
            ))),
            Some(tip) if repo.git.graph_descendant_of(tip, commit).unwrap_or(false) => {
                let moved_on = format!(
                    "{name} did not run by itself: the branch moved on to {}, which holds it",
                    short(tip)
                );
                Ok(match progress(node, tip)? {
                    Progress::Pending(why) => Progress::Pending(format!("{moved_on}; {why}")),
                    Progress::Ended { exit, mut lines } => {
                        lines.insert(0, format!("troops: {moved_on}"));
                        Progress::Ended { exit, lines }
                    }
                })
            }
            _ => Ok(Progress::Pending(format!("{name} is not on branch {} yet", repo.branch))),
        },
    }
}

/// The newest readable run record, and the newest of `commit`, each as it stands: one left
/// unfinished while nobody holds the node lock is what the next run will make of it.
fn newest_runs(node: &Node, commit: Oid) -> Result<(Option<RunRecord>, Option<RunRecord>)> {
    let runs = node.runs();
    let mut newest = None;
    for id in runs.ids()?.into_iter().rev() {
        let Ok(record) = runs.load(id) else { continue };
        let record = crate::mech::runs::as_it_stands(node, record);
        if record.commit == commit {
            return Ok((newest.or_else(|| Some(record.clone())), Some(record)));
        }
        newest.get_or_insert(record);
    }
    Ok((newest, None))
}
