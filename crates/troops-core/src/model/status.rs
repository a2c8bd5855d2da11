//! A node's status document (`status.json`), as it publishes it at `refs/troops/status/<host>`:
//! built from what is on disk (run records, refs, the rollout hold), so the daemon, `troops
//! status` and `troops fleet` all say the same thing; and reading the fleet's documents back.

use std::time::{Duration, SystemTime};

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use crate::model::error::{Context, Result};
use crate::model::node::Node;
use crate::model::records::{RunRecord, RunStatus, Trigger};

/// Where each node's status chain lives, in the node repo and on the status remote.
pub const REF_PREFIX: &str = "refs/troops/status/";
/// The one file in a status commit's tree.
pub const FILE: &str = "status.json";

/// The largest status document read: a node's is a few KiB, and a hostile one must not cost
/// every other node's memory (its size is read from the object's header, not by inflating it).
const MAX_DOC: usize = 256 * 1024;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub schema: u32,
    pub host: String,
    /// The troops that wrote it.
    pub version: String,
    pub roles: Vec<String>,
    /// The node's wave by the plan at its tip; `None`: that plan has no `[rollout]`.
    pub wave: Option<String>,
    pub tip: Option<String>,
    pub deployed: Option<String>,
    pub state: State,
    /// When `state` began: the run's start (deploying), its end (healthy, failed), the hold's first
    /// verdict (held).
    pub since: Option<String>,
    /// The newest run.
    pub run: Option<RunSummary>,
    /// Why the tip does not run yet, when the rollout holds it.
    pub hold: Option<crate::node::rollout::Hold>,
    /// Commits quarantined here (`refs/troops/bad/<sha>`), and why.
    pub quarantined: Vec<Quarantine>,
    /// The newest run's health checks.
    #[serde(default)]
    pub checks: Vec<crate::model::records::CheckRecord>,
    /// The node's `status_heartbeat`: a document that has not changed for three of these is stale.
    pub heartbeat_seconds: u64,
    pub updated_at: String,
}

/// A node's state, as `troops fleet` shows it and the rollout gate reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No run has ended here yet.
    Idle,
    Deploying,
    Soaking,
    Healthy,
    Failed,
    RolledBack,
    /// The rollout keeps the tip from running (see `hold`).
    Held,
}

/// A commit quarantined on the node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub commit: String,
    pub reason: String,
}

/// The newest run, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: u64,
    pub commit: String,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
}

impl State {
    /// A report that the node's run of a commit went wrong, which holds that commit for later waves.
    pub fn reports_failure(self) -> bool {
        matches!(self, State::Failed | State::RolledBack)
    }

    /// "failed", "rolled back": for sentences.
    pub fn as_verb(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Deploying => "deploying",
            State::Soaking => "soaking",
            State::Healthy => "healthy",
            State::Failed => "failed",
            State::RolledBack => "rolled back",
            State::Held => "held",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_verb())
    }
}

/// A node's state and since when, from its newest run, its deployed commit, its tip and the
/// rollout's hold on it. The one place that maps a node's records to a state.
pub fn state_of(
    last: Option<&RunRecord>,
    deployed: Option<&str>,
    tip: Option<&str>,
    hold: Option<&crate::node::rollout::Hold>,
) -> (State, Option<String>) {
    if let Some(run) = last.filter(|r| matches!(r.status, RunStatus::Running | RunStatus::Interrupted)) {
        // An interrupted run is run again: it is under way, not a verdict on its commit.
        return (State::Deploying, Some(run.started_at.clone()));
    }
    if let Some(run) = last.filter(|r| r.status == RunStatus::Checking) {
        return (State::Soaking, Some(run.started_at.clone()));
    }
    if let Some(hold) =
        hold.filter(|h| Some(h.commit.as_str()) == tip && last.is_none_or(|r| r.commit != h.commit))
    {
        return (State::Held, Some(hold.since.clone()));
    }
    match last {
        None => (State::Idle, None),
        Some(run) if matches!(run.status, RunStatus::Failed | RunStatus::RolledBack) => {
            (State::Failed, run.finished_at.clone())
        }
        // Back on the last good commit after the tip failed here: the tip is what failed.
        Some(run)
            if run.trigger == crate::model::records::Trigger::Rollback
                && run.status == RunStatus::Succeeded =>
        {
            (State::RolledBack, run.finished_at.clone())
        }
        Some(run) if Some(run.commit.as_str()) == deployed => (State::Healthy, run.finished_at.clone()),
        Some(_) => (State::Idle, None),
    }
}

