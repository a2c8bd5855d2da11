//! Publishing a node's status and fetching the fleet's, each bounded. The documents live in a repo
//! of their own on the node (`<state>/status.git`), apart from the node repo: what peers publish
//! never enters the deploy code's object store, and what nothing points at any more is pruned at
//! the next repack, not two weeks later. Publishing commits the node's document there (on a short chain, `commit`),
//! signed with the node's own key as git signs with `gpg.format=ssh` (what `believe` checks), and
//! force-pushes that one ref to the status remote. Anyone with the remote's write key may write
//! any ref there; only the node can sign its documents. Fetching brings
//! each node's newest commit only (depth 1) and at most `MAX_FETCH` bytes, stopped while it
//! downloads, so a peer's ref cannot fill a node's memory or disk. Both go through root's hardened
//! `git` (fetch.rs) with the node's SSH key, whatever the URL: a child process can be bounded
//! while it downloads, and it pushes from a shallow repo.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use nix::fcntl::{Flock, FlockArg};

use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;
use serde::Deserialize;

use crate::model::status::{self, StatusDoc, FILE, MAX_DOC, REF_PREFIX, SCHEMA};

/// The refspec that brings every node's status ref.
pub const REFSPEC: &str = "+refs/troops/status/*:refs/troops/status/*";

/// The most one fetch of the status refs may bring: all that a hostile ref can cost a node per
/// fetch. A node's newest document, with its commit and tree, packs to a few hundred bytes (222 on
/// average for a thousand nodes), so even a first fetch of a fleet of 30,000 fits.
pub const MAX_FETCH: u64 = 32 << 20;

/// Opens the status repo at `path` (`Node::status_repo_path`), creating it if it is missing
/// (which only whoever may write the state dir can: root on a node).
pub fn open(path: &Path) -> Result<Repository> {
    crate::mech::repo::refuse_redirects(path)?;
    match Repository::open_bare(path) {
        Ok(git) => Ok(git),
        Err(e) if e.code() == git2::ErrorCode::NotFound => create(path),
        Err(e) => Err(Error::git(format!("opening the status repo {}", path.display()), e)),
    }
}

/// Makes the status repo at `path`, whole or not at all: built beside it and renamed into place,
/// so that processes racing to create it (a run's background publish and `troops fleet`) each
/// open a whole repo, never one another is still making. Its maker's to write, the admin group's
/// to read (what a member's in-process run reads for the rollout), nobody else's: directories
/// 0750 and files 0640, which git keeps as it writes (`core.sharedRepository=0640`), as
/// `modes::settle` does where troops writes with libgit2. No hook samples: nothing there is ever run.
fn create(path: &Path) -> Result<Repository> {
    let creating = || format!("creating the status repo {}", path.display());
    let parent = path.parent().unwrap_or(Path::new("."));
    // Removed when dropped, unless renamed into place.
    let building = tempfile::Builder::new().prefix("status.git.new-").tempdir_in(parent).ctx(creating)?;
    let mut options = git2::RepositoryInitOptions::new();
    options.bare(true).external_template(false);
    let git = Repository::init_opts(building.path(), &options).ctx(creating)?;
    git.config().and_then(|mut c| c.set_str("core.sharedRepository", "0640")).ctx(creating)?;
    // Where troops writes refs, made now with the rest (`modes::settle` leaves these as made).
    std::fs::create_dir_all(building.path().join("refs/troops/status")).ctx(creating)?;
    drop(git);
    private(building.path())?;
    match std::fs::rename(building.path(), path) {
        Ok(()) => {}
        // Another process made it first: theirs is the repo.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {}
        Err(e) => return Err(Error::io(creating(), e)),
    }
    Repository::open_bare(path)
        .map_err(|e| Error::git(format!("opening the status repo {}", path.display()), e))
}

/// Directories 0750 and files 0640, all the way down.
fn private(path: &Path) -> Result<()> {
    let is_dir = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?.is_dir();
    crate::mech::modes::set(path, if is_dir { 0o750 } else { 0o640 })?;
    if is_dir {
        for entry in std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))? {
            private(&entry.ctx(|| format!("listing {}", path.display()))?.path())?;
        }
    }
    Ok(())
}

