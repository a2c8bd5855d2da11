//! Files of a tree whose content troops does not control, as the operator's clone of the deploy
//! repo is (whoever can commit can put a symlink, a FIFO or a huge file there), for the secrets
//! tooling. What must stay true: a path is followed one directory at a time from the tree's
//! root, never through a symlink (`O_NOFOLLOW`); only a regular file is read, and at most the
//! size it is allowed; a file is written to a fresh temp file beside its place and renamed there
//! (as `files` reads and writes), onto a regular file or nothing, never into wherever a symlink
//! points. Every refusal names the path, as the tree knows it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode};

use crate::mech::files::{self, describe};
use crate::model::error::{Context, Error, Result};

/// Reads the file at `relative` in the tree at `root`: `None` when it (or a directory on the way)
/// does not exist. Refused: a symlink anywhere on the way, anything but a regular file, more than
/// `max` bytes.
pub fn read(root: &Path, relative: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let (parent, name) = split(relative)?;
    let Some(dir) = open_dir(root, parent, false)? else { return Ok(None) };
    // Looked at before it is opened: opening a FIFO would wait for a writer, a device may act.
    match kind_at(dir.as_fd(), name) {
        None => return Ok(None),
        Some(libc::S_IFREG) => {}
        Some(kind) => return Err(not_a_file(relative, kind)),
    }
    // What is opened may have been swapped in since it was looked at: checked again.
    let refused = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::InvalidData => Error::Input(format!("{} is {e}", relative.display())),
        _ => Error::path("reading", relative, e),
    };
    let file = match files::open_in(dir.as_fd(), name) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        opened => opened.map_err(refused)?,
    };
    files::read_at_most(file, max).map(Some).map_err(refused)
}

/// The names in the directory at `relative` in the tree at `root` (none when it does not exist);
/// refused when a symlink is on the way. Reading what they name goes through [`read`], which
/// checks the way again.
pub fn list(root: &Path, relative: &Path) -> Result<Vec<std::ffi::OsString>> {
    if open_dir(root, relative, false)?.is_none() {
        return Ok(Vec::new());
    }
    let path = root.join(relative);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&path).ctx(|| format!("listing {}", relative.display()))? {
        names.push(entry.ctx(|| format!("listing {}", relative.display()))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Writes `bytes` to `relative` in the tree at `root` with exactly `mode`, as [`stage`] then
/// [`Staged::commit`].
pub fn write(root: &Path, relative: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    stage(root, relative, bytes, mode)?.commit()
}

/// A file written in full to a temp file beside its place, not yet in it; the temp file is
/// removed if this is dropped before [`Staged::commit`].
pub struct Staged {
    staged: files::Staged,
    name: std::ffi::OsString,
    shown: PathBuf,
}

/// Writes `bytes` with exactly `mode` to a new temp file in the directory of `relative` in the
/// tree at `root` (made, with those above it, when missing), synced. Refused when a symlink is on
/// the way, or something other than a regular file is at `relative`.
pub fn stage(root: &Path, relative: &Path, bytes: &[u8], mode: u32) -> Result<Staged> {
    let (parent, name) = split(relative)?;
    let dir = open_dir(root, parent, true)?.expect("made when missing");
    refuse_all_but_a_file(dir.as_fd(), name, relative)?;
    let staged = files::stage(dir, name, bytes, mode).ctx(|| format!("writing {}", relative.display()))?;
    Ok(Staged { staged, name: name.to_owned(), shown: relative.to_owned() })
}

impl Staged {
    /// Renames the temp file into place, onto a regular file or nothing (refused, and the temp
    /// file removed, when something else came there since), and syncs the directory.
    pub fn commit(self) -> Result<()> {
        refuse_all_but_a_file(self.staged.dir(), &self.name, &self.shown)?;
        self.staged.commit().ctx(|| format!("replacing {}", self.shown.display()))
    }
}

/// `relative` as its directory and its file name; refused unless it is a path inside the tree.
fn split(relative: &Path) -> Result<(&Path, &OsStr)> {
    let inside = relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) if inside => Ok((parent, name)),
        _ => Err(Error::Input(format!("{} is not a path of a file inside the repo", relative.display()))),
    }
}

/// The directory at `relative` in the tree at `root`, opened one component at a time without
/// following a symlink; missing ones are made (0755) when `make`, else `None`.
fn open_dir(root: &Path, relative: &Path, make: bool) -> Result<Option<OwnedFd>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    let mut dir = open_at(None, root.as_os_str(), flags, Mode::empty())
        .ctx(|| format!("opening {}", root.display()))?;
    let mut shown = PathBuf::new();
    for component in relative.components() {
        let Component::Normal(name) = component else { continue };
        shown.push(name);
        let mut opened = open_at(Some(&dir), name, flags | OFlag::O_NOFOLLOW, Mode::empty());
        if matches!(opened, Err(Errno::ENOENT)) && make {
            match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).ctx(|| format!("creating {}", shown.display())),
            }
            opened = open_at(Some(&dir), name, flags | OFlag::O_NOFOLLOW, Mode::empty());
        }
        dir = match opened {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                return Err(match kind_at(dir.as_fd(), name) {
                    Some(libc::S_IFLNK) => Error::Input(format!(
                        "{} is a symlink, not a directory; troops never follows a symlink there",
                        shown.display()
                    )),
                    Some(kind) => {
                        Error::Input(format!("{} is {}, not a directory", shown.display(), describe(kind)))
                    }
                    None => Error::path("opening", &shown, e.into()),
                })
            }
            Err(e) => return Err(e).ctx(|| format!("opening {}", shown.display())),
        };
    }
    Ok(Some(dir))
}

