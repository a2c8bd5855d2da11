//! Disruption slots on one shared status remote: nodes on this machine (each its own state dir and
//! config, each a `troops pull` process) whose plan has a disruptive step under `[disruption]`.
//! Each disruptive step appends its start and end to one shared log; each check appends whether
//! its node still held a slot on the status remote as it checked. Never more than `max` in their
//! disruptive part at once; every node through; every slot given back only after the checks;
//! a holder killed with SIGKILL loses its slot when its lease ends; with the status remote gone or
//! rejecting pushes, no node enters its disruptive step, and each says why; clocks ten minutes
//! apart (faketime) neither shorten nor stretch a lease. Reboots (`[reboot]`) go through the same
//! slots: six daemons rebooting two at a time, a host whose checks fail after its reboot keeping
//! its slot, a reboot cut short finished and not begun again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::http::{HttpServer, Reply};
use crate::support::{combined, text, wait_until, DeployRepo, Env, BUDGET};

struct Node {
    name: String,
    env: Env,
}

struct Fleet {
    hub: Env,
    mirror: PathBuf,
    status: PathBuf,
    log: PathBuf,
    work: DeployRepo,
    nodes: Vec<Node>,
}

/// `n` nodes following `mirror.git`, their status remote `status.git`, nothing deployed yet.
fn fleet(n: usize) -> Fleet {
    let hub = Env::new();
    let mirror = hub.bare("mirror.git");
    let status = hub.bare("status.git");
    let log = hub.path("disruptions.log");
    let work = hub.deploy_repo("work");
    let nodes = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let env = Env::new();
            env.write_config(&format!(
                "hostname = \"{name}\"\nstatus_remote = \"status\"\n[metrics]\ntextfile = {:?}\n",
                env.path("troops.prom")
            ));
            env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
            env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
            // Its key in the deploy repo: what the others check its slot documents with.
            work.add_node_key(&env, &name);
            Node { name, env }
        })
        .collect();
    Fleet { hub, mirror, status, log, work, nodes }
}

/// A shell condition: this node (`$TROOPS_HOST`) holds a slot on the status remote `status` now,
/// as its slot document there says when the check runs.
fn held_script(status: &Path) -> String {
    let status = status.display();
    format!(
        "for r in $(git --git-dir={status} for-each-ref --format='%(refname)' refs/troops/slots/fleet/); do \
         git --git-dir={status} cat-file -p $r:slot.json | tr -d ' \\n'; echo; done | \
         grep \"\\\"holder\\\":\\\"$TROOPS_HOST\\\"\" | grep -q '\"released\":false'"
    )
}

/// A plan whose one disruptive step logs its start, takes `seconds`, and logs its end; its check
/// logs whether the node's slot is still held on the status remote.
fn plan(log: &Path, status: &Path, max: u32, ttl: &str, seconds: &str) -> String {
    let held = held_script(status);
    let log = log.display();
    format!(
        "[disruption]\nmax = {max}\nttl = \"{ttl}\"\npoll = \"200ms\"\n\n\
         [[step]]\nname = \"prepare\"\nrun = \"true\"\n\n\
         [[step]]\nname = \"restart\"\ndisruptive = true\n\
         run = '''echo start $TROOPS_HOST $(date +%s%N) >> {log}; sleep {seconds}; echo end $TROOPS_HOST $(date +%s%N) >> {log}'''\n\n\
         [[check]]\nname = \"serves\"\n\
         run = '''if {held}; then h=checked-held; else h=checked-NOT-held; fi; echo $h $TROOPS_HOST $(date +%s%N) >> {log}'''\n"
    )
}

