//! One pull cycle: fetch every remote, apply the fast-forward rules, move the branch by a
//! compare-and-swap ref update whose reflog names the remote, and record what each remote said
//! (`<state>/remotes.json`, for `troops status`). Running the plan afterwards is the caller's call.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use git2::Oid;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::mech::fetch::{self, Fetched};
use crate::mech::verify;
use crate::model::error::{Context, Error, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::model::records::now;
use crate::policy::fastforward::{self, Decision, Refusal};

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

pub struct Cycle {
    pub fetched: Vec<Fetched>,
    /// Why the fleet's status refs could not be fetched from the `status_remote`, if they could not.
    pub status_error: Option<String>,
    pub decision: Decision,
    /// `(from, to)` when the branch moved.
    pub moved: Option<(Option<Oid>, Oid)>,
}

impl Cycle {
    /// True when there were remotes and none could be fetched (exit 3).
    pub fn all_failed(&self) -> bool {
        !self.fetched.is_empty() && self.fetched.iter().all(|f| f.tip.is_err())
    }
}

/// Fetches and fast-forwards, telling `out` what happened to each remote. Two cycles of one
/// node take turns, so the second sees where the first moved the branch.
pub fn cycle(node: &Node, out: &mut dyn Write) -> Result<Cycle> {
    let _lock = lock_fetches(node, out)?;
    // The fleet's status refs come meanwhile, from the status remote, so a slow one holds up
    // nothing but itself.
    let (fetched, status_error) = std::thread::scope(|scope| {
        let status = node.config.status_remote.as_deref().map(|remote| {
            let deadline = std::time::Instant::now() + node.config.fetch_timeout;
            scope.spawn(move || fetch_status(node, remote, deadline).err())
        });
        let fetched = fetch_unlocked(node, out);
        (fetched, status.and_then(|s| s.join().unwrap_or(Some("the status fetch panicked".into()))))
    });
    if let Some(e) = &status_error {
        let remote = node.config.status_remote.as_deref().unwrap_or_default();
        let _ =
            writeln!(out, "troops: the fleet's status refs could not be fetched from remote {remote}: {e}");
    }
    let mut cycle = advance(node, fetched?, out)?;
    cycle.status_error = status_error;
    Ok(cycle)
}

/// Fetches the fleet's status refs from `remote` into the node's status repo, and records what
/// this node saw of them and when (`sightings`), a failure too: the rollout believes only
/// what it saw itself.
pub fn fetch_status(
    node: &Node,
    remote: &str,
    deadline: std::time::Instant,
) -> std::result::Result<(), String> {
    let status_repo = node.status_repo_path();
    let fetched =
        crate::mech::statusrefs::fetch(&node.repo_path(), &status_repo, remote, &node.ssh_dir(), deadline);
    let git = crate::mech::statusrefs::open(&status_repo).map_err(|e| e.to_string())?;
    let recorded =
        crate::mech::sightings::record(&node.sightings_path(), remote, fetched.as_ref().err(), &git)
            .map_err(|e| format!("recording what the status refs say: {e}"));
    fetched.and(recorded)
}

/// One fetch into the node repo at a time: concurrent fetches fail on each other's ref locks.
/// The lock is a flock on `<state>/fetch.lock`, which only the node's owner can open (0600, in the
/// state dir the admin group may only read): a member, who could open the repo directory and
/// flock that, cannot hold up root's fetches. It goes with the returned handle.
fn lock_fetches(node: &Node, out: &mut dyn Write) -> Result<Flock<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    node.repo()?; // a node that was never initialised fails here, with the reason
    let path = node.fetch_lock_path();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    crate::mech::modes::set_file(&file, &path, 0o600)?;
    let locked = |lock: std::result::Result<Flock<File>, (File, Errno)>| {
        lock.map_err(|(_, e)| e).ctx(|| format!("locking {} for a fetch", path.display()))
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Err((file, Errno::EWOULDBLOCK)) => {
            let _ = writeln!(out, "troops: waiting for another fetch of this node's remotes to end");
            locked(Flock::lock(file, FlockArg::LockExclusive))
        }
        lock => locked(lock),
    }
}

fn fetch_unlocked(node: &Node, out: &mut dyn Write) -> Result<Vec<Fetched>> {
    let repo_path = node.repo_path();
    let probing = crate::mech::probe::Probing::new(node.probes_path(), node.config.probe_trust);
    let fetched = fetch::fetch_all(
        &repo_path,
        &node.config.branch,
        &node.ssh_dir(),
        node.config.fetch_timeout,
        &probing,
    )?;
    if fetched.is_empty() {
        let _ = writeln!(
            out,
            "troops: the node repo has no remotes to fetch; add one with `git --git-dir={} remote add NAME URL`",
            repo_path.display()
        );
    }
    crate::mech::metrics::after_fetch(node, &fetched);
    if fetched.iter().any(|f| f.downloaded) {
        if let Err(e) = fetch::housekeep(&repo_path) {
            let _ = writeln!(out, "troops: {e}");
        }
    }
    Ok(fetched)
}

