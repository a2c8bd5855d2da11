//! A run, start to end, for every trigger (CLI, hook, daemon): `schedule` decides what an ask
//! runs, and the run goes through its phases, each a file of its own: `prepare` (the lock, the
//! commit vouched for, its record, a fresh checkout or release, its plan, secrets and
//! environment), `execute` (the steps and the release switch), `check` (health checks and soak)
//! and `finalize` (the deployed commit, quarantine, retention, metrics). The record is exact at
//! every point; `refs/troops/deployed` moves only after success.

pub mod check;
mod execute;
mod finalize;
mod prepare;
pub mod preview;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use git2::Oid;

use std::path::PathBuf;
use std::time::SystemTime;

use std::collections::BTreeSet;

use crate::mech::lock::NodeLock;
use crate::mech::output::Output;
use crate::mech::releases::Releases;
use crate::model::ask::Ask;
use crate::model::error::{Context, Error, Exit, Result};
use crate::model::exports::Exports;
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::plan::Plan;
use crate::model::records::{now as now_text, RunRecord, RunStatus, StepStatus, Trigger};
use crate::model::roles;
use crate::model::time::Timestamp;
use crate::policy::schedule::{self, Decision, Facts, RunNow};
use crate::policy::watch::Watched;

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
    // without waiting for the lock; but a run under way is waited for (a push then runs the tip
    // after it), and one whose troops died is cleaned up after under the lock, and the decision
    // made then. A person's ask always goes to the lock. So does a drift redeploy; a fleet ask,
    // which every poll makes while a failed fleet run waits for its backoff, does not.
    if ask.follows_tip() || *ask == Ask::Fleet {
        let facts = crate::node::facts::facts(node, &repo, ask)?;
        let decision = decide(node, ask, &facts)?;
        let newest = facts.recent.first();
        let to_lock = newest.is_some_and(|r| r.status.unfinished() || r.abandoned);
        if !matches!(decision, Decision::Run(_)) && !to_lock {
            return Ok(Outcome::Nothing(decision));
        }
    }
    let mut lock = prepare::lock_and_recover(node, &repo, out, stop)?;
    let mut ran: Vec<RunRecord> = Vec::new();
    let mut ask = ask.clone();
    // At most two runs: what was asked for, then, if it failed and its commit was quarantined,
    // the last good commit again.
    while ran.len() < 2 {
        let facts = crate::node::facts::facts(node, &repo, &ask)?;
        let decision = decide(node, &ask, &facts)?;
        let Decision::Run(now) = decision else {
            if ran.is_empty() {
                return Ok(Outcome::Nothing(decision));
            }
            break;
        };
        if matches!(now.trigger, Trigger::Push | Trigger::Manual) {
            let what = if now.trigger == Trigger::Push { "push" } else { "deploy" };
            for held in crate::policy::schedule::holds_on(now.commit, &facts) {
                let _ = writeln!(out, "troops: {}; a person's {what} runs anyway", held.why);
            }
        }
        if now.trigger == Trigger::Rollback && now.quarantines.is_none() {
            let _ = writeln!(
                out,
                "troops: rolling back to {}, the last good commit: {}",
                short(now.commit),
                now.why
            );
        }
        let record = run_one(node, &repo, &mut lock, &now, ask.all_steps(), out, stop)?;
        let quarantined = record.status == RunStatus::Failed
            && now.quarantines.is_none()
            && repo.quarantined(record.commit).ok().flatten().is_some();
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
            short(rollback.commit),
            rollback.id,
            rollback.status,
            rollback.id
        );
    }
    Ok(Outcome::Ran { run, rollback })
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
    // The textfile shows a hold (the rollout's, a pause, a closed window) as it happens.
    if crate::node::rollout::record(node, held)? || matches!(decision, Decision::Hold { .. }) {
        crate::node::state::write_textfile(node);
    }
    Ok(decision)
}

