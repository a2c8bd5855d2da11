//! The node's reboot, kept in `<state>/reboot.json` so that it outlives the reboot itself: begun
//! (a slot taken, the `pre_reboot` steps under way or done, the reboot command run) until the
//! checks after the boot passed, then ended, with how. `troops status` shows it; the first
//! trigger after the boot finishes it (`node::reboot`). Which boot a reboot began in is the
//! kernel's boot id, so the node can tell a reboot from a restart of troops.

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::time::Timestamp;

/// A reboot: begun, and maybe ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reboot {
    /// The run the host stood on, and its commit (whose plan said `[reboot]`).
    pub run: u64,
    pub commit: String,
    /// Why the host needed it ("/run/reboot-required exists").
    pub needed: String,
    pub begun_at: Timestamp,
    /// The disruption slot it holds ("fleet/1").
    pub slot: String,
    /// The kernel's boot id when it began, if it can be read.
    pub boot_id: Option<String>,
    /// When the reboot command ran: before, the `pre_reboot` steps were under way.
    pub command_at: Option<Timestamp>,
    /// Why the reboot itself did not go (a pre_reboot step failed, troops was stopped during
    /// them, the reboot command failed, the host did not go down): it ends badly once checked.
    #[serde(default)]
    pub did_not_go: Option<String>,
    /// Why the checks after the boot failed, the last time they ran: the slot stays held, and
    /// every trigger checks again.
    pub checks_failed: Option<String>,
    /// When and how it ended; `None`: under way (the node is `rebooting`).
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub at: Timestamp,
    /// Whether the host rebooted and its checks passed after, and what happened, in a sentence.
    pub ok: bool,
    pub how: String,
}

impl StateFile for Reboot {
    const WHAT: &'static str = "the node's reboot";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 64 * 1024;
    const MODE: u32 = 0o644;
}

impl Reboot {
    /// What `troops status` says of it: "begun T (why), slot S; the reboot command ran at T2", or
    /// how it ended.
    pub fn sentence(&self) -> String {
        if let Some(ended) = &self.ended {
            return format!("last at {}: {}", self.begun_at, ended.how);
        }
        let then = match (&self.command_at, &self.checks_failed) {
            (_, Some(failed)) => format!("; the checks after the boot failed: {failed}"),
            (Some(at), None) => format!("; the reboot command ran at {at}"),
            (None, None) => "; pre_reboot steps under way".to_owned(),
        };
        format!("begun {} ({}), holding disruption slot {}{then}", self.begun_at, self.needed, self.slot)
    }
}

/// The reboot on record, if any. As for every file root decides from, root believes only a file
/// root owns: one put there by someone else would send the node through a slot and its checks.
pub fn load(node: &Node) -> Result<Option<Reboot>> {
    let root = nix::unistd::geteuid().is_root();
    state_file::load_believed(&node.reboot_path(), |uid| !root || uid == 0)
}

/// What a record that cannot be read means, said after the error.
pub const UNREADABLE: &str =
    "it may be a reboot under way: once the host is checked, remove the file, and reboots go on";

/// The reboot under way, if one is (begun, not ended); none when the record cannot be read (the
/// look for a new reboot says so, and begins none).
pub fn under_way(node: &Node) -> Option<Reboot> {
    load(node).ok().flatten().filter(|r| r.ended.is_none())
}

pub fn save(node: &Node, reboot: &Reboot) -> Result<()> {
    state_file::save(&node.reboot_path(), reboot)
}

/// The kernel's id for this boot, which changes with every boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned())
}
