//! What each remote said at the node's last pull cycle (`<state>/remotes.json`): its tip or why
//! it could not be fetched, and why its tip was refused, and whether the node's branch and its
//! remotes have forked; for `troops status`, the status document and the metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::mech::fetch::Fetched;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::records::now;
use crate::model::status::Diverged;

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

/// Records a pull cycle: what each of `fetched` said, with its refusal if any, and the remotes the
/// node's branch at `tip` forked from (`diverged`; none: it has not), since when it first did.
pub fn save(
    node: &Node,
    fetched: &[Fetched],
    refusals: &BTreeMap<&str, String>,
    tip: Option<git2::Oid>,
    diverged: &[String],
) -> Result<()> {
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
    let diverged = match tip {
        Some(tip) if !diverged.is_empty() => {
            let tip = tip.to_string();
            let before = load(node).diverged.filter(|d| d.tip == tip);
            Some(Diverged { remotes: diverged.to_vec(), since: before.map_or_else(now, |d| d.since), tip })
        }
        _ => None,
    };
    state_file::save(&node.remotes_path(), &Remotes { remotes, diverged })
}

/// `<state>/remotes.json`: the last fetch of each remote, by name, and whether the node's branch
/// and its remotes have forked.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Remotes {
    pub remotes: BTreeMap<String, RemoteState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Diverged>,
}

impl StateFile for Remotes {
    const WHAT: &'static str = "the remotes' last fetches";
    /// 2: the map in a field of its own, beside the schema (1 was the map itself).
    const SCHEMA: u32 = 2;
    /// More than the states of any number of remotes a node has.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;
    /// Written every pull cycle, each time whole: after a crash the next cycle writes it anew.
    const DURABILITY: crate::mech::files::Durability = crate::mech::files::Durability::Unsynced;

    fn upgrade(schema: u64, old: serde_json::Value) -> std::result::Result<Remotes, String> {
        state_file::from_bare_map(schema, old, |remotes| Remotes { remotes, diverged: None })
    }
}

/// What the last pull cycle recorded (nothing before the first). A file that cannot be read (cut
/// short by a crash of the machine: it is not synced) is nothing known, said as a warning, until
/// the next cycle writes it anew.
pub fn load(node: &Node) -> Remotes {
    state_file::load(&node.remotes_path()).map(Option::unwrap_or_default).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the remotes' last fetches are unknown until the next pull");
        Remotes::default()
    })
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
