//! A run's last phase, once its record is final and its summary written: the deployed commit
//! moves on success (and its release is known good), a failure the plan rolls back quarantines
//! its commit, the run a rollback undid is told so, runs and releases past their retention are
//! pruned, and the metrics count the run once, by its final status.

use std::io::Write;
use std::path::{Path, PathBuf};

use git2::Oid;

use crate::mech::lock::NodeLock;
use crate::mech::releases::Releases;
use crate::mech::repo::NodeRepo;
use crate::model::ask::Ask;
use crate::model::error::Result;
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::plan::{OnFailure, Plan};
use crate::model::records::{RunRecord, RunStatus, Trigger};
use crate::policy::schedule::{Decision, RunNow};

/// What the run's phases left for its last one.
pub(super) struct Done<'a> {
    pub plan: Option<&'a Plan>,
    pub release: Option<&'a Path>,
    pub told: Option<&'a super::Told>,
}

/// After a run: the deployed commit on success (and its release known good), quarantine on a
/// failure the plan rolls back, the undone run's record, then pruning (runs, releases), best
/// effort last.
pub(super) fn finalize(
    node: &Node,
    repo: &NodeRepo,
    lock: &NodeLock,
    record: &mut RunRecord,
    done: &Done,
    now: &RunNow,
    out: &mut dyn Write,
) -> Result<()> {
    let Done { plan, release, told } = *done;
    let runs = node.runs();
    let commit = now.commit;
    match record.status {
        RunStatus::Succeeded => {
            if let Some(release) = release {
                Releases::new(node, None).note_good(release, &runs)?;
            }
            repo.set_deployed(commit, &format!("troops: run {} ({}) succeeded", record.id, record.trigger))?;
            // What it told its peers is what the node publishes now; what it saw of theirs is
            // what a change of the watched exports is measured against.
            // The run succeeded whatever befalls these files: a failure is said, not made a
            // failure of the run.
            if let Some(told) = told {
                let kept = crate::mech::exports::keep(node, record.id, told.exports.clone())
                    .and_then(|()| crate::node::fleet::note_seen(node, record.id, told.watched.clone()));
                if let Err(e) = kept {
                    let _ = writeln!(out, "troops: warning: the run's exports are not kept: {e}");
                }
            }
            // A person ran a quarantined commit on purpose, and it worked.
            if record.trigger == Trigger::Manual {
                repo.unquarantine(commit)?;
            }
            // A commit deployed (not gone back to): quarantines the branch has moved past end.
            if let (Some(tip), false) = (repo.tip()?, record.trigger == Trigger::Rollback) {
                for q in repo.lift_passed_quarantines(tip, commit)? {
                    let _ = writeln!(
                        out,
                        "troops: {} is no longer quarantined: the branch has moved past it (it was: {})",
                        short(q.commit),
                        q.reason
                    );
                }
            }
        }
        RunStatus::Failed => quarantine_if_asked(repo, record, out)?,
        _ => {}
    }
    let mut undone = None;
    if let Some(id) = now.undoes.and_then(|f| f.run) {
        if let Ok(mut failed) = runs.load(id) {
            failed.rolled_back_by = Some(record.id);
            if record.status == RunStatus::Succeeded {
                failed.status = RunStatus::RolledBack;
            }
            runs.save(&failed)?;
            undone = Some(failed);
        }
    }
    runs.prune(node.config.keep_runs, lock)?;
    if let Some(release) = plan.and_then(|p| p.release.as_ref()) {
        let releases = Releases::new(node, release.link.as_deref());
        let current = releases.current();
        let last_good = match repo.deployed()? {
            Some(deployed) => releases.last_good(deployed, &runs)?.map(|r| r.path),
            None => None,
        };
        let keep: Vec<&Path> = current.iter().chain(last_good.iter()).map(PathBuf::as_path).collect();
        if let Err(e) = releases.prune(release.keep as usize, release.keep_failed as usize, &runs, &keep) {
            let _ = writeln!(out, "troops: warning: {e}");
        }
    }
    // The record is final and the summary written: metrics (which cannot change the run's
    // result). The notify command is the caller's, once the lock is released (`Outcome::records`).
    // Each run counts once, by its final status: a failed run that a rollback undoes next is
    // counted when that rollback ends, as it leaves it (`rolled_back`, or still `failed`).
    let rollback_follows = record.status == RunStatus::Failed
        && crate::node::facts::decision(node, &Ask::Tick).is_ok_and(|next| match next {
            Decision::Run(next) => next.undoes.is_some_and(|failed| failed.run == Some(record.id)),
            _ => false,
        });
    let results: Vec<&RunRecord> = undone.iter().chain((!rollback_follows).then_some(&*record)).collect();
    crate::mech::metrics::after_run(node, record, &results);
    crate::node::state::write_textfile(node);
    Ok(())
}

/// A failed run whose commit's plan says `on_failure = "rollback"` quarantines that commit, unless
/// it is the deployed commit (the last good one is never quarantined: there would be nothing to go
/// back to).
pub(super) fn quarantine_if_asked(repo: &NodeRepo, record: &RunRecord, out: &mut dyn Write) -> Result<()> {
    let commit = record.commit;
    let rollback = on_failure(repo, commit) == OnFailure::Rollback;
    if !rollback || repo.deployed()? == Some(commit) || record.trigger == Trigger::Rollback {
        return Ok(());
    }
    let reason = format!("run {}: {}", record.id, record.error.as_deref().unwrap_or("failed"));
    repo.quarantine(commit, &reason)?;
    let _ = writeln!(out, "troops: quarantined {} ({reason})", short(commit));
    Ok(())
}

/// What a failed run of `commit` leads to: its plan's `on_failure`. A plan that cannot be read
/// (bad TOML, a bad key, for a newer troops) asks for nothing, so the policy in force on the node
/// holds, that of the deployed commit's plan: with "rollback" there, such a commit is quarantined
/// and the last good one runs again, as for a commit whose script is missing (both fail before
/// any step); with nothing deployed, it is retried.
fn on_failure(repo: &NodeRepo, commit: Oid) -> OnFailure {
    let of = |commit: Oid| {
        let text = repo.plan_text(commit).ok().flatten()?;
        Some(Plan::parse(Path::new(crate::model::plan::FILE_NAME), &text, None).ok()?.health.on_failure)
    };
    of(commit).or_else(|| of(repo.deployed().ok().flatten()?)).unwrap_or(OnFailure::Retry)
}
