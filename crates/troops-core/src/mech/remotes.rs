//! What each remote said at the node's last pull cycle (`<state>/remotes.json`): its tip or why
//! it could not be fetched, and why its tip was refused, for `troops status` and the metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mech::fetch::Fetched;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
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
    let remotes = fetched
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
            (f.remote.clone(), state)
        })
        .collect();
    state_file::save(&node.remotes_path(), &Remotes { remotes })
}

/// `<state>/remotes.json`: the last fetch of each remote, by name.
#[derive(Serialize, Deserialize)]
struct Remotes {
    remotes: BTreeMap<String, RemoteState>,
}

impl StateFile for Remotes {
    const WHAT: &'static str = "the remotes' last fetches";
    /// 2: the map in a field of its own, beside the schema (1 was the map itself).
    const SCHEMA: u32 = 2;
    /// More than the states of any number of remotes a node has.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;

    fn upgrade(schema: u64, old: serde_json::Value) -> std::result::Result<Remotes, String> {
        state_file::from_bare_map(schema, old, |remotes| Remotes { remotes })
    }
}

/// The last recorded fetch of each remote.
pub fn load(node: &Node) -> Result<BTreeMap<String, RemoteState>> {
    let remotes: Option<Remotes> = state_file::load(&node.remotes_path())?;
    Ok(remotes.map(|r| r.remotes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_json_as_an_older_troops_wrote_it_a_bare_map_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remotes.json");
        let state = |url: &str| RemoteState {
            url: url.into(),
            fetched_at: "2024-01-01T00:00:00.000Z".into(),
            duration_ms: 5,
            tip: None,
            error: Some("unreachable".into()),
            refused: None,
            probed: false,
        };
        // A remote may be named "schema": in a bare map it is a remote, not a version.
        let old = serde_json::json!({"origin": state("/srv/a.git"), "schema": state("/srv/b.git")});
        std::fs::write(&path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        let remotes: Remotes = state_file::load(&path).unwrap().unwrap();
        assert_eq!(remotes.remotes.keys().collect::<Vec<_>>(), ["origin", "schema"]);
        assert_eq!(remotes.remotes["schema"], state("/srv/b.git"));

        state_file::save(&path, &remotes).unwrap();
        let new: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((&new["schema"], &new["remotes"]), (&serde_json::json!(2), &old));
        let again: Remotes = state_file::load(&path).unwrap().unwrap();
        assert_eq!(again.remotes, remotes.remotes);
    }
}
