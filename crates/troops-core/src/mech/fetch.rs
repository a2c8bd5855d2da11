//! Fetching the followed branch from every remote of the node repo, all at once, each bounded by
//! `fetch_timeout`: one slow or dead remote never holds up the others. A remote whose advertised
//! tip is already here costs one connection and no download; an `http(s)://` one whose probe says
//! its tip is already here (see `probe`) costs one conditional GET and no fetch.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use git2::{AutotagOption, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository};

use crate::mech::probe::{self, ProbeState, Probing};

/// What fetching one remote gave.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub remote: String,
    pub url: String,
    /// The remote's branch tip (`None`: the remote has no such branch), or why the fetch failed.
    pub tip: Result<Option<Oid>, String>,
    /// Whether objects were downloaded (false: the advertised tip was already here).
    pub downloaded: bool,
    /// True when the probe said the tip was already here, and no fetch ran.
    pub probed: bool,
    /// What the fetch showed of the remote's probe target, when that is news.
    pub probe_news: Option<probe::News>,
    pub duration: Duration,
}

impl Fetched {
    /// Remote `name`, before anything is known of it.
    fn nothing_yet(name: &str) -> Fetched {
        Fetched {
            remote: name.to_owned(),
            url: String::new(),
            tip: Ok(None),
            downloaded: false,
            probed: false,
            probe_news: None,
            duration: Duration::ZERO,
        }
    }
}

/// Fetches `branch` from every remote of the repo at `repo_path` into `refs/remotes/<remote>/<branch>`,
/// but for those whose probe says it is already there.
pub fn fetch_all(
    repo_path: &Path,
    branch: &str,
    ssh_dir: &Path,
    timeout: Duration,
    probing: &Probing,
) -> crate::Result<Vec<Fetched>> {
    crate::mech::repo::guard_node_repo(repo_path)?;
    if nix::unistd::geteuid().is_root() {
        // `git remote add` by root rewrites the config as shared as the repo (0660).
        crate::mech::repo::lock_down_repo_config(repo_path)?;
    }
    let repo = Repository::open_bare(repo_path)
        .map_err(|e| crate::Error::git(format!("opening {}", repo_path.display()), e))?;
    let remotes = repo
        .remotes()
        .map_err(|e| crate::Error::git(format!("listing remotes of {}", repo_path.display()), e))?;
    let names: Vec<String> = remotes.iter().flatten().map(str::to_owned).collect();
    set_socket_timeouts(timeout);
    let deadline = Instant::now() + timeout;
    let saved = probing.load();
    let mut probes = saved.clone();
    let (tx, rx) = mpsc::channel();
    for (index, name) in names.iter().enumerate() {
        let (tx, name, repo_path, branch, ssh_dir) =
            (tx.clone(), name.clone(), repo_path.to_owned(), branch.to_owned(), ssh_dir.to_owned());
        let (mut probe, trust) = (probes.remove(&name).unwrap_or_default(), probing.trust);
        // A remote stuck past its deadline is reported and left behind; its socket timeouts end it.
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut fetched = fetch_one(&repo_path, &name, &branch, &ssh_dir, deadline, &mut probe, trust);
            fetched.duration = started.elapsed();
            let _ = tx.send((index, fetched, probe));
        });
    }
    drop(tx);
    let mut results: Vec<Option<Fetched>> = vec![None; names.len()];
    probes.clear(); // only the remotes there are now, and answered
    while results.iter().any(Option::is_none) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((index, fetched, probe)) => {
                if !probe.url.is_empty() {
                    probes.insert(fetched.remote.clone(), probe);
                }
                results[index] = Some(fetched);
            }
            Err(_) => break,
        }
    }
    // A 304 changes nothing: no write, so that a no-change poll costs the node little too.
    if !probing.trust.is_zero() && probes != saved {
        probing.save(probes)?;
    }
    Ok(results
        .into_iter()
        .zip(&names)
        .map(|(result, name)| {
            result.unwrap_or_else(|| Fetched {
                url: repo.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default(),
                tip: Err(format!("timed out after {}", humantime::format_duration(timeout))),
                duration: timeout,
                ..Fetched::nothing_yet(name)
            })
        })
        .collect())
}

