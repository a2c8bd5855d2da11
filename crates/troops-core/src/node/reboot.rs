//! Coordinated reboots, by the deployed commit's `[reboot]`: after a tick that left the node
//! standing on a run that succeeded, a host that needs a reboot (`policy::reboot` says when it may
//! begin) takes a disruption slot, runs its `pre_reboot` steps and the reboot command, and holds
//! the slot across the reboot (renewed until troops is stopped; its lease covers the boot). The
//! first tick after the boot takes the slot again, runs the deployed commit's checks, and gives
//! the slot back once they pass. Each part is on record in `<state>/reboot.json` (`mech::reboot`),
//! so a reboot cut short anywhere is finished, never begun twice. Never during a run: it holds the
//! node lock throughout.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;

use crate::mech::lock::NodeLock;
use crate::mech::output::Output;
use crate::mech::reboot::{Ended, Reboot};
use crate::mech::runner::{self, Supervisor};
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::plan::{self, Action, Phase, Plan, Step};
use crate::model::records::StepStatus;
use crate::model::time::Timestamp;
use crate::node::slots::{self, Holding, Taker};
use crate::policy::reboot::{decide, Facts, Newest, Verdict};

/// How long the reboot command and a `check` command may take: both should answer at once.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// When a reboot that waits for a slot looks again: a `poll` of the deployed plan's
/// `[disruption]` from now, so that a freed slot is seen as a waiting disruptive step sees it,
/// not a tick later. `None` when no reboot waits.
pub fn next_look(node: &Node) -> Option<SystemTime> {
    crate::mech::slot_record::rebooting(node).filter(|n| n.waiting.is_some())?;
    let repo = node.repo().ok()?;
    let plan = plan_with_reboot(&repo, repo.deployed().ok()??)?;
    Some(SystemTime::now() + plan.disruption?.poll)
}

/// Finishes a reboot that an earlier troops began (the host is back, or troops was restarted):
/// the slot taken again, the checks, the slot given back once they pass.
pub fn after_boot(node: &Node, out: &mut dyn Write, stop: &AtomicBool) -> Result<()> {
    let Some(mut reboot) = crate::mech::reboot::under_way(node) else { return Ok(()) };
    let Some(mut lock) = NodeLock::try_acquire(&node.lock_path())? else { return Ok(()) };
    lock.describe("the checks after a reboot");
    let stopped = "troops was stopped during the pre_reboot steps; the host did not reboot";
    let back = match (&reboot.command_at, &reboot.checks_failed) {
        (_, Some(_)) => "checking the host again after its reboot",
        (None, None) => {
            reboot.did_not_go.get_or_insert_with(|| stopped.to_owned());
            stopped
        }
        (Some(_), None) if reboot.boot_id.is_some() && reboot.boot_id != crate::mech::reboot::boot_id() => {
            "the host is back from its reboot (a new boot)"
        }
        (Some(_), None) => "troops is back after the reboot command (the same boot: troops was restarted)",
    };
    let _ = writeln!(out, "troops: {back}; the reboot was begun at {} ({})", reboot.begun_at, reboot.needed);
    finish(node, &mut reboot, None, out, stop)
}