/// The status repo's locks: files in it only its owner can open (`lock::private_file`), though
/// the admin group may read the repo. Not `*.lock`: those are git's, which `clear_leftovers` removes.
#[derive(Clone, Copy)]
pub(crate) enum Lock {
    /// One writer of the status repo at a time (fetches, and a publish's commit): a fetch clears
    /// what a stopped download left behind and prunes, which must not meet another's objects half
    /// written.
    Writer,
    /// One publisher at a time (`Turn`).
    Publisher,
}

/// Takes `which` lock of the status repo at `git_dir`, waiting for it.
pub(crate) fn lock(git_dir: &Path, which: Lock) -> std::result::Result<Flock<File>, String> {
    let path = git_dir.join(match which {
        Lock::Writer => "troops-writer.flock",
        Lock::Publisher => "troops-publisher.flock",
    });
    let file = crate::mech::lock::private_file(&path).map_err(|e| e.to_string())?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("locking {}: {e}", path.display()))
}

/// What one publish did.
#[derive(Debug)]
pub struct Published {
    pub reference: String,
    pub remote: String,
    /// Committing and pushing, together.
    pub duration: Duration,
}

/// This node's turn to publish: one publisher at a time (the daemon's, a run's in the background,
/// `troops fleet --publish` by hand), each building its document and pushing it within its turn.
/// Two pushes of one ref at once would fail one of them at the remote ("failed to update ref"),
/// and a document built before another's push could land after it, older over newer. A turn
/// lasts at most the publish's timeout: its push is killed then.
pub struct Turn {
    git: Repository,
    _lock: Flock<File>,
}

impl Turn {
    /// Waits for this node's turn to publish, creating the status repo if it is missing.
    pub fn take(node: &Node) -> Result<Turn> {
        let git = open(&node.status_repo_path())?;
        // Not the writers' lock: a fetch need not wait for a slow push.
        let lock = lock(git.path(), Lock::Publisher).map_err(Error::Env)?;
        Ok(Turn { git, _lock: lock })
    }

    /// Commits `doc` in the status repo and pushes it to `remote` of the node repo, giving up
    /// after `timeout`.
    pub fn publish(self, node: &Node, doc: &StatusDoc, remote: &str, timeout: Duration) -> Result<Published> {
        let started = Instant::now();
        let url = url_of(&node.repo_path(), remote)
            .map_err(|e| Error::Env(format!("publishing the status to remote {remote}: {e}")))?;
        let key = signing_key(&node.ssh_key_path())?;
        let (reference, commit) = {
            let _lock = lock(self.git.path(), Lock::Writer).map_err(Error::Env)?;
            commit(&self.git, doc, &key)?
        };
        push(&self.git, &url, &format!("+{commit}:{reference}"), &node.ssh_dir(), started + timeout)
            .map_err(|e| Error::Env(format!("pushing {reference} to remote {remote}: {e}")))?;
        Ok(Published { reference, remote: remote.to_owned(), duration: started.elapsed() })
    }
}

/// The URL of `remote` in the node repo at `repo_path`.
pub(crate) fn url_of(repo_path: &Path, remote: &str) -> std::result::Result<String, String> {
    crate::mech::repo::refuse_redirects(repo_path).map_err(|e| e.to_string())?;
    let git = Repository::open_bare(repo_path).map_err(|e| e.message().to_owned())?;
    let found = git.find_remote(remote).map_err(|_| format!("the node repo has no remote {remote:?}"))?;
    found.url().map(str::to_owned).ok_or_else(|| format!("remote {remote:?} has no URL"))
}

/// Pushes `refspec` (`+<commit>:<ref>`) from the status repo `git` to `url`, with root's `git`
/// whatever the URL: the status repo is shallow (fetches bring the newest commits only), which
/// libgit2's push cannot walk.
fn push(
    git: &Repository,
    url: &str,
    refspec: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let mut command = quiet_git(git.path());
    command.args(["-c", "protocol.file.allow=always"]);
    command.args(["push", "--quiet", "--porcelain", "--end-of-options", url, refspec]);
    git_with_key(command, url, ssh_dir, deadline, "push")
        .map_err(|e| crate::model::shown::escape(&e).into_owned())
}

