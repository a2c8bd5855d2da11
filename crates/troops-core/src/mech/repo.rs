//! The node's bare repository (`repo/main.git`): its refs (the followed branch, the deployed
//! commit), resolving revisions and writing a commit's tree into a fresh directory for a run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;

pub const DEPLOYED_REF: &str = "refs/troops/deployed";
/// `refs/troops/bad/<sha>`: a quarantined commit, never run again by a pull, a retry or a restart.
/// The ref names an annotated tag of the commit whose message is the reason.
pub const QUARANTINE_PREFIX: &str = "refs/troops/bad/";

/// A quarantined commit and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub commit: Oid,
    pub reason: String,
    /// When it was quarantined (RFC 3339), if the tag says.
    pub at: Option<String>,
}

pub struct NodeRepo {
    pub git: Repository,
    pub branch: String,
    /// In a process of the node's owner, its ledger (`<state>/ledger.json`): what it goes by for
    /// the deployed and quarantined commits, and writes along with the refs. `None` in any other
    /// process (a member's push run in-process), which goes by the refs it can write.
    pub ledger: Option<PathBuf>,
    /// A push's objects, not yet in the repo (git's quarantine, as a pre-receive hook sees it):
    /// read as well, by `git` and by checkouts (`NodeRepo::with_pushed`).
    pub pushed: Option<PathBuf>,
}

impl NodeRepo {
    /// Opens the repo at `path`, following `branch`; `ledger`: see [`NodeRepo::ledger`].
    pub fn open(path: &Path, branch: &str, ledger: Option<PathBuf>) -> Result<NodeRepo> {
        // A member of the admin group can write objects: one replaced on disk must fail to read
        // rather than run in place of what was verified (libgit2's default, said out loud).
        git2::opts::strict_hash_verification(true);
        guard_node_repo(path)?;
        let git = Repository::open_bare(path).map_err(|e| {
            Error::git(format!("opening the node repo {} (did you run `troops init`?)", path.display()), e)
        })?;
        Ok(NodeRepo { git, branch: branch.to_owned(), ledger, pushed: None })
    }

    /// This repo as a pre-receive hook sees it: with the pushed objects in `quarantine` too.
    pub fn with_pushed(mut self, quarantine: &Path) -> Result<NodeRepo> {
        add_alternate(&self.git, quarantine)?;
        self.pushed = Some(quarantine.to_owned());
        Ok(self)
    }

    pub fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn target(&self, name: &str) -> Result<Option<Oid>> {
        match self.git.refname_to_id(name) {
            Ok(oid) => Ok(Some(oid)),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(Error::git(format!("reading {name}"), e)),
        }
    }

    /// The accepted tip of the followed branch.
    pub fn tip(&self) -> Result<Option<Oid>> {
        self.target(&self.branch_ref())
    }

    /// The last commit whose run succeeded: by the owner's ledger in the owner's process, else
    /// by `refs/troops/deployed`.
    pub fn deployed(&self) -> Result<Option<Oid>> {
        match self.owners_ledger()? {
            Some((path, ledger)) => ledger.deployed.as_deref().map(|c| ledger_oid(&path, c)).transpose(),
            None => self.target(DEPLOYED_REF),
        }
    }

    /// Records `commit` as deployed: in the ledger (the owner's process) and `refs/troops/deployed`.
    pub fn set_deployed(&self, commit: Oid, message: &str) -> Result<()> {
        self.change_ledger(|ledger| ledger.deployed = Some(commit.to_string()))?;
        self.git
            .reference(DEPLOYED_REF, commit, true, message)
            .ctx(|| format!("moving {DEPLOYED_REF} to {commit}"))?;
        self.settle(&ref_files(DEPLOYED_REF))
    }

    /// Quarantines `commit` with `reason` (replacing an earlier reason): in the ledger (the
    /// owner's process) and as `refs/troops/bad/<commit>`.
    pub fn quarantine(&self, commit: Oid, reason: &str) -> Result<()> {
        let name = format!("{QUARANTINE_PREFIX}{commit}");
        let tagger = git2::Signature::now("troops", "troops@localhost")
            .ctx(|| "making the tagger of a quarantine tag".to_owned())?;
        let object = self.git.find_object(commit, None).ctx(|| format!("reading commit {commit}"))?;
        let entry =
            crate::mech::ledger::Entry { reason: reason.to_owned(), at: Some(crate::model::records::now()) };
        self.change_ledger(|ledger| {
            ledger.quarantined.insert(commit.to_string(), entry);
        })?;
        let tag = self
            .git
            .tag_annotation_create(&name, &object, &tagger, reason)
            .ctx(|| format!("writing the quarantine tag of {commit}"))?;
        self.git
            .reference(&name, tag, true, &format!("troops: quarantined: {reason}"))
            .ctx(|| format!("writing {name}"))?;
        let mut written = ref_files(&name).to_vec();
        written.push(crate::mech::modes::loose_object(tag));
        self.settle(&written)
    }

