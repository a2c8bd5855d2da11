//! Release directories (`[release]` in the plan): each run checks its commit out into
//! `releases/<run>-<short sha>/`, build steps run there, then one link (`current` in the state dir,
//! or the plan's `link`) is switched to it atomically, so a reader of the link sees the old release
//! or the new one and never a half-written one. A rollback switches the link back to the last good
//! release instead of building again, after putting back every link the failed run switched.
//! Retention keeps `keep` good and `keep_failed` failed releases, and never removes the current
//! one, the last good one, one a link troops switched points at, or one a failed run's links
//! would go back to.
//!
//! What troops knows of its releases is in `<state>/releases.json`, not in run records (which are
//! pruned on their own): each release's commit, whether a run of it succeeded, and the links
//! switched to it with what each pointed at before. `releases/` is the owner's alone (a service
//! runs what it holds): the admin group can neither swap a release nor plant one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::mech::runs::Runs;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;
use crate::model::records::RunStatus;

pub struct Releases {
    /// `<state>/releases`.
    pub dir: PathBuf,
    /// `<state>/releases.json`.
    index: PathBuf,
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

/// `<state>/releases.json`: by release directory name, what troops knows of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Index {
    releases: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// The commit (its full id; the short one for a release an older troops made).
    commit: String,
    /// A run of it succeeded: the one that made it, or a rollback that switched back to it.
    good: bool,
    /// The links switched to it, one entry per link, the latest switch: for the release of a
    /// failed run, what a rollback puts back.
    switched: Vec<Switch>,
}

/// A link switched to a release, and what it pointed at just before (`None`: nothing was there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Switch {
    link: PathBuf,
    from: Option<PathBuf>,
}

impl StateFile for Index {
    const WHAT: &'static str = "an index of releases";
    const SCHEMA: u32 = 1;
    /// Far beyond what an index of kept releases holds.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;
}

impl Releases {
    /// The releases of `node`, switched by `link` (the plan's, else `<state>/current`).
    pub fn new(node: &Node, link: Option<&Path>) -> Releases {
        Releases {
            dir: node.releases_dir(),
            index: node.releases_index_path(),
            link: node.current_link(link),
        }
    }

    /// Where run `run` of `commit` builds its release.
    pub fn path_for(&self, run: u64, commit: Oid) -> PathBuf {
        self.dir.join(format!("{run}-{}", crate::model::names::short(commit)))
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
        self.ours(&self.link)
    }

    /// The release `link` points at, if it is one of ours.
    fn ours(&self, link: &Path) -> Option<PathBuf> {
        let target = std::fs::read_link(link).ok()?;
        (target.parent() == Some(self.dir.as_path())).then_some(target)
    }

    /// Makes `releases/` if it is not there: the owner's alone (0755), whatever the umask.
    pub fn make_dir(&self) -> Result<()> {
        crate::mech::modes::dir(&self.dir, 0o755)?;
        self.secure_dir()
    }

