//! What a run of a commit would do on this node, with nothing run for real and nothing recorded:
//! `troops deploy --dry-run`, `troops preview` and a push to `refs/troops/preview` (what `troops
//! push --preview` gathers). Per step and check: runs or skipped, and why (its roles, then what
//! changed under its paths, as a run decides it); the node's wave and what would hold the commit;
//! and what each running step's `preview` command prints. Those commands are the commit's code,
//! so they run only for a commit the node's `[verify]` policy accepts: like a step, but in a
//! private checkout, without secrets, with `TROOPS_TRIGGER=preview` and the step's timeout.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

use git2::Oid;

use super::prepare;
use crate::mech::output::Output;
use crate::mech::repo::NodeRepo;
use crate::mech::runner;
use crate::model::error::{Context, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::plan::{Action, Plan, Step};
use crate::model::records::StepStatus;
use crate::model::roles;
use crate::policy::paths::{self, ByPath, Changes};

/// What a run of `commit` would do here.
pub struct Preview {
    pub commit: Oid,
    pub host: String,
    pub roles: BTreeSet<String>,
    /// What the steps' paths are compared with: "2 files changed since 1a2b3c4d5e6f (deployed)",
    /// or why everything counts as changed; `None` when no step or check names `paths`.
    pub baseline: Option<String>,
    /// This node's wave, by the commit's plan, and what it means for a pulled commit.
    pub wave: Option<String>,
    /// What would keep a pull from running the commit now (a person's deploy runs it anyway).
    pub holds: Vec<String>,
    /// The plan's `[[watch]]`es for this host, and on a node how the watched values stand
    /// against what the deployed run saw (what a `fleet` run would be for).
    pub watching: Vec<String>,
    pub steps: Vec<Selected>,
    pub checks: Vec<Selected>,
    /// Why no preview command ran, when the plan has some for running steps and none ran.
    pub withheld: Option<String>,
}

/// A step or check of the plan, whether it runs on this host and why, and for a step that runs,
/// what its `preview` command printed.
pub struct Selected {
    pub name: String,
    pub selection: roles::Selection,
    pub by_path: ByPath,
    pub shown: Option<Shown>,
}

/// What one preview command printed, and how it ended ("exit 0", "timed out").
pub struct Shown {
    pub output: String,
    pub ended: String,
}

impl Selected {
    pub fn runs(&self) -> bool {
        self.selection.runs() && self.by_path.runs()
    }

    /// Why it runs or not, in words: "role web; changed: nginx/site.conf".
    pub fn why(&self) -> String {
        match &self.by_path {
            _ if !self.selection.runs() => self.selection.to_string(),
            ByPath::Always => self.selection.to_string(),
            by_path => format!("{}; {by_path}", self.selection),
        }
    }
}

/// Previews `commit` on `node`, in a private checkout made from `repo` (the node repo, or as a
/// pre-receive hook sees it, with a push's objects): `all_steps` as `troops deploy --all-steps`
/// would run; `stop` ends a preview command under way.
pub fn preview(
    node: &Node,
    repo: &NodeRepo,
    commit: Oid,
    all_steps: bool,
    stop: &AtomicBool,
) -> Result<Preview> {
    // Outside work/, which a concurrent run empties, in a private directory of a name nobody can
    // guess and plant first; removed when dropped, with whatever the preview commands left.
    let tmp = tempfile::Builder::new()
        .prefix("troops-preview-")
        .tempdir()
        .ctx(|| format!("creating a temporary directory in {}", std::env::temp_dir().display()))?;
    let checkout = tmp.path().join("checkout");
    repo.checkout(commit, &checkout)?;
    let plan = Plan::load(&checkout).map_err(|e| prepare::relative_to(e, &checkout))?;
    let host = node.config.hostname();
    let roles = roles::resolve(&host, &node.config.roles, Some(&plan));
    let deployed = repo.deployed()?;
    let changes = prepare::changes(repo, deployed, commit, all_steps)?;
    let mut preview = Preview {
        commit,
        host,
        baseline: names_paths(&plan).then(|| match &changes {
            Changes::All(why) => why.clone(),
            Changes::Since { baseline, files, .. } => {
                let plural = if files.len() == 1 { "" } else { "s" };
                format!("{} file{plural} changed since {} (deployed)", files.len(), short(*baseline))
            }
        }),
        wave: crate::node::rollout::place(node, repo, commit).map(wave_line),
        holds: holds(node, repo, commit, deployed)?,
        watching: watching(&plan, &roles, Some(node)),
        steps: steps(&plan, &roles, &changes),
        checks: checks(&plan, &roles, &changes),
        roles,
        withheld: None,
    };
    let commands: Vec<(usize, &Step, &String)> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(i, _)| preview.steps[*i].runs())
        .filter_map(|(i, step)| Some((i, step, step.preview.as_ref()?)))
        .collect();
    if commands.is_empty() {
        return Ok(preview);
    }
    if let Some(why) = unverified(node, repo, commit, deployed)? {
        preview.withheld = Some(why);
        return Ok(preview);
    }
    let env = prepare::preview_env(node, commit, deployed, &preview.host, &preview.roles);
    let mut supervisor = runner::Supervisor::new(&env);
    for (i, step, command) in commands {
        let as_step = Step {
            name: format!("preview {}", step.name),
            action: Action::Run(command.clone()),
            ..step.clone()
        };
        let mut env = env.clone();
        env.push(("TROOPS_STEP", step.name.clone()));
        let mut kept = crate::mech::output::Kept::default();
        let result =
            runner::run_step(&mut supervisor, &as_step, &checkout, &env, stop, &mut Output::new(&mut kept))?;
        let ended = match (result.status, result.exit_code, result.cannot_start) {
            (_, _, Some(why)) => format!("could not be started: {why}"),
            (StepStatus::TimedOut, ..) => {
                format!("timed out after {}", humantime::format_duration(step.timeout))
            }
            (StepStatus::Interrupted, ..) => "ended: troops was asked to stop".into(),
            (_, Some(code), None) => format!("exit {code}"),
            (_, None, None) => "ended without a status".into(),
        };
        preview.steps[i].shown = Some(Shown { output: kept.text(), ended });
    }
    Ok(preview)
}

