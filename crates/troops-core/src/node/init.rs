//! `troops init`: makes a node, or brings an existing one up to date without losing anything.
//! Creates the state dir, the bare repo (fast-forward only, group-shared, hooks that call
//! `troops-hook`), the node's SSH key, and records branch, roles and remotes where they belong.
//! Run as root, it shares the node with `admin_group`, whose members may push and run plans.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Repository, RepositoryInitMode, RepositoryInitOptions};

use crate::model::config::Config;
use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;

pub struct Options {
    pub branch: Option<String>,
    /// `(name, url)` pairs, added as git remotes of the node repo; a remote of that name with
    /// another url is refused, never replaced.
    pub remotes: Vec<(String, String)>,
    pub roles: Vec<String>,
    /// The node's hostname, written into the node config if it names none.
    pub hostname: Option<String>,
    /// The `troops-hook` binary the repo's hooks run.
    pub hook: PathBuf,
}

/// Initialises the node at `state_dir` with the config file `config_path`; returns the node and
/// its SSH public key. What the options ask for is checked before anything is written.
pub fn init(state_dir: &Path, config_path: &Path, options: &Options) -> Result<(Node, String)> {
    let mut remotes = Vec::new();
    for (name, url) in &options.remotes {
        // Both end up on git's command line; git's own checks let `-x` through as a name.
        if name.starts_with('-') || url.starts_with('-') {
            return Err(Error::Input(format!(
                "remote {name:?} ({url}): a remote name or url may not start with `-`"
            )));
        }
        // The daemon fetches from `/`, not from where init ran: a relative path is made absolute.
        let url = match crate::mech::fetch::local_path(url) {
            Some(path) if path.is_relative() => absolute(path)?.display().to_string(),
            _ => url.clone(),
        };
        remotes.push((name.clone(), url));
    }
    keep_remotes(&Node::repo_path_in(state_dir), &remotes)?;
    if options.branch.is_some() || !options.roles.is_empty() || options.hostname.is_some() {
        update_config(config_path, options.branch.as_deref(), &options.roles, options.hostname.as_deref())?;
    }
    let node = Node::load(state_dir.to_owned(), config_path)?;
    for dir in [node.state_dir.clone(), node.runs_dir(), node.work_dir()] {
        crate::mech::modes::dir_all(&dir, 0o750)?;
    }
    // Private by default: run records, logs and checkouts are nobody's business but root's and
    // the admin group's, and nothing under the state dir is reachable by others.
    private(&node.state_dir)?;
    init_repo(&node, &remotes, &options.hook)?;
    let public_key = ssh_key(&node.ssh_key_path(), &node.config.hostname())?;
    share_with_group(&node)?;
    start_ledger(&node)?;
    crate::mech::releases::Releases::new(&node, None).secure_dir()?;
    Ok((node, public_key))
}

/// The owner's ledger, for a node that has none yet (made by an older troops): taken from
/// `refs/troops/*` once, now, rather than at the first run, so that what a member writes there
/// from now on is never read as root's. Under the node lock, if it is free (a run under way writes
/// the ledger itself when it changes it).
fn start_ledger(node: &Node) -> Result<()> {
    if !node.is_owner() || node.ledger_path().exists() {
        return Ok(());
    }
    let Some(_lock) = crate::mech::lock::NodeLock::try_acquire(&node.lock_path())? else { return Ok(()) };
    let ledger = node.repo()?.ledger_from_refs()?;
    crate::mech::ledger::save(&node.ledger_path(), &ledger)
}