impl Fleet {
    fn release(&self, plan: &str) -> String {
        let commit = self.work.commit(&self.hub, &[("troops.toml", plan)], "release");
        let out = self.work.push(&self.hub, &self.mirror.display().to_string(), &["HEAD:main"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        commit
    }

    fn pull(&self, i: usize) -> Child {
        self.nodes[i].env.troops(&["pull"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// The shared log's lines: what (`start`, `end`, `checked`, `checked-held`, `checked-NOT-held`),
    /// which host, and when (ns since the epoch).
    fn log(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                (w[0].to_owned(), w[1].to_owned(), w.get(2).unwrap_or(&"").to_string())
            })
            .collect()
    }

    fn logged(&self, what: &str, host: &str) -> bool {
        self.log().iter().any(|(w, h, _)| w == what && h == host)
    }
}

/// Waits for `child` to end, within `limit`, and returns its output.
fn finish(child: Child, what: &str, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            panic!("{what} did not end within {limit:?}");
        }
    }
}

/// The most intervals of the log's `start`/`end` pairs open at once, and how many closed.
fn most_at_once(log: &[(String, String, String)]) -> (usize, usize) {
    let at = |t: &String| -> u128 { t.parse().unwrap() };
    let mut edges: Vec<(u128, i32)> = Vec::new();
    let mut closed = 0;
    for (_, host, start) in log.iter().filter(|(w, ..)| w == "start") {
        edges.push((at(start), 1));
        if let Some((_, _, end)) = log.iter().find(|(w, h, t)| w == "end" && h == host && at(t) >= at(start))
        {
            edges.push((at(end), -1));
            closed += 1;
        }
    }
    // An end and a start at the same instant: the end first.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    (most as usize, closed)
}

#[test]
fn six_nodes_go_through_two_slots_never_more_than_two_at_once() {
    let fleet = fleet(6);
    let step = Duration::from_secs(1);
    let commit = fleet.release(&plan(&fleet.log, &fleet.status, 2, "10s", "1"));
    let started = Instant::now();
    let children: Vec<Child> = (0..6).map(|i| fleet.pull(i)).collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .enumerate()
        .map(|(i, c)| finish(c, &format!("node-{i}'s pull"), BUDGET * 6))
        .collect();
    let took = started.elapsed();
    let log = fleet.log();
    let (most, closed) = most_at_once(&log);
    for (node, out) in fleet.nodes.iter().zip(&outputs) {
        let said = combined(out);
        assert_eq!(out.status.code(), Some(0), "{}: {said}", node.name);
        assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()), "{}: {said}", node.name);
        assert!(said.contains("troops: took disruption slot fleet/"), "{}: {said}", node.name);
        assert!(said.contains("(the run's checks passed)"), "{}: {said}", node.name);
        assert!(fleet.logged("checked-held", &node.name), "{}: its check found no slot held", node.name);
    }
    assert!(most <= 2, "{most} nodes were in their disruptive step at once: {log:?}");
    assert_eq!(closed, 6, "every node went through its disruptive step: {log:?}");
    // Each node's check found its slot still held on the status remote.
    assert!(
        !log.iter().any(|(w, ..)| w == "checked-NOT-held"),
        "a slot went back before its checks: {log:?}"
    );
    // Six at once for two slots: some waited, and said for whom.
    let waited = outputs
        .iter()
        .map(combined)
        .filter(|s| s.contains("waiting for a disruption slot of fleet (2 at once): held by node-"))
        .count();
    assert!(waited >= 1, "nobody waited: {:?}", outputs.iter().map(combined).collect::<Vec<_>>());
    // For BENCHMARKS.md: from the first disruptive step's start to the last check, against three
    // rounds of (the disruptive step + its check) at best.
    let times = |w: &str| -> Vec<u128> {
        log.iter().filter(|(what, ..)| what == w).map(|(_, _, t)| t.parse().unwrap()).collect()
    };
    let first = times("start").into_iter().min().unwrap();
    let span = Duration::from_nanos((times("checked-held").into_iter().max().unwrap() - first) as u64);
    let check = log
        .iter()
        .filter(|(w, ..)| w == "end")
        .filter_map(|(_, h, end)| {
            let checked = log.iter().find(|(w, c, _)| w == "checked-held" && c == h)?;
            Some(checked.2.parse::<u128>().ok()? - end.parse::<u128>().ok()?)
        })
        .max()
        .unwrap();
    let ideal = (step + Duration::from_nanos(check as u64)) * 3;
    eprintln!("MEASURE: 6 nodes through max = 2, a 1 s disruptive step: {span:?} from the first disruptive start to the last check (ideal 3 x (1 s + the slowest step end to its check, {:?}) = {ideal:?}); all six pulls {took:?}", Duration::from_nanos(check as u64));
}

#[test]
fn a_holder_killed_mid_step_loses_its_slot_when_its_lease_ends() {
    let fleet = fleet(2);
    let ttl = Duration::from_secs(3);
    fleet.release(&plan(&fleet.log, &fleet.status, 1, "3s", "60"));
    let holder = fleet.pull(0);
    wait_until("node-0 in its disruptive step", BUDGET, || fleet.logged("start", "node-0"));
    let waiter = fleet.pull(1);
    wait_until("node-1 waiting for node-0's slot", BUDGET, || {
        fleet.nodes[1].env.status_json()["fleet"]["slot"].as_str().is_some_and(|s| {
            s.contains("waiting for a disruption slot of fleet (1 at once): held by node-0 since")
        })
    });
    let status = fleet.nodes[1].env.ok(&["status"]);
    assert!(
        status.contains("state     waiting_slot")
            && status.contains("slot      waiting for a disruption slot"),
        "{status}"
    );
    let metrics = std::fs::read_to_string(fleet.nodes[1].env.path("troops.prom")).unwrap();
    assert!(metrics.contains("troops_slot_waiting 1") && metrics.contains("troops_slot_held 0"), "{metrics}");
    let metrics = std::fs::read_to_string(fleet.nodes[0].env.path("troops.prom")).unwrap();
    assert!(metrics.contains("troops_slot_held 1"), "{metrics}");
    // Renewed while it lives: node-1 still waits after more than a lease.
    let since = Instant::now();
    wait_until("more than a lease", ttl * 2, || since.elapsed() > ttl + Duration::from_secs(1));
    assert!(!fleet.logged("start", "node-1"), "node-1 took a slot its holder renews");

    let after = taken_over_after_killing(&fleet, holder, ttl);
    let poll = Duration::from_millis(200);
    eprintln!(
        "MEASURE: a killed holder's slot taken over {after:?} after the kill (ttl {ttl:?}, poll {poll:?})"
    );
    assert!(!fleet.logged("end", "node-0"), "the killed step ended with its troops");
    let mut waiter = waiter;
    let _ = waiter.kill();
    let _ = waiter.wait();
}

/// Kills `holder` (node-0's pull, holding the slot with lease `ttl`, `poll = "200ms"`) with
/// SIGKILL and waits for node-1 in its disruptive step: it must come after the lease ended and
/// within the lease and one poll (plus the house's budget for what the push and the step's start
/// take on a loaded machine). Returns how long after the kill.
fn taken_over_after_killing(fleet: &Fleet, mut holder: Child, ttl: Duration) -> Duration {
    holder.kill().unwrap();
    let killed = Instant::now();
    let _ = holder.wait();
    // Its lease ends a ttl after node-1 first saw its last renewal, made at most a third of the
    // ttl before the kill; node-1 sees that within a poll, and pushes.
    wait_until("node-1 in its disruptive step", ttl + BUDGET, || fleet.logged("start", "node-1"));
    let after = killed.elapsed();
    assert!(after >= ttl * 2 / 3, "node-1 took the slot {after:?} after the kill: before the lease ended");
    let poll = Duration::from_millis(200);
    assert!(after <= ttl + poll + BUDGET, "node-1 took the slot {after:?} after the kill");
    after
}

