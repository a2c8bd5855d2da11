//! A person's pause of the node (`troops pause`, `troops resume`), kept in `<state>/pause.json` so
//! that it outlives restarts: while it stands, nothing automatic runs a commit (`schedule` holds
//! pulls, retries and corrective runs; a person's push or deploy, and a rollback, still run).
//! In a root-owned state dir only root's file is believed, as for every file root decides from:
//! a pause someone else put there would hold the node's deploys.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::time::Timestamp;

/// A pause: who asked, why, since when and until when (`None`: until `troops resume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub reason: Option<String>,
    pub since: Timestamp,
    pub until: Option<Timestamp>,
}

impl StateFile for Pause {
    const WHAT: &'static str = "the node's pause";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 64 * 1024;
    const MODE: u32 = 0o644;
}

impl Pause {
    /// Whether it holds the node at `now`.
    pub fn stands(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until.time())
    }

    /// "paused by alice since T until U: kernel upgrade".
    pub fn sentence(&self) -> String {
        let until = self.until.map_or(" until troops resume".to_owned(), |u| format!(" until {u}"));
        let reason = self.reason.as_deref().map_or(String::new(), |r| format!(": {r}"));
        format!("paused by {} since {}{until}{reason}", self.by, self.since)
    }
}

fn path(node: &Node) -> std::path::PathBuf {
    node.state_dir.join("pause.json")
}

/// The pause that stands now, if one does. A file that cannot be read holds the node: a pause
/// a person asked for is never lost to a bad file (its error says which).
pub fn current(node: &Node) -> Result<Option<Pause>> {
    let root = nix::unistd::geteuid().is_root();
    let pause: Option<Pause> = state_file::load_believed(&path(node), |uid| !root || uid == 0)?;
    Ok(pause.filter(|p| p.stands(SystemTime::now())))
}

/// Pauses the node (replacing a pause that stands).
pub fn pause(node: &Node, pause: &Pause) -> Result<()> {
    state_file::save(&path(node), pause)
}

/// Ends the pause; the one that stood, if one did.
pub fn resume(node: &Node) -> Result<Option<Pause>> {
    let was = current(node).unwrap_or(None);
    match std::fs::remove_file(path(node)) {
        Ok(()) => Ok(was),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::path("removing", &path(node), e)),
    }
}
