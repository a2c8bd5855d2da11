//! A peer as a run sees it (`$TROOPS_FLEET`, a JSON array of these, written at the run's start):
//! what its status document says, with how old that news is by this node's reckoning. What
//! `[[watch]]` compares (`policy::watch`) is read from the same entries.

use serde::{Deserialize, Serialize};

use crate::model::exports::Exports;
use crate::model::status::State;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub host: String,
    pub roles: Vec<String>,
    pub wave: Option<String>,
    pub state: State,
    pub deployed: Option<String>,
    pub exports: Exports,
    /// Seconds since the peer's document last changed, as this node saw it (`sightings`), else
    /// by the document's own date; `None`: neither is known.
    pub age: Option<u64>,
    /// Older than three of the peer's heartbeats: its news may be gone.
    pub stale: bool,
}
