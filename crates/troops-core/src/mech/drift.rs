//! What the daemon's last recheck of the deployed commit found (`<state>/drift.json`, written by
//! `node::drift`): the drift the node stands in, while no run came after it. In a root-owned state
//! dir only root's file is believed: the admin group may write there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::records::RunRecord;

/// What the last recheck found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The run whose result was rechecked: the newest, a success of the deployed commit.
    pub run: u64,
    pub commit: String,
    pub checked_at: String,
    /// What drifted ("check `web` failed: ...", "changed: index.html"); empty: nothing.
    pub found: Vec<String>,
}

impl StateFile for Drift {
    const WHAT: &'static str = "the last recheck";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
    /// The next recheck writes it anew.
    const DURABILITY: crate::mech::files::Durability = crate::mech::files::Durability::Unsynced;
}

/// The drift the node stands in now: what the last recheck found, while it is about the node's
/// newest run (`newest`); none once a run came after it, or when it found nothing.
pub fn current(node: &Node, newest: Option<&RunRecord>) -> Option<Drift> {
    let root = nix::unistd::geteuid().is_root();
    let drift: Drift = state_file::load_believed(&path(node), |uid| !root || uid == 0).ok().flatten()?;
    let newest = newest?;
    (drift.run == newest.id && drift.commit == newest.commit.to_string() && !drift.found.is_empty())
        .then_some(drift)
}

/// Writes what a recheck found.
pub fn save(node: &Node, drift: &Drift) -> Result<()> {
    state_file::save(&path(node), drift)
}

fn path(node: &Node) -> PathBuf {
    node.state_dir.join("drift.json")
}
