//! A run's second phase: its steps in order, each under the run's supervisor with the one
//! environment every trigger gives it; with releases, the build steps, then (a rollback first
//! puts back every link the failed run switched) the atomic switch of `current`, then the
//! activate steps. The first step that does not succeed ends the phase, and the record says why.

use std::io::Write;
use std::sync::atomic::Ordering;

use super::prepare::Prepared;
use super::{Layout, Run};
use crate::mech::releases::Releases;
use crate::mech::runner;
use crate::model::error::Result;
use crate::model::plan::Step;
use crate::model::records::{RunStatus, StepStatus};

impl Run<'_, '_> {
    /// The build steps, the switch and the activate steps; stops at the first step that does not
    /// succeed (the record says so).
    pub(super) fn execute(&mut self, prepared: &Prepared) -> Result<()> {
        let mut supervisor = runner::Supervisor::new(&prepared.env);
        let steps =
            |indices: &[usize]| -> Vec<&Step> { indices.iter().map(|&i| &prepared.plan.steps[i]).collect() };
        let ok = self.steps(&mut supervisor, &steps(&prepared.build), 0, prepared)?;
        if !ok {
            return Ok(());
        }
        // A rollback first puts back every link the failed run switched (its plan may have
        // named another link than this one).
        if let Some(failed) = self.failed_commit {
            for line in Releases::new(self.node, None).undo(failed, &self.node.runs())? {
                let _ = writeln!(self.out, "==> {line}");
            }
        }
        if let Layout::Release { releases, dir, .. } = &prepared.layout {
            releases.switch_to(dir, &self.node.runs())?;
            self.release = Some(dir.clone());
            let _ = writeln!(self.out, "==> {} -> {}", releases.link.display(), dir.display());
        }
        let first = prepared.build.len();
        self.steps(&mut supervisor, &steps(&prepared.activate), first, prepared)?;
        Ok(())
    }

    /// Runs `steps` (whose records start at `first`) in order; false when one did not succeed
    /// (the record says why) or troops was asked to stop.
    fn steps(
        &mut self,
        supervisor: &mut runner::Supervisor,
        steps: &[&Step],
        first: usize,
        prepared: &Prepared,
    ) -> Result<bool> {
        let (root, env) = (prepared.root(), &prepared.env);
        let runs = self.node.runs();
        for (i, step) in steps.iter().enumerate() {
            if self.stop.load(Ordering::SeqCst) {
                self.record.status = RunStatus::Interrupted;
                self.record.error = Some("troops was asked to stop; the remaining steps did not run".into());
                return Ok(false);
            }
            if let Some(why) = &self.record.steps[first + i].skipped {
                let _ = writeln!(self.out, "==> {} skipped: {why}", step.name);
                continue;
            }
            if step.disruptive && self.slot.is_none() && !self.take_slot(prepared, step)? {
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
            // A bad export fails the step that left it: the node keeps publishing the last good ones.
            let exports = crate::mech::exports::dir(self.node, self.record.id);
            if let Err(why) = crate::mech::exports::collect(&exports) {
                let _ = writeln!(self.out, "==> {} left a bad export in $TROOPS_EXPORTS: {why}", step.name);
                self.record.steps[first + i].status = StepStatus::Failed;
                self.record.status = RunStatus::Failed;
                self.record.error =
                    Some(format!("step `{}` left a bad export in {}: {why}", step.name, exports.display()));
                runs.save(self.record)?;
                return Ok(false);
            }
            runs.save(self.record)?;
        }
        Ok(true)
    }

    /// Takes a disruption slot before disruptive `step`, waiting for one as long as it takes;
    /// false when troops was asked to stop first (the record says so).
    fn take_slot(&mut self, prepared: &Prepared, step: &Step) -> Result<bool> {
        let disruption =
            prepared.plan.disruption.as_ref().expect("a plan with a disruptive step has [disruption]");
        let roles: Vec<String> = prepared.roles.iter().cloned().collect();
        let taker = crate::node::slots::Taker::Step { run: self.record.id, step: &step.name };
        let group = crate::node::slots::group(disruption, &roles, taker)?;
        let taken = crate::node::slots::take(self.node, disruption, group, taker, self.out, self.stop)?;
        let Some(holding) = taken else {
            self.record.status = RunStatus::Interrupted;
            self.record.error = Some(format!(
                "troops was asked to stop while waiting for a disruption slot for step `{}`; it did not run",
                step.name
            ));
            self.node.runs().save(self.record)?;
            return Ok(false);
        };
        self.slot = Some(holding);
        Ok(true)
    }
}
