//! The file primitives every file troops keeps or reads on a node goes through: files others may
//! have put something at (the admin group's directories, a member's run folder, the operator's
//! clone) and files troops replaces whole (state files, hooks, the config). What must stay true:
//! - a file is opened never through a symlink at its name (`O_NOFOLLOW`) and never waiting on
//!   what is no regular file (`O_NONBLOCK`: a FIFO, a device), and what was opened is checked by
//!   fstat to be a regular file, so no file type someone chose holds troops up;
//! - a read stops at a bound: a larger file is refused, not read;
//! - a write goes to a temp file beside its place, created exclusively (nothing planted at a name
//!   there is followed), with exactly its mode whatever the umask, synced, and renamed over the
//!   target, and the directory is synced: a reader sees the old file or the new one, never half of
//!   either. The rename replaces a symlink at the target itself, never what it points to.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::model::error::{Context, Result};

/// How every file is opened: not through a symlink at its name, not waiting on a FIFO or a
/// device there, and not making a terminal planted there this process's.
const SAFELY: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens `path` as `options` say (to read, to create with a mode, to append), never through a
/// symlink at its name and never waiting on a FIFO or device there; anything but a regular file
/// is refused with `InvalidData`, saying what it is.
pub fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.custom_flags(SAFELY).open(path).map_err(no_symlink)?;
    regular(&file)?;
    Ok(file)
}

/// Opens `name` in the directory `dir` to read, as [`open`] opens.
pub fn open_in(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::from_bits_retain(SAFELY);
    let fd = openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()).map_err(|e| no_symlink(e.into()))?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    regular(&file)?;
    Ok(file)
}

/// `e`, or what it means when `O_NOFOLLOW` met a symlink.
fn no_symlink(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => not_regular(libc::S_IFLNK),
        _ => e,
    }
}

/// Refuses `file` (`InvalidData`, saying what it is) unless fstat, on what was opened, says it is
/// a regular file.
pub fn regular(file: &File) -> io::Result<()> {
    match file.metadata()?.mode() & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        kind => Err(not_regular(kind)),
    }
}

fn not_regular(kind: u32) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}, not a regular file", describe(kind)))
}

/// What the file type bits (`S_IFMT`) of a mode name: "a symlink", "a FIFO".
pub fn describe(kind: u32) -> &'static str {
    match kind {
        libc::S_IFLNK => "a symlink",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFREG => "a regular file",
        _ => "not a regular file",
    }
}

/// All of `file`, refused (`InvalidData`) when it holds more than `max` bytes: no more than one
/// byte past `max` is read.
pub fn read_at_most(file: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes, more than troops reads there"),
        ));
    }
    Ok(bytes)
}

/// The file at `path`, read as [`open`] opens and [`read_at_most`] reads: `NotFound` when there is
/// nothing at `path`, `InvalidData` when what is there is no regular file or more than `max` bytes.
pub fn read(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_at_most(open(path, OpenOptions::new().read(true))?, max)
}

/// Whether a file written must survive a crash of the machine as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced to disk, and its directory too, before the write returns.
    Synced,
    /// An observation the next write makes anew (what the remotes said at the last pull): not
    /// synced, so it costs no disk flush. After a crash of the machine it may be the old file,
    /// or one its reader refuses as unreadable, until the next write.
    Unsynced,
}

/// Replaces the file at `path` with `bytes`, of exactly `mode`, atomically ([`stage`] then
/// [`Staged::commit`], in the directory `path` names), synced.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    replace(path, bytes, mode, Durability::Synced)
}

/// [`write`], as durable as `durability` says.
pub fn replace(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or(path.as_os_str());
    (|| {
        let dir = OwnedFd::from(File::open(dir)?);
        stage_as(dir, name, bytes, mode, durability)?.commit()
    })()
    .ctx(|| format!("writing {}", path.display()))
}