/// Fetches `name` unless its probe says its tip is already here; the duration and the status
/// refs' error are the caller's to fill in.
fn fetch_one(
    repo_path: &Path,
    name: &str,
    branch: &str,
    ssh_dir: &Path,
    deadline: Instant,
    probe: &mut ProbeState,
    trust: Duration,
) -> Fetched {
    let mut fetched = Fetched::nothing_yet(name);
    let repo = match Repository::open_bare(repo_path) {
        Ok(repo) => repo,
        Err(e) => return Fetched { tip: Err(e.message().to_owned()), ..fetched },
    };
    fetched.url = repo.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default();
    let url = fetched.url.as_str();
    let tracking = format!("refs/remotes/{name}/{branch}");
    // A probe target that stalls may take half the time left, never the fetch's half.
    let look = (!trust.is_zero() && probe::applies(url)).then(|| {
        let timeout = deadline.saturating_duration_since(Instant::now()) / 2;
        probe::look(probe, url, branch, timeout)
    });
    let before = repo.refname_to_id(&tracking).ok();
    if look.is_some_and(|look| probe::skips(probe, look, before, trust)) {
        return Fetched { tip: Ok(before), probed: true, ..fetched };
    }
    let result = if libgit2_fetches(url) {
        // libgit2 takes a path where no repository is for a URL of no protocol it knows.
        fetch_with_libgit2(&repo, name, branch, &tracking, deadline)
            .map_err(|e| no_repository(url).unwrap_or(e))
    } else {
        fetch_with_git(repo_path, name, url, branch, &tracking, ssh_dir, deadline).map(|found| {
            let tip = if found { repo.refname_to_id(&tracking).ok() } else { None };
            (tip, tip != before)
        })
    };
    match result {
        Ok((tip, downloaded)) => {
            fetched.probe_news = look.and_then(|look| probe::fetched(probe, look, before, tip));
            Fetched { tip: Ok(tip), downloaded, ..fetched }
        }
        Err(e) => Fetched { tip: Err(e), ..fetched },
    }
}

/// What operators order the fleet (a freeze, approvals: `node::orders`) comes with the branch,
/// into refs of the remote's own under `refs/troops/remotes/<remote>/`; as globs, so that a remote
/// without them is no error.
fn order_refspecs(name: &str) -> [String; 2] {
    let tracking = format!("{}{name}", crate::mech::repo::ORDERS_TRACKING);
    [
        format!("+{}*:{tracking}/freeze*", crate::model::orders::FREEZE_REF),
        format!("+{}*:{tracking}/approve/*", crate::model::orders::APPROVE_PREFIX),
    ]
}

/// libgit2 fetches local paths, `file://` and `git://` in-process, which is cheapest. SSH and
/// http(s) go through the `git` command, so that only they pay for OpenSSH or TLS, and the daemon
/// links neither libssh2 nor OpenSSL.
pub(crate) fn libgit2_fetches(url: &str) -> bool {
    match url.split_once("://") {
        Some((scheme, _)) => matches!(scheme, "file" | "git"),
        None => !crate::mech::ssh::is_ssh(url),
    }
}

/// The path on this host a remote's `url` names, if it names one (a path, or `file://`).
pub fn local_path(url: &str) -> Option<&Path> {
    match url.split_once("://") {
        Some(("file", path)) => Some(Path::new(path)),
        Some(_) => None,
        None => (!crate::mech::ssh::is_ssh(url)).then(|| Path::new(url)),
    }
}

/// "no repository at PATH", when `url` names a path on this host where no git repository is.
pub fn no_repository(url: &str) -> Option<String> {
    let path = local_path(url)?;
    let missing = matches!(Repository::open(path), Err(e) if e.code() == git2::ErrorCode::NotFound);
    missing.then(|| format!("no repository at {}", path.display()))
}

/// How the node fetches from `url`, in a few words.
pub fn how(url: &str) -> &'static str {
    if local_path(url).is_some() {
        "a path on this host, read in-process"
    } else if crate::mech::ssh::is_ssh(url) {
        "over SSH, with this node's key"
    } else if libgit2_fetches(url) {
        "git://, in-process"
    } else {
        "over HTTP(S), with git"
    }
}

