//! A run's first phase, under the node lock: what a troops that died left behind is cleaned up,
//! the commit is vouched for (its signatures, now), the run's record is written, its commit is
//! checked out fresh (a `work/` checkout, a new release, or for a rollback the last good release),
//! and its plan, the host's roles and steps, its secrets and its environment are made ready.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use git2::Oid;

use super::{finalize, Layout, Run};
use crate::mech::lock::NodeLock;
use crate::mech::releases::Releases;
use crate::mech::repo::NodeRepo;
use crate::mech::secrets::RunSecrets;
use crate::model::error::{Context, Error, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::plan::{Phase, Plan};
use crate::model::records::{RunRecord, RunStatus, StepRecord, StepStatus, Trigger};
use crate::model::roles;
use crate::policy::paths::{self, Changes};

/// What a run goes on with once prepared.
pub(super) struct Prepared {
    pub plan: Plan,
    pub roles: BTreeSet<String>,
    pub layout: Layout,
    /// Indices into the plan's steps: those before the switch, and (with releases) after it.
    pub build: Vec<usize>,
    pub activate: Vec<usize>,
    /// What the commit changed since the baseline, for steps and checks with `paths`.
    pub changes: Changes,
    /// Held for the run: dropped when it ends, which removes the plaintext.
    pub _secrets: Option<RunSecrets>,
    pub env: Vec<(&'static str, String)>,
}

impl Prepared {
    pub fn root(&self) -> &Path {
        self.layout.root()
    }
}

/// Takes the node lock (saying what it waits for, and giving up when asked to stop), then
/// cleans up after a troops that died.
pub(super) fn lock_and_recover(
    node: &Node,
    repo: &NodeRepo,
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
fn recover(node: &Node, repo: &NodeRepo, lock: &NodeLock, out: &mut dyn Write) -> Result<()> {
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
            finalize::quarantine_if_asked(repo, old, out)?;
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

/// With `require_signed`, the commit about to run must verify now, under the lock, whatever
/// moved the ref to it (a push, a pull, `git update-ref` by a member of the admin group, a restored
/// backup): with scope tip, itself; with scope all, itself and every commit between it and what
/// is known to be good, the last deployed commit (or their common ancestor, for a rollback).
/// `deployed` is what this process goes by ([`crate::mech::repo::NodeRepo::deployed`]): for root, its
/// ledger, never `refs/troops/deployed`, which the admin group can move.
/// Refused: exit 1 with the reason, recorded as the node's last refusal; nothing runs.
pub(super) fn vouch(
    node: &Node,
    repo: &NodeRepo,
    commit: Oid,
    deployed: Option<Oid>,
    trigger: Trigger,
) -> Result<()> {
    let Some(policy) = crate::mech::verify::enforced(&node.config.verify, &node.seen_path())? else {
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
    let _ = crate::mech::verify::record_refusal(&node.refused_path(), &source, &refusal);
    crate::mech::metrics::count_refusal(node, refusal.verification.kind());
    crate::node::state::write_textfile(node);
    Err(Error::Refused { commit, reason: refusal.to_string() })
}

impl Run<'_, '_> {
    /// The plan, read from the verified commit, decides where the checkout goes; then the host's
    /// roles and steps, the record's step list, the run's header line, its secrets (a secret
    /// this node cannot decrypt fails the run before any step) and its environment.
    pub(super) fn prepare(&mut self) -> Result<Prepared> {
        let commit = self.record.commit;
        let plan_path = Path::new(crate::model::plan::FILE_NAME);
        let text = self.repo.plan_text(commit)?.ok_or_else(|| crate::model::plan::missing(plan_path))?;
        let layout = self.layout(commit, &Plan::parse(plan_path, &text, None)?)?;
        let root = layout.root().to_owned();
        let plan =
            Plan::parse(&root.join(plan_path), &text, Some(&root)).map_err(|e| relative_to(e, &root))?;
        let roles = roles::resolve(&self.record.host, &self.node.config.roles, Some(&plan));
        self.record.roles = roles.iter().cloned().collect();
        let reused = matches!(layout, Layout::Release { reused: true, .. });
        let selected: Vec<usize> = (0..plan.steps.len())
            .filter(|&i| roles::selects(&plan.steps[i], &roles).runs())
            .filter(|&i| !reused || plan.steps[i].phase == Phase::Activate)
            .collect();
        // Build steps first, then (with releases) the switch, then activate steps.
        let (build, activate): (Vec<usize>, Vec<usize>) =
            selected.iter().partition(|&&i| plan.steps[i].phase == Phase::Build || plan.release.is_none());
        let with_paths = selected.iter().map(|&i| &plan.steps[i].paths);
        let changes = if with_paths.chain(plan.checks.iter().map(|c| &c.paths)).all(Vec::is_empty) {
            Changes::all("no step or check names `paths`")
        } else {
            changes(self.repo, self.record.previous_commit, commit, self.all_steps)?
        };
        self.record.steps = build
            .iter()
            .chain(activate.iter())
            .map(|&i| {
                let by_path = paths::step(&plan.steps[i], &changes);
                StepRecord {
                    name: plan.steps[i].name.clone(),
                    status: if by_path.runs() { StepStatus::NotRun } else { StepStatus::Skipped },
                    exit_code: None,
                    duration_ms: 0,
                    skipped: (!by_path.runs()).then(|| by_path.to_string()),
                }
            })
            .collect();
        self.node.runs().save(self.record)?;
        let skipped = self.record.steps.iter().filter(|s| s.status == StepStatus::Skipped).count();
        let _ = writeln!(
            self.out,
            "troops: run {} ({}) of {} on {} [{}]: {} of {} steps{}{}",
            self.record.id,
            self.record.trigger,
            short(self.record.commit),
            self.record.host,
            self.record.roles.join(","),
            selected.len() - skipped,
            plan.steps.len(),
            match skipped {
                0 => String::new(),
                n => format!(" ({n} skipped: nothing under their paths changed)"),
            },
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
        // The peers as the run finds them at its start: what its steps and checks read, and what
        // its plan watches (recorded against what the deployed run saw).
        crate::mech::exports::make_dir(self.node, self.record.id)?;
        let peers = crate::node::fleet::snapshot(self.node, std::time::SystemTime::now());
        crate::node::fleet::write_snapshot(&fleet_file(self.node, self.record.id), &peers)?;
        let watches = crate::policy::watch::applying(&plan.watches, &roles);
        let (watched, fleet_changes) = crate::node::fleet::inputs(self.node, &watches, &peers);
        if !watches.is_empty() {
            self.record.fleet_changes = fleet_changes;
            self.node.runs().save(self.record)?;
        }
        self.watched = Some(watched);
        let mut env = step_env(self.node, self.record, &roles, secrets.as_ref());
        if let Some(failed) = self.failed_commit {
            env.push(("TROOPS_FAILED_COMMIT", failed.to_string()));
        }
        if let Layout::Release { releases, dir, .. } = &layout {
            env.push(("TROOPS_RELEASE_DIR", dir.display().to_string()));
            env.push(("TROOPS_CURRENT", releases.link.display().to_string()));
        }
        Ok(Prepared { plan, roles, layout, build, activate, changes, _secrets: secrets, env })
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
        let releases = Releases::new(self.node, release.link.as_deref());
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
}

/// What `commit` changed since `baseline`: the last successful deploy, or for a rollback the
/// commit it undoes (a run record's previous commit); everything, when a person asked for every
/// step (`all_steps`) or the baseline cannot be compared.
pub(super) fn changes(
    repo: &NodeRepo,
    baseline: Option<Oid>,
    commit: Oid,
    all_steps: bool,
) -> Result<Changes> {
    if all_steps {
        return Ok(Changes::all("a person asked for every step (--all-steps)"));
    }
    let Some(baseline) = baseline else {
        return Ok(Changes::all("this node's first deploy"));
    };
    let Some(files) = repo.changed_files(baseline, commit)? else {
        return Ok(Changes::all(format!("the last deploy, {}, is not in the node repo", short(baseline))));
    };
    let path = Path::new(crate::model::plan::FILE_NAME);
    let plan = repo.plan_text(baseline).ok().flatten().and_then(|text| Plan::parse(path, &text, None).ok());
    Ok(match plan {
        Some(plan) => Changes::Since { baseline, files, plan: Box::new(plan) },
        None => Changes::all(format!("the plan of the last deploy, {}, cannot be read", short(baseline))),
    })
}

/// Writes the record of a new run of `now` (id, trigger, commit, where the node came from), as
/// `running`, before anything of the run happens.
pub(super) fn record(
    node: &Node,
    lock: &mut NodeLock,
    now: &crate::policy::schedule::RunNow,
    deployed: Option<Oid>,
) -> Result<RunRecord> {
    let runs = node.runs();
    let id = runs.create(lock)?;
    lock.describe(&format!("run {id} ({}) of {}", now.trigger, now.commit));
    let record = RunRecord {
        schema: crate::model::records::SCHEMA,
        id,
        trigger: now.trigger,
        commit: now.commit,
        // A rollback comes from the failed commit the host was left with.
        previous_commit: now.undoes.map(|f| f.commit).or(deployed),
        host: node.config.hostname(),
        roles: node.config.roles.clone(),
        started_at: crate::model::time::Timestamp::now(),
        finished_at: None,
        status: RunStatus::Running,
        error: None,
        steps: Vec::new(),
        checks: Vec::new(),
        rollback_of: now.undoes.and_then(|f| f.run),
        rolled_back_by: None,
        fleet_changes: Vec::new(),
    };
    runs.save(&record)?;
    // The metrics say the node is deploying from the run's first moment, not from its end.
    crate::node::state::write_textfile(node);
    Ok(record)
}

/// Plan errors name the file as it is in the repo, not in the throwaway checkout.
pub(super) fn relative_to(error: Error, checkout: &Path) -> Error {
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
    crate::mech::modes::dir_all(dir, 0o750)?;
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

/// The whole environment of every step but `TROOPS_STEP` and the step's own `env`, the same for
/// every trigger (SPEC, "The trust boundary"): every child's (`mech::env`) and the run's
/// `TROOPS_*`. `TROOPS_SECRETS` is there only when the node has secrets in this run.
pub(super) fn step_env(
    node: &Node,
    record: &RunRecord,
    roles: &BTreeSet<String>,
    secrets: Option<&crate::mech::secrets::RunSecrets>,
) -> Vec<(&'static str, String)> {
    let mut env = commit_env(node, record.commit, record.previous_commit, &record.host, roles);
    env.extend([
        ("TROOPS_RUN_ID", record.id.to_string()),
        ("TROOPS_TRIGGER", record.trigger.to_string()),
        ("TROOPS_EXPORTS", crate::mech::exports::dir(node, record.id).display().to_string()),
        ("TROOPS_FLEET", fleet_file(node, record.id).display().to_string()),
    ]);
    if let Some(secrets) = secrets {
        env.push(("TROOPS_SECRETS", secrets.dir.display().to_string()));
    }
    env
}

/// `runs/<id>/fleet.json`: the peers as run `id` found them at its start (`$TROOPS_FLEET`).
fn fleet_file(node: &Node, run: u64) -> std::path::PathBuf {
    node.runs().dir(run).join("fleet.json")
}

/// What a step's `preview` command sees: a step's environment for `commit` but for what only a
/// run has (`TROOPS_RUN_ID`, secrets), with `TROOPS_TRIGGER=preview`.
pub(super) fn preview_env(
    node: &Node,
    commit: Oid,
    previous: Option<Oid>,
    host: &str,
    roles: &BTreeSet<String>,
) -> Vec<(&'static str, String)> {
    let mut env = commit_env(node, commit, previous, host, roles);
    env.push(("TROOPS_TRIGGER", "preview".to_owned()));
    env
}

/// Every child's environment (`mech::env`) and what a step knows of the commit it is for.
fn commit_env(
    node: &Node,
    commit: Oid,
    previous: Option<Oid>,
    host: &str,
    roles: &BTreeSet<String>,
) -> Vec<(&'static str, String)> {
    let mut env = crate::mech::env::base();
    env.extend([
        ("TROOPS_COMMIT", commit.to_string()),
        ("TROOPS_PREVIOUS_COMMIT", previous.map(|c| c.to_string()).unwrap_or_default()),
        ("TROOPS_HOST", host.to_owned()),
        ("TROOPS_ROLES", roles.iter().cloned().collect::<Vec<_>>().join(",")),
        ("TROOPS_STATE_DIR", node.state_dir.display().to_string()),
        ("TROOPS_CONFIG", node.config.path.display().to_string()),
    ]);
    env
}
