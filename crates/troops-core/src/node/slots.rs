//! A run's disruption slot: taken before its first disruptive step, held (renewed in the
//! background) while the run goes on, given back once its checks passed, or once it failed. A
//! node that finds no slot free waits, saying for whom, and polls again; a status remote it
//! cannot reach is no slot. What it waits for or holds is kept in `<state>/slots.json` with when
//! it first saw each slot document (its own clock: the lease is measured from that), for `troops
//! status`, the status document and the metrics.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;

use crate::mech::slot_record::{load, save, Sighting, SlotFile, SlotNow};
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::plan::disruption::{Disruption, Group};
use crate::model::slot::{self, SlotDoc, SCHEMA};
use crate::policy::slots::{judge, pick, waiting_for, Seen};

fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A slot this node holds for a run, until it is given back.
pub struct Holding {
    node: Node,
    held: Held,
}

/// Where the slot is held.
enum Held {
    /// On the status remote, renewed in the background.
    Ref {
        remote: String,
        doc: SlotDoc,
        /// The commit the remote's ref holds since this node's last swap (taking, renewing).
        last: std::sync::Arc<std::sync::Mutex<Oid>>,
        renewer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    },
    /// By a FleetLock server, for `group`.
    FleetLock { url: String, group: String },
}

/// One look for a slot: taken, or why not.
enum Look {
    Took {
        held: Held,
        name: String,
        until: Option<SystemTime>,
    },
    /// Someone moved a slot's ref first: look again at once.
    Lost,
    Wait(String),
}

/// Who wants a slot: a run before its disruptive step, or a reboot.
#[derive(Debug, Clone, Copy)]
pub enum Taker<'a> {
    /// Run `run`, before its disruptive step `step`.
    Step { run: u64, step: &'a str },
    /// A reboot of the host standing on run `run` (`node::reboot`).
    Reboot { run: u64 },
}

impl Taker<'_> {
    fn run(&self) -> u64 {
        match self {
            Taker::Step { run, .. } | Taker::Reboot { run } => *run,
        }
    }

    /// "step `restart` is disruptive", "the host needs a reboot".
    fn why(&self) -> String {
        match self {
            Taker::Step { step, .. } => format!("step `{step}` is disruptive"),
            Taker::Reboot { .. } => "the host needs a reboot".to_owned(),
        }
    }

    /// What `troops status` says of it while it waits or holds.
    fn now(&self, group: &Group, since: String) -> SlotNow {
        let reboot = matches!(self, Taker::Reboot { .. });
        SlotNow {
            run: self.run(),
            reboot,
            group: group.name.clone(),
            since,
            waiting: None,
            held: None,
            until: None,
        }
    }
}

/// The group of a host with `roles` in `disruption`: a taker of a host in none has no slot to take.
pub fn group<'a>(disruption: &'a Disruption, roles: &[String], taker: Taker) -> Result<&'a Group> {
    disruption.group(roles).ok_or_else(|| {
        let listed: Vec<&str> = disruption.groups.iter().map(|g| g.name.as_str()).collect();
        Error::Input(format!(
            "{}, and this host has none of the roles [disruption] groups by ({}): no slot to take",
            taker.why(),
            listed.join(", ")
        ))
    })
}

