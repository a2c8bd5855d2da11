//! A run's disruption slot: taken before its first disruptive step, held (renewed in the
//! background) while the run goes on, given back once its checks passed, or once it failed. A
//! node that finds no slot free waits, saying for whom, and polls again; a status remote it
//! cannot reach is no slot. What it waits for or holds is kept in `<state>/slots.json` with when
//! it first saw each slot document (its own clock: the lease is measured from that), for `troops
//! status`, the status document and the metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::plan::disruption::{Disruption, Group};
use crate::model::slot::{self, SlotDoc, SCHEMA};
use crate::policy::slots::{judge, pick, waiting_for, Seen};

/// `<state>/slots.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotFile {
    /// By slot ref: the commit last seen there, and when this node first saw it there.
    pub seen: BTreeMap<String, Sighting>,
    /// What the run under way does about a slot, if anything.
    pub now: Option<SlotNow>,
}

impl StateFile for SlotFile {
    const WHAT: &'static str = "the disruption slots seen";
    const SCHEMA: u32 = 1;
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub commit: String,
    pub first_seen: String,
}

/// What run `run` does about a slot of `group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotNow {
    pub run: u64,
    pub group: String,
    /// Since when it waits or holds.
    pub since: String,
    /// It waits: why ("waiting for a disruption slot: held by web-3 since ..., lease until ...").
    pub waiting: Option<String>,
    /// It holds slot `held` of the group, its lease (by its own clock) until `until`.
    pub held: Option<u32>,
    pub until: Option<String>,
}

impl SlotNow {
    /// What `troops status` and the status document say, e.g. "holds disruption slot fleet/1
    /// since T, lease until U" or the waiting sentence.
    pub fn sentence(&self) -> String {
        match (&self.waiting, self.held) {
            (Some(why), _) => why.clone(),
            (None, Some(n)) => format!(
                "holds disruption slot {}/{n} since {}, lease until {}",
                self.group,
                self.since,
                self.until.as_deref().unwrap_or("?")
            ),
            (None, None) => format!("about disruption slots of {}", self.group),
        }
    }
}

/// What the run under way (`run`) waits for or holds, if anything.
pub fn current(node: &Node, run: u64) -> Option<SlotNow> {
    load(node).now.filter(|n| n.run == run)
}

fn load(node: &Node) -> SlotFile {
    state_file::load(&node.slots_path()).ok().flatten().unwrap_or_default()
}

fn save(node: &Node, file: &SlotFile) {
    if let Err(e) = state_file::save(&node.slots_path(), file) {
        tracing::warn!(error = %e, "the disruption slots seen are not recorded");
    }
}

fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A slot this node holds for a run, renewed in the background until it is given back.
pub struct Holding {
    node: Node,
    remote: String,
    doc: SlotDoc,
    /// The commit the remote's ref holds since this node's last swap (taking, renewing).
    last: std::sync::Arc<std::sync::Mutex<Oid>>,
    renewer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// The group of a host with `roles` in `disruption`: a run whose disruptive step has none fails.
pub fn group<'a>(disruption: &'a Disruption, roles: &[String], step: &str) -> Result<&'a Group> {
    disruption.group(roles).ok_or_else(|| {
        let listed: Vec<&str> = disruption.groups.iter().map(|g| g.name.as_str()).collect();
        Error::Input(format!(
            "step `{step}` is disruptive, and this host has none of the roles [disruption] groups by ({}): \
             no slot to take",
            listed.join(", ")
        ))
    })
}

/// Takes a slot of `group` for run `run` before disruptive step `step`, waiting as long as it
/// takes (saying why to `out` whenever that changes); `None` when asked to `stop` first.
pub fn take(
    node: &Node,
    disruption: &Disruption,
    group: &Group,
    run: u64,
    step: &str,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<Option<Holding>> {
    let Some(remote) = node.config.status_remote.clone() else {
        return Err(Error::Input(format!(
            "step `{step}` is disruptive, and a slot is taken on the status remote: the node config has no \
             `status_remote`"
        )));
    };
    let me = node.config.hostname();
    let since = stamp(SystemTime::now());
    let mut said: Option<String> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let mut file = load(node);
            file.now = None;
            save(node, &file);
            return Ok(None);
        }
        let now = SystemTime::now();
        let deadline = Instant::now() + node.config.fetch_timeout;
        let mut file = load(node);
        let why = match crate::mech::slots::fetch(node, &remote, &group.name, deadline) {
            Err(e) => format!(
                "waiting for a disruption slot: the status remote {remote} cannot be reached ({e}); no \
                 disruptive step runs without a slot"
            ),
            Ok(()) => {
                let mut verdicts = Vec::new();
                let mut commits = Vec::new();
                for n in 0..group.slots {
                    let read = crate::mech::slots::read(node, &group.name, n).map_err(Error::Env)?;
                    let seen = observe(&mut file, &slot::reference(&group.name, n), &read, now);
                    verdicts.push(judge(&seen, &me, disruption.ttl, now));
                    commits.push(read.commit);
                }
                match pick(&verdicts) {
                    Some(n) => {
                        let doc = SlotDoc {
                            schema: SCHEMA,
                            group: group.name.clone(),
                            slot: n as u32,
                            holder: me.clone(),
                            run,
                            since: stamp(now),
                            lease_seconds: disruption.ttl.as_secs(),
                            renewals: 0,
                            released: false,
                        };
                        match crate::mech::slots::swap(node, &remote, &doc, commits[n], deadline) {
                            Ok(commit) => {
                                let until = stamp(now + disruption.ttl);
                                let _ = writeln!(
                                    out,
                                    "troops: took disruption slot {}/{n} ({} at once), lease until {until}",
                                    group.name, disruption.max
                                );
                                file.now = Some(SlotNow {
                                    run,
                                    group: group.name.clone(),
                                    since: doc.since.clone(),
                                    waiting: None,
                                    held: Some(n as u32),
                                    until: Some(until),
                                });
                                save(node, &file);
                                told(node);
                                return Ok(Some(Holding::start(node, remote, doc, commit, disruption.ttl)));
                            }
                            // Another node moved the ref first: look again at once.
                            Err(e) if e.contains("stale info") => {
                                save(node, &file);
                                continue;
                            }
                            Err(e) => format!(
                                "waiting for a disruption slot: slot {}/{n} could not be taken on the status \
                                 remote {remote} ({e})",
                                group.name
                            ),
                        }
                    }
                    None => format!(
                        "waiting for a disruption slot of {} ({} at once): {}",
                        group.name,
                        disruption.max,
                        waiting_for(&verdicts).unwrap_or_default()
                    ),
                }
            }
        };
        if said.as_ref() != Some(&why) {
            let _ = writeln!(out, "troops: {why}");
            let _ = out.flush();
            file.now = Some(SlotNow {
                run,
                group: group.name.clone(),
                since: since.clone(),
                waiting: Some(why.clone()),
                held: None,
                until: None,
            });
            save(node, &file);
            told(node);
            said = Some(why);
        } else {
            save(node, &file);
        }
        pause(disruption.poll, stop);
    }
}