impl StatusDoc {
    /// This node's document now, from disk.
    pub fn build(node: &Node) -> Result<StatusDoc> {
        let repo = node.repo()?;
        let tip = repo.tip()?;
        let deployed = repo.deployed()?.map(|c| c.to_string());
        let host = node.config.hostname();
        let last = node.runs().latest()?;
        let hold = crate::node::rollout::load_hold(node)?;
        let roles: Vec<String> = match node.roles(None) {
            Ok(roles) => roles.into_iter().collect(),
            Err(_) => node.config.roles.clone(),
        };
        let wave = tip
            .and_then(|tip| crate::node::rollout::rollout_at(&repo, tip))
            .map(|rollout| crate::policy::waves::wave_of(&host, &rollout).name);
        let tip = tip.map(|t| t.to_string());
        let (state, since) = state_of(last.as_ref(), deployed.as_deref(), tip.as_deref(), hold.as_ref());
        let quarantined = repo
            .all_quarantined()?
            .into_iter()
            .map(|q| Quarantine { commit: q.commit.to_string(), reason: q.reason })
            .collect();
        let checks = last.as_ref().map(|r| r.checks.clone()).unwrap_or_default();
        Ok(StatusDoc {
            schema: SCHEMA,
            host,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles,
            wave,
            tip,
            deployed,
            state,
            since,
            run: last.map(|r| RunSummary {
                id: r.id,
                commit: r.commit,
                trigger: r.trigger,
                status: r.status,
                started_at: r.started_at,
                finished_at: r.finished_at,
                error: r.error,
            }),
            hold: hold.filter(|_| state == State::Held),
            quarantined,
            checks,
            heartbeat_seconds: node.config.status_heartbeat.as_secs(),
            updated_at: crate::model::records::now(),
        })
    }

    /// The same document but for when it was written: what decides whether to publish anew.
    pub fn same_news(&self, other: &StatusDoc) -> bool {
        StatusDoc { updated_at: String::new(), ..self.clone() }
            == StatusDoc { updated_at: String::new(), ..other.clone() }
    }

    pub fn deployed_oid(&self) -> Option<Oid> {
        self.deployed.as_deref().and_then(|c| Oid::from_str(c).ok())
    }

    /// Why the node reports a failure: the newest run's error, or after a rollback why the tip
    /// was quarantined.
    pub fn failure(&self) -> Option<&str> {
        match self.state {
            State::RolledBack => self
                .quarantined
                .iter()
                .find(|q| Some(&q.commit) == self.tip.as_ref())
                .map(|q| q.reason.as_str()),
            _ => self.run.as_ref().and_then(|run| run.error.as_deref()),
        }
    }

    /// The commit a failure report is about: the newest run's, or after a rollback the tip (the
    /// commit that failed and stays quarantined there).
    pub fn failed_commit(&self) -> Option<Oid> {
        let commit = match self.state {
            State::RolledBack => self.tip.as_ref(),
            _ => self.run.as_ref().map(|r| &r.commit),
        };
        commit.and_then(|c| Oid::from_str(c).ok())
    }

    pub fn updated_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.updated_at.trim_end_matches('Z')).ok()
    }

    /// The node's heartbeat: a document that has not changed for three of these is stale.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds)
    }

    /// Older than three heartbeats at `now` by its own date, or dated more than a heartbeat after
    /// `now` (a clock that far ahead says nothing about how fresh the news is). For reading only
    /// (`troops fleet`): the rollout gate goes by when this node saw the document change.
    pub fn stale(&self, now: SystemTime) -> bool {
        let limit = self.heartbeat().saturating_mul(3);
        self.updated_time().is_none_or(|t| match now.duration_since(t) {
            Ok(age) => age > limit,
            Err(ahead) => ahead.duration() > self.heartbeat(),
        })
    }
}

/// One status ref that could not be read: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub reference: String,
    pub error: String,
}

/// One node's status ref as read: the host its name is for, its commit, and its document or why
/// there is none to believe (too large, not JSON, another host's, a newer schema).
#[derive(Debug, Clone)]
pub struct Read {
    pub host: String,
    pub commit: Option<Oid>,
    pub doc: std::result::Result<StatusDoc, String>,
}