#[test]
fn with_the_status_remote_gone_no_node_disrupts_and_each_says_why() {
    let fleet = fleet(3);
    let commit = fleet.release(&plan(&fleet.log, &fleet.status, 2, "10s", "0"));
    let away = fleet.hub.path("status.git.away");
    std::fs::rename(&fleet.status, &away).unwrap();
    let mut children: Vec<Child> = (0..2).map(|i| fleet.pull(i)).collect();
    // A person's `troops deploy` of the commit needs a slot too: the slot is about the fleet's
    // capacity, not about who asked.
    let person = &fleet.nodes[2].env;
    person.git(&person.repo(), &["fetch", "-q", &fleet.mirror.display().to_string(), "main:main"]);
    children.push(person.troops(&["deploy"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    for node in &fleet.nodes {
        wait_until(&format!("{} saying it cannot reach the status remote", node.name), BUDGET, || {
            let doc = node.env.status_json();
            doc["fleet"]["state"] == "waiting_slot"
                && doc["fleet"]["slot"]
                    .as_str()
                    .is_some_and(|s| s.contains("the status remote status cannot be reached"))
        });
    }
    let run = fleet.nodes[0].env.run_ids()[0];
    assert!(fleet.nodes[0].env.run_log(run).contains("no disruptive step runs without a slot"));
    assert!(fleet.log().is_empty(), "a node disrupted without a slot: {:?}", fleet.log());
    assert!(fleet.nodes.iter().all(|n| n.env.deployed().is_none()));

    // Asked to stop while it waits, the person's run ends, interrupted, its step not run.
    let deploy = children.pop().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(deploy.id() as i32), nix::sys::signal::SIGTERM)
        .unwrap();
    let out = finish(deploy, "the person's deploy", BUDGET);
    assert_ne!(out.status.code(), Some(0), "{}", combined(&out));
    let record = person.run_record(person.run_ids()[0]);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert!(record["error"].as_str().unwrap().contains("while waiting for a disruption slot"), "{record}");
    assert!(person.status_json()["fleet"]["slot"].is_null());

    // The remote back: both pulls go through.
    std::fs::rename(&away, &fleet.status).unwrap();
    for (i, child) in children.into_iter().enumerate() {
        let out = finish(child, &format!("node-{i}'s pull"), BUDGET * 2);
        assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
        assert!(combined(&out).contains("cannot be reached"), "{}", combined(&out));
        assert_eq!(fleet.nodes[i].env.deployed().as_deref(), Some(commit.as_str()));
    }
    assert!(!fleet.logged("start", "node-2"));
}

/// What a FleetLock server did: `lock` or `unlock`, the client id, when (ns since the epoch).
type Events = Arc<Mutex<Vec<(String, String, u128)>>>;

/// A FleetLock server as the protocol describes it (Zincati's docs/development/fleetlock): a
/// counting semaphore of `max` per group, locks owned by client id and recursive, unlocking what
/// is not held a success; requests without `fleet-lock-protocol: true`, or without a client id
/// and a group of `[a-zA-Z0-9.-]+`, refused. It records each lock and unlock as (what, id, ns).
fn fleetlock_server(max: usize) -> (HttpServer, Events) {
    let holders: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = events.clone();
    let error = |status: u16, kind: &str, value: &str| {
        Reply::new(status, serde_json::json!({ "kind": kind, "value": value }).to_string())
    };
    let server = HttpServer::start(move |request| {
        if request.method != "POST" {
            return error(405, "method_not_allowed", "only POST");
        }
        if request.header("fleet-lock-protocol") != Some("true") {
            return error(400, "missing_header", "fleet-lock-protocol header missing");
        }
        let body: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => return error(400, "bad_body", &e.to_string()),
        };
        let (id, group) = (&body["client_params"]["id"], &body["client_params"]["group"]);
        let (Some(id), Some(group)) = (id.as_str(), group.as_str()) else {
            return error(400, "bad_client_params", "client_params.id and .group are mandatory");
        };
        if id.is_empty()
            || group.is_empty()
            || !group.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
        {
            return error(400, "bad_client_params", "bad id or group");
        }
        let mut holders = holders.lock().unwrap();
        let held = holders.entry(group.to_owned()).or_default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        match request.target.as_str() {
            "/v1/pre-reboot" if held.iter().any(|h| h == id) => Reply::new(200, ""),
            "/v1/pre-reboot" if held.len() < max => {
                held.push(id.to_owned());
                recorded.lock().unwrap().push(("lock".into(), id.to_owned(), now));
                Reply::new(200, "")
            }
            "/v1/pre-reboot" => error(
                409,
                "failed_lock_semaphore_full",
                "semaphore currently full, all slots are locked already",
            ),
            "/v1/steady-state" => {
                if held.iter().any(|h| h == id) {
                    recorded.lock().unwrap().push(("unlock".into(), id.to_owned(), now));
                }
                held.retain(|h| h != id);
                Reply::new(200, "")
            }
            _ => error(404, "not_found", "no such endpoint"),
        }
    });
    (server, events)
}

#[test]
fn a_fleetlock_server_gives_the_slots_with_the_same_semantics_and_messages() {
    let fleet = fleet(3);
    let (server, events) = fleetlock_server(1);
    let log = fleet.log.display();
    let plan = format!(
        "[disruption]\nfleetlock = \"{}\"\npoll = \"200ms\"\n\n\
         [[step]]\nname = \"restart\"\ndisruptive = true\n\
         run = '''echo start $TROOPS_HOST $(date +%s%N) >> {log}; sleep 0.5; echo end $TROOPS_HOST $(date +%s%N) >> {log}'''\n\n\
         [[check]]\nname = \"serves\"\nrun = '''echo checked $TROOPS_HOST $(date +%s%N) >> {log}'''\n",
        server.url("/")
    );
    let commit = fleet.release(&plan);
    let children: Vec<Child> = (0..3).map(|i| fleet.pull(i)).collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .enumerate()
        .map(|(i, c)| finish(c, &format!("node-{i}'s pull"), BUDGET * 3))
        .collect();
    let log = fleet.log();
    let (most, closed) =
        most_at_once(&log.iter().filter(|(w, ..)| w != "checked").cloned().collect::<Vec<_>>());
    assert_eq!((most, closed), (1, 3), "{log:?}");
    let events = events.lock().unwrap().clone();
    for (node, out) in fleet.nodes.iter().zip(&outputs) {
        let said = combined(out);
        assert_eq!(out.status.code(), Some(0), "{}: {said}", node.name);
        assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()));
        assert!(
            said.contains("troops: took disruption slot fleet from the FleetLock server http://127.0.0.1:"),
            "{said}"
        );
        assert!(said.contains("(the run's checks passed)"), "{said}");
        let checked: u128 =
            log.iter().find(|(w, h, _)| w == "checked" && h == &node.name).unwrap().2.parse().unwrap();
        let unlocked = events.iter().find(|(w, id, _)| w == "unlock" && id == &node.name).unwrap().2;
        assert!(unlocked > checked, "{} gave its slot back before its check: {events:?} {log:?}", node.name);
    }
    let waited = outputs.iter().map(combined).filter(|s| {
        s.contains("waiting for a disruption slot of fleet (as the FleetLock server says): http://127.0.0.1:")
            && s.contains(
                "semaphore currently full, all slots are locked already (failed_lock_semaphore_full, 409)",
            )
    });
    assert!(waited.count() >= 1, "{:?}", outputs.iter().map(combined).collect::<Vec<_>>());

    // A server that cannot be reached is no slot either.
    let gone = server.url("/");
    drop(server);
    let next = fleet.work.commit(&fleet.hub, &[("v", "2")], "again");
    let out = fleet.work.push(&fleet.hub, &fleet.mirror.display().to_string(), &["HEAD:main"]);
    assert!(out.status.success());
    let child = fleet.pull(0);
    let run = fleet.nodes[0].env.run_ids().len() as u64 + 1;
    wait_until("node-0 saying it cannot reach the FleetLock server", BUDGET, || {
        fleet.nodes[0].env.run_log(run).contains(&format!("POST {gone}v1/pre-reboot failed: cannot connect"))
    });
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(fleet.nodes[0].env.deployed().as_deref(), Some(next.as_str()));
    assert_eq!(fleet.log().iter().filter(|(w, ..)| w == "start").count(), 3, "no fourth disruption");
}