    /// Lifts the quarantine of `commit` (a person ran it and it succeeded); no error if it had none.
    pub fn unquarantine(&self, commit: Oid) -> Result<()> {
        self.change_ledger(|ledger| {
            ledger.quarantined.remove(&commit.to_string());
        })?;
        let name = format!("{QUARANTINE_PREFIX}{commit}");
        match self.git.find_reference(&name) {
            Ok(mut reference) => reference.delete().ctx(|| format!("deleting {name}"))?,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(Error::git(format!("reading {name}"), e)),
        }
        self.settle(&ref_files(&name))
    }

    /// Gives what libgit2 just wrote into the repo (`written`, relative to it) the modes the
    /// repo's permission model says (`modes::settle`).
    pub fn settle(&self, written: &[PathBuf]) -> Result<()> {
        crate::mech::modes::settle(self.git.path(), written)
    }

    /// Lifts the quarantine of every commit the branch can no longer come to: all but `tip`,
    /// the commits ahead of it, and `deployed`. The branch moves only forward, so an ancestor of
    /// the tip, or a commit off its history, is never the tip again and no pull, retry or
    /// restart would run it; only a person can (`troops deploy --commit`). Returns those lifted.
    pub fn lift_passed_quarantines(&self, tip: Oid, deployed: Oid) -> Result<Vec<Quarantined>> {
        let mut lifted = Vec::new();
        for q in self.all_quarantined()? {
            let ahead = || self.git.graph_descendant_of(q.commit, tip).unwrap_or(true);
            if q.commit == tip || q.commit == deployed || ahead() {
                continue;
            }
            self.unquarantine(q.commit)?;
            lifted.push(q);
        }
        Ok(lifted)
    }

    /// Why `commit` is quarantined, if it is.
    pub fn quarantined(&self, commit: Oid) -> Result<Option<Quarantined>> {
        if let Some((_, ledger)) = self.owners_ledger()? {
            return Ok(ledger.quarantined.get(&commit.to_string()).map(|e| Quarantined {
                commit,
                reason: e.reason.clone(),
                at: e.at.clone(),
            }));
        }
        let Some(target) = self.target(&format!("{QUARANTINE_PREFIX}{commit}"))? else { return Ok(None) };
        Ok(Some(self.quarantine_of(commit, target)))
    }

    /// Every quarantined commit, oldest first.
    pub fn all_quarantined(&self) -> Result<Vec<Quarantined>> {
        let mut all = match self.owners_ledger()? {
            Some((path, ledger)) => ledger
                .quarantined
                .into_iter()
                .map(|(commit, e)| {
                    Ok(Quarantined { commit: ledger_oid(&path, &commit)?, reason: e.reason, at: e.at })
                })
                .collect::<Result<Vec<_>>>()?,
            None => self.quarantine_refs()?,
        };
        all.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(all)
    }

    /// What `refs/troops/deployed` says, whoever moved it (for `troops status`, beside what the
    /// ledger says).
    pub fn deployed_ref(&self) -> Result<Option<Oid>> {
        self.target(DEPLOYED_REF)
    }

    /// The quarantine refs, whoever wrote them.
    fn quarantine_refs(&self) -> Result<Vec<Quarantined>> {
        let glob = format!("{QUARANTINE_PREFIX}*");
        let references = self.git.references_glob(&glob).ctx(|| format!("listing {glob}"))?;
        Ok(references
            .flatten()
            .filter_map(|r| {
                let commit = Oid::from_str(r.name()?.strip_prefix(QUARANTINE_PREFIX)?).ok()?;
                Some(self.quarantine_of(commit, r.target()?))
            })
            .collect())
    }

    /// In the owner's process, its ledger and where it is; a node that has none yet takes it from
    /// the refs (see `ledger`).
    fn owners_ledger(&self) -> Result<Option<(PathBuf, crate::mech::ledger::Ledger)>> {
        let Some(path) = &self.ledger else { return Ok(None) };
        let ledger = match crate::mech::ledger::load(path)? {
            Some(ledger) => ledger,
            None => self.ledger_from_refs()?,
        };
        Ok(Some((path.clone(), ledger)))
    }