fn fetch_with_libgit2(
    repo: &Repository,
    name: &str,
    branch: &str,
    tracking: &str,
    deadline: Instant,
) -> Result<(Option<Oid>, bool), String> {
    let mut remote = repo.find_remote(name).map_err(|e| e.message().to_owned())?;
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(|_| Instant::now() < deadline);
    let mut options = FetchOptions::new();
    // libgit2 downloads nothing when the advertised tip is already here; prune drops the
    // tracking ref of a branch the remote no longer has.
    options
        .remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false)
        .prune(FetchPrune::On);
    let [freeze, approvals] = order_refspecs(name);
    let refspecs = [format!("+refs/heads/{branch}:{tracking}"), freeze, approvals];
    let reflog = format!("troops: fetch {name}");
    // libgit2 rewrites `shallow` under `shallow.lock` after each download, so two remotes that
    // finish together collide; the loser's objects are in by then, and trying again is cheap.
    let mut attempts = 0;
    let packs = crate::mech::modes::packs(repo.path());
    while let Err(e) = remote.fetch(&refspecs, Some(&mut options), Some(&reflog)) {
        attempts += 1;
        if e.code() != git2::ErrorCode::Locked || attempts == 5 || Instant::now() >= deadline {
            return Err(e.message().to_owned());
        }
        std::thread::sleep(Duration::from_millis(5 * attempts));
    }
    // What libgit2 wrote: the pack, the tracking ref and its reflog (and `packed-refs`, pruned).
    let mut written = crate::mech::repo::ref_files(tracking).to_vec();
    let orders = format!("{}{name}/*", crate::mech::repo::ORDERS_TRACKING);
    for order in repo.references_glob(&orders).into_iter().flatten().flatten() {
        written.extend(order.name().map(crate::mech::repo::ref_files).into_iter().flatten());
    }
    written.push("FETCH_HEAD".into());
    written.extend(crate::mech::modes::packs(repo.path()).difference(&packs).cloned());
    crate::mech::modes::settle(repo.path(), &written).map_err(|e| e.to_string())?;
    Ok((repo.refname_to_id(tracking).ok(), remote.stats().received_objects() > 0))
}

/// Fetches with the `git` command (and OpenSSH for SSH), killed with its children at the
/// deadline. Ok(false): the remote has no such branch, and its tracking ref is gone.
fn fetch_with_git(
    repo_path: &Path,
    name: &str,
    url: &str,
    branch: &str,
    tracking: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> Result<bool, String> {
    let mut child = crate::mech::git::root_git(repo_path)
        // No automatic maintenance: it would run in the background, beside the other fetches.
        .args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"])
        // Always a pack under objects/pack, never loose objects in directories a member may make.
        .args(["-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1"])
        .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--prune", "--end-of-options", name])
        .arg(format!("+refs/heads/{branch}:{tracking}"))
        .args(order_refspecs(name))
        .env(
            "GIT_SSH_COMMAND",
            crate::mech::ssh::command(ssh_dir, deadline.saturating_duration_since(Instant::now())),
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_REFLOG_ACTION", format!("troops: fetch {name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running git fetch: {e}"))?;
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        crate::mech::runner::read_tail(stderr, crate::mech::runner::MAX_KEPT_OUTPUT)
    });
    let status = crate::mech::runner::wait_or_kill(&mut child, deadline)
        .map_err(|e| format!("waiting for git fetch: {e}"))?;
    let stderr = reader.join().unwrap_or_default().replace('\r', "");
    match status {
        None => Err("timed out".into()),
        Some(status) if status.success() => Ok(true),
        Some(_) if stderr.contains("couldn't find remote ref") => {
            let _ = Repository::open_bare(repo_path)
                .and_then(|repo| repo.find_reference(tracking).and_then(|mut r| r.delete()));
            crate::mech::modes::settle(repo_path, &crate::mech::repo::ref_files(tracking))
                .map_err(|e| e.to_string())?;
            Ok(false)
        }
        Some(_) => Err(crate::mech::ssh::host_key_refusal(url, &stderr, ssh_dir).unwrap_or_else(|| {
            crate::mech::git::complaint(&stderr).unwrap_or_else(|| stderr.trim().to_owned())
        })),
    }
}

/// What `git fetch` does after a download: `git gc --auto`, which repacks only once the packs or
/// loose objects pile up past git's thresholds (`gc.autoPackLimit`, `gc.auto`), in the background
/// (`gc.autoDetach`). libgit2 writes a pack per fetch that brings something, so without this a
/// node that only ever pulls would collect thousands of packs and slow every later fetch.
pub fn housekeep(repo_path: &Path) -> Result<(), String> {
    let status = crate::mech::git::root_git(repo_path)
        .args(["gc", "--auto", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running git gc --auto in {}: {e}", repo_path.display()))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("git gc --auto in {} failed ({status})", repo_path.display())),
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
