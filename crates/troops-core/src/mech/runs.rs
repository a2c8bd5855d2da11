//! Run records: `runs/<id>/run.json` and `runs/<id>/output.log`. Ids increase and are never
//! reused (the newest run is never pruned, so the next id follows the largest). Records are
//! replaced atomically; a record left `running` by an owner that died becomes `interrupted`.
//! `runs/` is shared with the admin group (a member's push may run in-process): a process decides
//! only from the records of the node's owner and its own (`trust`), so what a member puts there
//! never makes root's run ids wrap, nor becomes root's last run.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::mech::lock::NodeLock;
use crate::mech::trust::Believer;
use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;
use crate::model::records::{abandon, RunRecord};
use crate::model::time::Timestamp;

impl Node {
    pub fn runs(&self) -> Runs {
        Runs::new(self.runs_dir())
    }
}

/// `record` as it stands: one on record as under way while nobody holds the node lock lost its
/// troops, and is what the next run will make of it (`interrupted`). Every reader that does not
/// hold the lock (status, log, wait, what runs next) sees a record so.
pub fn as_it_stands(node: &Node, mut record: RunRecord) -> RunRecord {
    if record.status.unfinished() && !NodeLock::is_held(&node.lock_path()) {
        abandon(&mut record);
    }
    record
}

/// What `Runs::all` finds.
#[derive(Debug, Default)]
pub struct History {
    pub records: Vec<RunRecord>,
    pub unreadable: Vec<Unreadable>,
    /// Runs recorded by someone this process does not go by (a member of the admin group whose
    /// push ran in-process, seen by root): shown, never decided from.
    pub others: Vec<Other>,
}

/// A run whose `run.json` is there but is not a record; `error` names the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub id: u64,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} is skipped: {}", self.id, self.error)
    }
}

/// A run recorded by another user (see [`History::others`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Other {
    pub id: u64,
    /// The user whose run folder it is.
    pub uid: u32,
}

/// The `runs/` directory of a node.
pub struct Runs {
    dir: PathBuf,
}

/// A record is never larger than this; a `run.json` that is, is no record of ours.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// A name in `runs/` that is a run id, as found there.
struct Slot {
    id: u64,
    /// Whose it is (the owner of the folder, or of whatever else sits at the name).
    uid: u32,
    /// A folder (not a symlink) holding a `run.json` that is a regular file.
    recorded: bool,
}

/// `runs/` as listed once: who this process believes, and every name that is a run id.
struct Listing {
    believer: Believer,
    slots: Vec<Slot>,
}

impl Listing {
    /// Ids of the recorded runs this process goes by, oldest first.
    fn believed(&self) -> Vec<u64> {
        let mut ids: Vec<u64> =
            self.slots.iter().filter(|s| s.recorded && self.believer.believes(s.uid)).map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }
}

impl Runs {
    pub fn new(dir: impl Into<PathBuf>) -> Runs {
        Runs { dir: dir.into() }
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir(id).join("output.log")
    }

