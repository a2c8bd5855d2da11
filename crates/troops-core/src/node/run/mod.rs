//! A run, start to end: take the node lock, pick the commit, check it out fresh, load the plan,
//! run the steps this host selects, keep the record exact at every point, and move
//! `refs/troops/deployed` only after success. Every trigger (CLI, hook, daemon) comes through here.

pub mod check;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::Oid;

use std::path::PathBuf;
use std::time::SystemTime;

use crate::mech::lock::NodeLock;
use crate::mech::output::Output;
use crate::mech::releases::Releases;
use crate::model::ask::Ask;
use crate::model::error::{Context, Error, Exit, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::plan::{OnFailure, Phase, Plan, Step};
use crate::model::records::{now as now_text, RunRecord, RunStatus, StepRecord, StepStatus, Trigger};
use crate::policy::schedule::{self, Asked, Decision, Facts, PastRun, RunNow};
use crate::{mech::runner, model::roles};

/// How an ask ended: the one source of a trigger's exit code.
#[derive(Debug)]
pub enum Outcome {
    /// A run happened; and when it failed with `on_failure = "rollback"`, the run of the last
    /// good commit that followed it.
    Ran { run: RunRecord, rollback: Option<Box<RunRecord>> },
    /// Nothing ran: idle (all is done) or waiting (a failed commit's backoff), and why.
    Nothing(Decision),
    /// A pull could fetch no remote, and nothing ran: the decision, on what it had.
    Unreachable(Decision),
}

impl Outcome {
    /// The runs that happened, in order: for whoever tells a person about them (`notify`).
    pub fn records(&self) -> impl Iterator<Item = &RunRecord> {
        let (run, rollback) = match self {
            Outcome::Ran { run, rollback } => (Some(run), rollback.as_deref()),
            _ => (None, None),
        };
        run.into_iter().chain(rollback)
    }

    /// Success when what was asked for is done; failed when a run failed or a failed commit
    /// waits; the environment's failure when no remote could be fetched and nothing ran.
    pub fn exit(&self) -> Exit {
        match self {
            Outcome::Ran { run, .. } => Exit::ok_if(run.status == RunStatus::Succeeded),
            Outcome::Nothing(Decision::Wait { .. }) => Exit::Failed,
            Outcome::Nothing(Decision::Refuse { .. }) => Exit::Input,
            Outcome::Nothing(_) => Exit::Success,
            Outcome::Unreachable(_) => Exit::Environment,
        }
    }

    /// What a trigger that ran nothing says, e.g. "troops: abc, the tip of refs/heads/main, is
    /// deployed already by run 2 (troops log 2); nothing runs".
    pub fn nothing_ran(&self) -> Option<String> {
        match self {
            Outcome::Ran { .. } => None,
            Outcome::Unreachable(decision) => {
                let why = Outcome::Nothing(decision.clone()).nothing_ran().unwrap_or_default();
                Some(format!("troops: no remote could be fetched; {}", why.trim_start_matches("troops: ")))
            }
            Outcome::Nothing(Decision::Wait { why, .. }) => Some(format!("troops: {why}; nothing runs now")),
            Outcome::Nothing(
                Decision::Idle { why } | Decision::Hold { why, .. } | Decision::Refuse { why },
            ) => Some(format!("troops: {why}; nothing runs")),
            Outcome::Nothing(Decision::Run(_)) => None,
        }
    }
}

/// Runs what `ask` and the node's state call for, writing progress and step output to `out`
/// as it comes. `stop`, once set, ends the current step (and all it started) and the run,
/// `interrupted`.
pub fn deploy(node: &Node, ask: &Ask, out: &mut dyn Write, stop: &AtomicBool) -> Result<Outcome> {
    let repo = node.repo()?;
    // What nearly every poll finds: nothing to do. Decided from refs and the newest record,
    // without waiting for the lock; but a run on record as under way may be one whose troops
    // died, which only the lock tells, so then the decision waits for it. A person's ask always
    // goes to the lock.
    if ask.follows_tip() {
        let facts = facts(node, &repo, ask)?;
        let decision = decide(node, ask, &facts)?;
        let under_way = facts.recent.first().is_some_and(|r| r.status.unfinished());
        if !matches!(decision, Decision::Run(_)) && !under_way {
            return Ok(Outcome::Nothing(decision));
        }
    }
    let mut lock = lock_and_recover(node, &repo, out, stop)?;
    let mut ran: Vec<RunRecord> = Vec::new();
    let mut ask = ask.clone();
    // At most two runs: what was asked for, then, if it failed and its commit was quarantined,
    // the last good commit again.
    while ran.len() < 2 {
        let decision = decide(node, &ask, &facts(node, &repo, &ask)?)?;
        let Decision::Run(now) = decision else {
            if ran.is_empty() {
                return Ok(Outcome::Nothing(decision));
            }
            break;
        };
        if now.trigger == Trigger::Rollback && now.quarantines.is_none() {
            let _ = writeln!(
                out,
                "troops: rolling back to {}, the last good commit: {}",
                short(&now.commit.to_string()),
                now.why
            );
        }
        let record = run_one(node, &repo, &mut lock, &now, out, stop)?;
        let quarantined = record.status == RunStatus::Failed
            && now.quarantines.is_none()
            && Oid::from_str(&record.commit).is_ok_and(|c| repo.quarantined(c).ok().flatten().is_some());
        ran.push(record);
        if !quarantined {
            break;
        }
        ask = Ask::Tick;
    }
    let mut ran = ran.into_iter();
    let mut run = ran.next().expect("one run at least");
    let rollback = ran.next().map(Box::new);
    if rollback.is_some() {
        // The failed run's record, as the rollback left it.
        run = node.runs().load(run.id).unwrap_or(run);
    }
    drop(lock);
    if let Some(rollback) = &rollback {
        let _ = writeln!(
            out,
            "troops: run {} {}; rolled back to {} by run {}, which {} (troops log {})",
            run.id,
            RunStatus::Failed,
            short(&rollback.commit),
            rollback.id,
            rollback.status,
            rollback.id
        );
    }
    Ok(Outcome::Ran { run, rollback })
}

/// The newest commit other than `deployed` whose run succeeded and that is not quarantined.
fn previous_good(node: &Node, repo: &crate::mech::repo::NodeRepo, deployed: Oid) -> Result<Option<Oid>> {
    let runs = node.runs();
    for id in runs.ids()?.into_iter().rev() {
        let Ok(record) = runs.load(id) else { continue };
        let Ok(commit) = Oid::from_str(&record.commit) else { continue };
        if record.status == RunStatus::Succeeded && commit != deployed && repo.quarantined(commit)?.is_none()
        {
            return Ok(Some(commit));
        }
    }
    Ok(None)
}

/// What a person's ask names, resolved: for `troops deploy` the named revision or the tip, for
/// `troops rollback` the named revision or the newest other good commit; an unknown revision is
/// bad input.
fn asked(node: &Node, repo: &crate::mech::repo::NodeRepo, ask: &Ask) -> Result<Option<Asked>> {
    let commit = match ask {
        Ask::Tick | Ask::Push => return Ok(None),
        Ask::Deploy { rev: Some(rev) } | Ask::Rollback { to: Some(rev) } => Some(repo.resolve(rev)?),
        Ask::Deploy { rev: None } => repo.tip()?,
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

/// What [`schedule::decide`] needs for `ask`, read from disk: refs, quarantine, the newest runs
/// (the newest, then as long as they are of the same commit), and what a person named.
pub fn facts(node: &Node, repo: &crate::mech::repo::NodeRepo, ask: &Ask) -> Result<Facts> {
    let tip = repo.tip()?;
    let tip_quarantined = match tip {
        Some(tip) => repo.quarantined(tip)?.map(|q| q.reason),
        None => None,
    };
    let runs = node.runs();
    let mut recent: Vec<PastRun> = Vec::new();
    for id in runs.ids()?.into_iter().rev() {
        let Ok(record) = runs.load(id) else { continue };
        let commit = Oid::from_str(&record.commit).ok();
        if recent.first().is_some_and(|first| first.commit != commit) {
            break;
        }
        let quarantined = match commit {
            Some(commit) => repo.quarantined(commit)?.is_some(),
            None => false,
        };
        let finished_at = record.finished_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        recent.push(PastRun {
            id,
            commit,
            status: record.status,
            trigger: record.trigger,
            finished_at,
            quarantined,
            rolled_back: record.rolled_back_by.is_some(),
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
    Ok(Facts { branch: repo.branch.clone(), tip, deployed, tip_quarantined, recent, rollout, asked })
}

/// [`schedule::decide`] now, keeping what the rollout holds for status and the fleet; what a
/// person asked for that cannot be is bad input.
fn decide(node: &Node, ask: &Ask, facts: &Facts) -> Result<Decision> {
    let decision = schedule::decide(ask, facts, SystemTime::now(), &node.config.retry);
    if let Decision::Refuse { why } = decision {
        return Err(Error::Input(why));
    }
    let held = match (&decision, facts.tip, &facts.rollout) {
        (Decision::Hold { .. }, Some(tip), Some(hold)) => Some((tip, hold)),
        _ => None,
    };
    crate::node::rollout::record(node, held)?;
    Ok(decision)
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

/// Takes the node lock (saying what it waits for, and giving up when asked to stop), then
/// cleans up after a troops that died.
fn lock_and_recover(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<NodeLock> {
    let lock = NodeLock::acquire(&node.lock_path(), stop, |holder| {
        let _ = writeln!(out, "troops: waiting for the node lock ({holder})");
    })?;
    recover(node, repo, &lock, out)?;
    Ok(lock)
}

/// Under the lock, before anything runs: what a troops that died left behind. A run left
/// `running` becomes `interrupted`; one left `checking` failed its checks, and its commit's
/// `on_failure` applies (quarantine, so the rollback follows). Then plaintext secrets and
/// processes of the dead run are removed.
fn recover(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    lock: &NodeLock,
    out: &mut dyn Write,
) -> Result<()> {
    let runs = node.runs();
    let abandoned = runs.recover(lock)?;
    if let Some(old) = &abandoned {
        let _ = match old.status {
            RunStatus::Interrupted => {
                writeln!(
                    out,
                    "troops: run {} was left running by a process that died; marked interrupted",
                    old.id
                )
            }
            _ => writeln!(
                out,
                "troops: run {} was left checking by a process that died; its checks count as failed",
                old.id
            ),
        };
        if old.status == RunStatus::Failed {
            if let Ok(commit) = Oid::from_str(&old.commit) {
                quarantine_if_asked(repo, old, commit, out)?;
            }
        }
    }
    // Plaintext secrets a run left when its troops died are removed before anything else runs.
    crate::mech::secrets::remove_leftovers(node)?;
    // A run that ended `interrupted` may have left processes running, if its troops died with
    // the supervisor of its steps; they must not overlap ours. Until a new run is recorded the
    // interrupted one stays the latest, so a troops that dies here too leaves the work to the next.
    let abandoned = abandoned.map(|r| r.id);
    if let Some(last) =
        runs.latest()?.filter(|r| r.status == RunStatus::Interrupted || Some(r.id) == abandoned)
    {
        let grace = crate::model::plan::DEFAULT_KILL_GRACE;
        let leftovers = crate::mech::supervise::end_leftovers(&node.state_dir, last.id, grace);
        if !leftovers.is_empty() {
            let _ = writeln!(out, "troops: {leftovers}");
        }
    }
    Ok(())
}

/// A failed run of `commit` whose plan says `on_failure = "rollback"` quarantines it, unless it is
/// the deployed commit (the last good one is never quarantined: there would be nothing to go back to).
fn quarantine_if_asked(
    repo: &crate::mech::repo::NodeRepo,
    record: &RunRecord,
    commit: Oid,
    out: &mut dyn Write,
) -> Result<()> {
    let rollback = on_failure(repo, commit) == OnFailure::Rollback;
    if !rollback || repo.deployed()? == Some(commit) || record.trigger == Trigger::Rollback {
        return Ok(());
    }
    let reason = format!("run {}: {}", record.id, record.error.as_deref().unwrap_or("failed"));
    repo.quarantine(commit, &reason)?;
    let _ = writeln!(out, "troops: quarantined {} ({reason})", short(&commit.to_string()));
    Ok(())
}

/// What a failed run of `commit` leads to: its plan's `on_failure`. A plan that cannot be read
/// (bad TOML, a bad key, for a newer troops) asks for nothing, so the policy in force on the node
/// holds, that of the deployed commit's plan: with "rollback" there, such a commit is quarantined
/// and the last good one runs again, as for a commit whose script is missing (both fail before
/// any step); with nothing deployed, it is retried.
fn on_failure(repo: &crate::mech::repo::NodeRepo, commit: Oid) -> OnFailure {
    let of = |commit: Oid| {
        let text = repo.plan_text(commit).ok().flatten()?;
        Some(Plan::parse(Path::new(crate::model::plan::FILE_NAME), &text, None).ok()?.health.on_failure)
    };
    of(commit).or_else(|| of(repo.deployed().ok().flatten()?)).unwrap_or(OnFailure::Retry)
}

/// One run of `now.commit`, start to end, under the lock: record, prepare, execute, check,
/// finalize.
fn run_one(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    lock: &mut NodeLock,
    now: &RunNow,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<RunRecord> {
    let commit = now.commit;
    let deployed = repo.deployed()?;
    vouch(node, repo, commit, deployed, now.trigger)?;
    // A person's rollback: the commit it leaves is quarantined first, so nothing runs it again.
    if let Some(leaving) = now.quarantines {
        let reason = format!("rolled back by a person at {} (troops rollback)", now_text());
        repo.quarantine(leaving, &reason)?;
        let _ = writeln!(out, "troops: quarantined {} ({reason})", short(&leaving.to_string()));
    }
    let runs = node.runs();
    let id = runs.create(lock)?;
    lock.describe(&format!("run {id} ({}) of {commit}", now.trigger));
    let failed_commit = now.undoes.map(|f| f.commit.to_string());
    let mut record = RunRecord {
        schema: crate::model::records::SCHEMA,
        id,
        trigger: now.trigger,
        commit: commit.to_string(),
        // A rollback comes from the failed commit the host was left with.
        previous_commit: failed_commit.clone().or(deployed.map(|p| p.to_string())),
        host: node.config.hostname(),
        roles: node.config.roles.clone(),
        started_at: now_text(),
        finished_at: None,
        status: RunStatus::Running,
        error: None,
        steps: Vec::new(),
        checks: Vec::new(),
        rollback_of: now.undoes.and_then(|f| f.run),
        rolled_back_by: None,
    };
    runs.save(&record)?;
    let log = runs.open_log(id)?;
    let mut tee = Tee { log, out };
    let mut out = Output::new(&mut tee);

    let mut run = Run {
        node,
        repo,
        record: &mut record,
        out: &mut out,
        stop,
        failed_commit,
        plan: None,
        release: None,
    };
    let result = run.execute();
    let (plan, release) = (run.plan.take(), run.release.take());
    record.finished_at = Some(now_text());
    // What a step's output held back is written before troops' last lines, not after them.
    let _ = out.release();
    if let Err(e) = &result {
        record.status = RunStatus::Failed;
        record.error = Some(out.mask().masked_text(&e.to_string()));
        let _ = writeln!(out, "troops: {e}");
    }
    // Every run's output ends with its summary, whether it ran its steps or failed before them:
    // on a line of its own (`Output`), and the last a step can be before.
    let _ = writeln!(out, "troops: {}", summary(&record));
    runs.save(&record)?;
    if let Err(e) = result {
        if e.exit() == crate::model::error::Exit::Environment {
            return Err(e);
        }
    }
    finalize(node, repo, lock, &mut record, plan.as_ref(), release.as_deref(), now, &mut out)?;
    Ok(record)
}

/// After a run: the deployed commit on success (and its release known good), quarantine on a
/// failure the plan rolls back, the undone run's record, then pruning (runs, releases), best
/// effort last.
#[allow(clippy::too_many_arguments)]
fn finalize(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    lock: &NodeLock,
    record: &mut RunRecord,
    plan: Option<&Plan>,
    release: Option<&Path>,
    now: &RunNow,
    out: &mut dyn Write,
) -> Result<()> {
    let runs = node.runs();
    let commit = now.commit;
    match record.status {
        RunStatus::Succeeded => {
            if let Some(release) = release {
                Releases::new(&node.state_dir, None).note_good(release, &runs)?;
            }
            repo.set_deployed(commit, &format!("troops: run {} ({}) succeeded", record.id, record.trigger))?;
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
                        short(&q.commit.to_string()),
                        q.reason
                    );
                }
            }
        }
        RunStatus::Failed => quarantine_if_asked(repo, record, commit, out)?,
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
        let releases = Releases::new(&node.state_dir, release.link.as_deref());
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
        && decision(node, &Ask::Tick).is_ok_and(|next| match next {
            Decision::Run(next) => next.undoes.is_some_and(|failed| failed.run == Some(record.id)),
            _ => false,
        });
    let results: Vec<&RunRecord> = undone.iter().chain((!rollback_follows).then_some(&*record)).collect();
    crate::mech::metrics::after_run(node, record, &results);
    Ok(())
}

/// With `require_signed`, the commit about to run must verify now, under the lock, whatever
/// moved the ref to it (a push, a pull, `git update-ref` by a member of the admin group, a restored
/// backup): with scope tip, itself; with scope all, itself and every commit between it and what
/// is known to be good, the last deployed commit (or their common ancestor, for a rollback).
/// `deployed` is what this process goes by ([`crate::mech::repo::NodeRepo::deployed`]): for root, its
/// ledger, never `refs/troops/deployed`, which the admin group can move.
/// Refused: exit 1 with the reason, recorded as the node's last refusal; nothing runs.
fn vouch(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    commit: Oid,
    deployed: Option<Oid>,
    trigger: Trigger,
) -> Result<()> {
    let Some(policy) = crate::mech::verify::enforced(&node.config.verify, &node.state_dir)? else {
        return Ok(());
    };
    let scope = node.config.verify.scope;
    let base = deployed.and_then(|d| repo.git.merge_base(d, commit).ok());
    // A rollback to an ancestor of the deployed commit: its history was checked with that one's.
    let scope = if base == Some(commit) { crate::model::config::Scope::Tip } else { scope };
    let Some(refusal) = crate::mech::verify::check_update(&repo.git, &policy, base, commit, scope)? else {
        return Ok(());
    };
    let source = format!("{trigger} run");
    let _ = crate::mech::verify::record_refusal(&node.state_dir, &source, &refusal);
    crate::mech::metrics::count_refusal(node, refusal.verification.kind());
    Err(Error::Refused(format!("refusing to run {}: {refusal}; nothing ran", short(&commit.to_string()))))
}

/// A run under way: its record, output and what it loaded.
struct Run<'a, 'o> {
    node: &'a Node,
    repo: &'a crate::mech::repo::NodeRepo,
    record: &'a mut RunRecord,
    out: &'a mut Output<'o>,
    stop: &'a AtomicBool,
    /// For a rollback: the commit it undoes (`TROOPS_FAILED_COMMIT`).
    failed_commit: Option<String>,
    /// The plan, once loaded (finalize needs its `[release]`).
    plan: Option<Plan>,
    /// The release the run switched to, once it did (finalize notes it good on success).
    release: Option<PathBuf>,
}

/// Where a run's steps run.
enum Layout {
    /// A fresh checkout in `work/<id>`.
    Work(PathBuf),
    /// A release: a fresh checkout in `releases/<id>-<sha>/`, or, for a rollback, the last good
    /// release of the commit, switched back to without building.
    Release { releases: Releases, dir: PathBuf, reused: bool },
}

impl Layout {
    fn root(&self) -> &Path {
        match self {
            Layout::Work(dir) | Layout::Release { dir, .. } => dir,
        }
    }
}

impl Run<'_, '_> {
    /// The part of a run that happens with a record on disk; errors fail the run.
    fn execute(&mut self) -> Result<()> {
        let commit = Oid::from_str(&self.record.commit).expect("record holds a commit id");
        // prepare: the plan, read from the verified commit, decides where the checkout goes.
        let plan_path = Path::new(crate::model::plan::FILE_NAME);
        let text = self.repo.plan_text(commit)?.ok_or_else(|| crate::model::plan::missing(plan_path))?;
        let layout = self.layout(commit, &Plan::parse(plan_path, &text, None)?)?;
        let root = layout.root().to_owned();
        let plan =
            Plan::parse(&root.join(plan_path), &text, Some(&root)).map_err(|e| relative_to(e, &root))?;
        let roles = roles::resolve(&self.record.host, &self.node.config.roles, Some(&plan));
        self.record.roles = roles.iter().cloned().collect();
        let reused = matches!(layout, Layout::Release { reused: true, .. });
        let selected: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| roles::selects(s, &roles).0)
            .filter(|s| !reused || s.phase == Phase::Activate)
            .collect();
        // Build steps first, then (with releases) the switch, then activate steps.
        let (build, activate): (Vec<&Step>, Vec<&Step>) =
            selected.iter().partition(|s| s.phase == Phase::Build || plan.release.is_none());
        self.record.steps = build
            .iter()
            .chain(activate.iter())
            .map(|s| StepRecord {
                name: s.name.clone(),
                status: StepStatus::NotRun,
                exit_code: None,
                duration_ms: 0,
            })
            .collect();
        self.node.runs().save(self.record)?;
        let _ = writeln!(
            self.out,
            "troops: run {} ({}) of {} on {} [{}]: {} of {} steps{}",
            self.record.id,
            self.record.trigger,
            short(&self.record.commit),
            self.record.host,
            self.record.roles.join(","),
            selected.len(),
            plan.steps.len(),
            if reused {
                format!(" (the activate steps of release {})", root.display())
            } else {
                String::new()
            }
        );
        // Before any step: a secret this node cannot decrypt fails the run with every step `not_run`.
        let secrets = crate::mech::secrets::decrypt_for_run(
            self.node,
            &root,
            &plan,
            &self.record.host,
            &roles,
            self.record.id,
        )?;
        if let Some(secrets) = &secrets {
            self.out.set_mask(secrets.masker()?);
            for name in secrets.unmasked() {
                let _ = writeln!(
                    self.out,
                    "troops: secret `{name}` is shorter than {} bytes; its value is not masked in output",
                    crate::mech::mask::MIN_MASKED
                );
            }
        }
        let mut env = step_env(self.node, self.record, &roles, secrets.as_ref());
        if let Some(failed) = &self.failed_commit {
            env.push(("TROOPS_FAILED_COMMIT", failed.clone()));
        }
        if let Layout::Release { releases, dir, .. } = &layout {
            env.push(("TROOPS_RELEASE_DIR", dir.display().to_string()));
            env.push(("TROOPS_CURRENT", releases.link.display().to_string()));
        }
        let mut supervisor = runner::Supervisor::new(&env);
        // execute
        let ok = self.steps(&mut supervisor, &build, 0, &root, &env)?;
        if ok {
            // A rollback first puts back every link the failed run switched (its plan may have
            // named another link than this one).
            if let Some(failed) = self.failed_commit.as_deref().and_then(|f| Oid::from_str(f).ok()) {
                for line in Releases::new(&self.node.state_dir, None).undo(failed, &self.node.runs())? {
                    let _ = writeln!(self.out, "==> {line}");
                }
            }
            if let Layout::Release { releases, dir, .. } = &layout {
                releases.switch_to(dir, &self.node.runs())?;
                self.release = Some(dir.clone());
                let _ = writeln!(self.out, "==> {} -> {}", releases.link.display(), dir.display());
            }
            self.steps(&mut supervisor, &activate, build.len(), &root, &env)?;
        }
        // check: once every step succeeded; the record says `checking` meanwhile.
        if self.record.status == RunStatus::Running {
            let mask = self.out.mask().clone();
            let ctx = crate::node::run::check::ProbeEnv { checkout: &root, env: &env, mask: &mask };
            crate::node::run::check::run_phase(
                &plan,
                &roles,
                self.record,
                &self.node.runs(),
                &ctx,
                self.out,
                self.stop,
            )?;
        }
        // Only now: the record says `running` on disk until the last step is done.
        if self.record.status == RunStatus::Running {
            self.record.status = RunStatus::Succeeded;
        }
        self.plan = Some(plan);
        Ok(())
    }

    /// Where this run's steps run; checks the commit out unless a rollback reuses its release.
    fn layout(&mut self, commit: Oid, plan: &Plan) -> Result<Layout> {
        let Some(release) = &plan.release else {
            let work = self.node.work_dir();
            clear_dir(&work)?;
            let checkout = work.join(self.record.id.to_string());
            self.repo.checkout(commit, &checkout)?;
            return Ok(Layout::Work(checkout));
        };
        let releases = Releases::new(&self.node.state_dir, release.link.as_deref());
        if self.record.trigger == Trigger::Rollback {
            if let Some(good) = releases.last_good(commit, &self.node.runs())? {
                return Ok(Layout::Release { releases, dir: good.path, reused: true });
            }
        }
        let dir = releases.path_for(self.record.id, commit);
        releases.make_dir()?;
        self.repo.checkout(commit, &dir)?;
        releases.note_made(&dir, commit, &self.node.runs())?;
        // A release is read by the services it holds, whoever they run as; nobody else writes it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .ctx(|| format!("opening {} to readers", dir.display()))?;
        Ok(Layout::Release { releases, dir, reused: false })
    }

    /// Runs `steps` (whose records start at `first`) in order; false when one did not succeed
    /// (the record says why) or troops was asked to stop.
    fn steps(
        &mut self,
        supervisor: &mut runner::Supervisor,
        steps: &[&Step],
        first: usize,
        root: &Path,
        env: &[(&'static str, String)],
    ) -> Result<bool> {
        let runs = self.node.runs();
        for (i, step) in steps.iter().enumerate() {
            if self.stop.load(Ordering::SeqCst) {
                self.record.status = RunStatus::Interrupted;
                self.record.error = Some("troops was asked to stop; the remaining steps did not run".into());
                return Ok(false);
            }
            let _ = writeln!(self.out, "==> {}", step.name);
            let mut env = env.to_vec();
            env.push(("TROOPS_STEP", step.name.clone()));
            let result = runner::run_step(supervisor, step, root, &env, self.stop, self.out)?;
            let _ = self.out.release();
            let slot = &mut self.record.steps[first + i];
            slot.status = result.status;
            slot.exit_code = result.exit_code;
            slot.duration_ms = result.duration.as_millis() as u64;
            if result.status == StepStatus::Interrupted {
                self.record.status = RunStatus::Interrupted;
                self.record.error =
                    Some(format!("troops was asked to stop during step `{}`; it was ended", step.name));
                runs.save(self.record)?;
                return Ok(false);
            }
            if result.status != StepStatus::Succeeded {
                let code = result.exit_code.map_or(String::new(), |c| format!(" (exit {c})"));
                let why = match (&step.action, &result.cannot_start) {
                    (crate::model::plan::Action::Script(script), Some(why)) => {
                        format!(": script {} could not be started: {why}", script.display())
                    }
                    (_, Some(why)) => format!(": it could not be started: {why}"),
                    (_, None) => String::new(),
                };
                let _ = writeln!(self.out, "==> {} {}{code}{why}", step.name, result.status);
                self.record.status = RunStatus::Failed;
                self.record.error = Some(format!("step `{}` {}{code}{why}", step.name, result.status));
                runs.save(self.record)?;
                return Ok(false);
            }
            runs.save(self.record)?;
        }
        Ok(true)
    }
}

/// The PATH of every step: fixed, so that no trigger's PATH leaks in.
const STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment of every step but `TROOPS_STEP` and the step's own `env`, the same for
/// every trigger (SPEC, "The trust boundary"): nothing of the pusher's, the caller's or systemd's.
/// `TROOPS_SECRETS` is there only when the node has secrets in this run.
fn step_env(
    node: &Node,
    record: &RunRecord,
    roles: &BTreeSet<String>,
    secrets: Option<&crate::mech::secrets::RunSecrets>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![("PATH", step_path()), ("LANG", "C.UTF-8".to_owned())];
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
        env.push(("HOME", user.dir.display().to_string()));
        env.push(("USER", user.name.clone()));
        env.push(("LOGNAME", user.name));
    }
    env.extend([
        ("TROOPS_COMMIT", record.commit.clone()),
        ("TROOPS_PREVIOUS_COMMIT", record.previous_commit.clone().unwrap_or_default()),
        ("TROOPS_HOST", record.host.clone()),
        ("TROOPS_ROLES", roles.iter().cloned().collect::<Vec<_>>().join(",")),
        ("TROOPS_RUN_ID", record.id.to_string()),
        ("TROOPS_TRIGGER", record.trigger.to_string()),
        ("TROOPS_STATE_DIR", node.state_dir.display().to_string()),
        ("TROOPS_CONFIG", node.config.path.display().to_string()),
    ]);
    if let Some(secrets) = secrets {
        env.push(("TROOPS_SECRETS", secrets.dir.display().to_string()));
    }
    env
}

/// [`STEP_PATH`], with the directory of the running troops binary in front when it is not in it,
/// so that a step's `troops has-role` is this troops.
fn step_path() -> String {
    let exe_dir = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.display().to_string()));
    match exe_dir {
        Some(dir) if !STEP_PATH.split(':').any(|d| d == dir) => format!("{dir}:{STEP_PATH}"),
        _ => STEP_PATH.to_owned(),
    }
}

/// One line on how a run went, e.g.
/// "run 4 failed: step `migrate` failed (exit 1); 2 of 3 steps ran in 1.2s (troops log 4)".
pub fn summary(record: &RunRecord) -> String {
    let ran = record.steps.iter().filter(|s| s.status != StepStatus::NotRun).count();
    let seconds = record.steps.iter().map(|s| s.duration_ms).sum::<u64>() as f64 / 1000.0;
    let reason = record.error.as_deref().map_or(String::new(), |e| format!(" {e};"));
    format!(
        "run {} {}:{reason} {ran} of {} steps ran in {seconds:.1}s (troops log {})",
        record.id,
        record.status,
        record.steps.len(),
        record.id
    )
}

/// Plan errors name the file as it is in the repo, not in the throwaway checkout.
fn relative_to(error: Error, checkout: &Path) -> Error {
    match error {
        Error::Plan { path, line, column, message } => Error::Plan {
            path: path.strip_prefix(checkout).map(Path::to_path_buf).unwrap_or(path),
            line,
            column,
            message,
        },
        other => other,
    }
}

/// Empties `work/` of earlier checkouts (steps may have left read-only directories). `work/` is
/// sticky: a member of the admin group running a push in-process leaves the checkouts of others
/// (root's) alone; root clears them all.
fn clear_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let me = nix::unistd::geteuid();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
        let owner = std::fs::symlink_metadata(&path).map(|m| m.uid()).unwrap_or(me.as_raw());
        if !me.is_root() && owner != me.as_raw() {
            continue;
        }
        let remove = || match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        // A second walk only when the first removal met a directory a step made read-only; never
        // for root, whom modes do not stop, and who must not chmod through a swapped-in symlink.
        remove()
            .or_else(|e| {
                if me.is_root() {
                    return Err(e);
                }
                make_writable(&path);
                remove()
            })
            .ctx(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        );
        std::fs::read_dir(path).into_iter().flatten().flatten().for_each(|e| make_writable(&e.path()));
    }
}

/// A run's output (masked by the `Output` that writes here) goes to the caller and to the run's
/// `output.log`.
struct Tee<'a> {
    log: File,
    out: &'a mut dyn Write,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.log.write_all(buf)?;
        // The caller may have gone (a pusher who hung up); the run and its log go on.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// What `--dry-run` shows: the commit, this host's roles, and for each step and check whether it
/// runs and why.
pub struct DryRun {
    pub commit: Oid,
    pub roles: BTreeSet<String>,
    pub steps: Vec<(String, bool, String)>,
    pub checks: Vec<(String, bool, String)>,
}

/// Checks out `rev` (default: the tip) outside `work/`, loads its plan and selects steps, running none.
pub fn dry_run(node: &Node, rev: Option<&str>) -> Result<DryRun> {
    let repo = node.repo()?;
    let commit = match rev {
        Some(rev) => repo.resolve(rev)?,
        None => {
            repo.tip()?.ok_or_else(|| Error::Input(format!("branch {} has no commits yet", repo.branch)))?
        }
    };
    // Outside work/, which a concurrent run empties, in a private directory of a name nobody
    // can guess and plant first; removed when dropped.
    let tmp = tempfile::Builder::new()
        .prefix("troops-dry-run-")
        .tempdir()
        .ctx(|| format!("creating a temporary directory in {}", std::env::temp_dir().display()))?;
    let checkout = tmp.path().join("checkout");
    repo.checkout(commit, &checkout)?;
    let plan = Plan::load(&checkout).map_err(|e| relative_to(e, &checkout))?;
    let roles = roles::resolve(&node.config.hostname(), &node.config.roles, Some(&plan));
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            let (runs, why) = roles::selects(s, &roles);
            (s.name.clone(), runs, why)
        })
        .collect();
    let checks = plan
        .checks
        .iter()
        .map(|c| {
            let (runs, why) = roles::selects_check(c, &roles);
            (c.name.clone(), runs, why)
        })
        .collect();
    Ok(DryRun { commit, roles, steps, checks })
}