/// The schema this troops writes and reads; a document of a newer one is unreadable here, not
/// half understood.
pub const SCHEMA: u32 = 1;

/// Every status ref in `git`'s `refs/troops/status/*`, each read (sorted by host).
pub fn read_refs(git: &Repository) -> Vec<Read> {
    let mut reads: Vec<Read> = hosts(git).into_iter().map(|(host, _)| read_host(git, &host)).collect();
    reads.sort_by(|a, b| a.host.cmp(&b.host));
    reads
}

/// The hosts that have a status ref in `git`, and what each ref points at: cheap, nothing read.
pub fn hosts(git: &Repository) -> Vec<(String, Option<Oid>)> {
    let Ok(refs) = git.references_glob(&format!("{REF_PREFIX}*")) else { return Vec::new() };
    refs.flatten()
        .filter_map(|r| Some((r.name()?.strip_prefix(REF_PREFIX)?.to_owned(), r.target())))
        .collect()
}

/// The status ref of `host` in `git`, read. Errors quote what they found escaped: a peer's bytes.
pub fn read_host(git: &Repository, host: &str) -> Read {
    let commit = git.find_reference(&format!("{REF_PREFIX}{host}")).and_then(|r| r.peel_to_commit()).ok();
    let doc = match &commit {
        Some(commit) => read_doc(git, commit),
        None => Err("it names no commit here".to_owned()),
    };
    let doc = doc.and_then(|doc| match doc.host == host {
        true => Ok(doc),
        false => Err(format!("it speaks for another host, {:?}", doc.host)),
    });
    let doc = doc.map_err(|e| crate::model::shown::escape(&e).into_owned());
    Read { host: host.to_owned(), commit: commit.map(|c| c.id()), doc }
}

/// The document of status commit `commit`, read only if it is small enough and of a schema known here.
fn read_doc(git: &Repository, commit: &git2::Commit) -> std::result::Result<StatusDoc, String> {
    let entry = commit.tree().map_err(|e| e.message().to_owned())?.get_name(FILE).map(|e| e.id());
    let id = entry.ok_or(format!("no {FILE} in {}", commit.id()))?;
    // The size from the object's header, not by inflating it.
    let (size, _) = git.odb().and_then(|odb| odb.read_header(id)).map_err(|e| e.message().to_owned())?;
    if size > MAX_DOC {
        return Err(format!(
            "{FILE} of {} is {size} bytes, over the {MAX_DOC} a status document may have",
            commit.id()
        ));
    }
    let blob = git.find_blob(id).map_err(|e| e.message().to_owned())?;
    #[derive(Deserialize)]
    struct Schema {
        schema: u32,
    }
    let schema = serde_json::from_slice::<Schema>(blob.content())
        .map_err(|e| format!("{FILE} of {}: {e}", commit.id()))?
        .schema;
    if schema != SCHEMA {
        return Err(format!("{FILE} of {} has schema {schema}; this troops reads {SCHEMA}", commit.id()));
    }
    serde_json::from_slice(blob.content()).map_err(|e| format!("{FILE} of {}: {e}", commit.id()))
}

/// Every node's newest document in `git`'s `refs/troops/status/*`, and the refs that hold none.
pub fn read_all(git: &Repository) -> (Vec<StatusDoc>, Vec<Unreadable>) {
    let (mut docs, mut bad) = (Vec::new(), Vec::new());
    for read in read_refs(git) {
        match read.doc {
            Ok(doc) => docs.push(doc),
            Err(error) => bad.push(Unreadable { reference: format!("{REF_PREFIX}{}", read.host), error }),
        }
    }
    (docs, bad)
}

/// A node's status chain is at most this many commits long: the next document starts a new chain
/// (a root commit), which the publish's force push puts in place of the old one. Readers fetch the
/// newest commit only; the chain is a short history of the node for a person (`git log`).
pub const MAX_CHAIN: usize = 16;

/// Where a node keeps the last status commit it made, in the status repo: fetches never move it
/// (they move `refs/troops/status/*`), so the next document parents on this node's own.
pub const PUBLISHED: &str = "refs/troops/published";