    /// Keeps `releases/` its owner's alone to write (an older troops made it with the group's
    /// umask): a member who could rename a release could put their own in its place. One this
    /// process does not own, or that is no directory, is refused.
    pub fn secure_dir(&self) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::path("reading", &self.dir, e)),
        };
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::Env(format!(
                "{} is not a directory of this user's, so not troops's releases: remove it",
                self.dir.display()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(mode & !0o022))
                .ctx(|| format!("making {} its owner's alone to write", self.dir.display()))?;
        }
        Ok(())
    }

    /// Notes `release`, just checked out from `commit`: not good yet.
    pub fn note_made(&self, release: &Path, commit: Oid, runs: &Runs) -> Result<()> {
        self.change(runs, |index| {
            let entry = Entry { commit: commit.to_string(), ..Entry::default() };
            index.releases.insert(name_of(release), entry);
        })
    }

    /// Notes that a run of `release` succeeded.
    pub fn note_good(&self, release: &Path, runs: &Runs) -> Result<()> {
        self.change(runs, |index| {
            if let Some(entry) = index.releases.get_mut(&name_of(release)) {
                entry.good = true;
            }
        })
    }

    /// The newest release of `commit` whose run succeeded: what a rollback to it switches back to.
    pub fn last_good(&self, commit: Oid, runs: &Runs) -> Result<Option<Release>> {
        let index = self.index(runs)?;
        let short = crate::model::names::short(commit);
        Ok(self.all()?.into_iter().rev().find(|r| {
            index.releases.get(&name_of(&r.path)).is_some_and(|e| e.good && e.commit.starts_with(&short))
        }))
    }

    /// Switches the link to `release` (see [`Releases::switch`]) and notes what it pointed at.
    pub fn switch_to(&self, release: &Path, runs: &Runs) -> Result<()> {
        let from = std::fs::read_link(&self.link).ok();
        self.switch(release)?;
        self.note_switch(release, &self.link, from, runs)
    }

    /// Puts back every link the newest release of `failed` was switched to by its run, where it
    /// still points there: to what it pointed at before, or, where nothing was, removes it.
    /// Returns a line for each, for the run's output. For a rollback, before its own switch.
    pub fn undo(&self, failed: Oid, runs: &Runs) -> Result<Vec<String>> {
        let index = self.index(runs)?;
        let full = failed.to_string();
        let Some(release) = self.all()?.into_iter().rev().find(|r| {
            index.releases.get(&name_of(&r.path)).is_some_and(|e| full.starts_with(e.commit.as_str()))
        }) else {
            return Ok(Vec::new());
        };
        let switched =
            index.releases.get(&name_of(&release.path)).map(|e| e.switched.clone()).unwrap_or_default();
        let mut said = Vec::new();
        for Switch { link, from } in switched {
            if std::fs::read_link(&link).ok().as_deref() != Some(release.path.as_path()) {
                continue;
            }
            let back = Releases { dir: self.dir.clone(), index: self.index.clone(), link: link.clone() };
            let release_dir = self.dir.as_path();
            match from {
                Some(from) if from.parent() == Some(release_dir) && !from.is_dir() => {
                    said.push(format!(
                        "{} stays at {}: {}, where it pointed before, is gone",
                        link.display(),
                        release.path.display(),
                        from.display()
                    ));
                }
                Some(from) => {
                    back.switch(&from)?;
                    if from.parent() == Some(release_dir) {
                        self.note_link(&from, &link, runs)?;
                    }
                    said.push(format!(
                        "{} -> {} (where it pointed before {})",
                        link.display(),
                        from.display(),
                        release.path.display()
                    ));
                }
                None => {
                    std::fs::remove_file(&link).ctx(|| format!("removing {}", link.display()))?;
                    sync_parent(&link)?;
                    said.push(format!(
                        "{} removed (nothing was there before {})",
                        link.display(),
                        release.path.display()
                    ));
                }
            }
        }
        Ok(said)
    }

    /// Points the link at `release`: a new symlink under a temporary name beside the link, renamed
    /// over it (rename(2) is atomic), then the directory synced so the switch survives a crash.
    pub fn switch(&self, release: &Path) -> Result<()> {
        let parent = self.link.parent().unwrap_or(Path::new("/"));
        crate::mech::modes::dir_all(parent, 0o755)?;
        let name = self.link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A name nobody can guess and plant first; removed again if the rename fails.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}.troops-"))
            .make_in(parent, |path| std::os::unix::fs::symlink(release, path))
            .ctx(|| format!("making a link to {} in {}", release.display(), parent.display()))?;
        temp.into_temp_path()
            .persist(&self.link)
            .map_err(|e| Error::path("switching", &self.link, e.error))?;
        sync_parent(&self.link)
    }

    /// Removes old releases: beyond the newest `keep` good ones and the newest `keep_failed` ones
    /// whose run did not succeed, sparing whatever `keep_always` names (the current release, the
    /// last good one, the one just made), every release a link troops switched points at, and
    /// what the links of a failed release would be put back to.
    pub fn prune(&self, keep: usize, keep_failed: usize, runs: &Runs, keep_always: &[&Path]) -> Result<()> {
        let mut index = self.index(runs)?;
        let mut spared: Vec<PathBuf> = keep_always.iter().map(|p| p.to_path_buf()).collect();
        for (name, entry) in &index.releases {
            for switch in &entry.switched {
                let target = self.ours(&switch.link);
                // A failed release a link still points at: a rollback puts the link back there.
                if !entry.good && target == Some(self.dir.join(name)) {
                    spared.extend(switch.from.clone());
                }
                spared.extend(target);
            }
        }
        let (mut good, mut failed) = (0, 0);
        let all = self.all()?;
        for release in all.iter().rev() {
            // A release made before the index was kept counts as good, as its run record did.
            let succeeded = index.releases.get(&name_of(&release.path)).is_none_or(|e| e.good);
            let count = if succeeded { &mut good } else { &mut failed };
            *count += 1;
            let limit = if succeeded { keep } else { keep_failed };
            if *count <= limit || spared.contains(&release.path) {
                continue;
            }
            remove_release(&release.path)?;
        }
        let left: Vec<String> = self.all()?.iter().map(|r| name_of(&r.path)).collect();
        index.releases.retain(|name, _| left.contains(name));
        self.save(&index)
    }

    /// Notes that `link` was switched to `release` from `from`, replacing an earlier switch of it.
    fn note_switch(&self, release: &Path, link: &Path, from: Option<PathBuf>, runs: &Runs) -> Result<()> {
        self.change(runs, |index| {
            let entry = index.releases.entry(name_of(release)).or_default();
            entry.switched.retain(|s| s.link != link);
            entry.switched.push(Switch { link: link.to_owned(), from });
        })
    }

    /// Notes that `link` points at `release` again (a rollback put it back), keeping what its
    /// earlier switch there said.
    fn note_link(&self, release: &Path, link: &Path, runs: &Runs) -> Result<()> {
        self.change(runs, |index| {
            let entry = index.releases.entry(name_of(release)).or_default();
            if !entry.switched.iter().any(|s| s.link == link) {
                entry.switched.push(Switch { link: link.to_owned(), from: None });
            }
        })
    }

    fn change(&self, runs: &Runs, change: impl FnOnce(&mut Index)) -> Result<()> {
        let mut index = self.index(runs)?;
        change(&mut index);
        self.save(&index)
    }

    /// The index; a node whose releases an older troops made has none yet, and it is made from
    /// the run records there still are (a release whose record is gone is not known to be good).
    fn index(&self, runs: &Runs) -> Result<Index> {
        match state_file::load(&self.index)? {
            Some(index) => Ok(index),
            None => {
                let mut index = Index::default();
                let believed = runs.ids()?;
                for release in self.all()? {
                    let Ok(record) = runs.load(release.run) else { continue };
                    if !record.commit.to_string().starts_with(&release.short)
                        || !believed.contains(&release.run)
                    {
                        continue;
                    }
                    let good = record.status == RunStatus::Succeeded;
                    index.releases.insert(
                        name_of(&release.path),
                        Entry { commit: record.commit.to_string(), good, switched: Vec::new() },
                    );
                }
                Ok(index)
            }
        }
    }

    fn save(&self, index: &Index) -> Result<()> {
        state_file::save(&self.index, index)
    }
}

