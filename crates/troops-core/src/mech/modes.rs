//! The modes of what troops creates, given explicitly where it is made, never left to the umask of
//! whoever started troops (a careless shell's 000, a pusher's 077, systemd's): the same node comes
//! out the same whoever ran what on it. Directories and files made here get exactly their mode
//! (keeping the setgid bit a shared directory passes on). What libgit2 writes into a repo (refs,
//! reflogs, objects, packs), which unlike git leaves modes to the umask, is given its mode right
//! after by [`settle`], by the rule git's `core.sharedRepository` and `troops init` follow. Steps
//! are no concern of this: they run with umask 022 (`supervise`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::model::error::{Context, Result};

/// Makes the directory `path` if it is not there, and its missing parents, each with exactly
/// `mode` (and the setgid bit its parent passes on); one that is there keeps its mode.
pub fn dir_all(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        dir_all(parent, mode)?;
    }
    dir(path, mode).map(drop)
}

/// Makes the directory `path` with exactly `mode` (and the setgid bit its parent passes on);
/// false if it was there already (its mode is left as it is). Its parent must exist.
pub fn dir(path: &Path, mode: u32) -> Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        made => made.ctx(|| format!("creating {}", path.display()))?,
    }
    set(path, mode)?;
    Ok(true)
}

/// Gives the directory or file `path` (never followed if a symlink) exactly `mode`, keeping the
/// setgid bit of a directory.
pub fn set(path: &Path, mode: u32) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = if meta.is_dir() { mode | (meta.mode() & 0o2000) } else { mode };
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

/// Gives the file `file`, just opened or created, exactly `mode`, if it is this process's (a
/// shared file another user made keeps theirs).
pub fn set_file(file: &std::fs::File, path: &Path, mode: u32) -> Result<()> {
    let meta = file.metadata().ctx(|| format!("reading {}", path.display()))?;
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o7777 != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

/// The directories of a repo whose modes are set where the repo is made (by `git init`, and in
/// the node repo by `troops init`'s permission model), each its own; every other directory in a
/// repo has the mode of the one above it.
const OWN_MODES: &[&str] = &[
    "objects",
    "objects/pack",
    "objects/info",
    "refs",
    "refs/heads",
    "refs/tags",
    "refs/troops",
    "refs/remotes",
    "logs",
    "logs/refs",
    "logs/refs/heads",
    "logs/refs/tags",
    "logs/refs/troops",
    "logs/refs/remotes",
    "hooks",
    "info",
];

/// Gives what libgit2 just wrote into the repo at `git_dir` (`written`, relative to it: a ref, its
/// reflog, a loose object, a pack) and the directories it made on the way the modes git itself
/// gives them in a shared repo: a directory that of the one above it; a file read for the group,
/// written by its owner if libgit2 let it be (not an object or a pack), and by the group where the
/// group writes its directory (`refs/heads`, `logs/`; in the repo's own directory, never). Paths
/// that are not there (a ref libgit2 packed, a reflog it keeps none of) are passed over. Only this
/// process's own files change.
pub fn settle(git_dir: &Path, written: &[impl AsRef<Path>]) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for relative in written {
        let relative = relative.as_ref();
        let mut dir = git_dir.to_owned();
        let parts: Vec<_> = relative.iter().collect();
        let Some((_, dirs)) = parts.split_last() else { continue };
        for part in dirs {
            let above = std::fs::symlink_metadata(&dir).ctx(|| format!("reading {}", dir.display()))?;
            dir.push(part);
            let Ok(meta) = std::fs::symlink_metadata(&dir) else { break };
            let own = OWN_MODES.iter().any(|d| Path::new(d) == dir.strip_prefix(git_dir).unwrap_or(&dir));
            if meta.is_dir() && !own && meta.uid() == me {
                set(&dir, above.mode() & 0o7777)?;
            }
        }
        let path = git_dir.join(relative);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() || meta.uid() != me {
            continue;
        }
        let writable = meta.mode() & 0o200 != 0;
        let group_writes =
            dir != git_dir && std::fs::symlink_metadata(&dir).is_ok_and(|d| d.mode() & 0o020 != 0);
        let mode =
            0o440 | if writable { 0o200 } else { 0 } | if writable && group_writes { 0o020 } else { 0 };
        set(&path, mode)?;
    }
    Ok(())
}

/// The packs of the repo at `git_dir` (`objects/pack/pack-*`, relative to it): those a fetch with
/// libgit2 adds are settled. Its temporary files, which it renames into these, are not listed.
pub fn packs(git_dir: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let dir = Path::new("objects/pack");
    std::fs::read_dir(git_dir.join(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pack-"))
        .map(|e| dir.join(e.file_name()))
        .collect()
}

/// The path of loose object `oid` in a repo: `objects/ab/cdef...`.
pub fn loose_object(oid: git2::Oid) -> std::path::PathBuf {
    let hex = oid.to_string();
    Path::new("objects").join(&hex[..2]).join(&hex[2..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_directory_gets_its_mode_whatever_the_umask_and_keeps_a_shared_parents_setgid() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).unwrap();
        dir_all(&shared.join("a/b"), 0o750).unwrap();
        assert_eq!((mode(&shared.join("a")), mode(&shared.join("a/b"))), (0o2750, 0o2750));
        // There already: left as it is.
        std::fs::set_permissions(shared.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!dir(&shared.join("a"), 0o755).unwrap());
        assert_eq!(mode(&shared.join("a")), 0o700);
    }

    #[test]
    fn what_libgit2_writes_gets_the_mode_of_where_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let git = git2::Repository::init_bare(tmp.path()).unwrap();
        let repo = git.path().to_owned();
        std::fs::create_dir(repo.join("refs/troops")).unwrap();
        for (dir, dir_mode) in [("", 0o750), ("refs", 0o750), ("refs/troops", 0o770), ("objects", 0o770)] {
            std::fs::set_permissions(repo.join(dir), std::fs::Permissions::from_mode(dir_mode)).unwrap();
        }
        let blob = git.blob(b"x").unwrap();
        let who = git2::Signature::now("t", "t@localhost").unwrap();
        let tag = git.tag_annotation_create("t", &git.find_object(blob, None).unwrap(), &who, "m").unwrap();
        git.reference("refs/troops/bad/x", tag, true, "").unwrap();
        std::fs::write(repo.join("packed-refs"), "").unwrap();
        // As a careless umask leaves them.
        for path in ["refs/troops/bad", "refs/troops/bad/x", "packed-refs"] {
            std::fs::set_permissions(repo.join(path), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let written = [
            Path::new("refs/troops/bad/x").to_owned(),
            loose_object(tag),
            "packed-refs".into(),
            "logs/refs/troops/bad/x".into(),
        ];
        settle(&repo, &written).unwrap();
        assert_eq!(mode(&repo.join("refs/troops/bad")), 0o770, "a directory made: its parent's mode");
        assert_eq!(mode(&repo.join("refs/troops/bad/x")), 0o660, "a ref where the group writes");
        assert_eq!(mode(&repo.join("refs/troops")), 0o770, "a directory of its own mode stays");
        assert_eq!(mode(&repo.join(loose_object(tag))), 0o440, "an object: read only");
        assert_eq!(mode(repo.join(loose_object(tag)).parent().unwrap()), 0o770);
        assert_eq!(mode(&repo.join("packed-refs")), 0o640, "in the repo's own directory: the owner's");
    }
}