/// Commits `doc` in the status repo `git`, onto this node's last status commit unless that chain
/// is [`MAX_CHAIN`] long already; points [`PUBLISHED`] and the node's status ref at it. Returns the
/// status ref and the commit.
pub fn commit(git: &Repository, doc: &StatusDoc) -> Result<(String, Oid)> {
    let name = format!("{REF_PREFIX}{}", doc.host);
    let json = serde_json::to_vec_pretty(doc).expect("a status doc serializes");
    let write = || -> std::result::Result<Oid, git2::Error> {
        let blob = git.blob(&json)?;
        let mut tree = git.treebuilder(None)?;
        tree.insert(FILE, blob, 0o100644)?;
        let tree = git.find_tree(tree.write()?)?;
        let parent = git
            .refname_to_id(PUBLISHED)
            .ok()
            .and_then(|p| git.find_commit(p).ok())
            .filter(|p| chain_length(p) < MAX_CHAIN);
        let who = git2::Signature::now(&format!("troops on {}", doc.host), "troops@localhost")?;
        let message = format!("{}: {}", doc.host, doc.state);
        let commit = git.commit(None, &who, &who, &message, &tree, &parent.iter().collect::<Vec<_>>())?;
        git.reference(PUBLISHED, commit, true, &message)?;
        git.reference(&name, commit, true, &message)?;
        Ok(commit)
    };
    let commit = write().ctx(|| format!("committing {name} in {}", git.path().display()))?;
    Ok((name, commit))
}