/// Fetches every status ref of `remote` (of the node repo at `node_repo`) into the status repo at
/// `status_repo` with root's `git`, whatever the URL: newest commits only, at most [`MAX_FETCH`]
/// bytes. Then records what came of it, and what the refs say now, for the rollout gate
/// (`sightings`). Errors quote the remote escaped. The node's own ref (`host`) is never fetched:
/// the node is its only writer, and what the remote holds of it is at best an older document,
/// one a publish under way has not replaced yet.
pub fn fetch(
    node_repo: &Path,
    status_repo: &Path,
    remote: &str,
    host: &str,
    ssh_dir: &Path,
    deadline: Instant,
) -> std::result::Result<(), String> {
    let created = !status_repo.exists();
    let git = open(status_repo).map_err(|e| e.to_string())?;
    if created {
        forget_old_refs(node_repo);
    }
    let path = git.path().to_owned();
    let _lock = lock(&path, Lock::Writer)?;
    clear_leftovers(&path);
    let fetched = url_of(node_repo, remote).and_then(|url| {
        let packs = packs(&path);
        let mut command = quiet_git(&path);
        // A local path too (which libgit2 would fetch without `depth`, and check against the limit
        // only after each whole object); git still refuses a local repo whose owner is not root.
        command.args(["-c", "protocol.file.allow=always"]);
        // One pack, however few objects: a stopped download leaves a file this can find.
        command.args(["-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1"]);
        let own = format!("^{}{host}", status::REF_PREFIX);
        command.args(FETCH_ARGS).args([url.as_str(), REFSPEC, &own]);
        let fetched =
            git_with_key(capped(command), &url, ssh_dir, deadline, "fetch").map_err(|e| over_cap(&path, e));
        clear_leftovers(&path);
        if fetched.is_ok() && packs != self::packs(&path) {
            prune(&path);
        }
        fetched
    });
    fetched.map_err(|e| crate::model::shown::escape(&e).into_owned())
}

/// Deletes the status refs that troops kept in the node repo before it had a status repo: pushes
/// to the node no longer list them, and their objects go with the node repo's next `gc`.
fn forget_old_refs(repo_path: &Path) {
    let Ok(git) = Repository::open_bare(repo_path) else { return };
    let Ok(refs) = git.references_glob(&format!("{}*", status::REF_PREFIX)) else { return };
    for mut reference in refs.flatten() {
        let _ = reference.delete();
    }
    let _ = crate::mech::modes::settle(repo_path, &["packed-refs"]);
}

