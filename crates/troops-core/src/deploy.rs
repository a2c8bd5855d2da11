//! A run, start to end: take the node lock, pick the commit, check it out fresh, load the plan,
//! run the steps this host selects, keep the record exact at every point, and move
//! `refs/troops/deployed` only after success. Every trigger (CLI, hook, daemon) comes through here.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::Oid;

use crate::error::{Context, Error, Result};
use crate::lock::NodeLock;
use crate::node::Node;
use crate::plan::{Plan, Step};
use crate::runs::{now, RunRecord, RunStatus, StepRecord, StepStatus, Trigger};
use crate::{roles, runner};

pub struct Request {
    pub trigger: Trigger,
    /// A revision to run; `None`: the branch tip.
    pub commit: Option<String>,
    /// Skip the run when the commit is deployed already (pull, push, retry: a trigger that
    /// arrived during another run may find its work done).
    pub unless_deployed: bool,
}

pub enum Outcome {
    Ran(RunRecord),
    /// Nothing to do: the commit is the deployed one.
    AlreadyDeployed(Oid),
    /// Not yet: the rollout holds the pulled commit until earlier waves are healthy on it.
    Held(crate::fleet::rollout::Hold),
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Ran(record) => record.status == RunStatus::Succeeded,
            Outcome::AlreadyDeployed(_) | Outcome::Held(_) => true,
        }
    }
}

/// Runs the plan for `request`, writing progress and step output to `out` as it comes. `stop`,
/// once set, ends the current step (and all it started) and the run, `interrupted`.
pub fn deploy(node: &Node, request: &Request, out: &mut dyn Write, stop: &AtomicBool) -> Result<Outcome> {
    let repo = node.repo()?;
    // What nearly every poll finds: the tip is deployed. Refs are read atomically, so this needs
    // neither the lock nor the run records.
    if request.unless_deployed && request.commit.is_none() {
        if let (Some(tip), Some(deployed)) = (repo.tip()?, repo.deployed()?) {
            if tip == deployed {
                return Ok(Outcome::AlreadyDeployed(tip));
            }
        }
    }
    let mut lock = NodeLock::acquire(&node.lock_path(), |holder| {
        let _ = writeln!(out, "troops: waiting for the node lock ({holder})");
    })?;
    let runs = node.runs();
    if let Some(old) = runs.recover(&lock)? {
        let _ = writeln!(
            out,
            "troops: run {} was left running by a process that died; marked interrupted",
            old.id
        );
    }
    // Plaintext secrets a run left when its troops died are removed before anything else runs.
    crate::secrets::remove_leftovers(&node.state_dir)?;
    // A run that ended `interrupted` may have left processes running, if its troops died with
    // the supervisor of its steps; they must not overlap ours. Until a new run is recorded the
    // interrupted one stays the latest, so a troops that dies here too leaves the work to the next.
    if let Some(last) = runs.latest()?.filter(|r| r.status == RunStatus::Interrupted) {
        let grace = crate::plan::DEFAULT_KILL_GRACE;
        let leftovers = crate::supervise::end_leftovers(&node.state_dir, last.id, grace);
        if !leftovers.is_empty() {
            let _ = writeln!(out, "troops: {leftovers}");
        }
    }
    let commit = match &request.commit {
        Some(rev) => repo.resolve(rev)?,
        None => repo.tip()?.ok_or_else(|| {
            Error::Input(format!(
                "branch {} of {} has no commits yet",
                repo.branch,
                node.repo_path().display()
            ))
        })?,
    };
    let previous = repo.deployed()?;
    if request.unless_deployed && previous == Some(commit) {
        return Ok(Outcome::AlreadyDeployed(commit));
    }
    if let Some(hold) = crate::fleet::rollout::check(node, &repo, commit, request.trigger)? {
        return Ok(Outcome::Held(hold));
    }
    vouch(node, &repo, commit, previous, request.trigger)?;

    let id = runs.create(&lock)?;
    lock.describe(&format!("run {id} ({}) of {commit}", request.trigger));
    let mut record = RunRecord {
        id,
        trigger: request.trigger,
        commit: commit.to_string(),
        previous_commit: previous.map(|p| p.to_string()),
        host: node.config.hostname(),
        roles: node.config.roles.clone(),
        started_at: now(),
        finished_at: None,
        status: RunStatus::Running,
        error: None,
        steps: Vec::new(),
    };
    runs.save(&record)?;
    let log = runs.open_log(id)?;
    let mut out = Tee { log, out, mask: crate::secrets::Masker::default() };

    let result = run(node, &repo, &mut record, &mut out, stop);
    record.finished_at = Some(now());
    if let Err(e) = &result {
        record.status = RunStatus::Failed;
        record.error = Some(e.to_string());
        let _ = writeln!(out, "troops: {e}");
    }
    // Every run's output ends with its summary, whether it ran its steps or failed before them.
    let _ = writeln!(out, "troops: {}", summary(&record));
    out.release();
    runs.save(&record)?;
    runs.prune(node.config.keep_runs, &lock)?;
    match result {
        Err(e) if e.class() == crate::error::Class::Environment => Err(e),
        _ => {
            if record.status == RunStatus::Succeeded {
                repo.set_deployed(commit, &format!("troops: run {id} ({}) succeeded", record.trigger))?;
            }
            Ok(Outcome::Ran(record))
        }
    }
}

