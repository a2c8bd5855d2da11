//! The owner's ledger, `<state>/ledger.json`: the deployed commit and the quarantined commits as
//! the node's owner (root) decided them. `refs/troops/deployed` and `refs/troops/bad/*` say the
//! same for git and people, but members of the admin group can write those refs (a member's push
//! run in-process records there) and git's `packed-refs`; so root goes by this file, which only
//! the owner can write (it sits in the state dir, which the group may only read). It is what
//! `scope = "all"` verifies from, what a rollback returns to and what is never run again.
//!
//! A node set up by an older troops has no ledger yet: until the owner first writes one (`troops
//! init` does, under the node lock), it is taken from those refs as they are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The last commit whose run by the owner succeeded.
    pub deployed: Option<String>,
    /// Quarantined commits (full ids) and why.
    #[serde(default)]
    pub quarantined: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub reason: String,
    /// When (RFC 3339).
    pub at: Option<String>,
}

impl StateFile for Ledger {
    const WHAT: &'static str = "a ledger";
    const SCHEMA: u32 = 1;
    /// Far more than any ledger holds (a commit and a reason per quarantined commit).
    const MAX_BYTES: u64 = 16 << 20;
    /// The group may read what root goes by.
    const MODE: u32 = 0o640;
}

/// The ledger at `path`; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Ledger>> {
    state_file::load(path).map_err(|e| {
        Error::Env(format!(
            "{e}; troops wrote it, so the disk or a hand changed it: put it back from a backup, or \
             remove it to take refs/troops/* as the ledger again"
        ))
    })
}

/// Writes the ledger at `path` atomically.
pub fn save(path: &Path, ledger: &Ledger) -> Result<()> {
    state_file::save(path, ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_round_trips_and_a_broken_one_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut ledger = Ledger { deployed: Some("a".repeat(40)), ..Ledger::default() };
        ledger.quarantined.insert("b".repeat(40), Entry { reason: "run 2: failed".into(), at: None });
        save(&path, &ledger).unwrap();
        assert_eq!(load(&path).unwrap(), Some(ledger));
        std::fs::write(&path, "{\"deployed\": 7}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("is not a ledger"), "{e}");
        assert!(e.contains("remove it to take refs/troops/* as the ledger again"), "{e}");
        // What an older troops wrote, without a schema.
        std::fs::write(&path, format!("{{\"deployed\": \"{}\"}}", "c".repeat(40))).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            Some(Ledger { deployed: Some("c".repeat(40)), ..Ledger::default() })
        );
    }
}
