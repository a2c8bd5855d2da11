//! A run's second phase: its steps in order, each under the run's supervisor with the one
//! environment every trigger gives it; with releases, the build steps, then (a rollback first
//! puts back every link the failed run switched) the atomic switch of `current`, then the
//! activate steps. The first step that does not succeed ends the phase, and the record says why.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use git2::Oid;

use super::prepare::Prepared;
use super::{Layout, Run};
use crate::mech::releases::Releases;
use crate::mech::runner;
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::plan::Step;
use crate::model::records::{RunRecord, RunStatus, StepStatus};

impl Run<'_, '_> {
    /// The build steps, the switch and the activate steps; stops at the first step that does not
    /// succeed (the record says so).
    pub(super) fn execute(&mut self, prepared: &Prepared) -> Result<()> {
        let mut supervisor = runner::Supervisor::new(&prepared.env);
        let steps =
            |indices: &[usize]| -> Vec<&Step> { indices.iter().map(|&i| &prepared.plan.steps[i]).collect() };
        let ok = self.steps(&mut supervisor, &steps(&prepared.build), 0, prepared.root(), &prepared.env)?;
        if !ok {
            return Ok(());
        }
        // A rollback first puts back every link the failed run switched (its plan may have
        // named another link than this one).
        if let Some(failed) = self.failed_commit.as_deref().and_then(|f| Oid::from_str(f).ok()) {
            for line in Releases::new(&self.node.state_dir, None).undo(failed, &self.node.runs())? {
                let _ = writeln!(self.out, "==> {line}");
            }
        }
        if let Layout::Release { releases, dir, .. } = &prepared.layout {
            releases.switch_to(dir, &self.node.runs())?;
            self.release = Some(dir.clone());
            let _ = writeln!(self.out, "==> {} -> {}", releases.link.display(), dir.display());
        }
        let first = prepared.build.len();
        self.steps(&mut supervisor, &steps(&prepared.activate), first, prepared.root(), &prepared.env)?;
        Ok(())
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
pub(super) fn step_env(
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
