//! Publishing a node's status: commit the document onto `refs/troops/status/<host>` in the node
//! repo, then push that one ref to the status remote, as fetches go (fetch.rs): libgit2 for local
//! paths, root's hardened `git` with the node's SSH key for SSH and http(s). Fetching the fleet's
//! status refs back, for the rollout gate and `troops fleet`, goes the same two ways.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use git2::{PushOptions, RemoteCallbacks, Repository};

use super::status::{self, StatusDoc};
use crate::error::{Error, Result};
use crate::node::Node;

/// The refspec that brings every node's status ref (a node's own included: the remote's copy is
/// what its next status commit must fast-forward). No pruning: a node's own ref is here before
/// its first push is.
pub const FETCH_REFSPEC: &str = "+refs/troops/status/*:refs/troops/status/*";

/// What one publish did.
#[derive(Debug)]
pub struct Published {
    pub reference: String,
    pub remote: String,
    /// Committing and pushing, together.
    pub duration: Duration,
}

/// Commits `doc` and pushes it to `remote` of the node repo, giving up after `timeout`.
pub fn publish(node: &Node, doc: &StatusDoc, remote: &str, timeout: Duration) -> Result<Published> {
    let started = Instant::now();
    let repo_path = node.repo_path();
    crate::repo::refuse_redirects(&repo_path)?;
    let (reference, commit) = status::commit(&repo_path, doc)?;
    push(&repo_path, remote, &format!("{commit}:{reference}"), &node.ssh_dir(), started + timeout)
        .map_err(|e| Error::Env(format!("pushing {reference} to remote {remote}: {e}")))?;
    Ok(Published { reference, remote: remote.to_owned(), duration: started.elapsed() })
}

fn url_of(repo_path: &Path, remote: &str) -> std::result::Result<String, String> {
    let git = Repository::open_bare(repo_path).map_err(|e| e.message().to_owned())?;
    let found = git.find_remote(remote).map_err(|_| format!("the node repo has no remote {remote:?}"))?;
    found.url().map(str::to_owned).ok_or_else(|| format!("remote {remote:?} has no URL"))
}

/// Pushes `refspec` (`<commit>:<ref>`) to `remote`, fast-forward only.
fn push(
    repo_path: &Path,
    remote: &str,
    refspec: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let url = url_of(repo_path, remote)?;
    if crate::fetch::libgit2_fetches(&url) {
        let git = Repository::open_bare(repo_path).map_err(|e| e.message().to_owned())?;
        let mut found = git.find_remote(remote).map_err(|e| e.message().to_owned())?;
        let mut rejected = None;
        {
            let mut callbacks = RemoteCallbacks::new();
            callbacks.push_update_reference(|name, status| {
                if let Some(status) = status {
                    rejected = Some(format!("{name} was refused: {status}"));
                }
                Ok(())
            });
            let mut options = PushOptions::new();
            options.remote_callbacks(callbacks);
            found.push(&[refspec], Some(&mut options)).map_err(|e| e.message().to_owned())?;
        }
        return rejected.map_or(Ok(()), Err);
    }
    git_with_key(
        repo_path,
        &url,
        ssh_dir,
        deadline,
        &["push", "--quiet", "--porcelain", "--end-of-options", remote, refspec],
    )
}

/// Fetches every status ref of `remote` into the node repo at `repo_path`.
pub fn fetch(
    repo_path: &Path,
    remote: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let url = url_of(repo_path, remote)?;
    if crate::fetch::libgit2_fetches(&url) {
        let git = Repository::open_bare(repo_path).map_err(|e| e.message().to_owned())?;
        let mut found = git.find_remote(remote).map_err(|e| e.message().to_owned())?;
        let mut options = git2::FetchOptions::new();
        options.download_tags(git2::AutotagOption::None).update_fetchhead(false).prune(git2::FetchPrune::Off);
        return found
            .fetch(
                &[FETCH_REFSPEC],
                Some(&mut options),
                Some(&format!("troops: fetch status refs from {remote}")),
            )
            .map_err(|e| e.message().to_owned());
    }
    git_with_key(
        repo_path,
        &url,
        ssh_dir,
        deadline,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-prune",
            "--end-of-options",
            remote,
            FETCH_REFSPEC,
        ],
    )
}

/// Root's hardened `git` (fetch.rs) with the node's key, killed with its children at `deadline`.
fn git_with_key(
    repo_path: &Path,
    url: &str,
    ssh_dir: &Path,
    deadline: Instant,
    args: &[&str],
) -> std::result::Result<(), String> {
    let mut child = crate::fetch::root_git(repo_path)
        .args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"])
        .args(args)
        .env(
            "GIT_SSH_COMMAND",
            crate::ssh::command(ssh_dir, deadline.saturating_duration_since(Instant::now())),
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running git {}: {e}", args[0]))?;
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let out = std::thread::spawn(move || crate::runner::read_tail(stdout, crate::runner::MAX_KEPT_OUTPUT));
    let err = std::thread::spawn(move || crate::runner::read_tail(stderr, crate::runner::MAX_KEPT_OUTPUT));
    let status = crate::runner::wait_or_kill(&mut child, deadline)
        .map_err(|e| format!("waiting for git {}: {e}", args[0]))?;
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        None => Err("timed out".into()),
        Some(status) if status.success() => Ok(()),
        Some(_) => {
            // `--porcelain` says which ref was refused and why, e.g. "!\trefs/...\t[rejected] (non-fast-forward)".
            let refused = stdout.lines().find(|l| l.starts_with('!')).map(|l| l.replace('\t', " "));
            Err(crate::ssh::host_key_refusal(url, &stderr, ssh_dir).or(refused).unwrap_or_else(|| {
                stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ")
            }))
        }
    }
}

/// After a run in-process (no daemon: cron's `troops pull`, a push hook, `troops deploy`), starts
/// `troops fleet --publish` for `node` in the background, detached (`background`), and returns at
/// once: the caller never waits for the network. Nothing happens without a `status_remote`.
pub fn in_background(node: &Node) {
    if node.config.status_remote.is_none() {
        return;
    }
    let _ = crate::background::troops(node, &["fleet", "--publish"]);
}