#[test]
fn daemons_take_turns_too_and_a_stopped_daemon_gives_its_wait_up() {
    let fleet = fleet(3);
    for node in &fleet.nodes {
        let config = std::fs::read_to_string(&node.env.config).unwrap();
        node.env.write_config(&format!("interval = \"300ms\"\n{config}"));
    }
    let commit = fleet.release(&plan(&fleet.log, &fleet.status, 1, "10s", "1"));
    let daemons: Vec<Daemon> = fleet.nodes.iter().map(|n| Daemon::start(&n.env)).collect();
    wait_until("every daemon's node deployed", BUDGET * 3, || {
        fleet.nodes.iter().all(|n| n.env.deployed().as_deref() == Some(commit.as_str()))
    });
    let log = fleet.log();
    let disruptions: Vec<_> = log.iter().filter(|(w, ..)| w != "checked-held").cloned().collect();
    assert_eq!(most_at_once(&disruptions), (1, 3), "{log:?}");
    assert!(!log.iter().any(|(w, ..)| w == "checked-NOT-held"), "{log:?}");
    for node in &fleet.nodes {
        let said = node.env.run_log(node.env.run_ids()[0]);
        assert!(
            said.contains("troops: gave back disruption slot fleet/0 (the run's checks passed)"),
            "{said}"
        );
    }

    // A daemon stopped while its run waits for a slot: the run ends interrupted, the wait with it.
    let next = fleet.work.commit(
        &fleet.hub,
        &[("troops.toml", &plan(&fleet.log, &fleet.status, 1, "30s", "60"))],
        "long",
    );
    let out = fleet.work.push(&fleet.hub, &fleet.mirror.display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("one node in its long disruptive step", BUDGET, || {
        fleet.log().iter().filter(|(w, ..)| w == "start").count() == 4
    });
    let waiting = |n: &Node| n.env.status_json()["fleet"]["state"] == "waiting_slot";
    wait_until("the other two waiting", BUDGET, || fleet.nodes.iter().filter(|n| waiting(n)).count() == 2);
    let (i, stopped) = fleet.nodes.iter().enumerate().find(|(_, n)| waiting(n)).unwrap();
    daemons[i].signal(nix::sys::signal::Signal::SIGTERM);
    wait_until("the stopped daemon's run interrupted", BUDGET, || {
        let record = stopped.env.run_record(*stopped.env.run_ids().last().unwrap());
        record["status"] == "interrupted"
            && record["error"].as_str().is_some_and(|e| e.contains("while waiting for a disruption slot"))
    });
    assert_ne!(stopped.env.deployed().as_deref(), Some(next.as_str()));
    assert_eq!(fleet.log().iter().filter(|(w, ..)| w == "start").count(), 4, "one holder at a time");

    // The holder stopped half-way keeps its slot (its host may be down) and its restarted daemon
    // runs the commit again, taking the slot back at once, long before its lease (30 s) ends.
    let holder_host = fleet.log().iter().rfind(|(w, ..)| w == "start").unwrap().1.clone();
    let h = fleet.nodes.iter().position(|n| n.name == holder_host).unwrap();
    let holder = &fleet.nodes[h];
    let mut daemons = daemons;
    daemons[h].signal(nix::sys::signal::Signal::SIGTERM);
    let stopped_run = *holder.env.run_ids().last().unwrap();
    wait_until("the holder's run interrupted, keeping its slot", BUDGET, || {
        holder.env.run_record(stopped_run)["status"] == "interrupted"
            && holder
                .env
                .run_log(stopped_run)
                .contains("troops: keeps disruption slot fleet/0 until its lease ends")
    });
    let slot = fleet.hub.git(
        fleet.hub.tmp.path(),
        &[
            "--git-dir",
            &fleet.status.display().to_string(),
            "cat-file",
            "-p",
            "refs/troops/slots/fleet/0:slot.json",
        ],
    );
    assert!(
        slot.contains(&format!("\"holder\": \"{holder_host}\"")) && slot.contains("\"released\": false"),
        "{slot}"
    );
    daemons[h].wait_exit(BUDGET);
    let restarted = Instant::now();
    daemons[h] = Daemon::start(&holder.env);
    wait_until("the holder in its step again", BUDGET, || {
        fleet.log().iter().filter(|(w, ..)| w == "start").count() == 5
    });
    assert!(restarted.elapsed() < Duration::from_secs(30), "it waited for its own lease");
    assert_eq!(fleet.log().iter().rfind(|(w, ..)| w == "start").unwrap().1, holder_host);
}

/// A plan with `[reboot]` under `[disruption] max = max`: the host needs a reboot while
/// `$TROOPS_STATE_DIR/reboot-required` exists; its pre_reboot step logs the disruption's start
/// (and lasts while `hold-drain` exists there), `command` reboots; its check fails while `broken`
/// exists there, and once `rebooted` exists (the reboot made it) logs whether the slot is still
/// held and the disruption's end.
fn reboot_plan(log: &Path, status: &Path, max: u32, command: &str, timeout: &str) -> String {
    let held = held_script(status);
    let log_path = log.display();
    format!(
        "[disruption]\nmax = {max}\nttl = \"10s\"\npoll = \"200ms\"\n\n\
         [reboot]\ncheck = 'test -e \"$TROOPS_STATE_DIR/reboot-required\"'\ncommand = '''{command}'''\ntimeout = \"{timeout}\"\n\n\
         [[step]]\nname = \"prepare\"\nrun = \"true\"\n\n\
         [[step]]\nname = \"drain\"\nphase = \"pre_reboot\"\n\
         run = '''echo start $TROOPS_HOST $(date +%s%N) >> {log_path}; \
         while [ -e \"$TROOPS_STATE_DIR/hold-drain\" ]; do sleep 0.05; done'''\n\n\
         [[check]]\nname = \"serves\"\ninterval = \"100ms\"\n\
         run = '''test ! -e \"$TROOPS_STATE_DIR/broken\" || exit 1; \
         if [ -e \"$TROOPS_STATE_DIR/rebooted\" ]; then if {held}; then h=checked-held; else h=checked-NOT-held; fi; \
         echo $h $TROOPS_HOST $(date +%s%N) >> {log_path}; echo end $TROOPS_HOST $(date +%s%N) >> {log_path}; fi'''\n"
    )
}

/// The node's `reboot.json`.
fn reboot_record(node: &Node) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(node.env.state.join("reboot.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[test]
fn six_hosts_reboot_through_two_slots_each_giving_its_slot_back_after_its_checks() {
    let fleet = fleet(6);
    for node in &fleet.nodes {
        let config = std::fs::read_to_string(&node.env.config).unwrap();
        node.env.write_config(&format!("interval = \"300ms\"\n{config}"));
        std::fs::write(node.env.state.join("reboot-required"), "").unwrap();
    }
    // The reboot: what boots clear goes, and the daemon is stopped, as a shutdown stops it; the
    // test starts it again, as the boot would.
    let command = "rm -f \"$TROOPS_STATE_DIR/reboot-required\"; touch \"$TROOPS_STATE_DIR/rebooted\"; \
                   kill -TERM $(cat \"$TROOPS_STATE_DIR/test-daemon.pid\")";
    let commit = fleet.release(&reboot_plan(&fleet.log, &fleet.status, 2, command, "1m"));
    let start = |node: &Node| {
        let daemon = Daemon::start(&node.env);
        std::fs::write(node.env.state.join("test-daemon.pid"), daemon.child.id().to_string()).unwrap();
        daemon
    };
    let mut daemons: Vec<Daemon> = fleet.nodes.iter().map(start).collect();
    let mut boots = [0; 6];
    let mut waited = false;
    wait_until("every host rebooted, checked and gave its slot back", BUDGET * 6, || {
        for (i, node) in fleet.nodes.iter().enumerate() {
            if daemons[i].child.try_wait().unwrap().is_some() {
                boots[i] += 1;
                daemons[i] = start(node);
            }
        }
        waited |= fleet.nodes.iter().any(|n| {
            std::fs::read_to_string(n.env.state.join("slots.json")).is_ok_and(|s| {
                s.contains("waiting for a disruption slot of fleet (2 at once): held by node-")
            })
        });
        fleet.nodes.iter().all(|n| reboot_record(n).is_some_and(|r| r["ended"]["ok"] == true))
    });
    let log = fleet.log();
    let disruptions: Vec<_> = log.iter().filter(|(w, ..)| w == "start" || w == "end").cloned().collect();
    let (most, closed) = most_at_once(&disruptions);
    assert!(most <= 2, "{most} hosts were out of service at once: {log:?}");
    assert_eq!(closed, 6, "every host went through: {log:?}");
    assert!(
        !log.iter().any(|(w, ..)| w == "checked-NOT-held"),
        "a slot went back before its checks: {log:?}"
    );
    assert!(waited, "six hosts for two slots, and nobody waited");
    for (i, node) in fleet.nodes.iter().enumerate() {
        assert_eq!(boots[i], 1, "{} rebooted {} times", node.name, boots[i]);
        assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()));
        assert!(fleet.logged("checked-held", &node.name), "{}: {log:?}", node.name);
        let said = daemons[i].log();
        assert!(said.contains("the checks after the reboot passed"), "{}: {said}", node.name);
        let status = node.env.ok(&["status"]);
        assert!(
            status.contains("reboot    last at ")
                && status.contains("the host came back and its checks passed"),
            "{status}"
        );
        assert!(!status.contains("rebooting"), "{status}");
    }
    // For BENCHMARKS.md: from the first pre_reboot step to the last check after a boot, against
    // three rounds of the slowest host's own disruption (pre_reboot step, reboot command, a new
    // daemon, its first tick, the checks).
    let at = |t: &String| -> u128 { t.parse().unwrap() };
    let part = fleet
        .nodes
        .iter()
        .filter_map(|n| {
            let start = log.iter().find(|(w, h, _)| w == "start" && h == &n.name)?;
            let end = log.iter().find(|(w, h, _)| w == "end" && h == &n.name)?;
            Some(at(&end.2) - at(&start.2))
        })
        .max()
        .unwrap();
    let times =
        |w: &str| log.iter().filter(|(what, ..)| what == w).map(|(_, _, t)| at(t)).collect::<Vec<_>>();
    let span = times("end").into_iter().max().unwrap() - times("start").into_iter().min().unwrap();
    let (span, ideal) = (Duration::from_nanos(span as u64), Duration::from_nanos(part as u64) * 3);
    eprintln!(
        "MEASURE: 6 hosts rebooted through max = 2 in {span:?}; the ideal, 3 x the slowest host's disruption: {ideal:?} ({:.2}x)",
        span.as_secs_f64() / ideal.as_secs_f64()
    );
    // Every slot is free again.
    let refs = fleet.hub.git(&fleet.status, &["for-each-ref", "--format=%(refname)", "refs/troops/slots/"]);
    for slot in refs.lines() {
        let doc = fleet.hub.git(&fleet.status, &["cat-file", "-p", &format!("{slot}:slot.json")]);
        assert!(doc.contains("\"released\": true") || doc.contains("\"released\":true"), "{slot}: {doc}");
    }
}

#[test]
fn a_reboot_waits_for_a_pause_and_for_a_slot_and_a_host_that_does_not_go_down_is_checked_and_said() {
    let fleet = fleet(1);
    let node = &fleet.nodes[0];
    std::fs::write(node.env.state.join("reboot-required"), "").unwrap();
    // A reboot command that returns, and a host that stays up.
    let log = fleet.log.display().to_string();
    let command = format!("touch \"$TROOPS_STATE_DIR/rebooted\"; echo command $TROOPS_HOST 0 >> {log}");
    let commit = fleet.release(&reboot_plan(&fleet.log, &fleet.status, 1, &command, "1s"));
    node.env.git(&node.env.repo(), &["fetch", "-q", &fleet.mirror.display().to_string(), "main:main"]);
    node.env.ok(&["deploy"]);
    assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()));

    // Paused: no reboot begins, and the pull says why.
    node.env.ok(&["pause", "--reason", "kernel upgrade"]);
    let said = node.env.ok(&["pull"]);
    assert!(
        said.contains("the host needs a reboot (`test -e \"$TROOPS_STATE_DIR/reboot-required\"` says so); it waits: the node is paused by"),
        "{said}"
    );
    node.env.ok(&["resume"]);

    // The status remote gone: no slot, no reboot.
    let away = fleet.hub.path("status.git.away");
    std::fs::rename(&fleet.status, &away).unwrap();
    let said = node.env.ok(&["pull"]);
    assert!(said.contains("the status remote status cannot be reached"), "{said}");
    let doc = node.env.status_json();
    assert_eq!(doc["fleet"]["state"], "waiting_slot", "{doc}");
    assert!(fleet.log().is_empty(), "a reboot began without a slot: {:?}", fleet.log());
    std::fs::rename(&away, &fleet.status).unwrap();

    // Its slot: the reboot begins, the host does not go down, it is checked and given back.
    let out = node.env.run(&["pull"]);
    let said = combined(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        "troops: took disruption slot fleet/0",
        "troops: pre_reboot step `drain`",
        "the host did not go down within 1s of the reboot command",
        "troops: gave back disruption slot fleet/0 (the checks after the reboot passed)",
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    let whats: Vec<String> = fleet.log().into_iter().map(|(w, ..)| w).collect();
    assert_eq!(whats, ["start", "command", "checked-held", "end"]);
    let record = reboot_record(node).unwrap();
    assert_eq!(record["ended"]["ok"], false, "{record}");
    let status = node.env.ok(&["status"]);
    assert!(status.contains("state     healthy"), "{status}");
    assert!(status.contains("the host did not go down within 1s"), "{status}");

    // And the next tick does not begin another at once.
    let said = node.env.ok(&["pull"]);
    assert!(said.contains("it waits: the last reboot, ended at "), "{said}");
    assert_eq!(fleet.log().len(), 4);
}

