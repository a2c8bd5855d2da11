//! The operators' orders as this node believes them (SPEC "Believed documents"). After every
//! fetch, the freeze documents the remotes offer (`refs/troops/remotes/<remote>/freeze`) are
//! checked against the node's `[verify]` keys, and the newest good one is kept in
//! `<state>/freeze.json`: a believed freeze holds the node until its time even if every remote
//! loses it, and a document older than the one believed (an old freeze replayed after its lift)
//! is refused. Approvals are read when the tip's wave needs them: the distinct trusted keys that
//! signed an approval of the tip for this node's wave. Without trusted keys nothing is believed,
//! and the node says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use crate::mech::repo::NodeRepo;
use crate::mech::state_file::{self, StateFile};
use crate::mech::verify::{self, TrustPolicy};
use crate::model::config::Verify;
use crate::model::error::Result;
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::orders::{Order, FILE};
use crate::model::shown::escape;
use crate::policy::schedule::Held;

use crate::mech::repo::ORDERS_TRACKING as TRACKING;

/// What this node believes of the fleet's freeze, and the documents it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freezes {
    pub believed: Option<Believed>,
    /// The newest refusals first, at most [`MAX_REFUSED`].
    #[serde(default)]
    pub refused: Vec<Refused>,
}

/// A freeze or lift this node believes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Believed {
    pub commit: String,
    pub order: Order,
    /// Whose key signed it (a user id or principal, and the key).
    pub signer: String,
    pub remote: String,
}

/// A freeze document refused, and why; not checked again while the node's trusted keys stay
/// as they were (`trust`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub commit: String,
    pub remote: String,
    pub why: String,
    pub trust: String,
}

const MAX_REFUSED: usize = 8;

impl StateFile for Freezes {
    const WHAT: &'static str = "the fleet's freeze as this node believes it";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 256 * 1024;
    const MODE: u32 = 0o644;
}

impl Believed {
    /// The freeze that stands at `now`, as a hold: "frozen by alice (SHA256:...) until T: why".
    pub fn holds(&self, now: SystemTime) -> Option<Held> {
        match &self.order {
            Order::Freeze { until, reason, .. } if now < until.time() => Some(Held {
                // An operator's words, though signed: escaped, as every reader prints them.
                why: format!(
                    "the fleet is frozen by {} until {until}: {}",
                    escape(&self.signer),
                    escape(reason)
                ),
                until: Some(until.time()),
            }),
            _ => None,
        }
    }
}

fn path(node: &Node) -> PathBuf {
    node.state_dir.join("freeze.json")
}

/// What this node believes of the fleet's freeze. In a root-owned state dir only root's file
/// is believed: a freeze planted by someone else would hold the node's deploys, and an old one
/// would let a replay in.
pub fn load(node: &Node) -> Result<Freezes> {
    let root = nix::unistd::geteuid().is_root();
    Ok(state_file::load_believed(&path(node), |uid| !root || uid == 0)?.unwrap_or_default())
}

/// The freeze that holds the node now, if one does. A file that cannot be read holds it too,
/// saying why, until the next freeze or lift a remote offers is believed.
pub fn frozen(node: &Node) -> Option<Held> {
    match load(node) {
        Ok(freezes) => freezes.believed?.holds(SystemTime::now()),
        Err(e) => Some(Held {
            why: format!("frozen, as far as can be told: {e} (the next freeze or lift believed replaces it)"),
            until: None,
        }),
    }
}

/// Whether `offered` may replace `believed` as the fleet's freeze: it is a freeze or a lift, and
/// made after the one believed. An older document is a replay, refused.
pub fn supersedes(believed: Option<&Order>, offered: &Order) -> std::result::Result<(), String> {
    if let Order::Approve { .. } = offered {
        return Err("it is an approval, not a freeze or a lift".into());
    }
    match believed {
        Some(old) if offered.at().time() <= old.at().time() => Err(format!(
            "it was made at {}, not after the {} believed here (made at {}): an older document replayed is refused",
            offered.at(),
            kind(old),
            old.at()
        )),
        _ => Ok(()),
    }
}

fn kind(order: &Order) -> &'static str {
    match order {
        Order::Freeze { .. } => "freeze",
        Order::Lift { .. } => "lift",
        Order::Approve { .. } => "approval",
    }
}

