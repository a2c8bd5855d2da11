//! One pull cycle: fetch every remote, apply the fast-forward rules, move the branch by a
//! compare-and-swap ref update whose reflog names the remote, and record what each remote said
//! (`mech::remotes`, for `troops status`). Running the plan afterwards is the caller's call.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use git2::Oid;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::mech::fetch::{self, Fetched};
use crate::mech::verify;
use crate::model::error::{Context, Result};
use crate::model::names::short;
use crate::model::node::Node;
use crate::policy::fastforward::{self, Advance, Decision, Refusal, Refused, RemoteTip};

pub struct Cycle {
    pub fetched: Vec<Fetched>,
    /// Why the fleet's status refs could not be fetched from the `status_remote`, if they could not.
    pub status_error: Option<String>,
    pub decision: Decision,
    /// Where the branch moved, if it did.
    pub moved: Option<Moved>,
    /// What the deployed commit's `[[watch]]`es call for, as the status refs now say; `None`:
    /// nothing is watched here.
    pub fleet: Option<crate::policy::watch::Verdict>,
}

/// The branch moved from a commit (or from nothing yet) to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub from: Option<Oid>,
    pub to: Oid,
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
    let (fetched, status) = std::thread::scope(|scope| {
        let status = node.config.status_remote.as_deref().map(|remote| {
            let deadline = std::time::Instant::now() + node.config.fetch_timeout;
            scope.spawn(move || (remote, fetch_status_refs(node, remote, deadline)))
        });
        let fetched = fetch_unlocked(node, out);
        let status = status.map(|s| s.join().unwrap_or(("", Err("the status fetch panicked".into()))));
        (fetched, status)
    });
    let advanced = fetched.and_then(|fetched| advance(node, fetched, out));
    // Recorded once the branch moved: a node that had deployed nothing believes its peers by the
    // keys of its new tip.
    let status_error =
        status.and_then(|(remote, fetched)| record_status(node, remote, fetched).fetched.err());
    if let Some(e) = &status_error {
        let remote = node.config.status_remote.as_deref().unwrap_or_default();
        let _ =
            writeln!(out, "troops: the fleet's status refs could not be fetched from remote {remote}: {e}");
    }
    let mut cycle = advanced?;
    cycle.status_error = status_error;
    // Without a status remote there is nothing to watch: a poll then reads no plan for it.
    if node.config.status_remote.is_some() {
        cycle.fleet = crate::node::fleet::look(node);
    }
    crate::node::state::write_textfile(node);
    Ok(cycle)
}

/// How a fetch of the status refs went, and what the node believes of them after it.
pub struct StatusRead {
    /// Why the fetch failed or could not be recorded, if so.
    pub fetched: std::result::Result<(), String>,
    pub belief: crate::mech::believe::Belief,
}

/// Fetches the fleet's status refs from `remote` into the node's status repo, and records what
/// this node believes of them and when it saw them (`believe`, `sightings`), a failure too: the
/// rollout believes only what it saw itself.
pub fn fetch_status(node: &Node, remote: &str, deadline: std::time::Instant) -> StatusRead {
    record_status(node, remote, fetch_status_refs(node, remote, deadline))
}

/// Fetches the fleet's status refs from `remote` into the node's status repo.
fn fetch_status_refs(
    node: &Node,
    remote: &str,
    deadline: std::time::Instant,
) -> std::result::Result<(), String> {
    crate::mech::statusrefs::fetch(
        &node.repo_path(),
        &node.status_repo_path(),
        remote,
        &node.config.hostname(),
        &node.ssh_dir(),
        deadline,
    )
}

/// Records how the fetch of the status refs from `remote` went (`fetched`) and, if it worked,
/// which documents this node believes now and when it saw them change.
fn record_status(node: &Node, remote: &str, fetched: std::result::Result<(), String>) -> StatusRead {
    let git = match crate::mech::statusrefs::open(&node.status_repo_path()) {
        Ok(git) => git,
        Err(e) => return StatusRead { fetched: Err(e.to_string()), belief: Default::default() },
    };
    let belief = crate::mech::believe::on_node(node, &git);
    let recorded =
        crate::mech::sightings::record(&node.sightings_path(), remote, fetched.as_ref().err(), &belief)
            .and_then(|()| match fetched.is_ok() {
                true => crate::mech::believe::remember(&node.believed_path(), &belief),
                false => Ok(()),
            })
            .map_err(|e| format!("recording what the status refs say: {e}"));
    StatusRead { fetched: fetched.and(recorded), belief }
}