/// One run of `now.commit`, start to end, under the lock: vouched for and recorded, then its
/// phases (prepare, execute, check, finalize).
fn run_one(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    lock: &mut NodeLock,
    now: &RunNow,
    all_steps: bool,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<RunRecord> {
    let deployed = repo.deployed()?;
    prepare::vouch(node, repo, now.commit, deployed, now.trigger)?;
    // A rollback by a person or the fleet: the commit it leaves is quarantined first, so nothing
    // runs it again.
    if let Some(leaving) = &now.quarantines {
        let reason = format!("rolled back by {} at {}", leaving.by, now_text());
        repo.quarantine(leaving.commit, &reason)?;
        let _ = writeln!(out, "troops: quarantined {} ({reason})", short(leaving.commit));
    }
    let mut record = prepare::record(node, lock, now, deployed)?;
    let runs = node.runs();
    let log = runs.open_log(record.id)?;
    let mut tee = Tee { log, out };
    let mut out = Output::new(&mut tee);
    let mut run = Run {
        node,
        repo,
        record: &mut record,
        out: &mut out,
        stop,
        failed_commit: now.undoes.map(|f| f.commit),
        all_steps,
        plan: None,
        release: None,
        watched: None,
        told: None,
        slot: None,
    };
    let result = run.phases();
    // The slot goes back once the checks passed (the node serves again), or once the run failed:
    // a failed run holds nothing up. A run stopped half-way keeps it: the host may be down, and
    // the next run (the stopped one again) takes it back at once (README, Disruption slots).
    if let Some(slot) = run.slot.take() {
        match (&result, run.record.status) {
            (Ok(()), RunStatus::Succeeded) => slot.release(run.out, "the run's checks passed"),
            (Ok(()), RunStatus::Interrupted) => {
                slot.keep(run.out, "the run was stopped half-way; its next run takes it again")
            }
            _ => slot.release(run.out, "the run failed"),
        }
    }
    let (plan, release, told) = (run.plan.take(), run.release.take(), run.told.take());
    record.finished_at = Some(Timestamp::now());
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
        if e.exit() == Exit::Environment {
            return Err(e);
        }
    }
    let done = finalize::Done { plan: plan.as_ref(), release: release.as_deref(), told: told.as_ref() };
    finalize::finalize(node, repo, lock, &mut record, &done, now, &mut out)?;
    Ok(record)
}

/// A run under way: its record, output and what it loaded.
struct Run<'a, 'o> {
    node: &'a Node,
    repo: &'a crate::mech::repo::NodeRepo,
    record: &'a mut RunRecord,
    out: &'a mut Output<'o>,
    stop: &'a AtomicBool,
    /// For a rollback: the commit it undoes (`TROOPS_FAILED_COMMIT`).
    failed_commit: Option<Oid>,
    /// A person asked for every step, whatever the commit changed.
    all_steps: bool,
    /// The plan, once loaded (finalize needs its `[release]`).
    plan: Option<Plan>,
    /// The release the run switched to, once it did (finalize notes it good on success).
    release: Option<PathBuf>,
    /// The peers' exports the plan watches, as the run found them at its start.
    watched: Option<BTreeSet<Watched>>,
    /// What the run tells its peers and what it saw of them, once it succeeded.
    told: Option<Told>,
    /// The disruption slot taken before its first disruptive step, held until its checks passed
    /// (or it failed).
    slot: Option<crate::node::slots::Holding>,
}