/// What the plan alone says of a run of `commit` on `host`, in a clone of the deploy repo, which
/// knows neither the host's configured roles nor what it deployed: steps and checks by the plan's
/// roles, everything counting as changed, and no command run.
pub fn of_plan(plan: &Plan, host: &str, commit: Oid) -> Preview {
    let roles = roles::resolve(host, &[], Some(plan));
    let baseline =
        format!("the plan alone: what {host} deployed is not known here, so every step counts as changed");
    let changes = Changes::all(baseline.clone());
    let steps = steps(plan, &roles, &changes);
    let commands = plan.steps.iter().zip(&steps).any(|(step, s)| s.runs() && step.preview.is_some());
    Preview {
        commit,
        host: host.to_owned(),
        baseline: names_paths(plan).then_some(baseline),
        wave: plan.rollout.as_ref().map(|r| wave_line(crate::policy::waves::wave_of(host, r))),
        holds: Vec::new(),
        watching: watching(plan, &roles, None),
        checks: checks(plan, &roles, &changes),
        steps,
        roles,
        withheld: commands.then(|| {
            "preview commands run on the node only (troops preview there, or troops push --preview)"
                .to_owned()
        }),
    }
}

/// "watches export addr of role app (settle 5s)" for each of the plan's watches this host has;
/// on a node, then what the peers export now against what the deployed run saw.
fn watching(plan: &Plan, roles: &BTreeSet<String>, node: Option<&Node>) -> Vec<String> {
    let watches = crate::policy::watch::applying(&plan.watches, roles);
    let mut lines: Vec<String> = watches
        .iter()
        .map(|w| {
            format!(
                "watches export {} of role {} (settle {})",
                w.export,
                w.role,
                humantime::format_duration(w.settle)
            )
        })
        .collect();
    if let (Some(node), false) = (node, watches.is_empty()) {
        let peers = crate::node::fleet::snapshot(node, std::time::SystemTime::now());
        let (values, changes) = crate::node::fleet::inputs(node, &watches, &peers);
        lines.push(match changes.is_empty() {
            true => format!("{} watched value(s) now, as the deployed run saw them", values.len()),
            false => format!(
                "{} watched value(s) now; since the deployed run: {} (a fleet run follows once they settle)",
                values.len(),
                changes.join("; ")
            ),
        });
    }
    lines
}

/// Whether a step or check of `plan` names `paths`.
fn names_paths(plan: &Plan) -> bool {
    plan.steps.iter().any(|s| !s.paths.is_empty()) || plan.checks.iter().any(|c| !c.paths.is_empty())
}