/// One fetch into the node repo at a time: concurrent fetches fail on each other's ref locks.
/// The lock is a flock on `<state>/fetch.lock`, which only the node's owner can open (0600, in the
/// state dir the admin group may only read): a member, who could open the repo directory and
/// flock that, cannot hold up root's fetches. It goes with the returned handle.
fn lock_fetches(node: &Node, out: &mut dyn Write) -> Result<Flock<File>> {
    node.repo()?; // a node that was never initialised fails here, with the reason
    let path = node.fetch_lock_path();
    let file = crate::mech::lock::private_file(&path)?;
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
    let tips: Vec<RemoteTip> = fetched
        .iter()
        .filter_map(|f| Some(RemoteTip { remote: f.remote.clone(), tip: (*f.tip.as_ref().ok()?)? }))
        .collect();
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
    let local_name = local.map_or("none".to_owned(), short);
    for Refused { remote, tip, refusal } in &decision.refused {
        let why = match refusal {
            Refusal::Behind => format!("{} is behind the local tip {local_name}", short(tip)),
            Refusal::Diverged => format!("{} does not descend from the local tip {local_name} (force-push or rewritten history); refused", short(tip)),
            Refusal::Unverified(why) => format!("{} refused: {why}", short(tip)),
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
    if let Some(Advance { to, remotes }) = &decision.advance {
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
            short(to),
            remotes.join(", ")
        );
        moved = Some(Moved { from: local, to: *to });
    }
    if !decision.diverged.is_empty() {
        let _ = writeln!(
            out,
            "troops: branch {} at {local_name} and remotes {} have forked (a force-pushed mirror?); nothing moves \
             until a person decides which history is right (README: \"When a node and its remotes fork\")",
            node.config.branch,
            decision.diverged.join(", ")
        );
    }
    crate::mech::remotes::save(node, &fetched, &refusals, local, &decision.diverged)?;
    match crate::node::orders::refresh(node, &repo.git) {
        Ok(said) => said.iter().for_each(|line| drop(writeln!(out, "{line}"))),
        Err(e) => drop(writeln!(out, "troops: the fleet's freeze documents could not be checked: {e}")),
    }
    Ok(Cycle { fetched, status_error: None, decision, moved, fleet: None })
}

/// With `require_signed`, takes out of `tips` each one that would move the branch (a descendant
/// of `local`) but whose signature, or with `scope = "all"` that of a commit it would add, is
/// refused; those come back as refusals, also recorded for `troops status`. A tip that cannot be
/// checked is refused too. A missing or bad keyring or allowed signers fails the cycle: nothing moves.
fn verify_tips(
    node: &Node,
    git: &git2::Repository,
    local: Option<Oid>,
    tips: Vec<RemoteTip>,
    descends: impl Fn(Oid, Oid) -> bool,
) -> Result<(Vec<RemoteTip>, Vec<Refused>)> {
    let Some(policy) = verify::enforced(&node.config.verify, &node.seen_path())? else {
        return Ok((tips, Vec::new()));
    };
    let scope = node.config.verify.scope;
    let mut checked: BTreeMap<Oid, Option<(verify::Refusal, String)>> = BTreeMap::new();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for remote_tip in tips {
        let tip = remote_tip.tip;
        let moves = Some(tip) != local && local.is_none_or(|local| descends(tip, local));
        if !moves {
            accepted.push(remote_tip);
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
            None => accepted.push(remote_tip),
            Some((refusal, why)) => {
                let remote = remote_tip.remote;
                let _ = verify::record_refusal(&node.refused_path(), &format!("remote {remote}"), refusal);
                crate::mech::metrics::count_refusal(node, refusal.verification.kind());
                refused.push(Refused { remote, tip, refusal: Refusal::Unverified(why.clone()) });
            }
        }
    }
    Ok((accepted, refused))
}
