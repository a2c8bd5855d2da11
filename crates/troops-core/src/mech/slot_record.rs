//! The disruption slots this node saw and what its run or reboot does about one, kept in
//! `<state>/slots.json`: when it first saw each slot document (its own clock: a lease is measured
//! from that), and the sentence `troops status`, the status document and the metrics say of the
//! slot it waits for or holds. Taking and giving back slots is `node::slots`'.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::node::Node;

/// `<state>/slots.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotFile {
    /// By slot ref: the commit last seen there, and when this node first saw it there.
    pub seen: BTreeMap<String, Sighting>,
    /// What the run under way does about a slot, if anything.
    pub now: Option<SlotNow>,
}

impl StateFile for SlotFile {
    const WHAT: &'static str = "the disruption slots seen";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub commit: String,
    pub first_seen: String,
}

/// What run `run` (or, with `reboot`, a reboot after it) does about a slot of `group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotNow {
    pub run: u64,
    /// For a reboot (`node::reboot`), not for run `run` itself.
    #[serde(default)]
    pub reboot: bool,
    pub group: String,
    /// Since when it waits or holds.
    pub since: String,
    /// It waits: why ("waiting for a disruption slot of fleet (2 at once): held by web-3 since ...,
    /// lease until ...").
    pub waiting: Option<String>,
    /// It holds this slot ("fleet/1", "fleet from the FleetLock server URL").
    pub held: Option<String>,
    /// Its lease ends then, by this node's clock, unless renewed (none from a FleetLock server).
    pub until: Option<String>,
}

impl SlotNow {
    /// What `troops status` and the status document say, e.g. "holds disruption slot fleet/1
    /// since T, lease until U", or the waiting sentence.
    pub fn sentence(&self) -> String {
        match (&self.waiting, &self.held) {
            (Some(why), _) => why.clone(),
            (None, Some(held)) => {
                let until = self.until.as_ref().map_or(String::new(), |u| format!(", lease until {u}"));
                format!("holds disruption slot {held} since {}{until}", self.since)
            }
            (None, None) => format!("about to look for a disruption slot of {}", self.group),
        }
    }
}

/// What the run under way (`run`) waits for or holds, if anything.
pub fn current(node: &Node, run: u64) -> Option<SlotNow> {
    load(node).now.filter(|n| n.run == run && !n.reboot)
}

/// What a reboot waits for or holds, if anything.
pub fn rebooting(node: &Node) -> Option<SlotNow> {
    load(node).now.filter(|n| n.reboot)
}

/// The slots seen, as recorded; none when the file is missing or unreadable (every lease is then
/// measured afresh: later, never sooner). As with the sightings of status refs, root believes only
/// a file root owns: a member of the admin group who could write one could backdate a lease.
pub fn load(node: &Node) -> SlotFile {
    let root = nix::unistd::geteuid().is_root();
    state_file::load_believed(&node.slots_path(), |uid| !root || uid == 0).ok().flatten().unwrap_or_default()
}

pub fn save(node: &Node, file: &SlotFile) {
    if let Err(e) = state_file::save(&node.slots_path(), file) {
        tracing::warn!(error = %e, "the disruption slots seen are not recorded");
    }
}
