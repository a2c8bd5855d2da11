//! Release directories (`[release]` in the plan): each run checks its commit out into
//! `releases/<run>-<short sha>/`, build steps run there, then one link (`current` in the state dir,
//! or the plan's `link`) is switched to it atomically, so a reader of the link sees the old release
//! or the new one and never a half-written one. A rollback switches the link back to the last good
//! release instead of building again. Retention keeps `keep` good and `keep_failed` failed
//! releases, and never removes the current one or the last good one.

use std::path::{Path, PathBuf};

use git2::Oid;

use crate::error::{Context, Error, Result};
use crate::runs::{RunStatus, Runs};

pub struct Releases {
    /// `<state>/releases`.
    pub dir: PathBuf,
    /// The link switched to each release.
    pub link: PathBuf,
}

/// One release directory: the run that made it and its commit's short hash, from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub path: PathBuf,
    pub run: u64,
    pub short: String,
}

impl Releases {
    pub fn new(state_dir: &Path, link: Option<&Path>) -> Releases {
        Releases {
            dir: state_dir.join("releases"),
            link: link.map_or_else(|| state_dir.join("current"), Path::to_owned),
        }
    }

    /// Where run `run` of `commit` builds its release.
    pub fn path_for(&self, run: u64, commit: Oid) -> PathBuf {
        self.dir.join(format!("{run}-{}", crate::deploy::short(&commit.to_string())))
    }

    /// Every release directory, oldest first. Entries that are not one (a stray file, a symlink
    /// planted there) are left alone and not listed.
    pub fn all(&self) -> Result<Vec<Release>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::path("listing releases in", &self.dir, e)),
        };
        let mut all: Vec<Release> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (run, short) = name.split_once('-')?;
                Some(Release { path: e.path(), run: run.parse().ok()?, short: short.to_owned() })
            })
            .collect();
        all.sort_by_key(|r| r.run);
        Ok(all)
    }

    /// The release the link points at, if it points at one of ours.
    pub fn current(&self) -> Option<PathBuf> {
        let target = std::fs::read_link(&self.link).ok()?;
        (target.parent() == Some(self.dir.as_path())).then_some(target)
    }

    /// The newest release of `commit` whose run succeeded: what a rollback to it switches back to.
    pub fn last_good(&self, commit: Oid, runs: &Runs) -> Result<Option<Release>> {
        let short = crate::deploy::short(&commit.to_string()).to_owned();
        Ok(self.all()?.into_iter().rev().find(|r| {
            r.short == short && runs.load(r.run).is_ok_and(|record| record.status == RunStatus::Succeeded)
        }))
    }

    /// Points the link at `release`: a new symlink under a temporary name beside the link, renamed
    /// over it (rename(2) is atomic), then the directory synced so the switch survives a crash.
    pub fn switch(&self, release: &Path) -> Result<()> {
        let parent = self.link.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        let name = self.link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A name nobody can guess and plant first; removed again if the rename fails.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}.troops-"))
            .make_in(parent, |path| std::os::unix::fs::symlink(release, path))
            .ctx(|| format!("making a link to {} in {}", release.display(), parent.display()))?;
        temp.into_temp_path()
            .persist(&self.link)
            .map_err(|e| Error::path("switching", &self.link, e.error))?;
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .ctx(|| format!("syncing {}", parent.display()))
    }

    /// Removes old releases: beyond the newest `keep` good ones and the newest `keep_failed` ones
    /// whose run did not succeed, sparing whatever `keep_always` names (the current release, the
    /// last good one, the one just made). A release whose run record is gone counts as good.
    pub fn prune(&self, keep: usize, keep_failed: usize, runs: &Runs, keep_always: &[&Path]) -> Result<()> {
        let (mut good, mut failed) = (0, 0);
        for release in self.all()?.into_iter().rev() {
            let succeeded = runs.load(release.run).map_or(true, |r| r.status == RunStatus::Succeeded);
            let count = if succeeded { &mut good } else { &mut failed };
            *count += 1;
            let limit = if succeeded { keep } else { keep_failed };
            if *count <= limit || keep_always.contains(&release.path.as_path()) {
                continue;
            }
            remove_release(&release.path)?;
        }
        Ok(())
    }
}

/// Removes a release a step may have left read-only parts in.
fn remove_release(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).ctx(|| format!("pruning the release {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::RunRecord;

    fn record(id: u64, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, &"c".repeat(40), status)
    }

    #[test]
    fn the_link_is_only_ever_old_or_new() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = Releases::new(tmp.path(), None);
        let (a, b) = (releases.dir.join("1-aaaa"), releases.dir.join("2-bbbb"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        releases.switch(&a).unwrap();
        assert_eq!(releases.current(), Some(a.clone()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (link, stop, a, b) = (releases.link.clone(), stop.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let target = std::fs::read_link(&link).expect("the link is always there");
                    assert!(target == a || target == b, "{}", target.display());
                    seen += 1;
                }
                seen
            })
        };
        for i in 0..300 {
            releases.switch(if i % 2 == 0 { &b } else { &a }).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        let leftovers: Vec<_> =
            std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "only releases/ and current: {leftovers:?}");
    }

    #[test]
    fn retention_keeps_good_and_failed_apart_and_never_the_current_or_last_good() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = Runs::new(tmp.path().join("runs"));
        let releases = Releases::new(tmp.path(), None);
        let statuses = [
            (1, RunStatus::Succeeded),
            (2, RunStatus::Failed),
            (3, RunStatus::Succeeded),
            (4, RunStatus::RolledBack),
            (5, RunStatus::Succeeded),
            (6, RunStatus::Failed),
            (7, RunStatus::Succeeded),
        ];
        for (id, status) in statuses {
            std::fs::create_dir_all(runs.dir(id)).unwrap();
            runs.save(&record(id, status)).unwrap();
            std::fs::create_dir_all(releases.dir.join(format!("{id}-cccccccccccc"))).unwrap();
        }
        let current = releases.dir.join("1-cccccccccccc");
        releases.prune(2, 1, &runs, &[&current]).unwrap();
        let left: Vec<u64> = releases.all().unwrap().iter().map(|r| r.run).collect();
        assert_eq!(left, vec![1, 5, 6, 7]);
    }
}
