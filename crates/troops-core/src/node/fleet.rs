//! What this node knows of its peers, on the run path: their documents (read through [`peers`]
//! alone, so that one place decides which are believed), the `$TROOPS_FLEET` file a run's steps
//! and checks read, and the `[[watch]]`es of the deployed commit's plan: what the run that
//! deployed it saw (`<state>/watched.json`, written when a run succeeds), what this node finds
//! after each fetch of the status refs (`<state>/watch-observed.json`, for the settle time, so a
//! cron `troops pull` settles as the daemon does), and `policy::watch`'s verdict on the two.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::mech::sightings::Sightings;
use crate::mech::state_file::{self, StateFile};
use crate::model::error::Result;
use crate::model::fleet::Peer;
use crate::model::node::Node;
use crate::model::plan::watch::Watch;
use crate::model::status::StatusDoc;
use crate::model::time::Timestamp;
use crate::policy::schedule::FleetChanged;
use crate::policy::watch::{self, Observed, Verdict, Watched};

/// The documents of this node's peers (every host but itself) in its status repo, as the last
/// fetch left them and as `believe` believes them (signed by the host's key in the deployed
/// commit, not rewound): the one place the run path reads them.
pub fn peers(node: &Node) -> Vec<StatusDoc> {
    let Ok(git) = git2::Repository::open_bare(node.status_repo_path()) else { return Vec::new() };
    let me = node.config.hostname();
    let belief = crate::mech::believe::on_node(node, &git);
    belief.believed.into_iter().map(|b| b.doc).filter(|doc| doc.host != me).collect()
}

/// The peers as a run sees them `now`: age from when this node last saw each one's status ref
/// move (its own clock: a peer's date is its word), else from the document's date; stale after
/// three of the peer's heartbeats.
pub fn snapshot(node: &Node, now: SystemTime) -> Vec<Peer> {
    let sightings = Sightings::load(&node.sightings_path());
    peers(node)
        .into_iter()
        .map(|doc| {
            let changed = sightings.last_changed(&doc.host).or_else(|| doc.updated_time());
            let age = changed.map(|t| now.duration_since(t).unwrap_or_default());
            let stale = match age {
                Some(age) => age > doc.heartbeat().saturating_mul(3),
                None => true,
            };
            Peer {
                host: doc.host,
                roles: doc.roles,
                wave: doc.wave,
                state: doc.state,
                deployed: doc.deployed,
                exports: doc.exports,
                age: age.map(|a| a.as_secs()),
                stale,
            }
        })
        .collect()
}

/// Writes `peers` as `$TROOPS_FLEET` at `path`, readable by the steps.
pub fn write_snapshot(path: &Path, peers: &[Peer]) -> Result<()> {
    let json = serde_json::to_vec_pretty(peers).expect("peers serialize");
    crate::mech::files::replace(path, &json, 0o644, crate::mech::files::Durability::Unsynced)
}

/// What the run that deployed the commit saw of the values its plan watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub run: u64,
    pub values: BTreeSet<Watched>,
}

impl StateFile for Seen {
    const WHAT: &'static str = "the watched exports the deployed run saw";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 64 << 20;
    const MODE: u32 = 0o640;
}

/// What this node last found of the watched values after a fetch, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ObservedFile {
    values: BTreeSet<Watched>,
    since: Timestamp,
}

impl StateFile for ObservedFile {
    const WHAT: &'static str = "the watched exports last found";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 64 << 20;
    const MODE: u32 = 0o640;
    /// The next fetch finds them anew.
    const DURABILITY: crate::mech::files::Durability = crate::mech::files::Durability::Unsynced;
}

fn seen_path(node: &Node) -> std::path::PathBuf {
    node.state_dir.join("watched.json")
}

fn observed_path(node: &Node) -> std::path::PathBuf {
    node.state_dir.join("watch-observed.json")
}