/// `troops pull` on `node` through a reboot: the reboot command marks `shutdown-now`, and this,
/// the shutdown, stops the pull with SIGTERM then. Returns what the pull said.
fn pull_through_a_reboot(node: &Node) -> String {
    let mut child = node.env.troops(&["pull"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let marker = node.env.state.join("shutdown-now");
    wait_until(&format!("{}'s reboot command", node.name), BUDGET, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{}'s pull ended before its reboot command ({status})", node.name);
        }
        marker.exists()
    });
    std::fs::remove_file(&marker).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    combined(&finish(child, &format!("{}'s pull", node.name), BUDGET))
}

#[test]
fn a_host_whose_checks_fail_after_its_reboot_keeps_its_slot_and_a_killed_reboot_is_finished_not_begun_again()
{
    let fleet = fleet(2);
    let command = "touch \"$TROOPS_STATE_DIR/rebooted\" \"$TROOPS_STATE_DIR/shutdown-now\"";
    let commit = fleet.release(&reboot_plan(&fleet.log, &fleet.status, 1, command, "1m"));
    for node in &fleet.nodes {
        node.env.git(&node.env.repo(), &["fetch", "-q", &fleet.mirror.display().to_string(), "main:main"]);
        node.env.ok(&["deploy"]);
        assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()));
        std::fs::write(node.env.state.join("reboot-required"), "").unwrap();
    }
    let (a, b) = (&fleet.nodes[0], &fleet.nodes[1]);
    let starts = |host: &str| fleet.log().iter().filter(|(w, h, _)| w == "start" && h == host).count();

    // node-0 reboots, and comes back broken: its checks fail, and it keeps its slot.
    std::fs::write(a.env.state.join("broken"), "").unwrap();
    let said = pull_through_a_reboot(a);
    assert!(
        said.contains("troops: keeps disruption slot fleet/0 until its lease ends: the host goes down"),
        "{said}"
    );
    assert_eq!(a.env.status_json()["fleet"]["state"], "rebooting");
    std::fs::remove_file(a.env.state.join("reboot-required")).unwrap(); // the boot clears /run
    let said = a.env.ok(&["pull"]);
    assert!(said.contains("troops is back after the reboot command (the same boot"), "{said}");
    assert!(said.contains("troops: the checks after the reboot failed: check `serves` failed"), "{said}");
    assert!(
        said.contains(
            "troops: keeps disruption slot fleet/0 until its lease ends: the host does not serve yet"
        ),
        "{said}"
    );
    let status = a.env.ok(&["status"]);
    assert!(
        status.contains("state     rebooting") && status.contains("the checks after the boot failed"),
        "{status}"
    );
    // node-1 needs a reboot too, and waits for node-0's slot.
    let said = b.env.ok(&["pull"]);
    assert!(said.contains("waiting for a disruption slot of fleet (1 at once): held by node-0"), "{said}");
    assert_eq!(starts("node-1"), 0);
    // Every tick checks node-0 again and holds its slot meanwhile; fixed, it gives it back.
    let said = a.env.ok(&["pull"]);
    assert!(
        said.contains("troops: took disruption slot fleet/0")
            && said.contains("checks after the reboot failed"),
        "{said}"
    );
    assert_eq!(starts("node-1"), 0);
    std::fs::remove_file(a.env.state.join("broken")).unwrap();
    let said = a.env.ok(&["pull"]);
    assert!(
        said.contains("troops: gave back disruption slot fleet/0 (the checks after the reboot passed)"),
        "{said}"
    );
    assert_eq!(reboot_record(a).unwrap()["ended"]["ok"], true);
    assert_eq!(starts("node-0"), 1, "node-0's reboot began once");

    // node-1 begins; its troops is SIGKILLed during the pre_reboot step: the next tick finishes that
    // reboot (the host did not reboot: checked, the slot given back) and does not begin another.
    std::fs::write(b.env.state.join("hold-drain"), "").unwrap();
    let mut child = b.env.troops(&["pull"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("node-1's pre_reboot step", BUDGET, || starts("node-1") == 1);
    assert_eq!(b.env.status_json()["fleet"]["state"], "rebooting");
    child.kill().unwrap();
    let _ = child.wait();
    std::fs::remove_file(b.env.state.join("hold-drain")).unwrap();
    let said = b.env.ok(&["pull"]);
    assert!(
        said.contains("troops was stopped during the pre_reboot steps; the host did not reboot"),
        "{said}"
    );
    assert!(
        said.contains("troops: gave back disruption slot fleet/0 (the checks after the reboot passed)"),
        "{said}"
    );
    assert!(said.contains("it waits: the last reboot, ended at "), "{said}");
    let record = reboot_record(b).unwrap();
    assert_eq!(record["ended"]["ok"], false, "{record}");
    assert_eq!(starts("node-1"), 1, "node-1's reboot was not begun again");
}

/// `troops pull` on `node` with its clock `offset` from this machine's (`+10m`, `-10m`), by
/// libfaketime: every clock it and its children read is shifted.
fn pull_with_clock(node: &Node, offset: &str) -> Child {
    let mut command = std::process::Command::new("faketime");
    node.env.hermetic(&mut command);
    command.args(["-f", offset]).arg(crate::support::bin("troops")).arg("pull");
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting faketime")
}

#[test]
fn clocks_ten_minutes_apart_neither_shorten_nor_stretch_a_lease() {
    if !crate::support::require_tool(
        "faketime",
        "nodes whose clocks are ten minutes apart run under faketime",
    ) {
        return;
    }
    let ttl = Duration::from_secs(3);
    // A holder whose clock is ten minutes behind, renewing: its documents look ten minutes stale,
    // and still its slot stays its own until it gives it back after its checks.
    let behind = fleet(2);
    behind.release(&plan(&behind.log, &behind.status, 1, "3s", "5"));
    let holder = pull_with_clock(&behind.nodes[0], "-10m");
    wait_until("node-0 in its disruptive step", BUDGET, || behind.logged("start", "node-0"));
    let waiter = behind.pull(1);
    let said = combined(&finish(waiter, "node-1's pull", BUDGET * 2));
    assert!(said.contains("held by node-0"), "{said}");
    let out = finish(holder, "node-0's pull", BUDGET);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    // The shared log is in the order things happened (node-0's times are ten minutes behind):
    // node-1 began only after node-0's check, which found its slot still held.
    let log = behind.log();
    let at = |what: &str, host: &str| log.iter().position(|(w, h, _)| w == what && h == host);
    assert!(at("checked-held", "node-0") < at("start", "node-1"), "{log:?}");
    assert!(at("start", "node-1").is_some(), "node-1 went through: {log:?}");

    // A holder whose clock is ten minutes ahead, killed: its last document claims a lease that
    // ends ten minutes after it should; the waiter takes the slot over a ttl after it first saw it.
    let fleet = fleet(2);
    fleet.release(&plan(&fleet.log, &fleet.status, 1, "3s", "30"));
    let holder = pull_with_clock(&fleet.nodes[0], "+10m");
    wait_until("node-0 in its disruptive step", BUDGET, || fleet.logged("start", "node-0"));
    let waiter = fleet.pull(1);
    wait_until("node-1 waiting", BUDGET, || {
        std::fs::read_to_string(fleet.nodes[1].env.state.join("slots.json"))
            .is_ok_and(|s| s.contains("held by node-0"))
    });
    // Its document does say a time ten minutes ahead: the skew is real.
    let doc = fleet.hub.git(&fleet.status, &["cat-file", "-p", "refs/troops/slots/fleet/0:slot.json"]);
    let since: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let since = humantime::parse_rfc3339(since["since"].as_str().unwrap()).unwrap();
    let ahead = since.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    assert!(ahead > Duration::from_secs(9 * 60), "node-0's clock is not ahead: {doc}");
    taken_over_after_killing(&fleet, holder, ttl);
    let mut waiter = waiter;
    let _ = waiter.kill();
    let _ = waiter.wait();
}

/// A status remote whose hook refuses every slot push: no slot is taken, no node disrupts, and
/// each says the remote's words.
#[test]
fn a_status_remote_that_rejects_the_pushes_of_slots_is_no_slot() {
    let fleet = fleet(2);
    let hook = fleet.status.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'slots are closed for maintenance' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fleet.release(&plan(&fleet.log, &fleet.status, 2, "10s", "0"));
    let children: Vec<Child> = (0..2).map(|i| fleet.pull(i)).collect();
    for node in &fleet.nodes {
        wait_until(&format!("{} saying its slot could not be taken", node.name), BUDGET, || {
            node.env.status_json()["fleet"]["slot"].as_str().is_some_and(|s| s.contains("could not be taken"))
        });
    }
    assert!(fleet.log().is_empty(), "a node disrupted without a slot: {:?}", fleet.log());
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A careless operator: a reboot check that cannot tell and prints megabytes, and a reboot record
/// that is garbage. Neither begins a reboot; each is said, and what the check printed is cut.
#[test]
fn a_check_that_cannot_tell_and_a_corrupt_reboot_record_begin_no_reboot_and_say_so() {
    let fleet = fleet(1);
    let node = &fleet.nodes[0];
    let plan = reboot_plan(&fleet.log, &fleet.status, 1, "true", "1s").replace(
        "check = 'test -e \"$TROOPS_STATE_DIR/reboot-required\"'",
        "check = 'head -c 3000000 /dev/zero | tr \"\\\\0\" x; exit 2'",
    );
    let commit = fleet.release(&plan);
    node.env.git(&node.env.repo(), &["fetch", "-q", &fleet.mirror.display().to_string(), "main:main"]);
    node.env.ok(&["deploy"]);
    assert_eq!(node.env.deployed().as_deref(), Some(commit.as_str()));
    let said = node.env.ok(&["pull"]);
    assert!(said.contains("troops: cannot tell whether the host needs a reboot: `head -c"), "{said:.2000}");
    assert!(said.contains("more bytes not shown]"), "the check's output is cut: {} bytes", said.len());
    assert!(said.len() < 200 * 1024, "the pull said {} bytes", said.len());
    assert!(!node.env.state.join("reboot.json").exists());

    // The check says yes now, and the record is garbage: no reboot begins, and status says why.
    let plan = reboot_plan(&fleet.log, &fleet.status, 1, "true", "1s");
    fleet.release(&plan);
    std::fs::write(node.env.state.join("reboot-required"), "").unwrap();
    std::fs::write(node.env.state.join("reboot.json"), "{ not json").unwrap();
    let said = node.env.ok(&["pull"]);
    assert!(said.contains("troops: no reboot begins: ") && said.contains("remove the file"), "{said}");
    assert!(fleet.log().is_empty(), "a reboot began: {:?}", fleet.log());
    let status = node.env.ok(&["status"]);
    assert!(status.contains("reboot    ") && status.contains("reboot.json"), "{status}");
    // Removed, the reboot goes on.
    std::fs::remove_file(node.env.state.join("reboot.json")).unwrap();
    let said = node.env.ok(&["pull"]);
    assert!(said.contains("troops: pre_reboot step `drain`"), "{said}");
}