/// Begins a reboot when the host needs one and `policy::reboot` says it may now; else says why it
/// waits. Cheap when the deployed commit's plan has no `[reboot]`.
pub fn consider(node: &Node, out: &mut dyn Write, stop: &AtomicBool) -> Result<()> {
    let repo = node.repo()?;
    let plan = repo.deployed()?.and_then(|deployed| Some((deployed, plan_with_reboot(&repo, deployed)?)));
    let Some((deployed, plan)) = plan else {
        // A reboot that waited for a slot under a plan that no longer asks for it waits no more.
        forget_waiting(node);
        return Ok(());
    };
    let Some(config) = &plan.reboot else { return Ok(()) };
    // A record that cannot be read may be a reboot under way: none begins until it is fixed.
    let last = match crate::mech::reboot::load(node) {
        Ok(last) => last,
        Err(e) => {
            let _ = writeln!(out, "troops: no reboot begins: {e}; {}", crate::mech::reboot::UNREADABLE);
            return Ok(());
        }
    };
    if last.as_ref().is_some_and(|r| r.ended.is_none()) {
        return Ok(());
    }
    let Some(mut lock) = NodeLock::try_acquire(&node.lock_path())? else { return Ok(()) };
    lock.describe("a look at whether the host needs a reboot");
    // Nothing ran here yet: nothing to stand on, nor an environment to ask in.
    let Some(newest) = node.runs().latest()?.map(|r| crate::mech::runs::as_it_stands(node, r)) else {
        return Ok(());
    };
    let roles = crate::model::roles::resolve(&newest.host, &node.config.roles, Some(&plan));
    let env = crate::node::run::step_env(node, &newest, &roles);
    let Some(needed) = needed(node, config, &env, out, stop) else {
        forget_waiting(node);
        return Ok(());
    };
    let last = last.and_then(|r| r.ended).filter(|e| !e.ok);
    let facts = Facts {
        needed: Some(needed.clone()),
        deployed: Some(deployed),
        newest: Some(Newest { id: newest.id, commit: newest.commit, status: newest.status }),
        paused: crate::node::facts::paused(node),
        frozen: crate::node::orders::frozen(node),
        window: crate::node::facts::window_closed(node, &repo, deployed),
        last_failed: last.map(|e| (e.at.time(), e.how)),
    };
    let verdict = decide(&facts, SystemTime::now());
    if verdict != Verdict::Begin {
        if let Verdict::Held(held) = &verdict {
            let _ = writeln!(out, "troops: the host needs a reboot ({needed}); it waits: {}", held.why);
        }
        forget_waiting(node);
        return Ok(());
    };
    let run = newest;
    let disruption = plan.disruption.as_ref().expect("a plan with [reboot] has [disruption]");
    let taker = Taker::Reboot { run: run.id };
    let group = slots::group(disruption, &roles.iter().cloned().collect::<Vec<_>>(), taker)?;
    let holding = match slots::try_take(node, disruption, group, taker, out)? {
        Ok(holding) => holding,
        Err(_) => return Ok(()), // said and recorded: it waits, and looks again in a `poll`
    };
    let mut reboot = Reboot {
        run: run.id,
        commit: deployed.to_string(),
        needed,
        begun_at: Timestamp::now(),
        slot: holding.name(),
        boot_id: crate::mech::reboot::boot_id(),
        command_at: None,
        did_not_go: None,
        checks_failed: None,
        ended: None,
    };
    crate::mech::reboot::save(node, &reboot)?;
    crate::node::state::changed(node);
    let _ = writeln!(
        out,
        "troops: rebooting the host ({}): its pre_reboot steps, then `{}`",
        reboot.needed, config.command
    );
    let standing = crate::node::run::standing(node, &repo, &plan, &run)?;
    let mut supervisor = Supervisor::new(&env);
    let mut output = Output::new(out);
    for step in config.pre_reboot.iter().filter(|s| crate::model::roles::selects(s, &roles).runs()) {
        let _ = writeln!(output, "troops: pre_reboot step `{}`", step.name);
        let result = runner::run_step(&mut supervisor, step, &standing.dir, &env, stop, &mut output)?;
        if stop.load(Ordering::SeqCst) {
            holding.keep(
                out,
                "troops was stopped during the pre_reboot steps; the next trigger checks the host",
            );
            return Ok(());
        }
        if result.status != StepStatus::Succeeded {
            let why = format!("pre_reboot step `{}` {}", step.name, ended(&result));
            reboot.did_not_go = Some(why);
            return finish(node, &mut reboot, Some(holding), out, stop);
        }
    }
    reboot.command_at = Some(Timestamp::now());
    crate::mech::reboot::save(node, &reboot)?;
    crate::node::state::changed(node);
    let command = command_step("the reboot command", &config.command);
    let result = runner::run_step(&mut supervisor, &command, &standing.dir, &env, stop, &mut output)?;
    drop(supervisor);
    if !stop.load(Ordering::SeqCst) && result.status != StepStatus::Succeeded {
        let why = format!("the reboot command `{}` {}", config.command, ended(&result));
        reboot.did_not_go = Some(why);
        return finish(node, &mut reboot, Some(holding), out, stop);
    }
    // The host goes down: troops is stopped, and the slot is renewed until it is.
    let deadline = Instant::now() + config.timeout;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if stop.load(Ordering::SeqCst) {
        holding.keep(out, "the host goes down; troops takes it again after the boot, and gives it back once the checks pass");
        return Ok(());
    }
    let why = format!(
        "the host did not go down within {} of the reboot command",
        humantime::format_duration(config.timeout)
    );
    reboot.did_not_go = Some(why);
    finish(node, &mut reboot, Some(holding), out, stop)
}

