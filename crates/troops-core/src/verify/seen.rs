//! When the node first accepted each SSH-signed commit (`<state>/seen.json`), so that an SSH key's
//! validity window is judged at that time, not at the committer date the signer chose, and a
//! commit accepted while its key was valid still runs later (the run-time check under the lock
//! uses the recorded time, not its own).
//!
//! The rule: a commit's first-seen time is the time of the first verification that accepted it
//! (pre-receive hook, pull, or the run-time check). Refused commits are not recorded. When root
//! reads the file it trusts it only if root owns it: the state dir is shared with the admin group,
//! and a time a group member wrote could backdate a commit into a retired key's window. Writing
//! is best effort; a check that cannot record leaves it to the next, whose later time is stricter
//! for `valid-before`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::Oid;

use crate::error::Result;

const FILE: &str = "seen.json";

/// The first-seen times of a node, and the time of the check under way (`now`).
#[derive(Debug)]
pub struct FirstSeen {
    path: PathBuf,
    /// Commit id to RFC 3339 time.
    times: BTreeMap<String, String>,
    now: SystemTime,
    changed: bool,
}

impl FirstSeen {
    /// The times recorded in `state_dir`; none when the file is missing, unreadable, or (read by
    /// root) not root's.
    pub fn load(state_dir: &Path) -> FirstSeen {
        let path = state_dir.join(FILE);
        let trusted = |meta: &std::fs::Metadata| !nix::unistd::geteuid().is_root() || meta.uid() == 0;
        let times = std::fs::symlink_metadata(&path)
            .ok()
            .filter(|meta| meta.is_file() && trusted(meta))
            .and_then(|_| std::fs::read(&path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FirstSeen { path, times, now: SystemTime::now(), changed: false }
    }

    /// When `commit` was first accepted, or now if it never was.
    pub fn time_of(&self, commit: Oid) -> SystemTime {
        self.times.get(&commit.to_string()).and_then(|t| humantime::parse_rfc3339(t).ok()).unwrap_or(self.now)
    }

    /// Records that `commit` was accepted now, unless it was before.
    pub fn mark(&mut self, commit: Oid) {
        if let std::collections::btree_map::Entry::Vacant(entry) = self.times.entry(commit.to_string()) {
            entry.insert(humantime::format_rfc3339_seconds(self.now).to_string());
            self.changed = true;
        }
    }

    /// Writes the times, if any is new, atomically.
    pub fn save(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&self.times).expect("times serialize");
        crate::atomic::write(&self.path, &json)?;
        self.changed = false;
        Ok(())
    }
}