/// Checks the freeze documents the remotes offer against the node's trusted keys, and keeps the
/// newest good one. What it believed or refused anew, as lines for the pull's output.
pub fn refresh(node: &Node, git: &Repository) -> Result<Vec<String>> {
    let offered = tracked(git, "/freeze");
    if offered.is_empty() {
        return Ok(Vec::new());
    }
    let mut freezes = load(node).unwrap_or_default();
    let stamp = trust_stamp(&node.config.verify);
    let mut policy = None;
    let mut said = Vec::new();
    let mut changed = false;
    for (remote, commit) in offered {
        let id = commit.to_string();
        let known = freezes.believed.as_ref().is_some_and(|b| b.commit == id)
            || freezes.refused.iter().any(|r| r.commit == id && r.trust == stamp);
        if known {
            continue;
        }
        let policy = policy.get_or_insert_with(|| trusted(node));
        let verdict = policy.as_ref().map_err(Clone::clone).and_then(|policy| read(git, policy, commit));
        let verdict = verdict.and_then(|signed| {
            supersedes(freezes.believed.as_ref().map(|b| &b.order), &signed.order).map(|()| signed)
        });
        changed = true;
        match verdict {
            Ok(Signed { order, signer, .. }) => {
                said.push(format!(
                    "troops: remote {remote}: believed the {} {} by {}",
                    kind(&order),
                    short(commit),
                    escape(&signer)
                ));
                freezes.believed = Some(Believed { commit: id, order, signer, remote });
            }
            Err(why) => {
                said.push(format!(
                    "troops: remote {remote}: the freeze document {} is refused: {why}",
                    short(commit)
                ));
                crate::mech::metrics::count_refusal(node, "order");
                freezes.refused.retain(|r| r.commit != id);
                freezes.refused.insert(0, Refused { commit: id, remote, why, trust: stamp.clone() });
                freezes.refused.truncate(MAX_REFUSED);
            }
        }
    }
    if let Some(Ok(policy)) = &policy {
        verify::Verifier::remember(policy);
    }
    if changed {
        state_file::save(&path(node), &freezes)?;
    }
    Ok(said)
}

/// Whether the tip's wave waits for approvals: the plan at `tip` asks this node's wave for N
/// approvals, and fewer distinct trusted keys signed one of `tip` for it.
pub fn awaiting_approval(node: &Node, repo: &NodeRepo, tip: Oid) -> Option<Held> {
    let plan = crate::node::rollout::plan_at(repo, tip)?;
    let rollout = plan.rollout.as_ref()?;
    let place = crate::policy::waves::wave_of(&node.config.hostname(), rollout);
    let need = rollout.waves.get(place.index)?.approvals as usize;
    if need == 0 {
        return None;
    }
    let wave = &place.name;
    let how = format!("troops approve {} --wave {wave}", short(tip));
    let policy = match trusted(node) {
        Ok(policy) => policy,
        Err(why) => {
            return Some(Held {
                why: format!("wave {wave} needs {need} trusted approval(s) of it, and {why}"),
                until: None,
            })
        }
    };
    let mut signers: BTreeMap<String, String> = BTreeMap::new();
    let mut refused: Vec<String> = Vec::new();
    let offered = tracked(&repo.git, &format!("/approve/{tip}/{wave}/"));
    let commits: std::collections::BTreeSet<Oid> = offered.into_iter().map(|(_, c)| c).collect();
    for commit in commits {
        match read(&repo.git, &policy, commit) {
            Ok(Signed { order: Order::Approve { commit: of, wave: to, .. }, signer, key })
                if of == tip.to_string() && to == *wave =>
            {
                signers.insert(key, escape(&signer).into_owned());
            }
            Ok(Signed { .. }) => {
                refused.push(format!("{} approves another commit or wave than its ref says", short(commit)))
            }
            Err(why) => refused.push(why),
        }
    }
    verify::Verifier::remember(&policy);
    if signers.len() >= need {
        return None;
    }
    let mut why =
        format!("wave {wave} waits for {} more trusted approval(s) of it ({how})", need - signers.len());
    if !signers.is_empty() {
        why += &format!("; approved by {}", signers.into_values().collect::<Vec<_>>().join(", "));
    }
    if let Some(first) = refused.first() {
        why += &format!("; {} approval(s) refused, first: {first}", refused.len());
    }
    Some(Held { why, until: None })
}

/// An order that verified, and whose key signed it.
struct Signed {
    order: Order,
    signer: String,
    key: String,
}

/// The order in `commit`, if a key the node trusts signed it; else why not.
fn read(git: &Repository, policy: &TrustPolicy, commit: Oid) -> std::result::Result<Signed, String> {
    let verification = verify::verify_commit(git, policy, commit).map_err(|e| e.to_string())?;
    let (Some(signer), Some(key)) = (verification.signer(), verification.key().map(str::to_owned)) else {
        return Err(format!("commit {} {verification}", short(commit)));
    };
    let unreadable = |e: git2::Error| format!("commit {} cannot be read: {}", short(commit), e.message());
    let tree = git.find_commit(commit).and_then(|c| c.tree()).map_err(unreadable)?;
    let entry = tree.get_name(FILE).ok_or_else(|| format!("commit {} holds no {FILE}", short(commit)))?;
    let (size, _) = git.odb().and_then(|odb| odb.read_header(entry.id())).map_err(unreadable)?;
    if size > crate::model::orders::MAX_BYTES {
        return Err(format!(
            "commit {}: its {FILE} is larger than {} bytes",
            short(commit),
            crate::model::orders::MAX_BYTES
        ));
    }
    let blob = git.find_blob(entry.id()).map_err(unreadable)?;
    let order = Order::parse(blob.content()).map_err(|e| format!("commit {}: {e}", short(commit)))?;
    Ok(Signed { order, signer, key })
}