/// The end of a reboot: the slot (taken again, when not held), the deployed commit's checks, and
/// the slot given back once they pass; a reboot that did not go (`did_not_go`) ends badly then.
fn finish(
    node: &Node,
    reboot: &mut Reboot,
    holding: Option<Holding>,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<()> {
    let repo = node.repo()?;
    let commit = Oid::from_str(&reboot.commit).ok();
    let plan = commit.and_then(|c| crate::node::rollout::plan_at(&repo, c));
    let run = node.runs().load(reboot.run).ok();
    let (Some(commit), Some(plan), Some(run)) = (commit, plan, run) else {
        let how = format!(
            "its run {} or the plan of {} cannot be read; nothing was checked",
            reboot.run, reboot.commit
        );
        let _ = writeln!(out, "troops: the reboot ends: {how}");
        if let Some(holding) = holding {
            holding.release(out, "the reboot ended");
        }
        return end(node, reboot, false, how);
    };
    let roles = crate::model::roles::resolve(&run.host, &node.config.roles, Some(&plan));
    let holding = match (holding, &plan.disruption) {
        (Some(holding), _) => Some(holding),
        (None, Some(disruption)) => {
            let taker = Taker::Reboot { run: run.id };
            let group = slots::group(disruption, &roles.iter().cloned().collect::<Vec<_>>(), taker)?;
            match slots::try_take(node, disruption, group, taker, out)? {
                Ok(holding) => Some(holding),
                Err(why) => {
                    let _ = writeln!(
                        out,
                        "troops: the slot is not held again ({why}); the checks run all the same"
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    let standing = crate::node::run::standing(node, &repo, &plan, &run)?;
    let _ =
        writeln!(out, "troops: checking the host ({}, run {})", crate::model::names::short(commit), run.id);
    let failures = crate::node::run::recheck(node, &run, &plan, &standing.dir, out, stop)?;
    if stop.load(Ordering::SeqCst) {
        if let Some(holding) = holding {
            holding.keep(
                out,
                "troops was stopped during the checks after the reboot; the next trigger checks again",
            );
        }
        return Ok(());
    }
    if !failures.is_empty() {
        let why = failures.join("; ");
        let _ = writeln!(out, "troops: the checks after the reboot failed: {why}");
        if let Some(holding) = holding {
            holding.keep(
                out,
                "the host does not serve yet; every trigger checks again, and takes it again meanwhile",
            );
        }
        reboot.checks_failed = Some(why);
        crate::mech::reboot::save(node, reboot)?;
        crate::node::state::changed(node);
        return Ok(());
    }
    if let Some(holding) = holding {
        holding.release(out, "the checks after the reboot passed");
    }
    let (ok, how) = match reboot.did_not_go.clone() {
        Some(why) => (false, format!("{why}; the checks passed and the slot was given back")),
        None => (true, "the host came back and its checks passed".to_owned()),
    };
    let _ = writeln!(out, "troops: the reboot is over: {how}");
    end(node, reboot, ok, how)
}

fn end(node: &Node, reboot: &mut Reboot, ok: bool, how: String) -> Result<()> {
    reboot.checks_failed = None;
    reboot.ended = Some(Ended { at: Timestamp::now(), ok, how });
    crate::mech::reboot::save(node, reboot)?;
    crate::node::state::changed(node);
    Ok(())
}

/// Why the host needs a reboot, if it does: its `file` exists, or its `check` (run in `env`, a
/// step's environment) exits 0. A check that cannot tell (any other end) says so, and no reboot
/// is needed by it.
fn needed(
    node: &Node,
    config: &plan::reboot::Reboot,
    env: &[(&str, String)],
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Option<String> {
    if let Some(file) = config.file.as_ref().filter(|f| f.exists()) {
        return Some(format!("{} exists", file.display()));
    }
    let check = config.check.as_ref()?;
    let step = command_step("the reboot check", check);
    let mut supervisor = Supervisor::new(env);
    let mut said = crate::mech::output::Kept::default();
    let result =
        runner::run_step(&mut supervisor, &step, &node.state_dir, env, stop, &mut Output::new(&mut said));
    match result {
        Ok(r) if r.status == StepStatus::Succeeded => Some(format!("`{check}` says so")),
        Ok(r) if r.exit_code == Some(1) => None,
        Ok(r) => {
            let _ =
                writeln!(out, "troops: cannot tell whether the host needs a reboot: `{check}` {}", ended(&r));
            let _ = out.write_all(said.text().as_bytes());
            None
        }
        Err(e) => {
            let _ = writeln!(out, "troops: cannot tell whether the host needs a reboot: {e}");
            None
        }
    }
}

/// Forgets the slot a reboot waited for, if one did.
fn forget_waiting(node: &Node) {
    if crate::mech::slot_record::rebooting(node).is_some() {
        slots::forget(node);
    }
}

/// `command` as a step of its own, `what` in what troops says of it.
fn command_step(what: &str, command: &str) -> Step {
    Step {
        name: what.to_owned(),
        roles: None,
        paths: Vec::new(),
        action: Action::Run(command.to_owned()),
        preview: None,
        timeout: COMMAND_TIMEOUT,
        kill_grace: plan::DEFAULT_KILL_GRACE,
        env: Default::default(),
        phase: Phase::PreReboot,
        disruptive: false,
    }
}

/// "failed (exit 3)", "timed out".
fn ended(result: &runner::StepResult) -> String {
    match (result.status, result.exit_code) {
        (status, Some(code)) => format!("{status} (exit {code})"),
        (status, None) => status.to_string(),
    }
}

/// The deployed commit's plan when it has a `[reboot]`; read only when its text names one, so a
/// tick of a plan without costs a look at one blob.
fn plan_with_reboot(repo: &crate::mech::repo::NodeRepo, deployed: Oid) -> Option<Plan> {
    let text = repo.plan_text(deployed).ok()??;
    if !text.contains("reboot") {
        return None;
    }
    Plan::parse(std::path::Path::new(plan::FILE_NAME), &text, None).ok().filter(|p| p.reboot.is_some())
}
