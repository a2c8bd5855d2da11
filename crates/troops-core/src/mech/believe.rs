//! Which of the fleet's status documents to believe: the one place every reader (the rollout
//! gate, the sightings, `troops fleet` on a node and in a clone, the fleet page) asks. A status
//! ref is anyone's to write who holds the status remote's write key, so a document counts only
//! when its commit carries an SSH signature (namespace `git`, as `git verify-commit` checks it) by
//! `keys/<host>.pub` of the commit the reader trusts (a node's deployed commit, a clone's HEAD),
//! speaks for the host its ref is named for, and is not older than the newest document of that
//! host already believed here (a ref rewound to an old, genuinely signed document is a replay).
//! Everything else is refused with its [`Reason`], listed and counted, never obeyed.
//!
//! "Older" goes by the document's own `updated_at`: the node signed it, so it is the node's word
//! about itself, and a replay carries the old word. The newest believed per host is remembered in
//! [`Newest`] (`<state>/believed.json` on a node, written by whoever records the sightings, under
//! the same trust rules; `<git-dir>/troops-believed.json` in a clone), and never forgets a host:
//! a ref deleted and then replayed is still a replay.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey};

use crate::mech::state_file::{self, StateFile};
use crate::mech::verify::ssh as sshsig;
use crate::model::shown::escape;
use crate::model::status::{StatusDoc, REF_PREFIX};

/// Why a status document is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its commit has no signature.
    Unsigned,
    /// The signature cannot be read, is for another namespace, or does not verify.
    BadSignature,
    /// Signed by a key other than `keys/<host>.pub` at the trusted commit.
    WrongKey,
    /// The trusted commit has no `keys/<host>.pub` (or there is no trusted commit yet).
    NoKey,
    /// The document speaks for another host than its ref is named for.
    Misnamed,
    /// Not newer than the newest document of its host believed here: a ref set back to a replay.
    Rewound,
    /// No commit, no document, too large, not JSON, a newer schema, no date or one too far ahead.
    Unreadable,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Unsigned,
        Reason::BadSignature,
        Reason::WrongKey,
        Reason::NoKey,
        Reason::Misnamed,
        Reason::Rewound,
        Reason::Unreadable,
    ];

    /// The word for metrics labels and `--json`: `unsigned`, `bad_signature`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad_signature",
            Reason::WrongKey => "wrong_key",
            Reason::NoKey => "no_key",
            Reason::Misnamed => "misnamed",
            Reason::Rewound => "rewound",
            Reason::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A document believed: its commit (what its status ref points at), what it says, and the key
/// that signed it (`SHA256:...`).
#[derive(Debug, Clone)]
pub struct Believed {
    pub commit: Oid,
    pub doc: StatusDoc,
    pub key: String,
}

/// A status ref whose document is not believed, and why. `detail` quotes a peer's bytes escaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The host its ref is named for.
    pub host: String,
    pub reference: String,
    pub commit: Option<String>,
    pub reason: Reason,
    pub detail: String,
}

/// What one reading of the status refs believes, sorted by host.
#[derive(Debug, Clone, Default)]
pub struct Belief {
    pub believed: Vec<Believed>,
    pub refused: Vec<Refused>,
}

impl Belief {
    /// The believed documents alone.
    pub fn docs(&self) -> impl Iterator<Item = &StatusDoc> {
        self.believed.iter().map(|b| &b.doc)
    }

    /// How many documents were refused for each reason (every reason, zeros too).
    pub fn refused_by_reason(&self) -> BTreeMap<Reason, usize> {
        let mut counts: BTreeMap<Reason, usize> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for refused in &self.refused {
            *counts.entry(refused.reason).or_default() += 1;
        }
        counts
    }
}

/// The node keys of the commit a reader trusts: `keys/<host>.pub` of its tree, each read once.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The trusted commit, `None` when the reader trusts none yet (a node that deployed nothing).
    pub commit: Option<Oid>,
    by_host: BTreeMap<String, std::result::Result<PublicKey, String>>,
}