/// The node's trusted keys for operators' orders, or why there are none.
fn trusted(node: &Node) -> std::result::Result<TrustPolicy, String> {
    let verify = &node.config.verify;
    if verify.allowed_signers.is_none() && !verify.keyring.exists() {
        return Err(format!(
            "this node has no trusted keys ([verify] keyring {} does not exist and no allowed_signers is set), \
             so operators' freezes and approvals cannot be verified and are ignored",
            verify.keyring.display()
        ));
    }
    TrustPolicy::load(verify, &node.seen_path()).map_err(|e| e.to_string())
}

/// What the node's trusted keys are now, in one string that changes when they do: a document
/// refused under other keys is checked again.
fn trust_stamp(verify: &Verify) -> String {
    let of = |path: &Path| match std::fs::metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}.{}", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec())
        }
        Err(_) => format!("{}:none", path.display()),
    };
    let signers = verify.allowed_signers.as_deref().map(of).unwrap_or_default();
    format!("{};{signers}", of(&verify.keyring))
}

/// The remotes' order refs this node fetched whose name ends `<remote>` + `suffix` (or starts so,
/// when `suffix` ends in `/`), with the remote's name.
fn tracked(git: &Repository, suffix: &str) -> Vec<(String, Oid)> {
    let glob = match suffix.ends_with('/') {
        true => format!("{TRACKING}*{suffix}*"),
        false => format!("{TRACKING}*{suffix}"),
    };
    let Ok(refs) = git.references_glob(&glob) else { return Vec::new() };
    refs.flatten()
        .filter_map(|r| {
            let name = r.name()?.strip_prefix(TRACKING)?;
            let remote = name.split('/').next()?.to_owned();
            Some((remote, r.target()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> crate::model::time::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn only_a_newer_freeze_or_lift_supersedes_what_is_believed() {
        let freeze = |made: &str| Order::Freeze {
            until: at("2030-01-01T00:00:00Z"),
            reason: "r".into(),
            by: "a".into(),
            at: at(made),
        };
        let lift = |made: &str| Order::Lift { reason: None, by: "a".into(), at: at(made) };
        let approve = Order::Approve {
            commit: "c".into(),
            wave: "w".into(),
            by: "a".into(),
            at: at("2030-01-01T00:00:00Z"),
        };
        #[rustfmt::skip]
        let cases: [(Option<Order>, Order, Result<(), &str>); 7] = [
            (None, freeze("2026-01-01T00:00:00Z"), Ok(())),
            (None, lift("2026-01-01T00:00:00Z"), Ok(())),
            (Some(freeze("2026-01-01T00:00:00Z")), lift("2026-01-01T00:00:01Z"), Ok(())),
            (Some(lift("2026-01-02T00:00:00Z")), freeze("2026-01-01T00:00:00Z"), Err("an older document replayed is refused")),
            (Some(freeze("2026-01-01T00:00:00Z")), freeze("2026-01-01T00:00:00Z"), Err("not after the freeze")),
            (Some(lift("2026-01-01T00:00:00Z")), freeze("2026-01-03T00:00:00Z"), Ok(())),
            (None, approve, Err("an approval, not a freeze")),
        ];
        for (believed, offered, want) in cases {
            let got = supersedes(believed.as_ref(), &offered);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{believed:?} then {offered:?}"),
                Err(part) => assert!(
                    got.as_ref().unwrap_err().contains(part),
                    "{believed:?} then {offered:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_freeze_holds_until_its_time_and_a_lift_holds_nothing() {
        let believed = |order| Believed {
            commit: "c".into(),
            order,
            signer: "alice (SHA256:x)".into(),
            remote: "origin".into(),
        };
        let freeze = believed(Order::Freeze {
            until: at("2026-12-24T00:00:00Z"),
            reason: "holidays".into(),
            by: "alice".into(),
            at: at("2026-12-01T00:00:00Z"),
        });
        let held = freeze.holds(at("2026-12-23T23:59:59Z").time()).unwrap();
        assert_eq!(
            held.why,
            "the fleet is frozen by alice (SHA256:x) until 2026-12-24T00:00:00.000Z: holidays"
        );
        assert_eq!(held.until, Some(at("2026-12-24T00:00:00Z").time()));
        assert_eq!(freeze.holds(at("2026-12-24T00:00:00Z").time()), None);
        let lift = believed(Order::Lift { reason: None, by: "a".into(), at: at("2026-12-02T00:00:00Z") });
        assert_eq!(lift.holds(at("2026-12-03T00:00:00Z").time()), None);
        // A signer's words reach a terminal escaped, even a trusted one's.
        let sneaky = believed(Order::Freeze {
            until: at("2026-12-24T00:00:00Z"),
            reason: "ok\u{1b}[2J\nfine".into(),
            by: "a".into(),
            at: at("2026-12-01T00:00:00Z"),
        });
        let why = sneaky.holds(at("2026-12-02T00:00:00Z").time()).unwrap().why;
        assert!(!why.chars().any(char::is_control), "{why}");
    }
}