/// What a run that succeeded leaves for its peers and for the next fleet run: its exports, and
/// the watched values it saw at its start.
pub(super) struct Told {
    pub exports: Exports,
    pub watched: BTreeSet<Watched>,
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
    /// The phases that happen with a record on disk; an error fails the run. Checks run once
    /// every step succeeded; the record says `running` on disk until the last step is done.
    fn phases(&mut self) -> Result<()> {
        let prepared = self.prepare()?;
        self.execute(&prepared)?;
        if self.record.status == RunStatus::Running {
            let mask = self.out.mask().clone();
            let ctx = check::ProbeEnv { checkout: prepared.root(), env: &prepared.env, mask: &mask };
            check::run_phase(
                check::Due::of(&prepared.plan, &prepared.roles, &prepared.changes),
                self.record,
                &self.node.runs(),
                &ctx,
                self.out,
                self.stop,
            )?;
        }
        if self.record.status == RunStatus::Running {
            // What the checks wrote counts too: the exports are read once more, at the end.
            let exports =
                crate::mech::exports::collect(&crate::mech::exports::dir(self.node, self.record.id))
                    .map_err(|why| {
                        Error::Input(format!("the checks left a bad export in $TROOPS_EXPORTS: {why}"))
                    })?;
            self.told = Some(Told { exports, watched: self.watched.take().unwrap_or_default() });
            self.record.status = RunStatus::Succeeded;
        }
        self.plan = Some(prepared.plan);
        Ok(())
    }
}

/// One line on how a run went, e.g.
/// "run 4 failed: step `migrate` failed (exit 1); 2 of 3 steps ran in 1.2s (troops log 4)".
pub fn summary(record: &RunRecord) -> String {
    let ran =
        record.steps.iter().filter(|s| !matches!(s.status, StepStatus::NotRun | StepStatus::Skipped)).count();
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

/// A recheck of `record`, the run that deployed the commit the node stands on, by the checks of
/// `plan` this host probes (all of them: nothing changed since that run), in `dir` (where the run
/// left its checkout or release) and the environment its steps had but for secrets, which only a
/// run decrypts; no soak. Returns the checks that failed, as "check `web` failed: why".
/// Where the files of `run`, the run the node stands on, are, for what runs of it outside a run
/// (a recheck, a reboot's steps and checks): the current release, the run's checkout, or (that
/// gone: a later run that failed before its steps cleared `work/`) a fresh checkout of its commit
/// in a temporary directory, removed with this.
pub struct Standing {
    pub dir: PathBuf,
    _fresh: Option<tempfile::TempDir>,
}

pub fn standing(
    node: &Node,
    repo: &crate::mech::repo::NodeRepo,
    plan: &Plan,
    run: &RunRecord,
) -> Result<Standing> {
    let kept = match &plan.release {
        Some(release) => Releases::new(node, release.link.as_deref()).current(),
        None => Some(node.work_dir().join(run.id.to_string())).filter(|d| d.is_dir()),
    };
    if let Some(dir) = kept {
        return Ok(Standing { dir, _fresh: None });
    }
    let fresh = tempfile::Builder::new()
        .prefix("troops-standing-")
        .tempdir()
        .ctx(|| format!("creating a temporary directory in {}", std::env::temp_dir().display()))?;
    let dir = fresh.path().join("checkout");
    repo.checkout(run.commit, &dir)?;
    Ok(Standing { dir, _fresh: Some(fresh) })
}

/// The environment of a step of `run` (`pre_reboot` steps run in it), without secrets.
pub fn step_env(node: &Node, run: &RunRecord, roles: &BTreeSet<String>) -> Vec<(&'static str, String)> {
    prepare::step_env(node, run, roles, None)
}

pub fn recheck(
    node: &Node,
    record: &RunRecord,
    plan: &Plan,
    dir: &Path,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<Vec<String>> {
    let roles = roles::resolve(&record.host, &node.config.roles, Some(plan));
    let due = check::Due::of(plan, &roles, &crate::policy::paths::Changes::all("a recheck"));
    let env = prepare::step_env(node, record, &roles, None);
    let mask = crate::mech::mask::Masker::default();
    let ctx = check::ProbeEnv { checkout: dir, env: &env, mask: &mask };
    let checks = check::run_checks(
        &due.checks,
        std::time::Duration::ZERO,
        &ctx,
        &mut Output::new(out),
        stop,
        &mut |_| Ok(()),
    )?;
    Ok(checks
        .iter()
        .filter(|c| c.status == crate::model::records::CheckStatus::Failed)
        .map(|c| {
            format!("check `{}` failed: {}", c.name, c.last_error.as_deref().unwrap_or("no probe passed"))
        })
        .collect())
}