/// "wave 2 of 3 (later): a pulled commit waits for the earlier waves; ...".
fn wave_line(place: crate::policy::waves::Place) -> String {
    match place.index {
        0 => format!("{place}: a pulled commit goes first"),
        _ => format!(
            "{place}: a pulled commit waits for the earlier waves; a person's deploy or push does not"
        ),
    }
}

fn steps(plan: &Plan, roles: &BTreeSet<String>, changes: &Changes) -> Vec<Selected> {
    let selected = |s: &Step| selected(&s.name, roles::selects(s, roles), paths::step(s, changes));
    plan.steps.iter().map(selected).collect()
}

fn checks(plan: &Plan, roles: &BTreeSet<String>, changes: &Changes) -> Vec<Selected> {
    let selected = |c: &crate::model::plan::Check| {
        selected(&c.name, roles::selects_check(c, roles), paths::check(c, changes))
    };
    plan.checks.iter().map(selected).collect()
}

fn selected(name: &str, selection: roles::Selection, by_path: ByPath) -> Selected {
    Selected { name: name.to_owned(), selection, by_path, shown: None }
}

/// What would keep a pull from running `commit` now: its quarantine, a pause, a freeze, its
/// plan's deploy windows, its wave's approvals, the rollout.
fn holds(node: &Node, repo: &NodeRepo, commit: Oid, deployed: Option<Oid>) -> Result<Vec<String>> {
    let mut holds = Vec::new();
    if let Some(q) = repo.quarantined(commit)? {
        holds.push(format!("quarantined ({}): no pull or retry runs it", q.reason));
    }
    if let Some(paused) = crate::node::facts::paused(node) {
        holds.push(format!("the node is {}", paused.why));
    }
    if deployed != Some(commit) {
        let frozen = crate::node::orders::frozen(node);
        let window = crate::node::facts::window_closed(node, repo, commit);
        let approval = crate::node::orders::awaiting_approval(node, repo, commit);
        holds.extend([frozen, window, approval].into_iter().flatten().map(|held| held.why));
        if let Some(hold) = crate::node::rollout::verdict(node, repo, commit) {
            holds.push(format!("{}: {}", hold.wave, hold.why));
        }
    }
    Ok(holds)
}

/// Why the node's `[verify]` policy would refuse to run `commit` (its signatures as a run would
/// check them, from the deployed commit), if it would; nothing is remembered of the check.
fn unverified(node: &Node, repo: &NodeRepo, commit: Oid, deployed: Option<Oid>) -> Result<Option<String>> {
    let Some(policy) = crate::mech::verify::enforced(&node.config.verify, &node.seen_path())? else {
        return Ok(None);
    };
    let base = deployed.and_then(|d| repo.git.merge_base(d, commit).ok());
    let scope =
        if base == Some(commit) { crate::model::config::Scope::Tip } else { node.config.verify.scope };
    let refusal = crate::mech::verify::judge(&repo.git, &policy, base, commit, scope)?;
    Ok(refusal.map(|r| format!("the node's [verify] policy refuses it: {r}; no preview command ran")))
}

/// The preview as a person reads it (and `troops push --preview` gathers it): a head, then a line
/// per step and check, each preview command's output below its step, marked `| `.
impl std::fmt::Display for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let baseline = self.baseline.as_ref().map_or(String::new(), |b| format!(": {b}"));
        writeln!(f, "commit {} on {} [{}]{baseline}", self.commit, self.host, roles.join(","))?;
        if let Some(wave) = &self.wave {
            writeln!(f, "{wave}")?;
        }
        for hold in &self.holds {
            writeln!(f, "held: {hold}")?;
        }
        for line in &self.watching {
            writeln!(f, "fleet: {line}")?;
        }
        let verb = |s: &Selected| if s.runs() { "run " } else { "skip" };
        for step in &self.steps {
            writeln!(f, "{} {}: {}", verb(step), step.name, step.why())?;
            if let Some(shown) = &step.shown {
                for line in shown.output.lines() {
                    writeln!(f, "  | {line}")?;
                }
                writeln!(f, "  preview of {}: {}", step.name, shown.ended)?;
            }
        }
        for check in &self.checks {
            writeln!(f, "{} check {}: {}", verb(check), check.name, check.why())?;
        }
        if let Some(why) = &self.withheld {
            writeln!(f, "{why}")?;
        }
        Ok(())
    }
}
