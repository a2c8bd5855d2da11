//! Fetching the followed branch from every remote of the node repo, all at once, each bounded by
//! `fetch_timeout`: one slow or dead remote never holds up the others. A remote whose advertised
//! tip is already here costs one connection and no download. https remotes go through the `git`
//! command, so that only they pay for TLS set-up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use git2::{AutotagOption, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository};

/// What fetching one remote gave.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub remote: String,
    pub url: String,
    /// The remote's branch tip (`None`: the remote has no such branch), or why the fetch failed.
    pub tip: Result<Option<Oid>, String>,
    /// Whether objects were downloaded (false: the advertised tip was already here).
    pub downloaded: bool,
    pub duration: Duration,
}

/// Fetches `branch` from every remote of the repo at `repo_path` into `refs/remotes/<remote>/<branch>`.
pub fn fetch_all(
    repo_path: &Path,
    branch: &str,
    ssh_dir: &Path,
    timeout: Duration,
) -> crate::Result<Vec<Fetched>> {
    let repo = Repository::open_bare(repo_path)
        .map_err(|e| crate::Error::git(format!("opening {}", repo_path.display()), e))?;
    let remotes = repo
        .remotes()
        .map_err(|e| crate::Error::git(format!("listing remotes of {}", repo_path.display()), e))?;
    let names: Vec<String> = remotes.iter().flatten().map(str::to_owned).collect();
    set_socket_timeouts(timeout);
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    for (index, name) in names.iter().enumerate() {
        let (tx, name, repo_path, branch, ssh_dir) =
            (tx.clone(), name.clone(), repo_path.to_owned(), branch.to_owned(), ssh_dir.to_owned());
        // A remote stuck past its deadline is reported and left behind; its socket timeouts end it.
        std::thread::spawn(move || {
            let started = Instant::now();
            let (url, tip, downloaded) = fetch_one(&repo_path, &name, &branch, &ssh_dir, deadline);
            let _ =
                tx.send((index, Fetched { remote: name, url, tip, downloaded, duration: started.elapsed() }));
        });
    }
    drop(tx);
    let mut results: Vec<Option<Fetched>> = vec![None; names.len()];
    while results.iter().any(Option::is_none) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((index, fetched)) => results[index] = Some(fetched),
            Err(_) => break,
        }
    }
    Ok(results
        .into_iter()
        .zip(&names)
        .map(|(result, name)| {
            result.unwrap_or_else(|| Fetched {
                remote: name.clone(),
                url: repo.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default(),
                tip: Err(format!("timed out after {}", humantime::format_duration(timeout))),
                downloaded: false,
                duration: timeout,
            })
        })
        .collect())
}

fn fetch_one(
    repo_path: &Path,
    name: &str,
    branch: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> (String, Result<Option<Oid>, String>, bool) {
    let repo = match Repository::open_bare(repo_path) {
        Ok(repo) => repo,
        Err(e) => return (String::new(), Err(e.message().to_owned()), false),
    };
    let url = repo.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default();
    let tracking = format!("refs/remotes/{name}/{branch}");
    let result = if url.starts_with("https://") || url.starts_with("http://") {
        fetch_with_git(repo_path, name, branch, &tracking, deadline)
            .map(|()| (repo.refname_to_id(&tracking).ok(), true))
    } else {
        fetch_with_libgit2(&repo, name, &url, branch, &tracking, ssh_dir, deadline)
    };
    match result {
        Ok((tip, downloaded)) => (url, Ok(tip), downloaded),
        Err(e) => (url, Err(e), false),
    }
}

fn fetch_with_libgit2(
    repo: &Repository,
    name: &str,
    url: &str,
    branch: &str,
    tracking: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> Result<(Option<Oid>, bool), String> {
    let mut remote = repo.find_remote(name).map_err(|e| e.message().to_owned())?;
    let mut callbacks = RemoteCallbacks::new();
    let refusal = crate::ssh::callbacks(&mut callbacks, url, ssh_dir);
    callbacks.transfer_progress(|_| Instant::now() < deadline);
    let mut options = FetchOptions::new();
    // libgit2 downloads nothing when the advertised tip is already here; prune drops the
    // tracking ref of a branch the remote no longer has.
    options
        .remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false)
        .prune(FetchPrune::On);
    let refspec = format!("+refs/heads/{branch}:{tracking}");
    let reflog = format!("troops: fetch {name}");
    // libgit2 rewrites `shallow` under `shallow.lock` after each download, so two remotes that
    // finish together collide; the loser's objects are in by then, and trying again is cheap.
    let mut attempts = 0;
    while let Err(e) = remote.fetch(&[&refspec], Some(&mut options), Some(&reflog)) {
        attempts += 1;
        if e.code() != git2::ErrorCode::Locked || attempts == 5 || Instant::now() >= deadline {
            return Err(refusal.lock().unwrap().take().unwrap_or_else(|| e.message().to_owned()));
        }
        std::thread::sleep(Duration::from_millis(5 * attempts));
    }
    Ok((repo.refname_to_id(tracking).ok(), remote.stats().received_objects() > 0))
}

/// Fetches with the `git` command, killed at the deadline.
fn fetch_with_git(
    repo_path: &Path,
    name: &str,
    branch: &str,
    tracking: &str,
    deadline: Instant,
) -> Result<(), String> {
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo_path)
        .args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            name,
            &format!("+refs/heads/{branch}:{tracking}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running git fetch: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let stderr = reader.join().unwrap_or_default();
            return if status.success() { Ok(()) } else { Err(stderr.trim().to_owned()) };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// libgit2's socket connect and read timeouts, so that a dead remote gives up on its own.
fn set_socket_timeouts(timeout: Duration) {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: these set process-wide libgit2 options; they are only ever set here, before fetching.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
    }
}