    /// The ledger as the refs say it, for a node that has none yet.
    pub fn ledger_from_refs(&self) -> Result<crate::mech::ledger::Ledger> {
        let quarantined = self
            .quarantine_refs()?
            .into_iter()
            .map(|q| (q.commit.to_string(), crate::mech::ledger::Entry { reason: q.reason, at: q.at }))
            .collect();
        Ok(crate::mech::ledger::Ledger {
            deployed: self.target(DEPLOYED_REF)?.map(|d| d.to_string()),
            quarantined,
        })
    }

    /// Changes the ledger, in the owner's process (only under the node lock); nothing elsewhere.
    fn change_ledger(&self, change: impl FnOnce(&mut crate::mech::ledger::Ledger)) -> Result<()> {
        let Some((path, mut ledger)) = self.owners_ledger()? else { return Ok(()) };
        change(&mut ledger);
        crate::mech::ledger::save(&path, &ledger)
    }

    /// What the quarantine ref of `commit`, pointing at `target`, says. A ref someone made by hand
    /// (pointing at the commit itself) quarantines just as well, without a reason.
    fn quarantine_of(&self, commit: Oid, target: Oid) -> Quarantined {
        match self.git.find_tag(target) {
            Ok(tag) => Quarantined {
                commit,
                reason: tag.message().unwrap_or_default().trim().to_owned(),
                at: tag.tagger().map(|t| {
                    let at = std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(t.when().seconds().max(0) as u64);
                    humantime::format_rfc3339_seconds(at).to_string()
                }),
            },
            Err(_) => Quarantined { commit, reason: "no reason recorded".into(), at: None },
        }
    }

    /// The commit `rev` names (a hash, branch, tag or any git revision expression).
    pub fn resolve(&self, rev: &str) -> Result<Oid> {
        let object = self
            .git
            .revparse_single(rev)
            .map_err(|e| Error::Input(format!("unknown revision {rev:?}: {}", e.message())))?;
        let commit =
            object.peel_to_commit().map_err(|_| Error::Input(format!("revision {rev:?} is not a commit")))?;
        Ok(commit.id())
    }

    /// The plan file of `commit`, if it has one (see [`plan_text`]).
    pub fn plan_text(&self, commit: Oid) -> Result<Option<String>> {
        plan_text(&self.git, commit)
    }