impl Keys {
    /// The keys in `keys/` of `commit` in `git` (a missing or unreadable tree holds none).
    pub fn at(git: &Repository, commit: Option<Oid>) -> Keys {
        let mut by_host = BTreeMap::new();
        let tree = commit
            .and_then(|c| git.find_commit(c).ok())
            .and_then(|c| c.tree().ok())
            .and_then(|t| t.get_name(crate::mech::secrets::KEYS_DIR).map(|e| e.id()))
            .and_then(|id| git.find_tree(id).ok());
        for entry in tree.iter().flat_map(|t| t.iter()) {
            let Some(host) = entry.name().and_then(|n| n.strip_suffix(".pub")) else { continue };
            if entry.kind() != Some(git2::ObjectType::Blob) {
                continue;
            }
            by_host.insert(host.to_owned(), read_key(git, entry.id()));
        }
        Keys { commit, by_host }
    }

    /// These hosts' keys, as if a trusted commit had them: for tests.
    #[cfg(test)]
    pub(crate) fn of_hosts(keys: impl IntoIterator<Item = (String, PublicKey)>) -> Keys {
        Keys { commit: Some(Oid::zero()), by_host: keys.into_iter().map(|(h, k)| (h, Ok(k))).collect() }
    }

    /// `host`'s key, or why there is none to check its documents with.
    fn of(&self, host: &str) -> std::result::Result<&PublicKey, (Reason, String)> {
        let Some(commit) = self.commit else {
            return Err((Reason::NoKey, "this reader trusts no commit of the deploy repo yet".into()));
        };
        let at = crate::model::names::short(commit);
        match self.by_host.get(host) {
            None => Err((Reason::NoKey, format!("the deploy repo has no keys/{}.pub at {at}", escape(host)))),
            Some(Err(e)) => Err((Reason::NoKey, format!("keys/{}.pub at {at} {e}", escape(host)))),
            Some(Ok(key)) => Ok(key),
        }
    }
}

/// The public key in the blob `id` (one OpenSSH line), or why it is none.
fn read_key(git: &Repository, id: Oid) -> std::result::Result<PublicKey, String> {
    let (size, _) = git.odb().and_then(|odb| odb.read_header(id)).map_err(|e| e.message().to_owned())?;
    if size as u64 > crate::mech::secrets::MAX_KEY_FILE {
        return Err(format!("is {size} bytes, too large for a key"));
    }
    let blob = git.find_blob(id).map_err(|e| e.message().to_owned())?;
    let text = std::str::from_utf8(blob.content()).map_err(|_| "is not text".to_owned())?;
    PublicKey::from_openssh(text.trim()).map_err(|e| format!("is no SSH public key ({e})"))
}

/// How far ahead of the reader's clock a document may be dated. One dated later would, once
/// believed, hold back every newer document of its host until then: it is refused instead.
pub const MAX_AHEAD: Duration = Duration::from_secs(300);

/// Which documents of the status refs in `status` to believe at `now`, checked against `keys` and
/// the `newest` documents believed before.
pub fn believe(status: &Repository, keys: &Keys, newest: &Newest, now: SystemTime) -> Belief {
    let mut refs = crate::mech::statusrefs::hosts(status);
    refs.sort();
    let mut belief = Belief::default();
    for (host, target) in refs {
        match check(status, &host, target, keys, newest, now) {
            Ok(believed) => belief.believed.push(believed),
            Err((reason, detail)) => belief.refused.push(Refused {
                reference: format!("{REF_PREFIX}{}", escape(&host)),
                host,
                commit: target.map(|c| c.to_string()),
                reason,
                detail,
            }),
        }
    }
    belief
}