/// Applies the fast-forward rules to what `fetch` gave (the second half of a cycle), moves the
/// branch, and records what each remote said.
fn advance(node: &Node, fetched: Vec<Fetched>, out: &mut dyn Write) -> Result<Cycle> {
    let repo = node.repo()?;
    let tips: Vec<(String, Oid)> =
        fetched.iter().filter_map(|f| Some((f.remote.clone(), (*f.tip.as_ref().ok()?)?))).collect();
    let local = repo.tip()?;
    let descends = |a, b| repo.git.graph_descendant_of(a, b).unwrap_or(false);
    let (tips, unverified) = verify_tips(node, &repo.git, local, tips, descends)?;
    let mut decision = fastforward::decide(local, &tips, descends);
    decision.refused.extend(unverified);

    let mut refusals: BTreeMap<&str, String> = BTreeMap::new();
    for f in &fetched {
        match &f.tip {
            Err(e) => {
                let _ = writeln!(out, "troops: remote {} ({}) could not be fetched: {e}", f.remote, f.url);
            }
            Ok(None) => {
                let _ = writeln!(out, "troops: remote {} has no branch {}", f.remote, node.config.branch);
            }
            Ok(Some(_)) => {}
        }
        if let Some(news) = &f.probe_news {
            let _ = writeln!(out, "troops: remote {} ({}): {news}", f.remote, f.url);
        }
    }
    let local_name = local.map_or("none".to_owned(), |l| short(&l.to_string()).to_owned());
    for (remote, tip, refusal) in &decision.refused {
        let why = match refusal {
            Refusal::Behind => format!("{} is behind the local tip {local_name}", short(&tip.to_string())),
            Refusal::Diverged => format!("{} does not descend from the local tip {local_name} (force-push or rewritten history); refused", short(&tip.to_string())),
            Refusal::Unverified(why) => format!("{} refused: {why}", short(&tip.to_string())),
        };
        let _ = writeln!(out, "troops: remote {remote}: {why}");
        refusals.insert(remote, why);
    }
    if !decision.conflict.is_empty() {
        let why = format!(
            "remotes {} offer forked histories; nothing moves until they agree",
            decision.conflict.join(", ")
        );
        let _ = writeln!(out, "troops: {why}");
        for remote in &decision.conflict {
            refusals.insert(remote, why.clone());
        }
    }

    let mut moved = None;
    if let Some((to, remotes)) = &decision.advance {
        let message = format!("troops pull: fast-forward from remote {}", remotes.join(", "));
        let name = repo.branch_ref();
        let updated = match local {
            Some(from) => repo.git.reference_matching(&name, *to, true, from, &message),
            None => repo.git.reference(&name, *to, false, &message),
        };
        updated.ctx(|| format!("moving {name} to {to} (did a push move it meanwhile?)"))?;
        repo.settle(&crate::mech::repo::ref_files(&name))?;
        let _ = writeln!(
            out,
            "troops: {} moved {local_name} -> {} from remote {}",
            node.config.branch,
            short(&to.to_string()),
            remotes.join(", ")
        );
        moved = Some((local, *to));
    }
    save_states(node, &fetched, &refusals)?;
    Ok(Cycle { fetched, status_error: None, decision, moved })
}

/// With `require_signed`, takes out of `tips` each one that would move the branch (a descendant
/// of `local`) but whose signature, or with `scope = "all"` that of a commit it would add, is
/// refused; those come back as refusals, also recorded for `troops status`. A tip that cannot be
/// checked is refused too. A missing or bad keyring or allowed signers fails the cycle: nothing moves.
#[allow(clippy::type_complexity)]
fn verify_tips(
    node: &Node,
    git: &git2::Repository,
    local: Option<Oid>,
    tips: Vec<(String, Oid)>,
    descends: impl Fn(Oid, Oid) -> bool,
) -> Result<(Vec<(String, Oid)>, Vec<(String, Oid, Refusal)>)> {
    let Some(policy) = verify::enforced(&node.config.verify, &node.seen_path())? else {
        return Ok((tips, Vec::new()));
    };
    let scope = node.config.verify.scope;
    let mut checked: BTreeMap<Oid, Option<(verify::Refusal, String)>> = BTreeMap::new();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for (remote, tip) in tips {
        let moves = Some(tip) != local && local.is_none_or(|local| descends(tip, local));
        if !moves {
            accepted.push((remote, tip));
            continue;
        }
        let verdict = checked.entry(tip).or_insert_with(|| {
            match verify::check_update(git, &policy, local, tip, scope) {
                Ok(None) => None,
                Ok(Some(refusal)) => {
                    let why = refusal.to_string();
                    Some((refusal, why))
                }
                Err(e) => Some((
                    verify::Refusal {
                        commit: tip,
                        verification: verify::Verification::Bad { reason: e.to_string() },
                    },
                    format!("it could not be verified: {e}"),
                )),
            }
        });
        match verdict {
            None => accepted.push((remote, tip)),
            Some((refusal, why)) => {
                let _ = verify::record_refusal(&node.refused_path(), &format!("remote {remote}"), refusal);
                crate::mech::metrics::count_refusal(node, refusal.verification.kind());
                refused.push((remote, tip, Refusal::Unverified(why.clone())));
            }
        }
    }
    Ok((accepted, refused))
}

fn save_states(node: &Node, fetched: &[Fetched], refusals: &BTreeMap<&str, String>) -> Result<()> {
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
    crate::mech::atomic::write(&node.remotes_path(), &json)
}

/// More than the states of any number of remotes a node has.
const MAX_STATES_BYTES: u64 = 16 << 20;

/// The last recorded fetch of each remote.
pub fn remote_states(node: &Node) -> Result<BTreeMap<String, RemoteState>> {
    let path = node.remotes_path();
    match crate::mech::trust::read_state_file(&path, MAX_STATES_BYTES) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| Error::Env(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::path("reading", &path, e)),
    }
}