/// How many commits the first-parent chain from `commit` has here, counting at most to `MAX_CHAIN`.
fn chain_length(commit: &git2::Commit) -> usize {
    let mut length = 1;
    let mut at = commit.parent(0).ok();
    while let Some(commit) = at.filter(|_| length < MAX_CHAIN) {
        length += 1;
        at = commit.parent(0).ok();
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::rollout::Hold;

    fn run(commit: &str, status: RunStatus) -> RunRecord {
        RunRecord::for_test(1, commit, status)
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn state_of_as_a_table() {
        let hold = Hold {
            commit: "c2".into(),
            wave: "wave 2 of 2 (later)".into(),
            why: "waiting".into(),
            until: None,
            halted: false,
            since: "held".into(),
        };
        let (ok1, failed1, running2) =
            (run("c1", RunStatus::Succeeded), run("c1", RunStatus::Failed), run("c2", RunStatus::Running));
        let (interrupted, ok2) = (run("c1", RunStatus::Interrupted), run("c2", RunStatus::Succeeded));
        let checking2 = run("c2", RunStatus::Checking);
        let rollback1 = RunRecord {
            trigger: crate::model::records::Trigger::Rollback,
            ..run("c1", RunStatus::Succeeded)
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<&RunRecord>, Option<&str>, Option<&str>, Option<&Hold>, State, Option<&str>)> = vec![
            ("a new node", None, None, None, None, State::Idle, None),
            ("succeeded and deployed", Some(&ok1), Some("c1"), Some("c1"), None, State::Healthy, Some("end")),
            ("failed", Some(&failed1), None, Some("c1"), None, State::Failed, Some("end")),
            ("running", Some(&running2), Some("c1"), Some("c2"), None, State::Deploying, Some("start")),
            ("interrupted: run again, not a verdict", Some(&interrupted), None, Some("c1"), None, State::Deploying, Some("start")),
            ("held on the tip", Some(&ok1), Some("c1"), Some("c2"), Some(&hold), State::Held, Some("held")),
            ("a hold of an older tip is over", Some(&ok1), Some("c1"), Some("c3"), Some(&hold), State::Healthy, Some("end")),
            ("held after the canary failed here too", Some(&failed1), None, Some("c2"), Some(&hold), State::Held, Some("held")),
            ("a run of the held commit by a person ends the hold", Some(&ok2), Some("c2"), Some("c2"), Some(&hold), State::Healthy, Some("end")),
            ("checks and soak under way", Some(&checking2), Some("c1"), Some("c2"), None, State::Soaking, Some("start")),
            ("back on the last good commit", Some(&rollback1), Some("c1"), Some("c2"), None, State::RolledBack, Some("end")),
        ];
        for (case, last, deployed, tip, hold, state, since) in cases {
            assert_eq!(state_of(last, deployed, tip, hold), (state, since.map(str::to_owned)), "{case}");
        }
    }

    #[test]
    fn documents_too_large_unparsable_or_for_another_host_are_set_aside_unread() {
        let dir = tempfile::tempdir().unwrap();
        let git = Repository::init_bare(dir.path()).unwrap();
        let doc = |host: &str| -> StatusDoc {
            serde_json::from_value(serde_json::json!({
                "schema": 1, "host": host, "version": "0.2.0", "roles": [], "wave": null, "tip": null,
                "deployed": null, "state": "idle", "since": null, "run": null, "hold": null,
                "quarantined": [], "heartbeat_seconds": 60, "updated_at": "2026-12-02T06:00:00Z"
            }))
            .unwrap()
        };
        commit(&git, &doc("web-1")).unwrap();
        let (name, _) = commit(&git, &doc("web-2")).unwrap();
        git.reference("refs/troops/status/web-3", git.refname_to_id(&name).unwrap(), true, "").unwrap();
        let put = |host: &str, bytes: &[u8]| {
            let mut tree = git.treebuilder(None).unwrap();
            tree.insert(FILE, git.blob(bytes).unwrap(), 0o100644).unwrap();
            let tree = git.find_tree(tree.write().unwrap()).unwrap();
            let who = git2::Signature::now("hostile", "h@example.com").unwrap();
            let commit = git.commit(None, &who, &who, "x", &tree, &[]).unwrap();
            git.reference(&format!("{REF_PREFIX}{host}"), commit, true, "").unwrap();
        };
        let mut huge = serde_json::to_vec(&doc("web-4")).unwrap();
        huge.extend(std::iter::repeat_n(b' ', MAX_DOC));
        put("web-4", &huge);
        put("web-5", b"{ not json");
        let mut newer = serde_json::to_value(doc("web-6")).unwrap();
        newer["schema"] = 2.into();
        newer["state"] = "a state troops 0.2 never heard of".into();
        put("web-6", newer.to_string().as_bytes());
        let mut hostile = serde_json::to_value(doc("web-7")).unwrap();
        hostile["state"] = "\u{1b}[2J\nweb-9 healthy".into();
        put("web-7", hostile.to_string().as_bytes());
        let (docs, bad) = read_all(&git);
        let hosts: Vec<&str> = docs.iter().map(|d| d.host.as_str()).collect();
        assert_eq!(hosts, ["web-1", "web-2"]);
        let why: Vec<(&str, &str)> = bad.iter().map(|b| (b.reference.as_str(), b.error.as_str())).collect();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(why[0].0.ends_with("web-3") && why[0].1.contains("another host, \"web-2\""), "{why:?}");
        assert!(why[1].0.ends_with("web-4") && why[1].1.contains("over the 262144"), "{why:?}");
        assert!(why[2].0.ends_with("web-5") && why[2].1.contains("status.json of"), "{why:?}");
        assert!(
            why[3].0.ends_with("web-6") && why[3].1.ends_with("has schema 2; this troops reads 1"),
            "{why:?}"
        );
        assert!(why[4].0.ends_with("web-7") && why[4].1.contains("\\u{1b}[2J\\nweb-9"), "{why:?}");
        assert!(!why[4].1.chars().any(char::is_control), "a peer's words, escaped: {why:?}");
    }

    #[test]
    fn a_status_chain_is_re_rooted_when_it_is_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let git = Repository::init_bare(dir.path()).unwrap();
        let mut doc: StatusDoc = serde_json::from_value(serde_json::json!({
            "schema": 1, "host": "web-1", "version": "0.2.0", "roles": [], "wave": null, "tip": null,
            "deployed": null, "state": "idle", "since": null, "run": null, "hold": null,
            "quarantined": [], "heartbeat_seconds": 60, "updated_at": ""
        }))
        .unwrap();
        let mut lengths = Vec::new();
        for n in 0..(MAX_CHAIN * 3) {
            doc.updated_at = format!("beat {n}");
            let (name, id) = commit(&git, &doc).unwrap();
            assert_eq!(git.refname_to_id(&name).unwrap(), id);
            assert_eq!(git.refname_to_id(PUBLISHED).unwrap(), id);
            // A fetch moves the status ref back to what the remote had: the chain goes on from
            // the node's own last commit.
            git.reference(&name, git.refname_to_id(PUBLISHED).unwrap(), true, "").unwrap();
            let mut walk = git.revwalk().unwrap();
            walk.push(id).unwrap();
            lengths.push(walk.count());
        }
        let expected: Vec<usize> = (0..MAX_CHAIN * 3).map(|n| n % MAX_CHAIN + 1).collect();
        assert_eq!(lengths, expected);
    }
}
