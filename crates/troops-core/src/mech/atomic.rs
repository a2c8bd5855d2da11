//! Atomic replacement of state files: write a temporary sibling, fsync it, rename it over the
//! target, fsync the directory. A reader sees the old file or the new one, never half of either.
//! The temporary file has a random name and is created exclusively, so nothing planted in the
//! directory (a symlink at a guessable name) is followed; the rename replaces a symlink at the
//! target itself, never what it points to.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::model::error::{Context, Result};

/// Writes a state file: readable by its owner and group (the admin group), by nobody else.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_mode(path, bytes, 0o640)
}

/// Writes `path` with exactly `mode`, whatever the umask.
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    (|| {
        let mut tmp =
            tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        // On error the temporary file is removed when dropped.
        tmp.persist(path).map_err(|e| e.error)?;
        File::open(dir)?.sync_all()
    })()
    .ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_a_planted_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("run.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "a temporary file was left");
    }
}