/// With `require_signed`, the commit about to run must verify now, under the lock, whatever
/// moved the ref to it (a push, a pull, `git update-ref` by a member of the admin group, a restored
/// backup): with scope tip, itself; with scope all, itself and every commit between it and what
/// is known to be good, the last deployed commit (or their common ancestor, for a rollback).
/// Refused: exit 1 with the reason, recorded as the node's last refusal; nothing runs.
fn vouch(
    node: &Node,
    repo: &crate::repo::NodeRepo,
    commit: Oid,
    deployed: Option<Oid>,
    trigger: Trigger,
) -> Result<()> {
    let Some(policy) = crate::verify::enforced(&node.config.verify, &node.state_dir)? else { return Ok(()) };
    let scope = node.config.verify.scope;
    let base = deployed.and_then(|d| repo.git.merge_base(d, commit).ok());
    // A rollback to an ancestor of the deployed commit: its history was checked with that one's.
    let scope = if base == Some(commit) { crate::config::Scope::Tip } else { scope };
    let Some(refusal) = crate::verify::check_update(&repo.git, &policy, base, commit, scope)? else {
        return Ok(());
    };
    let source = format!("{trigger} run");
    let _ = crate::verify::record_refusal(&node.state_dir, &source, &refusal);
    Err(Error::Refused(format!("refusing to run {}: {refusal}; nothing ran", short(&commit.to_string()))))
}