/// The status ref of `host`, at `target`: believed, or why not.
fn check(
    status: &Repository,
    host: &str,
    target: Option<Oid>,
    keys: &Keys,
    newest: &Newest,
    now: SystemTime,
) -> std::result::Result<Believed, (Reason, String)> {
    let unreadable = |e: String| (Reason::Unreadable, escape(&e).into_owned());
    let commit = target
        .and_then(|t| status.find_object(t, None).ok())
        .and_then(|o| o.peel_to_commit().ok())
        .ok_or_else(|| unreadable("it names no commit here".into()))?;
    let (signature, payload) = match status.extract_signature(&commit.id(), Some("gpgsig")) {
        Ok(signed) => signed,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err((Reason::Unsigned, format!("commit {} is not signed", commit.id())))
        }
        Err(e) => return Err(unreadable(e.message().to_owned())),
    };
    let key = keys.of(host)?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    // The commit this reader believed last, by this key: its id is a hash of the signature and
    // what it signs, checked then. Nothing to verify again (a fleet's heartbeats change a few).
    let known =
        newest.hosts.get(host).is_some_and(|s| s.commit == commit.id().to_string() && s.key == fingerprint);
    if !known {
        verify(host, key, &signature, &payload)?;
    }
    let doc = crate::mech::statusrefs::read_doc(status, &commit).map_err(unreadable)?;
    if doc.host != host {
        return Err((Reason::Misnamed, format!("it speaks for another host, \"{}\"", escape(&doc.host))));
    }
    let updated =
        doc.updated_time().ok_or_else(|| unreadable(format!("its date {:?} is no time", doc.updated_at)))?;
    if updated.duration_since(now).is_ok_and(|ahead| ahead > MAX_AHEAD) {
        return Err(unreadable(format!(
            "it is dated {}, more than {} ahead of this reader's clock",
            doc.updated_at,
            humantime::format_duration(MAX_AHEAD)
        )));
    }
    if let Some(why) = rewound(commit.id(), updated, newest.hosts.get(host)) {
        return Err((Reason::Rewound, why));
    }
    Ok(Believed { commit: commit.id(), doc, key: fingerprint })
}

/// Whether the commit `commit` of `status` is signed by `host`'s key in `keys`: the check of every
/// other document a node writes for the fleet (its disruption slots), as of its status.
pub fn signed_by(
    status: &Repository,
    commit: Oid,
    host: &str,
    keys: &Keys,
) -> std::result::Result<(), (Reason, String)> {
    let (signature, payload) = match status.extract_signature(&commit, Some("gpgsig")) {
        Ok(signed) => signed,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err((Reason::Unsigned, format!("commit {commit} is not signed")))
        }
        Err(e) => return Err((Reason::Unreadable, escape(e.message()).into_owned())),
    };
    verify(host, keys.of(host)?, &signature, &payload)
}

/// Whether `signature` (a `gpgsig` header) is `host`'s `key`'s, for namespace `git`, over `payload`.
fn verify(
    host: &str,
    key: &PublicKey,
    signature: &[u8],
    payload: &[u8],
) -> std::result::Result<(), (Reason, String)> {
    let bad = |e: String| (Reason::BadSignature, escape(&e).into_owned());
    let sig = sshsig::read_signature(signature).map_err(bad)?;
    if sig.namespace() != sshsig::NAMESPACE {
        return Err(bad(format!(
            "it was made for namespace {:?}, not {:?}",
            sig.namespace(),
            sshsig::NAMESPACE
        )));
    }
    if sig.public_key() != key.key_data() {
        let signer = PublicKey::from(sig.public_key().clone()).fingerprint(HashAlg::Sha256);
        return Err((
            Reason::WrongKey,
            format!(
                "signed by {signer}, not by keys/{}.pub ({})",
                escape(host),
                key.fingerprint(HashAlg::Sha256)
            ),
        ));
    }
    sshsig::check(key, payload, &sig).map_err(bad)
}