/// Refuses `name` in `dir` when something other than a regular file is there.
fn refuse_all_but_a_file(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<()> {
    match kind_at(dir, name) {
        None | Some(libc::S_IFREG) => Ok(()),
        Some(kind) => Err(Error::Input(format!(
            "{} is {}; troops writes it only onto a regular file or nothing{}",
            shown.display(),
            describe(kind),
            never_through(kind)
        ))),
    }
}

fn not_a_file(shown: &Path, kind: u32) -> Error {
    Error::Input(format!(
        "{} is {}; troops reads only regular files there{}",
        shown.display(),
        describe(kind),
        never_through(kind)
    ))
}

fn never_through(kind: u32) -> &'static str {
    if kind == libc::S_IFLNK {
        ", never through a symlink"
    } else {
        ""
    }
}

/// The file type (`S_IFMT` bits) of `name` in `dir` itself, a symlink not followed; `None` when
/// nothing is there.
fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> Option<u32> {
    fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok().map(|s| s.st_mode & libc::S_IFMT)
}

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = openat(dir.map(AsRawFd::as_raw_fd), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        (dir, root)
    }

    #[test]
    fn reads_regular_files_within_their_bound_and_refuses_the_rest_by_name() {
        let (dir, root) = tree();
        std::fs::write(root.join("keys/a.pub"), "key").unwrap();
        assert_eq!(read(&root, Path::new("keys/a.pub"), 3).unwrap().as_deref(), Some(&b"key"[..]));
        assert_eq!(read(&root, Path::new("keys/none.pub"), 3).unwrap(), None);
        assert_eq!(read(&root, Path::new("nodir/a.pub"), 3).unwrap(), None);
        let e = read(&root, Path::new("keys/a.pub"), 2).unwrap_err().to_string();
        assert_eq!(e, "keys/a.pub is larger than 2 bytes, more than troops reads there");

        symlink("/dev/zero", root.join("keys/zero.pub")).unwrap();
        symlink("a.pub", root.join("keys/near.pub")).unwrap();
        nix::unistd::mkfifo(&root.join("keys/fifo.pub"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(root.join("keys/dir.pub")).unwrap();
        for (file, why) in [
            ("keys/zero.pub", "is a symlink; troops reads only regular files there, never through a symlink"),
            ("keys/near.pub", "is a symlink"),
            ("keys/fifo.pub", "is a FIFO; troops reads only regular files there"),
            ("keys/dir.pub", "is a directory"),
        ] {
            let e = read(&root, Path::new(file), 1 << 20).unwrap_err().to_string();
            assert_eq!(
                e.split_once(' ').map(|(f, rest)| (f, rest.starts_with(why))),
                Some((file, true)),
                "{e}"
            );
        }

        // A directory on the way that is a symlink, even to a directory inside the tree.
        symlink(root.join("keys"), root.join("elsewhere")).unwrap();
        let e = read(&root, Path::new("elsewhere/a.pub"), 1 << 20).unwrap_err().to_string();
        assert_eq!(e, "elsewhere is a symlink, not a directory; troops never follows a symlink there");
        std::fs::write(root.join("file"), "").unwrap();
        let e = read(&root, Path::new("file/a.pub"), 1 << 20).unwrap_err().to_string();
        assert_eq!(e, "file is a regular file, not a directory");
        assert!(list(&root, Path::new("elsewhere")).is_err());
        assert_eq!(list(&root, Path::new("keys")).unwrap().len(), 5);
        assert!(list(&root, Path::new("none")).unwrap().is_empty());
        drop(dir);
    }

    #[test]
    fn writes_replace_a_file_or_nothing_and_never_go_through_a_symlink() {
        let (dir, root) = tree();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();

        write(&root, Path::new("secrets/new/db.age"), b"one", 0o644).unwrap();
        write(&root, Path::new("secrets/new/db.age"), b"two", 0o644).unwrap();
        let path = root.join("secrets/new/db.age");
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);

        // A symlink at the file, dangling or not, and one on the way: refused, nothing written.
        symlink(outside.join("planted"), root.join("secrets/link.age")).unwrap();
        symlink(&outside, root.join("out")).unwrap();
        for (file, why) in [
            (
                "secrets/link.age",
                "secrets/link.age is a symlink; troops writes it only onto a regular file or nothing",
            ),
            ("out/db.age", "out is a symlink, not a directory"),
            (
                "secrets/new",
                "secrets/new is a directory; troops writes it only onto a regular file or nothing",
            ),
        ] {
            let e = write(&root, Path::new(file), b"secret", 0o644).unwrap_err().to_string();
            assert!(e.starts_with(why), "{file}: {e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside");
        let names: Vec<_> =
            std::fs::read_dir(root.join("secrets/new")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["db.age"], "a temp file was left behind");

        // Staged, then something else came to its place: refused at the rename, temp removed.
        let staged = stage(&root, Path::new("secrets/late.age"), b"x", 0o644).unwrap();
        symlink(outside.join("late"), root.join("secrets/late.age")).unwrap();
        assert!(staged.commit().unwrap_err().to_string().starts_with("secrets/late.age is a symlink"));
        let left: Vec<_> =
            std::fs::read_dir(root.join("secrets")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "{left:?}"); // new/, link.age, late.age: no temp file
        assert!(!outside.join("late").exists());
        // Dropped without a commit: nothing stays.
        drop(stage(&root, Path::new("secrets/dropped.age"), b"x", 0o644).unwrap());
        assert!(!std::fs::read_dir(root.join("secrets")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("dropped")));
        assert!(write(&root, Path::new("../x"), b"x", 0o644).is_err());
    }
}