/// What a run of a commit whose plan has `watches` (for a host with `roles`) sees among `peers`,
/// and how that differs from what the deployed run saw (for its record).
pub fn inputs(node: &Node, watches: &[&Watch], peers: &[Peer]) -> (BTreeSet<Watched>, Vec<String>) {
    let values = watch::watched(watches, peers);
    let seen = load_seen(node).values;
    let changes = watch::changes(&seen, &values);
    (values, changes)
}

/// After run `run` succeeded, having seen `values`: what later changes are measured against.
pub fn note_seen(node: &Node, run: u64, values: BTreeSet<Watched>) -> Result<()> {
    state_file::save(&seen_path(node), &Seen { run, values })
}

/// What the deployed run saw; nothing when no run recorded it (nothing watched, or an older troops).
fn load_seen(node: &Node) -> Seen {
    state_file::load(&seen_path(node)).ok().flatten().unwrap_or_default()
}

/// The watches of the deployed commit's plan that apply to this host, if anything is deployed.
fn deployed_watches(node: &Node) -> Option<Vec<Watch>> {
    let repo = node.repo().ok()?;
    let deployed = repo.deployed().ok()??;
    let plan = crate::node::rollout::plan_at(&repo, deployed)?;
    let roles = crate::model::roles::resolve(&node.config.hostname(), &node.config.roles, Some(&plan));
    let applying: Vec<Watch> = watch::applying(&plan.watches, &roles).into_iter().cloned().collect();
    (!applying.is_empty()).then_some(applying)
}

/// The watches' verdict now, and what it observes: `None` when the deployed commit's plan
/// watches nothing for this host.
fn verdict_now(node: &Node, now: SystemTime) -> Option<(Verdict, Observed)> {
    let watches = deployed_watches(node)?;
    let watches: Vec<&Watch> = watches.iter().collect();
    let current = watch::watched(&watches, &snapshot(node, now));
    let observed = state_file::load::<ObservedFile>(&observed_path(node))
        .ok()
        .flatten()
        .map(|o| Observed { values: o.values, since: o.since.time() });
    let settle = watch::settle(&watches);
    Some(watch::verdict(&load_seen(node).values, observed.as_ref(), current, now, settle))
}

/// After a fetch of the status refs (the daemon's pull cycle, `troops pull`): what the watches
/// call for, keeping what was found for the next look. `None`: nothing is watched here.
pub fn look(node: &Node) -> Option<Verdict> {
    let (verdict, observed) = verdict_now(node, SystemTime::now())?;
    let file = ObservedFile { values: observed.values, since: Timestamp::from(observed.since) };
    let old = state_file::load::<ObservedFile>(&observed_path(node)).ok().flatten();
    if old.as_ref() != Some(&file) {
        if let Err(e) = state_file::save(&observed_path(node), &file) {
            tracing::warn!(error = %e, "the watched exports found are not kept; the settle time starts over");
        }
    }
    Some(verdict)
}

/// For `schedule` (`Ask::Fleet`): the changes, when they are due; reads, writes nothing.
pub fn changed(node: &Node) -> Option<FleetChanged> {
    match verdict_now(node, SystemTime::now())?.0 {
        Verdict::Due { changes } => Some(FleetChanged { changes }),
        _ => None,
    }
}

/// For `troops status`: what the watches say now, in a sentence; `None` when nothing is watched.
pub fn describe(node: &Node) -> Option<String> {
    let seen = load_seen(node);
    let (verdict, _) = verdict_now(node, SystemTime::now())?;
    let n = seen.values.len();
    Some(match verdict {
        Verdict::AsSeen => format!("{n} watched value(s), as run {} saw them", seen.run),
        Verdict::Settling { until, changes } => format!(
            "changed since run {} ({}); runs again after the settle, at {}",
            seen.run,
            changes.join("; "),
            Timestamp::from(until)
        ),
        Verdict::Due { changes } => {
            format!("changed since run {} ({}); runs again now", seen.run, changes.join("; "))
        }
    })
}
