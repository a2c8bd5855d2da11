//! What this node has seen of the fleet's status refs, and when, by its own clock
//! (`<state>/sightings.json`): the rollout gate's only source of time. A peer's document says when
//! it was written and since when its node is healthy, but those are the peer's words: a backdated
//! `since` would skip the soak, and a date in the future would stay fresh for ever. So the gate
//! measures a soak from when this node first saw a node healthy on a commit, and freshness from
//! when it last saw a node's ref change; and it knows whether the last fetch of the status refs
//! worked at all.
//!
//! Recorded after every fetch of the status refs, by the process that fetched, under the status
//! repo's lock. As with first-seen commits (`verify/seen`), in a root-owned state dir only root
//! records and root believes only a file root owns: the state dir is shared with the admin group,
//! and a time a member wrote could backdate a report.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::mech::believe::Belief;
use crate::mech::state_file::{self, StateFile};
use crate::model::status::State;

impl StateFile for Sightings {
    const WHAT: &'static str = "the sightings of the fleet's status refs";
    const SCHEMA: u32 = 1;
    /// A few hundred bytes a host: far more hosts than a fleet has.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sightings {
    /// The last fetch of the status refs: from which remote, and why it failed if it did.
    pub fetch: Option<LastFetch>,
    /// By host: what its status ref held when this node last looked.
    pub hosts: BTreeMap<String, Sighting>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFetch {
    pub remote: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The commit the host's status ref pointed at.
    pub commit: String,
    /// When this node first saw the ref there.
    pub changed: String,
    /// The commit the host reports healthy on, and since when this node has seen it so.
    pub healthy: Option<Healthy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthy {
    pub on: String,
    pub since: String,
}

impl Sightings {
    /// The sightings recorded at `path` (`Node::sightings_path`); none when the file is missing,
    /// (read by root) not root's, or unreadable (said in the log): every soak and heartbeat is
    /// then measured afresh.
    pub fn load(path: &Path) -> Sightings {
        let root = nix::unistd::geteuid().is_root();
        match state_file::load_believed(path, |uid| !root || uid == 0) {
            Ok(sightings) => sightings.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "the sightings are ignored: every report is seen afresh");
                Sightings::default()
            }
        }
    }

    /// Takes in the believed documents of the status refs (`believe`) as they are `now`: a ref at
    /// a new commit is a change seen now; a host reporting healthy on the commit it reported
    /// healthy on before keeps its time; a ref that is gone or no longer believed is forgotten.
    pub fn observe(&mut self, belief: &Belief, now: SystemTime) {
        let stamp = time(now);
        let mut hosts = BTreeMap::new();
        for believed in &belief.believed {
            let (host, commit) = (believed.doc.host.clone(), believed.commit.to_string());
            let old = self.hosts.remove(&host);
            let sighting = match old {
                Some(old) if old.commit == commit => old,
                old => {
                    let doc = &believed.doc;
                    let on = doc.deployed.clone().filter(|_| doc.state == State::Healthy);
                    let healthy = on.map(|on| match old.and_then(|o| o.healthy).filter(|h| h.on == on) {
                        Some(kept) => kept,
                        None => Healthy { on, since: stamp.clone() },
                    });
                    Sighting { commit, changed: stamp.clone(), healthy }
                }
            };
            hosts.insert(host, sighting);
        }
        self.hosts = hosts;
    }

    /// When this node saw the status ref of `host` move to `commit`, if that is where it last saw it.
    pub fn changed(&self, host: &str, commit: git2::Oid) -> Option<SystemTime> {
        let sighting = self.hosts.get(host).filter(|s| s.commit == commit.to_string())?;
        parse(&sighting.changed)
    }

    /// When this node last saw the status ref of `host` move, wherever it moved.
    pub fn last_changed(&self, host: &str) -> Option<SystemTime> {
        parse(&self.hosts.get(host)?.changed)
    }