/// Why a document of `commit`, dated `updated` by its node, is older than `newest`, the newest of
/// its host believed here; `None` when it is that one or newer. A document of the same date but
/// another commit is no newer: the node's word cannot be both.
fn rewound(commit: Oid, updated: SystemTime, newest: Option<&Seen>) -> Option<String> {
    let newest = newest?;
    if newest.commit == commit.to_string() {
        return None;
    }
    let believed = humantime::parse_rfc3339_weak(newest.updated_at.trim_end_matches('Z')).ok()?;
    (updated <= believed).then(|| {
        format!(
            "it is dated {}, not newer than {} of {}, believed here before: the ref was set back",
            humantime::format_rfc3339_millis(updated),
            newest.updated_at,
            crate::model::names::short(&newest.commit)
        )
    })
}

/// The newest document believed of each host, and what the last reading refused (for the metric).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Newest {
    pub hosts: BTreeMap<String, Seen>,
    /// How many documents the last recorded reading refused, by reason.
    #[serde(default)]
    pub refused: BTreeMap<Reason, usize>,
}

/// One host's newest believed document: its commit, its date as it says, and the key it was
/// verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub commit: String,
    pub updated_at: String,
    pub key: String,
}

impl StateFile for Newest {
    const WHAT: &'static str = "the newest status documents believed";
    const SCHEMA: u32 = 1;
    /// A hundred bytes a host: far more hosts than a fleet has.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;
}

impl Newest {
    /// What is remembered at `path`; none when the file is missing, unreadable (logged), or (read
    /// by root) not root's: a member of the admin group could otherwise make root forget, and a
    /// replay pass. As with the sightings, anyone else goes by what is there.
    pub fn load(path: &Path) -> Newest {
        let root = nix::unistd::geteuid().is_root();
        match state_file::load_believed(path, |uid| !root || uid == 0) {
            Ok(newest) => newest.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "the newest believed status documents are forgotten");
                Newest::default()
            }
        }
    }

    /// This with `belief` taken in: each believed document is its host's newest now.
    pub fn with(&self, belief: &Belief) -> Newest {
        let mut next = self.clone();
        for believed in &belief.believed {
            let seen = Seen {
                commit: believed.commit.to_string(),
                updated_at: believed.doc.updated_at.clone(),
                key: believed.key.clone(),
            };
            next.hosts.insert(believed.doc.host.clone(), seen);
        }
        next.refused = belief.refused_by_reason().into_iter().filter(|(_, n)| *n > 0).collect();
        next
    }
}

/// Remembers `belief` in the file at `path` when it says something new, if this process may
/// record there: in a state dir of root's, only root does (see [`Newest::load`]).
pub fn remember(path: &Path, belief: &Belief) -> std::result::Result<(), String> {
    let state_dir = path.parent().unwrap_or(Path::new("."));
    let me = nix::unistd::geteuid().as_raw();
    if std::fs::metadata(state_dir).is_ok_and(|meta| meta.uid() != me) {
        return Ok(());
    }
    let old = Newest::load(path);
    let next = old.with(belief);
    if next == old {
        return Ok(());
    }
    state_file::save(path, &next).map_err(|e| e.to_string())
}

/// What `node` believes of the status refs in `status` (its status repo), by the keys of the
/// commit it trusts: the one it deployed, else its branch tip (which holds only what the node
/// accepted); and the newest documents it believed before.
pub fn on_node(node: &crate::model::node::Node, status: &Repository) -> Belief {
    believe(status, &node_keys(node), &Newest::load(&node.believed_path()), SystemTime::now())
}

/// The hosts' keys `node` checks the fleet's documents with: `keys/` of the commit it trusts, the
/// one it deployed, else its branch tip (which holds only what the node accepted).
pub fn node_keys(node: &crate::model::node::Node) -> Keys {
    let repo = node.repo().ok();
    let trusted = repo.as_ref().and_then(|r| r.deployed().ok().flatten().or_else(|| r.tip().ok().flatten()));
    match &repo {
        Some(repo) => Keys::at(&repo.git, trusted),
        None => Keys { commit: None, by_host: BTreeMap::new() },
    }
}

#[cfg(test)]
mod tests;