/// The admin group model: members of `admin_group` push to the repo over SSH and, when no daemon
/// runs, run the plan in-process as themselves; root (the daemon, the CLI) fetches into the repo
/// and runs plans. So the group may write what a push and an in-process run write, and nothing
/// root reads as instructions:
/// - the state dir and `repo/` are entered and read (group r-x); `ssh/`, the node's key, is root's;
/// - the repo dir is the group's to write (git locks `HEAD` there), sticky (+t), so a member adds
///   files but cannot rename or replace root's; so are `objects/` and `logs/` (reflogs, which git
///   appends to; the followed branch's and the deployed commit's exist from the start, root's);
///   `refs/heads`, `refs/tags` and `refs/troops` are the group's to write, not sticky (git moves
///   a ref by renaming a new file over it);
/// - everything else in the repo stays root's, group-readable only: its `config` (remotes,
///   `troops.*`, the recorded `[verify]` policy), `hooks/`, `info/`, `refs/`, `refs/remotes`,
///   `HEAD`: no member plants a hook, a `core.sshCommand` or a tracking ref root acts on, and a
///   `commondir`, `shallow` or commit-graph a member adds makes root refuse the repo
///   (`repo::guard_node_repo`); what root goes by for the deployed and quarantined commits is
///   its ledger in the state dir (`ledger`), not `refs/troops`, which the group writes;
/// - `runs/` and `work/` are the group's to write, sticky: a member's in-process run adds its own
///   record and checkout; root's stay root's (0750 directories, 0640 files), and root decides
///   only from its own records (`trust`);
/// - `lock` is the group's to read and write; so is `metrics/` (not sticky: a member's run
///   replaces the counters file), whose counters and flock root reads and waits for only within
///   bounds (`metrics`);
/// - `releases/` is root's alone: a service runs what it holds;
///
/// Directories the group writes are setgid, so what anyone creates in them stays the group's.
/// Only root can give files to a group, so this happens when root runs `troops init` and the
/// group exists; otherwise nothing changes. Git keeps the repo shared as it writes
/// (`core.sharedRepository=0660`), and so does troops where it writes with libgit2
/// (`modes::settle`); everything else troops makes gets its mode where it is made (`modes`),
/// whatever the umask.
fn share_with_group(node: &Node) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let name = &node.config.admin_group;
    let Some(group) = nix::unistd::Group::from_name(name).ctx(|| format!("looking up admin_group {name}"))?
    else {
        return Ok(());
    };
    let gid = group.gid.as_raw();
    let lock = node.lock_path();
    let file = crate::mech::files::open(&lock, std::fs::OpenOptions::new().create(true).append(true))
        .ctx(|| format!("creating {}", lock.display()))?;
    crate::mech::modes::set_file(&file, &lock, 0o660)?;
    let repo = node.repo_path();
    for dir in [node.state_dir.as_path(), repo.parent().unwrap_or(&node.state_dir)] {
        share(dir, gid, 0o050)?;
    }
    share_read_only(&repo, gid)?;
    // git takes `HEAD.lock` in the repo dir when a push moves the branch HEAD names.
    share(&repo, gid, 0o070)?;
    sticky(&repo)?;
    for dir in ["objects", "refs/heads", "refs/tags", "refs/troops", "logs"] {
        share_tree(&repo.join(dir), gid)?;
    }
    share_read_only(&repo.join("logs/refs/remotes"), gid)?;
    let (runs, work) = (node.runs_dir(), node.work_dir());
    // Metrics counters: a member's in-process run counts too (they are only ever read as numbers).
    let metrics = node.metrics_dir();
    crate::mech::modes::dir_all(&metrics, 0o750)?;
    for tree in [&runs, &work, &lock, &metrics] {
        share_tree(tree, gid)?;
    }
    // Not refs/: git moves a ref by renaming a new file over it, which sticky would forbid.
    for tree in [&repo.join("objects"), &repo.join("logs"), &runs, &work] {
        sticky_tree(tree)?;
    }
    Ok(())
}

/// Makes every directory under `path` that the group may write sticky (see [`sticky`]).
fn sticky_tree(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.permissions().mode() & 0o020 != 0 {
        sticky(path)?;
    }
    for entry in std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))? {
        sticky_tree(&entry.ctx(|| format!("listing {}", path.display()))?.path())?;
    }
    Ok(())
}

/// Gives `path` and everything under it to root and group `gid`, which may read but not write
/// (nor run setuid/setgid): what the group must not change.
fn share_read_only(path: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    if meta.uid() != 0 || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(0), Some(gid))
            .ctx(|| format!("giving {} to root and group {gid}", path.display()))?;
    }
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.mode() & 0o7777;
    let group = (mode & 0o500) >> 3;
    let shared = if meta.is_dir() { (mode & 0o700) | group | 0o2000 } else { (mode & 0o700) | group };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(shared))
        .ctx(|| format!("sharing {} read-only with its group", path.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))? {
            share_read_only(&entry.ctx(|| format!("listing {}", path.display()))?.path(), gid)?;
        }
    }
    Ok(())
}

/// Makes the directory `path` sticky: who may write it adds entries, but renames or removes only
/// their own.
fn sticky(path: &Path) -> Result<()> {
    let mode =
        std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode((mode & 0o7777) | 0o1000))
        .ctx(|| format!("making {} sticky", path.display()))
}

/// Takes away every permission of others from the directory `path`, keeping the rest.
fn private(path: &Path) -> Result<()> {
    let mode =
        std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7770))
        .ctx(|| format!("making {} private", path.display()))
}

/// Gives `path` and everything under it to group `gid`, with the owner's permissions, without
/// following symlinks.
fn share_tree(path: &Path, gid: u32) -> Result<()> {
    let meta = share(path, gid, 0o070)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))? {
            share_tree(&entry.ctx(|| format!("listing {}", path.display()))?.path(), gid)?;
        }
    }
    Ok(())
}