    /// The files that differ between the trees of `from` and `to`: added, removed, modified or
    /// changed in mode, and both names of a file renamed or copied (as `git diff -M` finds them);
    /// paths as in the repo, `/`-separated. `None` when `from` is not in the repo (pruned, or a
    /// record of another repo): what changed since then is unknown.
    pub fn changed_files(&self, from: Oid, to: Oid) -> Result<Option<BTreeSet<String>>> {
        let tree_of = |commit: Oid| self.git.find_commit(commit).and_then(|c| c.tree());
        let Ok(old) = tree_of(from) else { return Ok(None) };
        let new = tree_of(to).ctx(|| format!("reading commit {to}"))?;
        let mut diff = self
            .git
            .diff_tree_to_tree(Some(&old), Some(&new), None)
            .ctx(|| format!("comparing commits {from} and {to}"))?;
        diff.find_similar(Some(git2::DiffFindOptions::new().renames(true).copies(true)))
            .ctx(|| format!("finding renames between commits {from} and {to}"))?;
        let mut files = BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(path) = file.path() {
                    files.insert(path.to_string_lossy().into_owned());
                }
            }
        }
        Ok(Some(files))
    }

    /// How the files under `dir` differ from the tree of `commit`, as "changed: PATH", "added:
    /// PATH" and "removed: PATH", sorted by path: content by git's blob hash, and for each entry
    /// whether it is a file, an executable or a symlink (and where it points). Directories count
    /// only for what they hold; a submodule, an empty directory in a checkout, is not compared.
    pub fn differences(&self, commit: Oid, dir: &Path) -> Result<Vec<String>> {
        let tree =
            self.git.find_commit(commit).and_then(|c| c.tree()).ctx(|| format!("reading commit {commit}"))?;
        let mut want = std::collections::BTreeMap::new();
        let mut walked = Ok(());
        tree.walk(git2::TreeWalkMode::PreOrder, |parent, entry| match entry.kind() {
            Some(git2::ObjectType::Blob) => {
                let path = format!("{parent}{}", String::from_utf8_lossy(entry.name_bytes()));
                want.insert(path, (entry.id(), entry.filemode()));
                git2::TreeWalkResult::Ok
            }
            Some(git2::ObjectType::Tree) => git2::TreeWalkResult::Ok,
            _ => git2::TreeWalkResult::Skip,
        })
        .unwrap_or_else(|e| walked = Err(e));
        walked.ctx(|| format!("reading the tree of commit {commit}"))?;
        let mut have = std::collections::BTreeMap::new();
        files_under(dir, "", &mut have)?;
        let mut found = Vec::new();
        for (path, wanted) in &want {
            match have.get(path) {
                None => found.push(format!("removed: {path}")),
                Some(had) if had != wanted => found.push(format!("changed: {path}")),
                Some(_) => {}
            }
        }
        found.extend(have.keys().filter(|p| !want.contains_key(*p)).map(|p| format!("added: {p}")));
        found.sort_by(|a, b| a.split_once(' ').map(|x| x.1).cmp(&b.split_once(' ').map(|x| x.1)));
        Ok(found)
    }

    /// Writes the tree of `commit` into `dest`, which must not exist (an existing path, even a
    /// symlink, is an error, never reused): a plain directory, no `.git`, which only its owner
    /// can write and the group can only read (mode 0750, whatever the umask), so that nobody
    /// else edits a script between the checkout and its run.
    /// A checkout is exactly the commit's tree: files, modes and symlinks as committed, without
    /// filters; a submodule is an empty directory (its commit is not fetched, its files are not
    /// there). A tree that cannot be written (a path the filesystem refuses, say) is the commit's
    /// fault, not the node's: it fails the run as bad input, which the daemon retries with backoff.
    pub fn checkout(&self, commit: Oid, dest: &Path) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().mode(0o750).create(dest).ctx(|| format!("creating {}", dest.display()))?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o750))
            .ctx(|| format!("making {} private", dest.display()))?;
        // libgit2 looks submodules up in the work tree and refuses to in a bare repo: a second
        // handle on the same repo, whose work tree is `dest`, only for this checkout.
        let git = Repository::open_bare(self.git.path())
            .and_then(|git| git.set_workdir(dest, false).map(|()| git))
            .ctx(|| format!("opening {} to check out {commit}", self.git.path().display()))?;
        if let Some(pushed) = &self.pushed {
            add_alternate(&git, pushed)?;
        }
        let tree =
            git.find_commit(commit).and_then(|c| c.tree()).ctx(|| format!("reading commit {commit}"))?;
        let mut options = git2::build::CheckoutBuilder::new();
        options.target_dir(dest).force().update_index(false).disable_filters(true).dir_perm(0o750);
        git.checkout_tree(tree.as_object(), Some(&mut options)).map_err(|e| {
            Error::Input(format!(
                "commit {commit} cannot be checked out into {}: {}",
                dest.display(),
                e.message()
            ))
        })?;
        checkout_modes(dest)
    }
}

/// Reads the objects in `dir` (a push's quarantine) through `git` as well.
fn add_alternate(git: &Repository, dir: &Path) -> Result<()> {
    git.odb()
        .and_then(|odb| odb.add_disk_alternate(&dir.to_string_lossy()))
        .ctx(|| format!("reading the pushed objects in {}", dir.display()))
}

/// Every file and symlink under `dir` (never followed), as its repo path (`prefix` + name) with
/// the blob hash and mode git would record for it.
fn files_under(
    dir: &Path,
    prefix: &str,
    into: &mut std::collections::BTreeMap<String, (Oid, i32)>,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let name = format!("{prefix}{}", String::from_utf8_lossy(entry.file_name().as_bytes()));
        let meta = std::fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
        let hashed = if meta.is_dir() {
            files_under(&path, &format!("{name}/"), into)?;
            continue;
        } else if meta.is_symlink() {
            let target = std::fs::read_link(&path).ctx(|| format!("reading {}", path.display()))?;
            (Oid::hash_object(git2::ObjectType::Blob, target.as_os_str().as_bytes()), 0o120000)
        } else {
            let mode = if meta.permissions().mode() & 0o100 != 0 { 0o100755 } else { 0o100644 };
            (Oid::hash_file(git2::ObjectType::Blob, &path), mode)
        };
        let oid = hashed.0.ctx(|| format!("hashing {}", path.display()))?;
        into.insert(name, (oid, hashed.1));
    }
    Ok(())
}

