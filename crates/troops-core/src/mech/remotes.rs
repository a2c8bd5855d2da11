//! What each remote said at the node's last pull cycle (`<state>/remotes.json`): its tip or why
//! it could not be fetched, and why its tip was refused, for `troops status` and the metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mech::fetch::Fetched;
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::records::now;

/// The last fetch of one remote, as `troops status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteState {
    pub url: String,
    pub fetched_at: String,
    pub duration_ms: u64,
    /// The remote's branch tip, when the fetch worked.
    pub tip: Option<String>,
    pub error: Option<String>,
    /// Why its tip was not taken, if it was not.
    pub refused: Option<String>,
    /// True when its probe said the tip was unchanged, and no fetch ran (`probe`).
    #[serde(default)]
    pub probed: bool,
}

pub fn save(node: &Node, fetched: &[Fetched], refusals: &BTreeMap<&str, String>) -> Result<()> {
    let at = now();
    let states: BTreeMap<&str, RemoteState> = fetched
        .iter()
        .map(|f| {
            let state = RemoteState {
                url: f.url.clone(),
                fetched_at: at.clone(),
                duration_ms: f.duration.as_millis() as u64,
                tip: f.tip.as_ref().ok().copied().flatten().map(|t| t.to_string()),
                error: f.tip.as_ref().err().cloned(),
                refused: refusals.get(f.remote.as_str()).cloned(),
                probed: f.probed,
            };
            (f.remote.as_str(), state)
        })
        .collect();
    let json = serde_json::to_vec_pretty(&states).expect("states serialize");
    crate::mech::atomic::write(&node.state_dir.join("remotes.json"), &json)
}

/// More than the states of any number of remotes a node has.
const MAX_STATES_BYTES: u64 = 16 << 20;

/// The last recorded fetch of each remote.
pub fn load(node: &Node) -> Result<BTreeMap<String, RemoteState>> {
    let path = node.state_dir.join("remotes.json");
    match crate::mech::trust::read_state_file(&path, MAX_STATES_BYTES) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| Error::Env(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::path("reading", &path, e)),
    }
}