/// The part of a run that happens with a record on disk; errors fail the run.
fn run(
    node: &Node,
    repo: &crate::repo::NodeRepo,
    record: &mut RunRecord,
    out: &mut Tee,
    stop: &AtomicBool,
) -> Result<()> {
    let runs = node.runs();
    let work = node.work_dir();
    let checkout = work.join(record.id.to_string());
    clear_dir(&work)?;
    let commit = Oid::from_str(&record.commit).expect("record holds a commit id");
    repo.checkout(commit, &checkout)?;
    let plan = Plan::load(&checkout).map_err(|e| relative_to(e, &checkout))?;
    let roles = roles::resolve(&record.host, &node.config.roles, Some(&plan));
    record.roles = roles.iter().cloned().collect();
    let selected: Vec<&Step> = plan.steps.iter().filter(|s| roles::selects(s, &roles).0).collect();
    record.steps = selected
        .iter()
        .map(|s| StepRecord {
            name: s.name.clone(),
            status: StepStatus::NotRun,
            exit_code: None,
            duration_ms: 0,
        })
        .collect();
    runs.save(record)?;

    let _ = writeln!(
        out,
        "troops: run {} ({}) of {} on {} [{}]: {} of {} steps",
        record.id,
        record.trigger,
        short(&record.commit),
        record.host,
        record.roles.join(","),
        selected.len(),
        plan.steps.len()
    );
    // Before any step: a secret this node cannot decrypt fails the run with every step `not_run`.
    let secrets =
        crate::secrets::decrypt_for_run(&node.state_dir, &checkout, &plan, &record.host, &roles, record.id)?;
    if let Some(secrets) = &secrets {
        out.mask = secrets.masker();
        for name in secrets.unmasked() {
            let _ = writeln!(
                out,
                "troops: secret `{name}` is shorter than {} bytes; its value is not masked in output",
                crate::secrets::MIN_MASKED
            );
        }
    }
    let env = step_env(node, record, &roles, secrets.as_ref());
    let mut supervisor = runner::Supervisor::new(&env);
    for (i, step) in selected.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            record.status = RunStatus::Interrupted;
            record.error = Some("troops was asked to stop; the remaining steps did not run".into());
            break;
        }
        let _ = writeln!(out, "==> {}", step.name);
        let mut env = env.clone();
        env.push(("TROOPS_STEP", step.name.clone()));
        let result = runner::run_step(&mut supervisor, step, &checkout, &env, stop, out)?;
        out.release();
        let slot = &mut record.steps[i];
        slot.status = result.status;
        slot.exit_code = result.exit_code;
        slot.duration_ms = result.duration.as_millis() as u64;
        if result.status == StepStatus::Interrupted {
            record.status = RunStatus::Interrupted;
            record.error =
                Some(format!("troops was asked to stop during step `{}`; it was ended", step.name));
            runs.save(record)?;
            break;
        }
        if result.status != StepStatus::Succeeded {
            let code = result.exit_code.map_or(String::new(), |c| format!(" (exit {c})"));
            let _ = writeln!(out, "==> {} {}{code}", step.name, result.status);
            record.status = RunStatus::Failed;
            record.error = Some(format!("step `{}` {}{code}", step.name, result.status));
            runs.save(record)?;
            break;
        }
        runs.save(record)?;
    }
    // Only now: the record says `running` on disk until the last step is done.
    if record.status == RunStatus::Running {
        record.status = RunStatus::Succeeded;
    }
    Ok(())
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
    secrets: Option<&crate::secrets::RunSecrets>,
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

/// The first 12 characters of `commit` (a record read from disk may hold anything there).
pub fn short(commit: &str) -> &str {
    &commit[..commit.char_indices().nth(12).map_or(commit.len(), |(i, _)| i)]
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

/// Output goes to the caller and to the run's `output.log`, with the run's secret values masked.
struct Tee<'a> {
    log: File,
    out: &'a mut dyn Write,
    mask: crate::secrets::Masker,
}

impl Tee<'_> {
    /// Writes what the masker holds back (the end of a step's output that might begin a value).
    fn release(&mut self) {
        let held = self.mask.release();
        let _ = self.write_both(&held);
    }

    fn write_both(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.log.write_all(bytes)?;
        // The caller may have gone (a pusher who hung up); the run and its log go on.
        let _ = self.out.write_all(bytes);
        Ok(())
    }
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let masked = self.mask.mask(buf);
        self.write_both(&masked)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// What `--dry-run` shows: the commit, this host's roles, and for each step whether it runs and why.
pub struct DryRun {
    pub commit: Oid,
    pub roles: BTreeSet<String>,
    pub steps: Vec<(String, bool, String)>,
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
    Ok(DryRun { commit, roles, steps })
}

/// What a trigger learns when another run deployed its commit first: which commit, and which run.
pub fn already_deployed(node: &Node, commit: Oid) -> String {
    let commit = commit.to_string();
    let run = match node.runs().latest() {
        Ok(Some(run)) if run.commit == commit => format!(" by run {} (troops log {})", run.id, run.id),
        _ => String::new(),
    };
    format!(
        "troops: {}, the tip of refs/heads/{}, is deployed already{run}; nothing runs",
        short(&commit),
        node.config.branch
    )
}
