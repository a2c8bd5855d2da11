//! `troops check [PLAN]`: validate a plan as a node would (its steps and their scripts, checks,
//! `[health]`, `[release]` and `min_troops`), with no node around.
//!
//! In a clone of the deploy repo (PLAN at the root of a git work tree) it checks what git would
//! deploy, not the work tree: git's index, which is what the next commit holds (and, in CI's fresh
//! clone, what HEAD holds). The index is written into a private temp dir and checked there by the
//! node's own rules, so a script that is not committed, or committed without its executable bit,
//! fails here as it would on the node; what differs in the work tree is named, not checked.
//! Anywhere else it checks the files where they lie.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use troops_core::model::plan::Plan;
use troops_core::Error;

/// How many paths the note on unstaged changes names before it counts the rest.
const NAMED_CHANGES: usize = 10;

pub fn run(path: &Path) -> Result<ExitCode> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (plan, checked) = match clone_at(dir)? {
        Some(repo) => {
            let plan = check_index(&repo, path);
            note_unstaged(&repo)?;
            (plan?, " (git's index: what the next commit holds)")
        }
        None => (Plan::parse(path, &troops_core::model::plan::read(path)?, Some(dir))?, ""),
    };
    let roles: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
    let checks: Vec<&str> = plan.checks.iter().map(|c| c.name.as_str()).collect();
    writeln!(
        std::io::stdout(),
        "{}: ok{checked}: {} steps, roles: {}, checks: {}{}",
        path.display(),
        plan.steps.len(),
        if roles.is_empty() { "none".into() } else { roles.join(", ") },
        if checks.is_empty() { "none".into() } else { checks.join(", ") },
        if plan.release.is_some() { ", with releases" } else { "" }
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The git repository whose work tree's root is `dir`, if there is one.
fn clone_at(dir: &Path) -> Result<Option<git2::Repository>> {
    let repo = match git2::Repository::discover(dir) {
        Ok(repo) => repo,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::git(format!("opening the git repository at {}", dir.display()), e).into())
        }
    };
    let root = |p: &Path| p.canonicalize().ok();
    let at_root = repo.workdir().is_some_and(|workdir| root(workdir).is_some() && root(workdir) == root(dir));
    Ok(at_root.then_some(repo))
}

/// The plan as git's index of `repo` holds it, checked in a private checkout of the index; errors
/// name `path`, the plan in the work tree.
fn check_index(repo: &git2::Repository, path: &Path) -> Result<Plan> {
    let workdir = repo.workdir().unwrap_or(Path::new(".")).display().to_string();
    let context = || format!("reading git's index in {workdir}");
    let mut index = repo.index().map_err(|e| Error::git(context(), e))?;
    let tmp = tempfile::Builder::new().prefix("troops-check-").tempdir().map_err(|e| {
        Error::io(format!("creating a temporary directory in {}", std::env::temp_dir().display()), e)
    })?;
    let checkout = tmp.path().join("index");
    let mut options = git2::build::CheckoutBuilder::new();
    options.target_dir(&checkout).force().recreate_missing(true).update_index(false).disable_filters(true);
    repo.checkout_index(Some(&mut index), Some(&mut options)).map_err(|e| Error::git(context(), e))?;
    Plan::load(&checkout).map_err(|e| in_work_tree(e, &checkout, path).into())
}

/// A plan error found in `checkout`, told as of `path`.
fn in_work_tree(error: Error, checkout: &Path, path: &Path) -> Error {
    match error {
        Error::Plan { path: at, line, column, message } if at.starts_with(checkout) => {
            Error::Plan { path: path.to_owned(), line, column, message }
        }
        other => other,
    }
}

/// Says which paths of the work tree differ from the index: those were not checked.
fn note_unstaged(repo: &git2::Repository) -> Result<()> {
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true).exclude_submodules(true);
    let statuses = repo
        .statuses(Some(&mut options))
        .map_err(|e| Error::git("comparing the work tree with git's index", e))?;
    let changed: Vec<String> = statuses
        .iter()
        .filter_map(|entry| {
            let status = entry.status();
            let how = if status.is_wt_new() {
                "untracked"
            } else if status.is_wt_deleted() {
                "deleted"
            } else if status.is_wt_modified() || status.is_wt_typechange() || status.is_wt_renamed() {
                "changed"
            } else {
                return None;
            };
            let path = PathBuf::from(String::from_utf8_lossy(entry.path_bytes()).into_owned());
            Some(format!("{} ({how})", path.display()))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let more = changed.len().saturating_sub(NAMED_CHANGES);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    writeln!(
        std::io::stderr(),
        "troops: checked git's index, not the work tree, which differs in {}{more}; `git add` what should be deployed",
        changed[..changed.len().min(NAMED_CHANGES)].join(", ")
    )?;
    Ok(())
}