    /// Every name in `runs/` that is a run id as troops writes it (`7`, not `007`), and who this
    /// process believes (`trust::Believer`). `None` when there is no `runs/` yet.
    fn listing(&self) -> Result<Option<Listing>> {
        let believer = match Believer::of(&self.dir) {
            Ok(believer) => believer,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::path("reading", &self.dir, e)),
        };
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| Error::path("listing runs in", &self.dir, e))?;
        let slots = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name();
                let id: u64 = name.to_str()?.parse().ok()?;
                if id.to_string() != name.to_str()? {
                    return None;
                }
                // A symlink planted in runs/ is no run, whatever it points to.
                let meta = std::fs::symlink_metadata(e.path()).ok()?;
                let recorded = meta.is_dir()
                    && std::fs::symlink_metadata(e.path().join("run.json")).is_ok_and(|m| m.is_file());
                Some(Slot { id, uid: meta.uid(), recorded })
            })
            .collect();
        Ok(Some(Listing { believer, slots }))
    }

    /// Ids of the recorded runs this process goes by (root's, and its own), oldest first. A
    /// folder without a record (its run died before writing one) does not count, and its id is
    /// taken again; runs that others recorded are left out (see [`Runs::all`]).
    pub fn ids(&self) -> Result<Vec<u64>> {
        Ok(self.listing()?.map(|l| l.believed()).unwrap_or_default())
    }

    /// The record of run `id`, whoever wrote it: read without following a symlink or blocking on
    /// what is no file, and only up to a size no record comes near.
    pub fn load(&self, id: u64) -> Result<RunRecord> {
        let path = self.dir(id).join("run.json");
        let missing = || Error::Input(format!("no run {id} in {}", self.dir.display()));
        match std::fs::symlink_metadata(self.dir(id)) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(Error::Env(format!("{} is not a run folder", self.dir(id).display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(Error::path("reading", &self.dir(id), e)),
        }
        let bytes = crate::mech::files::read(&path, MAX_RECORD_BYTES).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(),
            _ => Error::path("reading", &path, e),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Env(format!("{}: not a run record: {e}", path.display())))
    }

    /// The newest record this process goes by that can be read (one that cannot is skipped, as
    /// in `all`).
    pub fn latest(&self) -> Result<Option<RunRecord>> {
        Ok(self.ids()?.into_iter().rev().find_map(|id| self.load(id).ok()))
    }

    /// The records this process goes by, oldest first, and those of them that cannot be read
    /// (truncated, garbage, empty: skipped, never fatal, and their ids stay taken); and, apart,
    /// the runs others recorded.
    pub fn all(&self) -> Result<History> {
        let mut history = History::default();
        let Some(listing) = self.listing()? else { return Ok(history) };
        for id in listing.believed() {
            match self.load(id) {
                Ok(record) => history.records.push(record),
                Err(e) => history.unreadable.push(Unreadable { id, error: e.to_string() }),
            }
        }
        history.others = listing
            .slots
            .iter()
            .filter(|s| s.recorded && !listing.believer.believes(s.uid))
            .map(|s| Other { id: s.id, uid: s.uid })
            .collect();
        history.others.sort_by_key(|o| o.id);
        Ok(history)
    }

    /// Makes the folder of a new run, fresh, and returns its id. Only under the node lock.
    /// The id follows the newest run this process goes by, passing over names others hold (a
    /// member's run, or a folder planted to make ids wrap), so ids keep increasing whatever the
    /// group puts in `runs/`. This process's own leftover at its name goes first (a folder whose
    /// run died before its record, a symlink), so nothing of the run is written through somebody
    /// else's path. The folder is the owner's, readable by the group, by nobody else (0750,
    /// setgid kept from `runs/`).
    pub fn create(&self, _lock: &NodeLock) -> Result<u64> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        crate::mech::modes::dir_all(&self.dir, 0o750)?;
        let listing =
            self.listing()?.ok_or_else(|| Error::Env(format!("{} vanished", self.dir.display())))?;
        let exhausted = || Error::Env(format!("no run id is left after the runs in {}", self.dir.display()));
        let mut id = match listing.believed().last() {
            Some(last) => last.checked_add(1).ok_or_else(exhausted)?,
            None => 1,
        };
        let taken: std::collections::BTreeMap<u64, &Slot> = listing.slots.iter().map(|s| (s.id, s)).collect();
        while let Some(slot) = taken.get(&id) {
            if listing.believer.is_me(slot.uid) && !slot.recorded {
                break;
            }
            id = id.checked_add(1).ok_or_else(exhausted)?;
        }
        let dir = self.dir(id);
        let removed = match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&dir),
            Ok(_) => std::fs::remove_file(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        removed.ctx(|| format!("removing what was left at {}", dir.display()))?;
        std::fs::DirBuilder::new().mode(0o750).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let setgid = std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o2000).unwrap_or(0);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750 | setgid))
            .ctx(|| format!("making {} private", dir.display()))?;
        Ok(id)
    }

    /// Opens the output log of run `id` to append to, made private (0640), as `files::open`
    /// opens: never through a symlink, only a regular file.
    pub fn open_log(&self, id: u64) -> Result<std::fs::File> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.log_path(id);
        let log = crate::mech::files::open(
            &path,
            std::fs::OpenOptions::new().create(true).append(true).mode(0o640),
        )
        .ctx(|| format!("opening {}", path.display()))?;
        log.set_permissions(std::fs::Permissions::from_mode(0o640))
            .ctx(|| format!("making {} private", path.display()))?;
        Ok(log)
    }

    pub fn save(&self, record: &RunRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("run records serialize");
        crate::mech::files::write(&self.dir(record.id).join("run.json"), &json, 0o640)
    }

    /// Marks this process's own newest record, left `running`, as `interrupted`: under the lock,
    /// no run is in progress, so its owner is gone. Returns the record it changed. A record of
    /// someone else's is theirs to mend (root never writes into a member's run folder).
    pub fn recover(&self, _lock: &NodeLock) -> Result<Option<RunRecord>> {
        let Some(mut record) = self.latest()? else { return Ok(None) };
        let mine = Believer::of(&self.dir)
            .is_ok_and(|b| std::fs::symlink_metadata(self.dir(record.id)).is_ok_and(|m| b.is_me(m.uid())));
        if !record.status.unfinished() || !mine {
            return Ok(None);
        }
        abandon(&mut record);
        record.finished_at = Some(Timestamp::now());
        self.save(&record)?;
        Ok(Some(record))
    }

    /// Deletes all but the newest `keep` of the runs this process goes by, and the runs of others
    /// older than those. `runs/` is sticky: a member of the admin group (running a push
    /// in-process) removes only its own; root removes them all.
    pub fn prune(&self, keep: usize, _lock: &NodeLock) -> Result<()> {
        let Some(listing) = self.listing()? else { return Ok(()) };
        let believed = listing.believed();
        let (old, kept) = believed.split_at(believed.len().saturating_sub(keep));
        let oldest_kept = kept.first().copied().unwrap_or(u64::MAX);
        let root = nix::unistd::geteuid().is_root();
        for slot in &listing.slots {
            let ours = listing.believer.believes(slot.uid);
            let stale = if ours { old.contains(&slot.id) } else { slot.recorded && slot.id < oldest_kept };
            if !stale || !(root || listing.believer.is_me(slot.uid)) {
                continue;
            }
            let dir = self.dir(slot.id);
            std::fs::remove_dir_all(&dir).ctx(|| format!("pruning {}", dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::RunStatus;

    #[test]
    fn ids_are_the_names_troops_writes_and_never_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::new(dir.path().join("runs"));
        let lock = NodeLock::try_acquire(&dir.path().join("lock")).unwrap().unwrap();
        assert_eq!(runs.create(&lock).unwrap(), 1);
        runs.save(&RunRecord::for_test(1, &"a".repeat(40), RunStatus::Succeeded)).unwrap();
        // "007" is no name troops writes: it is not run 7, and not the newest run.
        std::fs::create_dir(dir.path().join("runs/007")).unwrap();
        std::fs::write(dir.path().join("runs/007/run.json"), "{}").unwrap();
        assert_eq!(runs.ids().unwrap(), [1]);
        assert_eq!(runs.create(&lock).unwrap(), 2);
        // A record at the largest id: the next one is an error, never 0.
        let max = RunRecord::for_test(u64::MAX, &"a".repeat(40), RunStatus::Succeeded);
        std::fs::create_dir(runs.dir(u64::MAX)).unwrap();
        runs.save(&max).unwrap();
        let e = runs.create(&lock).unwrap_err().to_string();
        assert!(e.contains("no run id is left"), "{e}");
        assert!(!runs.dir(0).exists());
    }

    #[test]
    fn a_record_whose_commit_or_time_does_not_parse_is_skipped_as_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::new(dir.path().join("runs"));
        let lock = NodeLock::try_acquire(&dir.path().join("lock")).unwrap().unwrap();
        let good = RunRecord::for_test(1, &"a".repeat(40), RunStatus::Succeeded);
        assert_eq!(runs.create(&lock).unwrap(), 1);
        runs.save(&good).unwrap();
        let json = serde_json::to_string(&good).unwrap();
        for (id, bad) in
            [(2, json.replace(&"a".repeat(40), "HEAD")), (3, json.replace("2020-01-01T", "when "))]
        {
            assert_eq!(runs.create(&lock).unwrap(), id);
            std::fs::write(runs.dir(id).join("run.json"), bad).unwrap();
        }
        let history = runs.all().unwrap();
        assert_eq!(history.records, std::slice::from_ref(&good));
        let unreadable: Vec<(u64, &str)> =
            history.unreadable.iter().map(|u| (u.id, u.error.as_str())).collect();
        assert_eq!(unreadable.len(), 2, "{unreadable:?}");
        assert!(
            unreadable[0].1.contains("runs/2/run.json: not a run record")
                && unreadable[0].1.contains("commit id")
        );
        assert!(
            unreadable[1].1.contains("runs/3/run.json: not a run record")
                && unreadable[1].1.contains("RFC 3339")
        );
        assert_eq!(runs.latest().unwrap(), Some(good));
        // Under the lock, the newest readable record is the one recovered from (finished already).
        assert_eq!(runs.recover(&lock).unwrap(), None);
    }
}