/// Gives `path` to group `gid` with the owner's permission bits among `bits` (0o070: all of them;
/// 0o050: read and enter, never write); directories also get setgid.
fn share(path: &Path, gid: u32, bits: u32) -> Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    use std::os::unix::fs::MetadataExt;
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid))
            .ctx(|| format!("giving {} to group {gid}", path.display()))?;
    }
    if meta.file_type().is_symlink() {
        return Ok(meta);
    }
    let mode = meta.mode() & 0o7777;
    let group = (mode & 0o700) >> 3 & bits;
    // A file the group may write must not run as its owner: setuid and setgid go.
    let shared = if meta.is_dir() { mode | group | 0o2000 } else { (mode & !0o6000) | group };
    // Compared with the mode as it is now: chown may have changed it.
    if std::fs::symlink_metadata(path).map(|m| m.mode() & 0o7777).ok() != Some(shared) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(shared))
            .ctx(|| format!("sharing {} with its group", path.display()))?;
    }
    Ok(meta)
}

fn init_repo(node: &Node, remotes: &[(String, String)], hook: &Path) -> Result<()> {
    let path = node.repo_path();
    if let Some(parent) = path.parent() {
        crate::mech::modes::dir_all(parent, 0o750)?;
    }
    let branch = &node.config.branch;
    // What an older troops's `git gc` left: group-writable, so not to be believed
    // (`repo::guard_node_repo`); git builds it again only when asked to.
    for name in [crate::mech::repo::COMMIT_GRAPH, crate::mech::repo::COMMIT_GRAPHS] {
        let graph = path.join(name);
        let removed = match std::fs::symlink_metadata(&graph) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&graph),
            Ok(_) => std::fs::remove_file(&graph),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        removed.ctx(|| format!("removing {}", graph.display()))?;
    }
    let git = match Repository::open_bare(&path) {
        Ok(git) => git,
        Err(_) => Repository::init_opts(
            &path,
            RepositoryInitOptions::new()
                .bare(true)
                .mode(RepositoryInitMode::SHARED_GROUP)
                .initial_head(&format!("refs/heads/{branch}")),
        )
        .ctx(|| format!("creating the node repo {}", path.display()))?,
    };
    let mut config = git
        .config()
        .and_then(|c| c.open_level(git2::ConfigLevel::Local))
        .ctx(|| format!("opening {}/config", path.display()))?;
    let state_dir = absolute(&node.state_dir)?;
    let config_path = absolute(&node.config.path)?;
    let settings: [(&str, &str); 7] = [
        ("receive.denyNonFastForwards", "true"),
        // Bare repos keep no reflog by default; ours says which remote or push moved the branch.
        ("core.logAllRefUpdates", "always"),
        ("receive.denyDeletes", "true"),
        // Shared with the group, not with others.
        ("core.sharedRepository", "0660"),
        // A pusher's `git gc` would rewrite files only root may (the repo dir is root's); root's
        // pulls keep the repo packed (`fetch::housekeep`).
        ("receive.autoGc", "false"),
        ("troops.stateDir", &state_dir.to_string_lossy()),
        ("troops.config", &config_path.to_string_lossy()),
    ];
    for (key, value) in settings {
        config.set_str(key, value).ctx(|| format!("setting {key} in {}", path.display()))?;
    }
    if node.config.verify.given.require_signed {
        crate::mech::recorded::record_policy(&path, &node.config.verify)?;
    }
    // Made before any member can plant something at their names: the dirs root writes refs in,
    // with the mode libgit2 gives the repo's own (SHARED_GROUP: 2775, setgid passed on).
    let dirs = ["refs/heads", "refs/tags", "refs/troops", "refs/remotes"];
    for dir in dirs.iter().flat_map(|d| [d.to_string(), format!("logs/{d}")]) {
        crate::mech::modes::dir_all(&path.join(dir), 0o775)?;
    }
    // The reflogs root appends to exist from the start, root's: nobody plants a symlink there.
    for log in [format!("logs/refs/heads/{branch}"), format!("logs/{}", crate::mech::repo::DEPLOYED_REF)] {
        let log = path.join(log);
        let file = crate::mech::files::open(&log, std::fs::OpenOptions::new().create(true).append(true))
            .ctx(|| format!("creating {}", log.display()))?;
        // As git writes a reflog in a repo shared with the group (`core.sharedRepository`).
        crate::mech::modes::set_file(&file, &log, 0o660)?;
    }
    // A push updates HEAD's branch name in clones; keep HEAD on the followed branch.
    git.set_head(&format!("refs/heads/{branch}"))
        .ctx(|| format!("pointing HEAD of {} at {branch}", path.display()))?;

    for (name, url) in remotes {
        if git.find_remote(name).is_err() {
            git.remote(name, url).map(drop).ctx(|| format!("adding remote {name} ({url})"))?;
        }
    }

    let hook = hook.to_string_lossy().replace('\'', r"'\''");
    for kind in ["pre-receive", "post-receive"] {
        let file = path.join("hooks").join(kind);
        let script = format!(
            "#!/bin/sh\n# Written by `troops init`; runs again on every init.\nexec '{hook}' {kind} \"$@\"\n"
        );
        crate::mech::files::write(&file, script.as_bytes(), 0o755)?;
    }
    crate::mech::repo::lock_down_repo_config(&path)
}