/// Takes a slot of `group` for `taker`, waiting as long as it takes (saying why to `out`
/// whenever that changes); `None` when asked to `stop` first.
pub fn take(
    node: &Node,
    disruption: &Disruption,
    group: &Group,
    taker: Taker,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<Option<Holding>> {
    loop {
        if stop.load(Ordering::SeqCst) {
            forget(node);
            return Ok(None);
        }
        if let Ok(holding) = try_take(node, disruption, group, taker, out)? {
            return Ok(Some(holding));
        }
        pause(disruption.poll, stop);
    }
}

/// One look for a slot of `group` for `taker` (again at once when another node moved a slot's
/// ref first): taken, or why it waits, said to `out` and recorded when that changed.
pub fn try_take(
    node: &Node,
    disruption: &Disruption,
    group: &Group,
    taker: Taker,
    out: &mut dyn Write,
) -> Result<std::result::Result<Holding, String>> {
    let remote = match (&disruption.fleetlock, &node.config.status_remote) {
        (Some(_), _) => String::new(),
        (None, Some(remote)) => remote.clone(),
        (None, None) => {
            return Err(Error::Input(format!(
                "{}, and a slot is taken on the status remote: the node config has no `status_remote`",
                taker.why()
            )))
        }
    };
    let why = loop {
        let look = match &disruption.fleetlock {
            Some(url) => look_fleetlock(node, url, disruption, group),
            None => look_ref(node, &remote, disruption, group, taker.run())?,
        };
        match look {
            Look::Took { held, name, until } => {
                let until = until.map(stamp);
                let lease = until.as_ref().map_or(String::new(), |u| format!(", lease until {u}"));
                let _ =
                    writeln!(out, "troops: took disruption slot {name} ({} at once){lease}", disruption.max);
                let mut file = load(node);
                file.now =
                    Some(SlotNow { held: Some(name), until, ..taker.now(group, stamp(SystemTime::now())) });
                save(node, &file);
                crate::node::state::changed(node);
                return Ok(Ok(Holding { node: node.clone(), held }));
            }
            Look::Lost => continue,
            Look::Wait(why) => break why,
        }
    };
    let mut file = load(node);
    let before = file.now.take().filter(|n| n.run == taker.run() && n.group == group.name);
    if before.as_ref().and_then(|n| n.waiting.as_ref()) != Some(&why) {
        let _ = writeln!(out, "troops: {why}");
        let _ = out.flush();
    }
    let since = before.map_or_else(|| stamp(SystemTime::now()), |n| n.since);
    file.now = Some(SlotNow { waiting: Some(why.clone()), ..taker.now(group, since) });
    save(node, &file);
    crate::node::state::changed(node);
    Ok(Err(why))
}

/// Forgets what this node waited for (a run stopped while waiting, a reboot no longer due).
pub fn forget(node: &Node) {
    let mut file = load(node);
    if file.now.take().is_some() {
        save(node, &file);
        crate::node::state::changed(node);
    }
}

/// One look at the slots of `group` on the status remote `remote`: the first this node may take
/// (`policy::slots`), taken by a swap from what its ref held.
fn look_ref(node: &Node, remote: &str, disruption: &Disruption, group: &Group, run: u64) -> Result<Look> {
    let me = node.config.hostname();
    let now = SystemTime::now();
    let deadline = Instant::now() + node.config.fetch_timeout;
    if let Err(e) = crate::mech::slots::fetch(node, remote, &group.name, deadline) {
        return Ok(Look::Wait(format!(
            "waiting for a disruption slot of {}: the status remote {remote} cannot be reached ({e}); no \
             disruptive step runs without a slot",
            group.name
        )));
    }
    let mut file = load(node);
    let mut verdicts = Vec::new();
    let mut commits = Vec::new();
    let keys = crate::mech::believe::node_keys(node);
    for n in 0..group.slots {
        let read = crate::mech::slots::read(node, &keys, &group.name, n).map_err(Error::Env)?;
        let seen = observe(&mut file, &slot::reference(&group.name, n), &read, now);
        verdicts.push(judge(&seen, &me, disruption.ttl, now));
        commits.push(read.commit);
    }
    save(node, &file);
    let Some(n) = pick(&verdicts) else {
        return Ok(Look::Wait(format!(
            "waiting for a disruption slot of {} ({} at once): {}",
            group.name,
            disruption.max,
            waiting_for(&verdicts).unwrap_or_default()
        )));
    };
    let doc = SlotDoc {
        schema: SCHEMA,
        group: group.name.clone(),
        slot: n as u32,
        holder: me,
        run,
        since: stamp(now),
        lease_seconds: disruption.ttl.as_secs(),
        renewals: 0,
        released: false,
    };
    match crate::mech::slots::swap(node, remote, &doc, commits[n], deadline) {
        Ok(commit) => {
            let name = format!("{}/{n}", group.name);
            let held = Held::start(node, remote.to_owned(), doc, commit, disruption.ttl);
            Ok(Look::Took { held, name, until: Some(now + disruption.ttl) })
        }
        Err(e) if e.contains("stale info") => Ok(Look::Lost),
        Err(e) => Ok(Look::Wait(format!(
            "waiting for a disruption slot of {}: slot {}/{n} could not be taken on the status remote {remote} ({e})",
            group.name, group.name
        ))),
    }
}

/// One ask of the FleetLock server at `url` for a slot of `group`.
fn look_fleetlock(node: &Node, url: &str, disruption: &Disruption, group: &Group) -> Look {
    let me = node.config.hostname();
    match crate::mech::fleetlock::ask(
        url,
        crate::mech::fleetlock::Op::Lock,
        &me,
        &group.name,
        node.config.fetch_timeout,
    ) {
        Ok(()) => Look::Took {
            held: Held::FleetLock { url: url.to_owned(), group: group.name.clone() },
            name: format!("{} from the FleetLock server {url}", group.name),
            until: None,
        },
        Err(e) => Look::Wait(format!(
            "waiting for a disruption slot of {} ({}): {e}; no disruptive step runs without a slot",
            group.name, disruption.max
        )),
    }
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

impl Held {
    /// A slot just taken on the status remote, renewed from now on at a third of its lease: two
    /// renewals may fail before it ends.
    fn start(node: &Node, remote: String, doc: SlotDoc, commit: Oid, ttl: Duration) -> Held {
        let last = std::sync::Arc::new(std::sync::Mutex::new(commit));
        let (tx, rx) = mpsc::channel::<()>();
        let renewer = {
            let (node, remote, mut doc, last) = (node.clone(), remote.clone(), doc.clone(), last.clone());
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(ttl / 3) {
                    doc.renewals += 1;
                    renew(&node, &remote, &doc, &last, ttl);
                }
            })
        };
        Held::Ref { remote, doc, last, renewer: Some((tx, renewer)) }
    }
}