/// Fetches every status ref of `url` into the (new, scratch) status repo at `status_repo` with the
/// caller's own `git`, SSH keys and config, bounded as a node's fetch is: `troops fleet` in a clone
/// of the deploy repo. Errors quote the remote escaped.
pub fn fetch_as_caller(status_repo: &Path, url: &str) -> std::result::Result<(), String> {
    let mut command = crate::mech::env::as_caller("git");
    command.arg("--git-dir").arg(status_repo).args(["-c", "fetch.unpackLimit=1"]);
    command.args(FETCH_ARGS).args([url, REFSPEC]).stdin(Stdio::null());
    let out = capped(command).output().map_err(|e| format!("running git fetch: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || nothing_matched(out.status, &stderr) {
        return Ok(());
    }
    let why =
        crate::mech::git::complaint(&stderr).unwrap_or_else(|| format!("git fetch failed ({})", out.status));
    Err(crate::model::shown::escape(&over_cap(status_repo, why)).into_owned())
}

/// Whether a `git fetch --depth` that failed did so only because no ref matched the refspec (no
/// node has published yet): it exits 1 then, saying nothing.
fn nothing_matched(status: std::process::ExitStatus, stderr: &str) -> bool {
    status.code() == Some(1) && stderr.trim().is_empty()
}

/// `git fetch`'s options for the status refs: the newest commit of each, nothing else.
pub(crate) const FETCH_ARGS: [&str; 6] =
    ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--depth=1", "--end-of-options"];

/// `command` (a `git fetch`) unable to write a file larger than [`MAX_FETCH`]: its pack, which it
/// writes as the bytes arrive. The kernel stops it (SIGXFSZ) at the limit.
pub(crate) fn capped(mut command: Command) -> Command {
    // SAFETY: setrlimit is async-signal-safe and changes only the child's own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: MAX_FETCH, rlim_max: MAX_FETCH };
            match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    command
}

/// `error`, or that the download reached [`MAX_FETCH`] when a pack it left in `git_dir` did.
fn over_cap(git_dir: &Path, error: String) -> String {
    let full = leftovers(git_dir).iter().any(|f| f.metadata().is_ok_and(|m| m.len() >= MAX_FETCH));
    match full {
        true => {
            format!("the status refs are more than the {MAX_FETCH} bytes a fetch of them may bring; stopped")
        }
        false => error,
    }
}

/// The pack files of the repo at `git_dir`, by name: whether a fetch brought any.
fn packs(git_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(git_dir.join("objects/pack"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// What a stopped `git` leaves in the status repo: a download's `objects/pack/tmp_*`, and the
/// `*.lock` files (`shallow.lock`, a ref's) of a fetch killed at its deadline or with its troops,
/// each of which would fail every fetch after it.
fn leftovers(git_dir: &Path) -> Vec<PathBuf> {
    fn files(dir: &Path, found: &mut Vec<PathBuf>, keep: &dyn Fn(&str) -> bool, deep: bool) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() && deep => files(&entry.path(), found, keep, deep),
                Ok(t) if t.is_file() && keep(&entry.file_name().to_string_lossy()) => {
                    found.push(entry.path())
                }
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    files(&git_dir.join("objects/pack"), &mut found, &|name| name.starts_with("tmp_"), false);
    files(git_dir, &mut found, &|name| name.ends_with(".lock"), false);
    files(&git_dir.join("refs"), &mut found, &|name| name.ends_with(".lock"), true);
    found
}

/// Removes what a stopped `git` left: under the lock, nothing else writes there.
pub(crate) fn clear_leftovers(git_dir: &Path) {
    for file in leftovers(git_dir) {
        let _ = std::fs::remove_file(file);
    }
}

/// `git gc --auto` in the status repo, with what no ref points at (a peer's older documents)
/// pruned at once rather than in two weeks: only troops writes there, under the lock. A few packs
/// are repacked into one, so the repo holds little more than the fleet's newest documents.
fn prune(git_dir: &Path) {
    let _ = crate::mech::git::root_git(git_dir)
        .args(["-c", "gc.autoPackLimit=8", "-c", "gc.pruneExpire=now", "-c", "gc.autoDetach=false"])
        .args(["gc", "--auto", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Root's hardened `git` (fetch.rs) in the status repo, with no maintenance of its own: `prune`
/// does it, under the lock.
pub(crate) fn quiet_git(git_dir: &Path) -> Command {
    let mut command = crate::mech::git::root_git(git_dir);
    command.args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"]);
    command
}

/// Runs `command` (`quiet_git`'s `push` or `fetch`) with the node's key, killed with its children
/// at `deadline`; its error says why, from git's words.
pub(crate) fn git_with_key(
    mut command: Command,
    url: &str,
    ssh_dir: &Path,
    deadline: Instant,
    what: &str,
) -> std::result::Result<(), String> {
    let mut child = command
        .env(
            "GIT_SSH_COMMAND",
            crate::mech::ssh::command(ssh_dir, deadline.saturating_duration_since(Instant::now())),
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running git {what}: {e}"))?;
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let out = std::thread::spawn(move || {
        crate::mech::runner::read_tail(stdout, crate::mech::runner::MAX_KEPT_OUTPUT)
    });
    let err = std::thread::spawn(move || {
        crate::mech::runner::read_tail(stderr, crate::mech::runner::MAX_KEPT_OUTPUT)
    });
    let status = crate::mech::runner::wait_or_kill(&mut child, deadline)
        .map_err(|e| format!("waiting for git {what}: {e}"))?;
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    match status {
        None => Err("timed out".into()),
        Some(status) if status.success() => Ok(()),
        Some(status) if what == "fetch" && nothing_matched(status, &stderr) => Ok(()),
        Some(status) => {
            // `--porcelain` says which ref was refused and why, e.g. "!\trefs/...\t[rejected] (non-fast-forward)".
            let refused = stdout.lines().find(|l| l.starts_with('!')).map(|l| l.replace('\t', " "));
            Err(crate::mech::ssh::host_key_refusal(url, &stderr, ssh_dir)
                .or(refused)
                .or_else(|| crate::mech::git::complaint(&stderr))
                .unwrap_or_else(|| format!("git {what} failed ({status})")))
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
    let _ = crate::mech::background::troops(node, &["fleet", "--publish"]);
}

/// The hosts that have a status ref in `git`, and what each ref points at: cheap, nothing read.
pub fn hosts(git: &Repository) -> Vec<(String, Option<Oid>)> {
    let Ok(refs) = git.references_glob(&format!("{REF_PREFIX}*")) else { return Vec::new() };
    refs.flatten()
        .filter_map(|r| Some((r.name()?.strip_prefix(REF_PREFIX)?.to_owned(), r.target())))
        .collect()
}

/// The document of status commit `commit`, read only if it is small enough and of a schema known here.
pub fn read_doc(git: &Repository, commit: &git2::Commit) -> std::result::Result<StatusDoc, String> {
    let entry = commit.tree().map_err(|e| e.message().to_owned())?.get_name(FILE).map(|e| e.id());
    let id = entry.ok_or(format!("no {FILE} in {}", commit.id()))?;
    // The size from the object's header, not by inflating it.
    let (size, _) = git.odb().and_then(|odb| odb.read_header(id)).map_err(|e| e.message().to_owned())?;
    if size > MAX_DOC {
        return Err(format!(
            "{FILE} of {} is {size} bytes, over the {MAX_DOC} a status document may have",
            commit.id()
        ));
    }
    let blob = git.find_blob(id).map_err(|e| e.message().to_owned())?;
    #[derive(Deserialize)]
    struct Schema {
        schema: u32,
    }
    let schema = serde_json::from_slice::<Schema>(blob.content())
        .map_err(|e| format!("{FILE} of {}: {e}", commit.id()))?
        .schema;
    if schema != SCHEMA {
        return Err(format!("{FILE} of {} has schema {schema}; this troops reads {SCHEMA}", commit.id()));
    }
    serde_json::from_slice(blob.content()).map_err(|e| format!("{FILE} of {}: {e}", commit.id()))
}

/// A node's status chain is at most this many commits long: the next document starts a new chain
/// (a root commit), which the publish's force push puts in place of the old one. Readers fetch the
/// newest commit only; the chain is a short history of the node for a person (`git log`).
pub const MAX_CHAIN: usize = 16;

/// Where a node keeps the last status commit it made, in the status repo: fetches never move it
/// (they move `refs/troops/status/*`), so the next document parents on this node's own.
pub const PUBLISHED: &str = "refs/troops/published";

/// The node's own key (`<state>/ssh/id_ed25519`, made by `troops init`), which signs its status:
/// readers believe a document only when `keys/<host>.pub` of the deploy repo verifies it.
pub fn signing_key(path: &Path) -> Result<ssh_key::PrivateKey> {
    let bytes = crate::mech::secrets::read_key_file(path)?;
    let key = ssh_key::PrivateKey::from_openssh(&bytes)
        .map_err(|e| Error::Input(format!("{}: not an OpenSSH private key: {e}", path.display())))?;
    match key.is_encrypted() {
        true => Err(Error::Input(format!(
            "{} is passphrase-protected; the node signs its status with it unattended",
            path.display()
        ))),
        false => Ok(key),
    }
}

/// Signs the commit `buffer` (`commit_create_buffer`) with `key` as git does with
/// `gpg.format=ssh`: an SSHSIG of namespace `git`, armored, for the commit's `gpgsig` header.
pub(crate) fn sign(key: &ssh_key::PrivateKey, buffer: &[u8]) -> std::result::Result<String, String> {
    let signature = key
        .sign(crate::mech::verify::ssh::NAMESPACE, ssh_key::HashAlg::Sha512, buffer)
        .map_err(|e| format!("signing with the node's key: {e}"))?;
    signature.to_pem(ssh_key::LineEnding::LF).map_err(|e| format!("armoring the signature: {e}"))
}

/// A commit of `tree` by the node `host`, signed with its `key` (an SSHSIG in `gpgsig`, as
/// `git commit -S` with `gpg.format=ssh` makes it): what every document a node writes for the
/// fleet is (its status, its disruption slots), and what `believe` checks.
pub(crate) fn signed_commit(
    git: &Repository,
    key: &ssh_key::PrivateKey,
    host: &str,
    message: &str,
    tree: &git2::Tree,
    parents: &[&git2::Commit],
) -> std::result::Result<Oid, git2::Error> {
    let who = git2::Signature::now(&format!("troops on {host}"), "troops@localhost")?;
    let buffer = git.commit_create_buffer(&who, &who, message, tree, parents)?;
    let signature = sign(key, &buffer).map_err(|e| git2::Error::from_str(&e))?;
    let text =
        std::str::from_utf8(&buffer).map_err(|_| git2::Error::from_str("a commit that is not UTF-8"))?;
    git.commit_signed(text, &signature, Some("gpgsig"))
}

/// Commits `doc` in the status repo `git`, signed with the node's `key`, onto this node's last
/// status commit unless that chain is [`MAX_CHAIN`] long already; points [`PUBLISHED`] and the
/// node's status ref at it. Returns the status ref and the commit.
pub fn commit(git: &Repository, doc: &StatusDoc, key: &ssh_key::PrivateKey) -> Result<(String, Oid)> {
    let name = format!("{REF_PREFIX}{}", doc.host);
    let json = serde_json::to_vec_pretty(doc).expect("a status doc serializes");
    let write = || -> std::result::Result<[Oid; 3], git2::Error> {
        let blob = git.blob(&json)?;
        let mut tree = git.treebuilder(None)?;
        tree.insert(FILE, blob, 0o100644)?;
        let tree = git.find_tree(tree.write()?)?;
        let parent = git
            .refname_to_id(PUBLISHED)
            .ok()
            .and_then(|p| git.find_commit(p).ok())
            .filter(|p| chain_length(p) < MAX_CHAIN);
        let message = format!("{}: {}", doc.host, doc.state);
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let commit = signed_commit(git, key, &doc.host, &message, &tree, &parents)?;
        git.reference(PUBLISHED, commit, true, &message)?;
        git.reference(&name, commit, true, &message)?;
        Ok([blob, tree.id(), commit])
    };
    let objects = write().ctx(|| format!("committing {name} in {}", git.path().display()))?;
    let mut written: Vec<PathBuf> = objects.iter().map(|&o| crate::mech::modes::loose_object(o)).collect();
    written.extend(
        crate::mech::repo::ref_files(PUBLISHED).into_iter().chain(crate::mech::repo::ref_files(&name)),
    );
    crate::mech::modes::settle(git.path(), &written)?;
    Ok((name, objects[2]))
}

/// How many commits the first-parent chain from `commit` has here, counting at most to `MAX_CHAIN`.
fn chain_length(commit: &git2::Commit) -> usize {
    let mut length = 1;
    let mut at = commit.parent(0).ok();
    while let Some(commit) = at.filter(|_| length < MAX_CHAIN) {
        length += 1;
        at = commit.parent(0).ok();
    }
    length
}

/// An ed25519 key made from `seed`, for tests: the same seed, the same key.
#[cfg(test)]
pub(crate) fn test_key(seed: u8) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn processes_racing_to_create_the_status_repo_each_open_it_whole() {
        for _ in 0..20 {
            let state = tempfile::tempdir().unwrap();
            let opened: Vec<_> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| open(&state.path().join("status.git")).map(drop)))
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert!(opened.iter().all(|o| o.is_ok()), "{opened:?}");
            let left: Vec<_> =
                std::fs::read_dir(state.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, ["status.git"], "what the losers built is gone");
        }
    }

    use super::*;

    #[test]
    fn the_first_fetch_makes_the_status_repo_and_clears_the_node_repos_old_status_refs() {
        let dir = tempfile::tempdir().unwrap();
        let (state, remote) = (dir.path().join("state"), dir.path().join("status.git"));
        Repository::init_bare(&remote).unwrap();
        let node = Repository::init_bare(state.join("repo/main.git")).unwrap();
        node.remote("status", &remote.display().to_string()).unwrap();
        let tree = node.find_tree(node.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let who = git2::Signature::now("troops", "troops@localhost").unwrap();
        let old = node.commit(None, &who, &who, "old", &tree, &[]).unwrap();
        node.reference("refs/troops/status/web-1", old, false, "").unwrap();

        let deadline = Instant::now() + Duration::from_secs(30);
        // The status remote has no status ref yet: that is no failure.
        fetch(node.path(), &state.join("status.git"), "status", "web-1", &state.join("ssh"), deadline)
            .unwrap();
        assert!(Repository::open_bare(state.join("status.git")).is_ok());
        assert!(node.find_reference("refs/troops/status/web-1").is_err(), "the old ref is still there");
    }

    #[test]
    fn a_fetch_never_takes_the_nodes_own_ref_from_the_remote_nor_prunes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (state, remote) = (dir.path().join("state"), dir.path().join("status.git"));
        let peer = Repository::init_bare(&remote).unwrap();
        let tree = peer.find_tree(peer.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let who = git2::Signature::now("troops", "troops@localhost").unwrap();
        let older = peer.commit(None, &who, &who, "web-1, older", &tree, &[]).unwrap();
        let other = peer.commit(None, &who, &who, "web-2", &tree, &[]).unwrap();
        peer.reference("refs/troops/status/web-2", other, false, "").unwrap();
        let node = Repository::init_bare(state.join("repo/main.git")).unwrap();
        node.remote("status", &remote.display().to_string()).unwrap();
        let status = open(&state.join("status.git")).unwrap();
        let empty = status.find_tree(status.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let mine = status.commit(None, &who, &who, "web-1, newer, its push under way", &empty, &[]).unwrap();
        status.reference("refs/troops/status/web-1", mine, false, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let own = || status.refname_to_id("refs/troops/status/web-1").unwrap();

        // The remote has none of web-1's yet: the node's own is not pruned.
        fetch(node.path(), &state.join("status.git"), "status", "web-1", &state.join("ssh"), deadline)
            .unwrap();
        assert_eq!(own(), mine);
        assert_eq!(status.refname_to_id("refs/troops/status/web-2").unwrap(), other);
        // It has an older one: still the node's own stays.
        peer.reference("refs/troops/status/web-1", older, false, "").unwrap();
        fetch(node.path(), &state.join("status.git"), "status", "web-1", &state.join("ssh"), deadline)
            .unwrap();
        assert_eq!(own(), mine);
    }

    #[test]
    fn what_a_killed_fetch_left_does_not_fail_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (state, remote) = (dir.path().join("state"), dir.path().join("status.git"));
        let peer = Repository::init_bare(&remote).unwrap();
        let tree = peer.find_tree(peer.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let who = git2::Signature::now("troops", "troops@localhost").unwrap();
        let doc = peer.commit(None, &who, &who, "web-1", &tree, &[]).unwrap();
        peer.reference("refs/troops/status/web-1", doc, false, "").unwrap();
        let node = Repository::init_bare(state.join("repo/main.git")).unwrap();
        node.remote("status", &remote.display().to_string()).unwrap();
        let status = open(&state.join("status.git")).unwrap().path().to_owned();
        // A fetch killed at its deadline (SIGKILL: git cleans up nothing) leaves its locks and
        // its half-written pack.
        std::fs::create_dir_all(status.join("refs/troops/status")).unwrap();
        for file in
            ["shallow.lock", "packed-refs.lock", "refs/troops/status/web-1.lock", "objects/pack/tmp_pack_x"]
        {
            std::fs::write(status.join(file), "").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        fetch(node.path(), &status, "status", "web-2", &state.join("ssh"), deadline).unwrap();
        let fetched =
            Repository::open_bare(&status).unwrap().refname_to_id("refs/troops/status/web-1").unwrap();
        assert_eq!(fetched, doc);
        assert_eq!(leftovers(&status), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_status_chain_is_re_rooted_when_it_is_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let git = Repository::init_bare(dir.path()).unwrap();
        let mut doc: StatusDoc = serde_json::from_value(serde_json::json!({
            "schema": 1, "host": "web-1", "version": "0.2.0", "roles": [], "wave": null, "tip": null,
            "deployed": null, "state": "idle", "since": null, "run": null, "hold": null,
            "quarantined": [], "heartbeat_seconds": 60, "updated_at": ""
        }))
        .unwrap();
        let mut lengths = Vec::new();
        for n in 0..(MAX_CHAIN * 3) {
            doc.updated_at = format!("beat {n}");
            let (name, id) = commit(&git, &doc, &test_key(1)).unwrap();
            assert_eq!(git.refname_to_id(&name).unwrap(), id);
            assert_eq!(git.refname_to_id(PUBLISHED).unwrap(), id);
            // A fetch moves the status ref back to what the remote had: the chain goes on from
            // the node's own last commit.
            git.reference(&name, git.refname_to_id(PUBLISHED).unwrap(), true, "").unwrap();
            let mut walk = git.revwalk().unwrap();
            walk.push(id).unwrap();
            lengths.push(walk.count());
        }
        let expected: Vec<usize> = (0..MAX_CHAIN * 3).map(|n| n % MAX_CHAIN + 1).collect();
        assert_eq!(lengths, expected);
    }
}