/// Refuses a remote of `remotes` that the node repo at `git_dir` has already, with another url:
/// `troops init` run again with a mistyped or stale `--remote` must not quietly move the node to
/// another mirror. Changing a remote is git's: `git remote set-url`, as the message says.
fn keep_remotes(git_dir: &Path, remotes: &[(String, String)]) -> Result<()> {
    let Ok(git) = Repository::open_bare(git_dir) else { return Ok(()) };
    for (name, url) in remotes {
        let Ok(remote) = git.find_remote(name) else { continue };
        let current = String::from_utf8_lossy(remote.url_bytes());
        if current != *url {
            return Err(Error::Input(format!(
                "remote {name} of {} is {current}, not {url}; troops init does not replace a remote: \
                 to move it, git --git-dir={} remote set-url {name} {url}",
                git_dir.display(),
                git_dir.display()
            )));
        }
    }
    Ok(())
}

/// Adds `roles`, sets `branch` and, if the file names none, `hostname` in the node config file,
/// keeping everything else in it. A hostname other than the one the file names is refused: it is
/// the node's name in the plan's roles, its status ref and its key in the deploy repo.
fn update_config(path: &Path, branch: Option<&str>, roles: &[String], hostname: Option<&str>) -> Result<()> {
    let text = crate::model::config::read(path)?.unwrap_or_default();
    let config = Config::parse(path, &text)?;
    let mut doc: toml_edit::DocumentMut = text.parse().expect("a config that parsed is TOML");
    if let Some(branch) = branch {
        doc["branch"] = toml_edit::value(branch);
    }
    match (hostname, config.hostname.as_deref()) {
        (Some(new), Some(old)) if new != old => {
            return Err(Error::Input(format!(
                "{} names this host {old:?} already, not {new:?}; edit the file to rename the host",
                path.display()
            )))
        }
        (Some(new), None) => doc["hostname"] = toml_edit::value(new),
        _ => {}
    }
    if !roles.is_empty() {
        let list = doc.entry("roles").or_insert(toml_edit::value(toml_edit::Array::new()));
        let array = list.as_array_mut().expect("validated: roles is an array");
        for role in roles {
            if !array.iter().any(|r| r.as_str() == Some(role)) {
                array.push(role.as_str());
            }
        }
    }
    let text = doc.to_string();
    Config::parse(path, &text)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::mech::modes::dir_all(dir, 0o755)?;
    }
    // Pushers' hooks read it: its mode stays as it was, or readable by all when new.
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    crate::mech::files::write(path, text.as_bytes(), mode)
}

/// The node's SSH key `key` for fetching (and the secrets of its roles), `troops@HOSTNAME`: made
/// once, kept forever, with an empty `known_hosts` beside it. Returns the public half.
fn ssh_key(key: &Path, hostname: &str) -> Result<String> {
    let dir = key.parent().expect("the key is in the ssh dir");
    crate::mech::modes::dir_all(dir, 0o700)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("securing {}", dir.display()))?;
    if !key.exists() {
        let comment = format!("troops@{hostname}");
        let output = crate::mech::env::command("ssh-keygen", crate::mech::env::base())
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
            .arg(key)
            .output()
            .ctx(|| "running ssh-keygen (is openssh-client installed?)".into())?;
        if !output.status.success() {
            return Err(Error::Env(format!(
                "ssh-keygen failed to create {}: {}",
                key.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    // ssh-keygen writes the private key 0600 itself, the public one as the umask has it.
    let public = key.with_extension("pub");
    crate::mech::modes::set(&public, 0o644)?;
    let known_hosts = dir.join("known_hosts");
    if !known_hosts.exists() {
        crate::mech::files::write(&known_hosts, b"", 0o644)?;
    }
    std::fs::read_to_string(&public)
        .map(|k| k.trim().to_owned())
        .ctx(|| format!("reading {}", public.display()))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).ctx(|| format!("resolving {}", path.display()))
}