/// A file written in full to a temp file beside its place, not yet in it; the temp file is
/// removed if this is dropped before [`Staged::commit`].
pub struct Staged {
    dir: OwnedFd,
    temp: Option<OsString>,
    name: OsString,
    durability: Durability,
}

/// Writes `bytes` with exactly `mode` to a new temp file in `dir`, beside `name`, and syncs it.
pub fn stage(dir: OwnedFd, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<Staged> {
    stage_as(dir, name, bytes, mode, Durability::Synced)
}

fn stage_as(
    dir: OwnedFd,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<Staged> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut attempt = 0u32;
    let (file, temp) = loop {
        // Created exclusively: a name someone made first only costs another try.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut temp = OsString::from(".");
        temp.push(name);
        temp.push(format!(".{}-{}-{attempt}.tmp", std::process::id(), nanos.subsec_nanos()));
        match openat(Some(dir.as_raw_fd()), temp.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
            // SAFETY: openat just returned this descriptor; nothing else owns it.
            Ok(fd) => break (unsafe { File::from_raw_fd(fd) }, temp),
            Err(Errno::EEXIST) if attempt < 100 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let staged = Staged { dir, temp: Some(temp), name: name.to_owned(), durability };
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    (&file).write_all(bytes)?;
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    Ok(staged)
}

impl Staged {
    /// The directory the file goes to.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Renames the temp file over its place and, if it is to be synced, syncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let temp = self.temp.take().expect("committed once");
        let dir = Some(self.dir.as_raw_fd());
        if let Err(e) = renameat(dir, temp.as_os_str(), dir, self.name.as_os_str()) {
            let _ = unlinkat(dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e.into());
        }
        match self.durability {
            Durability::Synced => nix::unistd::fsync(self.dir.as_raw_fd()).map_err(io::Error::from),
            Durability::Unsynced => Ok(()),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = unlinkat(Some(self.dir.as_raw_fd()), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_fifo_a_symlink_a_directory_or_a_huge_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "{}").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 101]).unwrap();
        // No writer ever opens the FIFO: a blocking open would never return.
        for (path, why) in [
            (&fifo, "a FIFO, not a regular file"),
            (&link, "a symlink, not a regular file"),
            (&dir.path().to_path_buf(), "a directory, not a regular file"),
            (&big, "larger than 100 bytes, more than troops reads there"),
        ] {
            let e = read(path, 100).unwrap_err();
            assert_eq!(
                (e.kind(), e.to_string()),
                (io::ErrorKind::InvalidData, why.into()),
                "{}",
                path.display()
            );
        }
        assert_eq!(read(&real, 100).unwrap(), b"{}");
        assert_eq!(read(&real, 2).unwrap(), b"{}");
        let gone = read(&dir.path().join("gone"), 100).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        // Opened to create or append, the same.
        let e = open(&link, OpenOptions::new().append(true).create(true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(open(&dir.path().join("new"), OpenOptions::new().append(true).create(true)).is_ok());
    }

    #[test]
    fn a_write_replaces_a_planted_symlink_without_following_it_with_exactly_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("run.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        // 0666: what a umask (022 at least, here) would take from a mode given at creation.
        write(&path, b"new", 0o666).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o666);
        write(&path, b"newer", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(names(dir.path()), ["precious", "run.json"], "a temp file was left");

        // Onto a directory: refused, naming the file, and nothing left behind.
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let e = write(&dir.path().join("dir"), b"x", 0o640).unwrap_err().to_string();
        assert!(e.starts_with(&format!("writing {}", dir.path().join("dir").display())), "{e}");
        assert_eq!(names(dir.path()), ["dir", "precious", "run.json"]);
        // Staged, then dropped: nothing stays.
        let staged = stage(OwnedFd::from(File::open(dir.path()).unwrap()), OsStr::new("x"), b"x", 0o600);
        assert_eq!(names(dir.path()).len(), 4);
        drop(staged.unwrap());
        assert_eq!(names(dir.path()), ["dir", "precious", "run.json"]);
    }
}