impl Holding {
    /// The slot's name: "fleet/1", "fleet from the FleetLock server URL".
    pub fn name(&self) -> String {
        match &self.held {
            Held::Ref { doc, .. } => format!("{}/{}", doc.group, doc.slot),
            Held::FleetLock { url, group } => format!("{group} from the FleetLock server {url}"),
        }
    }

    /// Stops renewing the slot without giving it back (a run stopped half-way, a host that goes
    /// down for its reboot): it stays this node's until its lease ends, and this node takes it
    /// again at once (a FleetLock server's lock, until then). Says so to `out`, and `why`.
    pub fn keep(self, out: &mut dyn Write, why: &str) {
        let name = match self.held {
            Held::Ref { doc, mut renewer, .. } => {
                if let Some((tx, renewer)) = renewer.take() {
                    drop(tx);
                    let _ = renewer.join();
                }
                format!("{}/{} until its lease ends", doc.group, doc.slot)
            }
            Held::FleetLock { url, group } => format!("{group} from the FleetLock server {url}"),
        };
        let _ = writeln!(out, "troops: keeps disruption slot {name}: {why}");
        let mut file = load(&self.node);
        file.now = None;
        save(&self.node, &file);
        crate::node::state::changed(&self.node);
    }

    /// Gives the slot back (the run's checks passed, or it failed), after its last renewal; says
    /// so to `out`. A slot on the status remote that cannot be given back (the remote is gone) is
    /// free when its lease ends.
    pub fn release(self, out: &mut dyn Write, why: &str) {
        let node = &self.node;
        let (name, given) = match self.held {
            Held::Ref { remote, doc, last, mut renewer } => {
                if let Some((tx, renewer)) = renewer.take() {
                    drop(tx);
                    let _ = renewer.join();
                }
                let doc = SlotDoc { released: true, ..doc };
                let expect = *last.lock().expect("not poisoned");
                let deadline = Instant::now() + node.config.fetch_timeout;
                let given = crate::mech::slots::swap(node, &remote, &doc, Some(expect), deadline)
                    .map(drop)
                    .map_err(|e| format!("{e}; it is free when its lease ends"));
                (format!("{}/{}", doc.group, doc.slot), given)
            }
            Held::FleetLock { url, group } => {
                let me = node.config.hostname();
                let op = crate::mech::fleetlock::Op::Unlock;
                let given = crate::mech::fleetlock::ask(&url, op, &me, &group, node.config.fetch_timeout)
                    .map_err(|e| format!("{e}; the server keeps it until this node gives it back"));
                (format!("{group} from the FleetLock server {url}"), given)
            }
        };
        let _ = match given {
            Ok(()) => writeln!(out, "troops: gave back disruption slot {name} ({why})"),
            Err(e) => writeln!(out, "troops: could not give back disruption slot {name} ({e})"),
        };
        let mut file = load(node);
        file.now = None;
        save(node, &file);
        crate::node::state::changed(node);
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
            if let Some(held) = file.now.as_mut().filter(|n| n.run == doc.run && n.held.is_some()) {
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
