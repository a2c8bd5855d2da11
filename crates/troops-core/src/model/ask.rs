//! Who asks for a run: one type, carried unchanged from the CLI, the hook and the daemon's socket
//! to the run's decision (`dispatch`, `schedule`), so a trigger means the same whichever way it came.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Ask {
    /// The daemon's timer or retry timer, a fetch, `troops pull`, a branch moved by hand: run
    /// what is due.
    Tick,
    /// A push moved the branch: run the tip as the push's (a person's: no rollout holds it).
    Push,
    /// A person's `troops deploy` of `rev` (default: the tip), whatever the state; with
    /// `all_steps`, every step of the host's, whatever the commit changed (`policy::paths`).
    Deploy {
        rev: Option<String>,
        #[serde(default)]
        all_steps: bool,
    },
    /// A person's `troops rollback`: quarantine the deployed commit and run `to` (default: the
    /// newest other commit that succeeded here).
    Rollback { to: Option<String> },
    /// The daemon's recheck found drift and the plan says `on_drift = "redeploy"`: run the
    /// deployed commit again, unless something else is due (which runs instead).
    Drift,
    /// The peers' exports this host watches (`[[watch]]`) differ from what the run that deployed
    /// its commit saw, and have settled: run the deployed commit again, unless something else is
    /// due (which runs instead).
    Fleet,
}

impl Ask {
    /// Whether it runs the branch tip as the node's state calls for (and so may share a run with
    /// other such asks), rather than a person's explicit choice.
    pub fn follows_tip(&self) -> bool {
        matches!(self, Ask::Tick | Ask::Push)
    }

    /// Whether a person asked for every step, whatever the commit changed.
    pub fn all_steps(&self) -> bool {
        matches!(self, Ask::Deploy { all_steps: true, .. })
    }
}