/// The directory name of a release: its key in the index.
fn name_of(release: &Path) -> String {
    release.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Syncs the directory holding `link`, so a switch or removal survives a crash.
fn sync_parent(link: &Path) -> Result<()> {
    let parent = link.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(parent).and_then(|dir| dir.sync_all()).ctx(|| format!("syncing {}", parent.display()))
}

/// Removes a release a step may have left read-only parts in.
fn remove_release(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).ctx(|| format!("pruning the release {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The releases of a node whose state dir is `state`, as `Releases::new` lays them out.
    fn at(state: &Path, link: Option<&Path>) -> Releases {
        let link = link.map_or_else(|| state.join("current"), Path::to_owned);
        Releases { dir: state.join("releases"), index: state.join("releases.json"), link }
    }
    use crate::model::records::RunRecord;

    fn record(id: u64, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, &"c".repeat(40), status)
    }

    #[test]
    fn the_link_is_only_ever_old_or_new() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = at(tmp.path(), None);
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
        let releases = at(tmp.path(), None);
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

    #[test]
    fn a_rollback_puts_back_the_links_the_failed_run_switched_and_retention_spares_what_they_need() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = Runs::new(tmp.path().join("runs"));
        let (a, b) = (tmp.path().join("srv/a/current"), tmp.path().join("srv/b/current"));
        let (via_a, via_b) = (at(tmp.path(), Some(&a)), at(tmp.path(), Some(&b)));
        via_a.make_dir().unwrap();
        let commit = |n: u8| Oid::from_bytes(&[n; 20]).unwrap();
        // Run 1 (good) through b, run 2 (good) through a, run 3 (failed) through b again.
        for (run, releases, good) in [(1u8, &via_b, true), (2, &via_a, true), (3, &via_b, false)] {
            let dir = releases.path_for(u64::from(run), commit(run));
            std::fs::create_dir(&dir).unwrap();
            releases.note_made(&dir, commit(run), &runs).unwrap();
            releases.switch_to(&dir, &runs).unwrap();
            if good {
                releases.note_good(&dir, &runs).unwrap();
            }
        }
        let release = |run: u8| via_a.path_for(u64::from(run), commit(run));
        // keep = 1, keep_failed = 0: only what a link points at, or will again, is left.
        via_a.prune(1, 0, &runs, &[]).unwrap();
        assert!(release(1).is_dir() && release(2).is_dir() && release(3).is_dir());

        let said = via_a.undo(commit(3), &runs).unwrap();
        assert_eq!(std::fs::read_link(&b).unwrap(), release(1), "{said:?}");
        assert_eq!(std::fs::read_link(&a).unwrap(), release(2), "{said:?}");
        assert_eq!(via_a.last_good(commit(1), &runs).unwrap().map(|r| r.path), Some(release(1)));
        assert_eq!(via_a.last_good(commit(3), &runs).unwrap(), None, "a failed release is no good one");
        // Undone, the failed release needs nothing kept for it; b still needs release 1.
        via_a.prune(1, 0, &runs, &[]).unwrap();
        assert!(release(1).is_dir() && release(2).is_dir() && !release(3).exists());

        // A link that was not there before the failed run is removed by the undo.
        let c = tmp.path().join("srv/c/current");
        let via_c = at(tmp.path(), Some(&c));
        let dir = via_c.path_for(4, commit(4));
        std::fs::create_dir(&dir).unwrap();
        via_c.note_made(&dir, commit(4), &runs).unwrap();
        via_c.switch_to(&dir, &runs).unwrap();
        via_c.undo(commit(4), &runs).unwrap();
        assert!(std::fs::symlink_metadata(&c).is_err(), "{} is left", c.display());
    }
}
