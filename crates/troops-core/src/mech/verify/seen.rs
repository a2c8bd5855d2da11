//! When the node first accepted each SSH-signed commit (`<state>/seen.json`), so that an SSH key's
//! validity window is judged at that time, not at the committer date the signer chose, and a
//! commit accepted while its key was valid still runs later (the run-time check under the lock
//! uses the recorded time, not its own).
//!
//! The rule: a commit's first-seen time is the time of the first verification that accepted it
//! (pre-receive hook, pull, or the run-time check) that could record it. Refused commits are not
//! recorded. When root reads the file it trusts it only if root owns it: the state dir is shared
//! with the admin group, and a time a group member wrote could backdate a commit into a retired
//! key's window. So in a root-owned state dir only root records (a pusher's hook would replace
//! root's file with one root ignores); elsewhere, whoever owns the node does. Writing is best
//! effort; a check that does not record leaves it to the next, whose later time is stricter for
//! `valid-before`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;

/// `<state>/seen.json`: commit id to the RFC 3339 time it was first accepted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Times {
    first_seen: BTreeMap<String, String>,
}

impl StateFile for Times {
    const WHAT: &'static str = "the first-seen times of commits";
    /// 2: the map in a field of its own, beside the schema (1 was the map itself).
    const SCHEMA: u32 = 2;
    /// Some 80 bytes a commit: far more SSH-signed commits than a node accepts in years. A larger
    /// file is not read, and the next commit accepted starts a new one.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;

    fn upgrade(schema: u64, old: serde_json::Value) -> std::result::Result<Times, String> {
        state_file::from_bare_map(schema, old, |first_seen| Times { first_seen })
    }
}

/// The first-seen times of a node, and the time of the check under way (`now`).
#[derive(Debug)]
pub struct FirstSeen {
    path: PathBuf,
    times: Times,
    now: SystemTime,
    changed: bool,
    /// Whether this process may record (see the module doc).
    records: bool,
}

impl FirstSeen {
    /// The times recorded at `path` (`Node::seen_path`); none when the file is missing, (read by
    /// root) not root's, or unreadable (said in the log).
    pub fn load(path: &Path) -> FirstSeen {
        let (path, state_dir) = (path.to_owned(), path.parent().unwrap_or(Path::new(".")));
        let root = nix::unistd::geteuid().is_root();
        let records = root || std::fs::metadata(state_dir).is_ok_and(|meta| meta.uid() != 0);
        let times = state_file::load_believed(&path, |uid| !root || uid == 0).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the first-seen times are ignored: each commit is judged now");
            None
        });
        FirstSeen { path, times: times.unwrap_or_default(), now: SystemTime::now(), changed: false, records }
    }

    /// When `commit` was first accepted, or now if it never was.
    pub fn time_of(&self, commit: Oid) -> SystemTime {
        let time = self.times.first_seen.get(&commit.to_string());
        time.and_then(|t| humantime::parse_rfc3339(t).ok()).unwrap_or(self.now)
    }

    /// Records that `commit` was accepted now, unless it was before.
    pub fn mark(&mut self, commit: Oid) {
        if let std::collections::btree_map::Entry::Vacant(entry) =
            self.times.first_seen.entry(commit.to_string())
        {
            entry.insert(humantime::format_rfc3339_seconds(self.now).to_string());
            self.changed = true;
        }
    }

    /// Writes the times, if any is new and this process records, atomically.
    pub fn save(&mut self) -> Result<()> {
        if !self.changed || !self.records {
            return Ok(());
        }
        state_file::save(&self.path, &self.times)?;
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "seen.json";

    #[test]
    fn a_recorded_time_is_kept_and_an_unknown_commit_is_seen_now() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Oid::from_str(&"a".repeat(40)).unwrap(), Oid::from_str(&"b".repeat(40)).unwrap());
        let mut seen = FirstSeen::load(&dir.path().join(FILE));
        assert_eq!(seen.time_of(a), seen.now);
        seen.mark(a);
        seen.save().unwrap();
        let first = seen.time_of(a);

        let mut later = FirstSeen::load(&dir.path().join(FILE));
        later.now += std::time::Duration::from_secs(3600);
        later.mark(a);
        assert_eq!(later.time_of(a), first, "a second acceptance does not move the first");
        assert_eq!(later.time_of(b), later.now);
    }

    #[test]
    fn seen_json_as_an_older_troops_wrote_it_a_bare_map_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = Oid::from_str(&"a".repeat(40)).unwrap();
        std::fs::write(dir.path().join(FILE), format!("{{\"{a}\": \"2020-01-01T00:00:00Z\"}}")).unwrap();
        let mut seen = FirstSeen::load(&dir.path().join(FILE));
        assert_eq!(seen.time_of(a), humantime::parse_rfc3339("2020-01-01T00:00:00Z").unwrap());
        seen.mark(Oid::from_str(&"b".repeat(40)).unwrap());
        seen.save().unwrap();
        let new: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(new["schema"], 2);
        assert_eq!(new["first_seen"][a.to_string()], "2020-01-01T00:00:00Z");
        assert_eq!(FirstSeen::load(&dir.path().join(FILE)).time_of(a), seen.time_of(a));
    }

    #[test]
    fn root_ignores_times_it_did_not_write() {
        if !troops_testkit::require_root("root's ownership rule") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Oid::from_str(&"a".repeat(40)).unwrap();
        std::fs::write(dir.path().join(FILE), format!("{{\"{a}\": \"2020-01-01T00:00:00Z\"}}")).unwrap();
        let old = humantime::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
        assert_eq!(FirstSeen::load(&dir.path().join(FILE)).time_of(a), old);
        std::os::unix::fs::chown(dir.path().join(FILE), Some(65534), None).unwrap();
        let seen = FirstSeen::load(&dir.path().join(FILE));
        assert_eq!(seen.time_of(a), seen.now);
    }
}