    /// Since when this node has seen `host` (its status ref at `commit`) healthy on `on`.
    pub fn healthy_since(&self, host: &str, commit: git2::Oid, on: git2::Oid) -> Option<SystemTime> {
        let sighting = self.hosts.get(host).filter(|s| s.commit == commit.to_string())?;
        let healthy = sighting.healthy.as_ref().filter(|h| h.on == on.to_string())?;
        parse(&healthy.since)
    }
}

/// Records the fetch of the status refs from `remote` that just ended (with `error` if it failed)
/// and, if it worked, what the believed documents say now. Written only when it says something
/// new, and only by whoever may record (see the module doc).
pub fn record(
    path: &Path,
    remote: &str,
    error: Option<&String>,
    belief: &Belief,
) -> std::result::Result<(), String> {
    let root = nix::unistd::geteuid().is_root();
    let state_dir = path.parent().unwrap_or(Path::new("."));
    if !root && std::fs::metadata(state_dir).is_ok_and(|meta| meta.uid() == 0) {
        return Ok(());
    }
    let mut sightings = Sightings::load(path);
    let before = sightings.clone();
    sightings.fetch = Some(LastFetch { remote: remote.to_owned(), error: error.cloned() });
    if error.is_none() {
        sightings.observe(belief, SystemTime::now());
    }
    if sightings == before {
        return Ok(());
    }
    state_file::save(path, &sightings).map_err(|e| e.to_string())
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn parse(stamp: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(stamp).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "sightings.json";
    use std::time::Duration;

    /// The believed documents, by host (what `believe` would give): `put` sets one.
    #[derive(Default)]
    struct Refs(BTreeMap<String, crate::mech::believe::Believed>);

    impl Refs {
        /// `host`'s ref now at a commit holding `json`; returns that commit.
        fn put(&mut self, host: &str, json: &serde_json::Value) -> git2::Oid {
            let commit = git2::Oid::hash_object(git2::ObjectType::Blob, json.to_string().as_bytes()).unwrap();
            let doc = serde_json::from_value(json.clone()).unwrap();
            let key = String::new();
            self.0.insert(host.to_owned(), crate::mech::believe::Believed { commit, doc, key });
            commit
        }

        fn belief(&self) -> Belief {
            Belief { believed: self.0.values().cloned().collect(), refused: Vec::new() }
        }
    }

    fn doc(host: &str, state: &str, deployed: &str, since: &str) -> serde_json::Value {
        serde_json::json!({
            "schema": 1, "host": host, "version": "0", "roles": [], "wave": null, "tip": deployed,
            "deployed": deployed, "state": state, "since": since, "run": null, "hold": null,
            "quarantined": [], "heartbeat_seconds": 60, "updated_at": since
        })
    }

    #[test]
    fn times_are_this_nodes_not_the_documents() {
        let mut refs = Refs::default();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = |s: u64| t0 + Duration::from_secs(s);
        let oid = |s: &str| git2::Oid::from_str(s).unwrap();

        // Healthy since 2001 by its own word: since this node saw it, t0, by this node's.
        let first = refs.put("web-1", &doc("web-1", "healthy", &a, "2001-01-01T00:00:00Z"));
        let mut seen = Sightings::default();
        seen.observe(&refs.belief(), t0);
        assert_eq!(seen.changed("web-1", first), Some(t0));
        assert_eq!(seen.healthy_since("web-1", first, oid(&a)), Some(t0));
        assert_eq!(seen.healthy_since("web-1", first, oid(&b)), None, "healthy on a, not b");

        // A heartbeat (a new commit, healthy on the same commit) is a change; the soak goes on.
        let mut next = doc("web-1", "healthy", &a, "2001-01-01T00:00:00Z");
        next["updated_at"] = "2001-01-01T01:00:00Z".into();
        let beat = refs.put("web-1", &next);
        seen.observe(&refs.belief(), later(10));
        assert_eq!(seen.changed("web-1", beat), Some(later(10)));
        assert_eq!(seen.changed("web-1", first), None, "the ref is no longer there");
        assert_eq!(seen.healthy_since("web-1", beat, oid(&a)), Some(t0));

        // Nothing new: nothing changes, however late.
        seen.observe(&refs.belief(), later(99));
        assert_eq!(seen.changed("web-1", beat), Some(later(10)));

        // Deploying b, then healthy on it: a new soak, from when this node saw it.
        refs.put("web-1", &doc("web-1", "deploying", &a, "2099-01-01T00:00:00Z"));
        seen.observe(&refs.belief(), later(100));
        let on_b = refs.put("web-1", &doc("web-1", "healthy", &b, "2001-01-01T00:00:00Z"));
        seen.observe(&refs.belief(), later(200));
        assert_eq!(seen.healthy_since("web-1", on_b, oid(&b)), Some(later(200)));

        // A host no longer believed (its ref gone, or refused) is forgotten: believed again, its
        // soak starts afresh.
        let web2 = refs.put("web-2", &doc("web-2", "healthy", &a, "2001-01-01T00:00:00Z"));
        seen.observe(&refs.belief(), later(300));
        assert_eq!(seen.healthy_since("web-2", web2, oid(&a)), Some(later(300)));
        let mut without = refs.belief();
        without.believed.retain(|b| b.doc.host != "web-2");
        seen.observe(&without, later(400));
        assert!(!seen.hosts.contains_key("web-2"));
        seen.observe(&refs.belief(), later(500));
        assert_eq!(seen.healthy_since("web-2", web2, oid(&a)), Some(later(500)));
    }

    #[test]
    fn a_fetch_is_recorded_and_only_news_is_written() {
        let state = tempfile::tempdir().unwrap();
        let mut refs = Refs::default();
        refs.put("web-1", &doc("web-1", "healthy", &"a".repeat(40), "2001-01-01T00:00:00Z"));
        record(&state.path().join(FILE), "status", None, &refs.belief()).unwrap();
        let path = state.path().join(FILE);
        // Each write is a new file renamed into place: a new inode.
        let written = std::fs::metadata(&path).unwrap().ino();
        let seen = Sightings::load(&state.path().join(FILE));
        assert_eq!(seen.fetch, Some(LastFetch { remote: "status".into(), error: None }));
        assert_eq!(seen.hosts.len(), 1);

        record(&state.path().join(FILE), "status", None, &refs.belief()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), written, "nothing new, no write");

        let refused = Some(&"connection refused".to_owned());
        record(&state.path().join(FILE), "status", refused, &Belief::default()).unwrap();
        let seen = Sightings::load(&state.path().join(FILE));
        assert_eq!(seen.fetch.unwrap().error.as_deref(), Some("connection refused"));
        assert_eq!(seen.hosts.len(), 1, "a failed fetch forgets nothing");
    }

    #[test]
    fn only_a_file_root_wrote_itself_is_believed() {
        let state = tempfile::tempdir().unwrap();
        let forged = r#"{"fetch": {"remote": "status", "error": null}, "hosts": {"web-1": {"commit": "aa", "changed": "2001-01-01T00:00:00Z", "healthy": {"on": "bb", "since": "2001-01-01T00:00:00Z"}}}}"#;
        let path = state.path().join(FILE);
        std::fs::write(&path, forged).unwrap();
        assert_eq!(Sightings::load(&state.path().join(FILE)).hosts.len(), 1, "its owner's own file");
        // A symlink to a file with old times in it is no record, whoever owns either.
        let elsewhere = state.path().join("elsewhere.json");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(Sightings::load(&state.path().join(FILE)), Sightings::default());
        std::fs::remove_file(&path).unwrap();
        // Root believes no file another user wrote: a member of the admin group could backdate.
        // (Anyone else believes its own: it is the only one who records there.)
        std::fs::rename(&elsewhere, &path).unwrap();
        match nix::unistd::geteuid().is_root() {
            true => {
                std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
                assert_eq!(Sightings::load(&state.path().join(FILE)), Sightings::default());
            }
            false => assert_eq!(Sightings::load(&state.path().join(FILE)).hosts.len(), 1),
        }
    }
}