/// Gives what libgit2 checked out below `dir` the modes of the tree, whatever the umask: files
/// 0755 if executable, else 0644 (read by anyone who may enter the checkout: the group in `work/`,
/// a service in a release), directories 0750. Nobody else writes a fresh checkout meanwhile, and
/// symlinks are left as they are, never followed.
fn checkout_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
        let meta = std::fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            crate::mech::modes::set(&path, 0o750)?;
            checkout_modes(&path)?;
        } else if meta.is_file() {
            let executable = meta.permissions().mode() & 0o100 != 0;
            crate::mech::modes::set(&path, if executable { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// The plan file of `commit` in `git`, if it has one, read straight from the object store (the
/// node repo, or a push still in quarantine); one that is no regular file or not UTF-8 is a plan
/// error, as in a checkout.
pub fn plan_text(git: &Repository, commit: Oid) -> Result<Option<String>> {
    let path = Path::new(crate::model::plan::FILE_NAME);
    let tree = git.find_commit(commit).and_then(|c| c.tree()).ctx(|| format!("reading commit {commit}"))?;
    let Ok(entry) = tree.get_path(path) else { return Ok(None) };
    if entry.filemode() == 0o120000 {
        return Err(crate::model::plan::not_a_file(path, "a symlink"));
    }
    if entry.kind() != Some(git2::ObjectType::Blob) {
        return Err(crate::model::plan::not_a_file(path, "a directory or special file"));
    }
    let blob = entry
        .to_object(git)
        .and_then(|o| o.peel_to_blob())
        .ctx(|| format!("reading {} of {commit}", crate::model::plan::FILE_NAME))?;
    crate::model::plan::text(path, blob.content().to_vec()).map(Some)
}

/// A commit id the ledger at `path` holds.
fn ledger_oid(path: &Path, commit: &str) -> Result<Oid> {
    Oid::from_str(commit)
        .map_err(|_| Error::Env(format!("{}: {commit:?} is not a commit id", path.display())))
}

/// The repo dir and `objects/` are the admin group's to add files to (see
/// `init::share_with_group`). Some files there change what git and libgit2 take the repo to be:
/// a `commondir` or `gitdir` file makes them read refs, objects and config from wherever it
/// points (`refuse_redirects`); a `shallow` file makes the commits it lists parentless; a
/// commit-graph is believed for parents by every history walk and merge base. Either of those
/// would let a member cut short the history `scope = "all"` verifies. troops makes none of them
/// in the node repo (its `git gc` writes no commit-graph; `troops init` removes one an older
/// troops left), so a node repo holding one is not opened. libgit2 itself writes an empty
/// `shallow` for a moment during each fetch, which lists no commit and cuts nothing: only one
/// that is not an empty regular file is refused.
pub fn guard_node_repo(git_dir: &Path) -> Result<()> {
    refuse_redirects(git_dir)?;
    for (name, what) in [
        ("shallow", "cuts the node repo's history short"),
        (COMMIT_GRAPH, "would rewire the node repo's history"),
        (COMMIT_GRAPHS, "would rewire the node repo's history"),
    ] {
        let path = git_dir.join(name);
        let found = std::fs::symlink_metadata(&path);
        let harmless = name == "shallow" && found.as_ref().is_ok_and(|m| m.is_file() && m.len() == 0);
        if found.is_ok() && !harmless {
            return Err(refused(&path, what));
        }
    }
    Ok(())
}

/// Refuses a repo whose `commondir` or `gitdir` file would make git and libgit2 read refs,
/// objects and config from somewhere else: any repo troops opens (the node repo, the status repo).
pub fn refuse_redirects(git_dir: &Path) -> Result<()> {
    for name in ["commondir", "gitdir"] {
        let path = git_dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(refused(&path, "redirects the repo elsewhere"));
        }
    }
    Ok(())
}

fn refused(path: &Path, what: &str) -> Error {
    Error::Env(format!("{} {what}; troops never makes one: remove it", path.display()))
}

/// Where a node keeps what each remote's order refs say (`refs/troops/remotes/<remote>/freeze`,
/// `.../approve/...`): read by `node::orders`, never pushed to.
pub const ORDERS_TRACKING: &str = "refs/troops/remotes/";

/// What writing or deleting ref `name` may write, relative to the repo: its loose file, its
/// reflog, and `packed-refs` (rewritten when a packed ref is deleted).
pub fn ref_files(name: &str) -> [PathBuf; 3] {
    [PathBuf::from(name), Path::new("logs").join(name), PathBuf::from("packed-refs")]
}

/// Where git keeps a commit-graph, and a chain of them.
pub const COMMIT_GRAPH: &str = "objects/info/commit-graph";
pub const COMMIT_GRAPHS: &str = "objects/info/commit-graphs";

impl Node {
    /// The node repo; in a process of the node's owner (root, on a node shared with the admin
    /// group), with the owner's ledger, which it goes by for what is deployed and quarantined.
    pub fn repo(&self) -> Result<NodeRepo> {
        NodeRepo::open(&self.repo_path(), &self.config.branch, self.is_owner().then(|| self.ledger_path()))
    }
}

/// Keeps the repo's `config` root's alone to write (0640) after a root process rewrote it (git and
/// libgit2 write a new file with the umask, or as shared as the repo): a member who could write
/// it could make root's `git` run anything (`core.sshCommand`, `core.fsmonitor`...). Refuses a
/// `config` that is not a plain file.
pub fn lock_down_repo_config(git_dir: &Path) -> Result<()> {
    let path = git_dir.join("config");
    let meta = std::fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::Env(format!("{} is not a plain file; refusing to use it", path.display())));
    }
    crate::mech::modes::set(&path, 0o640)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_shallow_file_as_libgit2_leaves_during_a_fetch_is_harmless_a_listing_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Repository::init_bare(dir.path()).unwrap();
        let shallow = dir.path().join("shallow");
        std::fs::write(&shallow, "").unwrap();
        guard_node_repo(dir.path()).unwrap();
        std::fs::write(&shallow, format!("{}\n", Oid::zero())).unwrap();
        let refused = guard_node_repo(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("shallow cuts the node repo's history short"), "{refused}");
        std::fs::remove_file(&shallow).unwrap();
        std::os::unix::fs::symlink("/dev/null", &shallow).unwrap();
        assert!(guard_node_repo(dir.path()).is_err(), "a symlink named shallow");
    }

    #[test]
    fn checkout_writes_files_modes_and_links_without_git_dir() {
        let dir = std::env::temp_dir().join(format!("troops-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let git = Repository::init_bare(dir.join("r.git")).unwrap();
        let oid = {
            let mut tb = git.treebuilder(None).unwrap();
            tb.insert("a.txt", git.blob(b"hello\n").unwrap(), 0o100644).unwrap();
            tb.insert("run.sh", git.blob(b"#!/bin/sh\n").unwrap(), 0o100755).unwrap();
            tb.insert("link", git.blob(b"a.txt").unwrap(), 0o120000).unwrap();
            let tree = git.find_tree(tb.write().unwrap()).unwrap();
            let sig = git2::Signature::now("t", "t@t").unwrap();
            git.commit(Some("refs/heads/main"), &sig, &sig, "m", &tree, &[]).unwrap()
        };
        let repo = NodeRepo { git, branch: "main".into(), ledger: None, pushed: None };
        assert_eq!(repo.tip().unwrap(), Some(oid));
        assert_eq!(repo.resolve("main").unwrap(), oid);
        assert!(matches!(repo.resolve("nope"), Err(Error::Input(_))));

        let dest = dir.join("1");
        repo.checkout(oid, &dest).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read_to_string(dest.join("a.txt")).unwrap(), "hello\n");
        assert!(std::fs::metadata(dest.join("run.sh")).unwrap().permissions().mode() & 0o111 != 0);
        assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("a.txt"));
        assert!(!dest.join(".git").exists());
        assert!(!dir.join("r.git/index").exists(), "checkout must not touch the bare repo's index");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_repo_whose_history_or_location_a_planted_file_would_change_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        Repository::init_bare(&path).unwrap();
        NodeRepo::open(&path, "main", None).unwrap();
        for name in ["commondir", "gitdir", "shallow", COMMIT_GRAPH] {
            let planted = path.join(name);
            std::fs::write(&planted, "x\n").unwrap();
            let e = NodeRepo::open(&path, "main", None).err().expect("opened").to_string();
            assert!(e.contains(&planted.display().to_string()) && e.contains("remove it"), "{name}: {e}");
            std::fs::remove_file(&planted).unwrap();
        }
        std::fs::create_dir(path.join(COMMIT_GRAPHS)).unwrap();
        assert!(NodeRepo::open(&path, "main", None).is_err(), "a commit-graph chain");
    }
}