/// After the node took, gave back or began waiting for a slot: the metrics textfile and the
/// status document say so now (the document in the background: the run never waits for it).
fn told(node: &Node) {
    crate::node::state::write_textfile(node);
    crate::mech::statusrefs::in_background(node);
}

/// Waits `poll`, or less when asked to stop.
fn pause(poll: Duration, stop: &AtomicBool) {
    let until = Instant::now() + poll;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
    }
}

/// What slot `reference` is to this node at `now`, given what it read there: a commit it saw
/// before keeps the time it first saw it; a new one is first seen now.
fn observe(file: &mut SlotFile, reference: &str, read: &crate::mech::slots::Read, now: SystemTime) -> Seen {
    let Some(commit) = read.commit else {
        file.seen.remove(reference);
        return Seen::Missing;
    };
    let kept = file
        .seen
        .get(reference)
        .filter(|s| s.commit == commit.to_string())
        .and_then(|s| humantime::parse_rfc3339(&s.first_seen).ok());
    let first_seen = kept.unwrap_or(now);
    // To the millisecond: a lease of seconds is measured from it.
    let first = humantime::format_rfc3339_millis(first_seen).to_string();
    file.seen.insert(reference.to_owned(), Sighting { commit: commit.to_string(), first_seen: first });
    match &read.doc {
        Ok(doc) => Seen::Doc { doc: doc.clone(), first_seen },
        Err(why) => Seen::Unreadable { why: why.clone(), first_seen },
    }
}

impl Holding {
    fn start(node: &Node, remote: String, doc: SlotDoc, commit: Oid, ttl: Duration) -> Holding {
        let last = std::sync::Arc::new(std::sync::Mutex::new(commit));
        let (tx, rx) = mpsc::channel::<()>();
        let renewer = {
            let (node, remote, mut doc, last) = (node.clone(), remote.clone(), doc.clone(), last.clone());
            // Renewed at a third of the lease: two renewals may fail before it ends.
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(ttl / 3) {
                    doc.renewals += 1;
                    renew(&node, &remote, &doc, &last, ttl);
                }
            })
        };
        Holding { node: node.clone(), remote, doc, last, renewer: Some((tx, renewer)) }
    }

    /// Gives the slot back (the run's checks passed, or it failed), after its last renewal; says
    /// so to `out`. A slot that cannot be given back (the remote is gone) is free when its lease
    /// ends.
    pub fn release(mut self, out: &mut dyn Write, why: &str) {
        if let Some((tx, renewer)) = self.renewer.take() {
            drop(tx);
            let _ = renewer.join();
        }
        let doc = SlotDoc { released: true, ..self.doc.clone() };
        let expect = *self.last.lock().expect("not poisoned");
        let deadline = Instant::now() + self.node.config.fetch_timeout;
        let name = format!("{}/{}", doc.group, doc.slot);
        match crate::mech::slots::swap(&self.node, &self.remote, &doc, Some(expect), deadline) {
            Ok(_) => {
                let _ = writeln!(out, "troops: gave back disruption slot {name} ({why})");
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "troops: could not give back disruption slot {name} ({e}); it is free when its lease ends"
                );
            }
        }
        let mut file = load(&self.node);
        file.now = None;
        save(&self.node, &file);
        told(&self.node);
    }
}

/// One renewal of the slot `doc`: a new document swapped in for this node's last one.
fn renew(node: &Node, remote: &str, doc: &SlotDoc, last: &std::sync::Mutex<Oid>, ttl: Duration) {
    let expect = *last.lock().expect("not poisoned");
    let now = SystemTime::now();
    match crate::mech::slots::swap(
        node,
        remote,
        doc,
        Some(expect),
        Instant::now() + node.config.fetch_timeout,
    ) {
        Ok(commit) => {
            *last.lock().expect("not poisoned") = commit;
            let mut file = load(node);
            if let Some(held) = file.now.as_mut().filter(|n| n.run == doc.run) {
                held.until = Some(stamp(now + ttl));
            }
            save(node, &file);
        }
        Err(e) => tracing::warn!(
            slot = %format!("{}/{}", doc.group, doc.slot),
            error = %e,
            "the disruption slot's lease is not renewed; another node may take it when it ends"
        ),
    }
}
