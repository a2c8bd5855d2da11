//! A fleet on this machine: a dozen nodes, each with its own state dir, config and daemon, all
//! pulling from one mirror and publishing their status to one status remote (one of them over a
//! real sshd). A commit goes through the rollout waves in order, each only after the previous one
//! has soaked; a commit that fails on the canary is held everywhere else; `troops fleet` says so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::sshd::Sshd;
use crate::support::{
    accept_within, combined, put_status, still_open, text, wait_until, DeployRepo, Env, BUDGET,
};

const NODES: usize = 12;
const SOAK: Duration = Duration::from_secs(2);
const INTERVAL: &str = "500ms";

/// The fleet's plan: one step, and one health check that runs `check`; a failed check rolls back.
fn plan(check: &str) -> String {
    format!(
        "[rollout]\n\
         waves = [ {{ name = \"canary\", hosts = [\"node-00\"] }}, {{ name = \"early\", percent = 40 }}, {{ name = \"rest\", percent = 100 }} ]\n\
         soak = \"{}s\"\n\
         quorum = 1.0\n\n\
         [health]\non_failure = \"rollback\"\n\n\
         [[step]]\nname = \"deploy\"\nrun = \"echo deployed $TROOPS_COMMIT on $TROOPS_HOST\"\n\n\
         [[check]]\nname = \"web\"\nrun = '{check}'\nretries = 1\n",
        SOAK.as_secs()
    )
}

const GOOD: &str = "true";
/// Fails on the canary only: the later waves would pass it, if anything let them run it.
const BAD_ON_CANARY: &str = "test \"$TROOPS_HOST\" != node-00";

pub(super) struct Member {
    pub(super) name: String,
    env: Env,
    daemon: Daemon,
}

pub(super) struct Fleet {
    pub(super) hub: Env,
    pub(super) mirror: PathBuf,
    work: DeployRepo,
    pub(super) members: Vec<Member>,
    _sshd: Sshd,
}

fn bare(hub: &Env, name: &str) -> PathBuf {
    let path = hub.path(name);
    hub.git(hub.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
    path
}

/// Twelve nodes following `mirror`, publishing to `status.git` (node-11 over SSH), daemons running.
pub(super) fn fleet() -> Fleet {
    let hub = Env::new();
    let mirror = bare(&hub, "mirror.git");
    let status = bare(&hub, "status.git");
    let work = hub.deploy_repo("work");
    let sshd = Sshd::start(&hub.path("sshd"));
    let mut members = Vec::new();
    for i in 0..NODES {
        let name = format!("node-{i:02}");
        let env = Env::new();
        env.write_config(&format!(
            "hostname = \"{name}\"\ninterval = \"{INTERVAL}\"\njitter = \"200ms\"\nstatus_remote = \"status\"\n\
             [retry]\ninitial = \"1h\"\nmax = \"1h\"\n"
        ));
        env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
        let url = if i == NODES - 1 {
            let key = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
            sshd.authorize(key.trim());
            let known = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public_key());
            std::fs::write(env.state.join("ssh/known_hosts"), known).unwrap();
            sshd.url(&status)
        } else {
            status.display().to_string()
        };
        env.git(&env.repo(), &["remote", "add", "status", &url]);
        let daemon = Daemon::start(&env);
        work.add_node_key(&env, &name);
        members.push(Member { name, env, daemon });
    }
    Fleet { hub, mirror, work, members, _sshd: sshd }
}

impl Fleet {
    /// Commits a plan whose check runs `check`, pushes it to the mirror, returns it and when.
    pub(super) fn release(&self, check: &str, message: &str) -> (String, Instant) {
        let commit = self.work.commit(&self.hub, &[("troops.toml", &plan(check))], message);
        let out = self.work.push(&self.hub, &self.mirror.display().to_string(), &["HEAD:main"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        (commit, Instant::now())
    }

    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    /// The node's run of `commit`, once it has ended.
    fn run_of(&self, member: &Member, commit: &str) -> Option<Value> {
        member
            .env
            .run_ids()
            .into_iter()
            .rev()
            .map(|id| member.env.run_record(id))
            .find(|r| r["commit"] == commit && r["finished_at"].is_string())
    }

    /// Waits until every node deployed `commit`; then checks that each wave started it only after
    /// the whole previous wave had been healthy on it for the soak.
    fn goes_through_the_waves(&self, commit: &str) {
        wait_until(&format!("the whole fleet on {commit}"), Duration::from_secs(40), || {
            self.members.iter().all(|m| deployed(&m.env).as_deref() == Some(commit))
        });
        let waves = self.waves();
        for pair in waves.windows(2) {
            let finished =
                pair[0].iter().map(|m| time(&self.run_of(m, commit).unwrap()["finished_at"])).max().unwrap();
            for m in &pair[1] {
                let started = time(&self.run_of(m, commit).unwrap()["started_at"]);
                let gap = started.duration_since(finished).unwrap_or_else(|_| {
                    panic!("{} started {commit} before its previous wave was done", m.name)
                });
                assert!(
                    gap >= SOAK,
                    "{} started {commit} {gap:?} after the previous wave, less than the soak",
                    m.name
                );
            }
        }
    }

    /// The members by wave, as each node's own `troops status --json` places it.
    fn waves(&self) -> Vec<Vec<&Member>> {
        ["wave 1 of 3 (canary)", "wave 2 of 3 (early)", "wave 3 of 3 (rest)"]
            .iter()
            .map(|wave| {
                let members: Vec<&Member> =
                    self.members.iter().filter(|m| m.env.status_json()["wave"] == *wave).collect();
                assert!(!members.is_empty(), "nobody in {wave}");
                members
            })
            .collect()
    }
}

/// The daemon's log line of its newest status publish.
pub(super) fn last_published(member: &Member) -> Option<String> {
    member.daemon.log().lines().rev().find(|l| l.contains("status published")).map(str::to_owned)
}

/// The node's deployed commit, read from its loose ref file: the waits poll a dozen nodes, and a
/// `git` process per node and poll would load the machine more than the fleet does.
fn deployed(env: &Env) -> Option<String> {
    std::fs::read_to_string(env.repo().join("refs/troops/deployed")).ok().map(|s| s.trim().to_owned())
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(value.as_str().unwrap().trim_end_matches('Z')).unwrap()
}

/// `troops fleet --json` in `clone` (not a node), against the status remote.
pub(super) fn fleet_json(hub: &Env, clone: &Path) -> Value {
    let out = hub
        .troops(&["--state-dir", "/nonexistent", "fleet", "--remote", "status", "--json"])
        .current_dir(clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A node's entry in `troops fleet --json` without `updated_at` and the computed fields.
fn news(entry: &Value) -> Value {
    let mut entry = entry.clone();
    for key in ["updated_at", "behind", "age_seconds", "stale", "wave_index"] {
        entry.as_object_mut().unwrap().remove(key);
    }
    entry
}

#[test]
fn a_fleet_rolls_out_in_waves_and_holds_what_failed_on_the_canary() {
    let fleet = fleet();
    let clone = fleet.hub.path("clone");
    fleet.hub.git(
        fleet.hub.tmp.path(),
        &["clone", "-q", &fleet.mirror.display().to_string(), &clone.display().to_string()],
    );
    fleet.hub.git(&clone, &["remote", "add", "status", &fleet.hub.path("status.git").display().to_string()]);

    // A first commit: canary, then early, then the rest, each after the soak.
    let (first, _) = fleet.release(GOOD, "first");
    fleet.goes_through_the_waves(&first);
    // The operator's clone believes the nodes' status by the keys of what it has checked out.
    fleet.hub.git(&clone, &["pull", "-q", "origin", "main"]);

    // A commit whose check fails on the canary is rolled back there and runs nowhere else: every
    // other node holds it.
    let (bad, _) = fleet.release(BAD_ON_CANARY, "bad on the canary");
    let canary = fleet.member("node-00");
    wait_until("the canary's rolled back run of the bad commit", Duration::from_secs(20), || {
        fleet.run_of(canary, &bad).is_some_and(|r| r["status"] == "rolled_back")
    });
    assert_eq!(
        deployed(&canary.env).as_deref(),
        Some(first.as_str()),
        "the canary is back on the first commit"
    );
    wait_until("every other node holding the bad commit", Duration::from_secs(20), || {
        fleet.members[1..].iter().all(|m| {
            let hold: Option<Value> = std::fs::read(m.env.state.join("rollout.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            hold.is_some_and(|h| h["commit"] == bad.as_str() && h["halted"] == true)
        })
    });
    for m in &fleet.members[1..] {
        let status = m.env.status_json();
        assert_eq!(status["fleet"]["state"], "held", "{}", m.name);
        assert_eq!(m.env.run_ids(), [1], "{} ran something after the first commit", m.name);
        let why = m.env.ok(&["status"]);
        assert!(
            why.contains(&format!(
                "{} rolled back on node-00 (canary); held until a newer commit",
                &bad[..12]
            )),
            "{}: {why}",
            m.name
        );
    }
    // Each node's daemon says when it published; `troops fleet` is asked once they all have.
    wait_until("every node publishing the hold", Duration::from_secs(20), || {
        fleet.members[1..].iter().all(|m| last_published(m).is_some_and(|l| l.contains("state=held")))
            && last_published(canary).is_some_and(|l| l.contains("state=rolled back"))
    });
    wait_until("troops fleet showing 11 held and the canary rolled back", Duration::from_secs(20), || {
        fleet_json(&fleet.hub, &clone)["summary"]
            .as_str()
            .unwrap()
            .contains("11 held, 1 rolled back (node-00: run 2: check `web` failed")
    });
    let table = text(
        &fleet
            .hub
            .troops(&["--state-dir", "/nonexistent", "fleet", "--remote", "status"])
            .current_dir(&clone)
            .output()
            .unwrap()
            .stdout,
    );
    assert!(table.lines().next().unwrap().starts_with("HOST"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("node-00"), "the canary's wave first:\n{table}");
    assert!(table.contains("held") && table.contains("rolled back"), "{table}");

    // The next good commit goes through every wave again.
    let (fixed, pushed) = fleet.release(GOOD, "fixed");
    fleet.goes_through_the_waves(&fixed);
    let whole_fleet = pushed.elapsed();

    // What the fleet view says of each node is what the node says of itself.
    let all_healthy = format!("12 healthy on {}", &fixed[..12]);
    wait_until(
        "every node publishing that it is healthy on the fixed commit",
        Duration::from_secs(20),
        || {
            fleet.members.iter().all(|m| {
                last_published(m)
                    .is_some_and(|l| l.contains("state=healthy") && l.contains(&format!("deployed={fixed}")))
            })
        },
    );
    wait_until("troops fleet showing all 12 healthy", Duration::from_secs(15), || {
        fleet_json(&fleet.hub, &clone)["summary"] == all_healthy.as_str()
    });
    wait_until(
        "troops fleet --json matching every node's troops status --json",
        Duration::from_secs(15),
        || {
            let view = fleet_json(&fleet.hub, &clone);
            let nodes = view["nodes"].as_array().unwrap();
            nodes.len() == NODES
                && fleet.members.iter().all(|m| {
                    let own = m.env.status_json()["fleet"].clone();
                    nodes.iter().any(|n| n["host"] == m.name.as_str() && news(n) == news(&own))
                })
        },
    );
    fleet.hub.git(&clone, &["fetch", "-q", "origin"]);
    let view = fleet_json(&fleet.hub, &clone);
    assert_eq!(view["summary"], all_healthy);
    assert!(view["nodes"].as_array().unwrap().iter().all(|n| n["behind"] == 0 && n["stale"] == false));
    // On a node, `troops fleet` reads the node's status remote.
    let on_node = fleet.member("node-05").env.ok(&["fleet"]);
    assert!(on_node.contains("12 healthy on"), "{on_node}");

    let publishes: Vec<u64> = fleet
        .members
        .iter()
        .flat_map(|m| {
            m.daemon
                .log()
                .lines()
                .filter(|l| l.contains("status published"))
                .filter_map(|l| l.split("ms=").nth(1)?.split_whitespace().next()?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    let ssh: Vec<u64> = fleet.members[NODES - 1]
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("status published"))
        .filter_map(|l| l.split("ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    eprintln!(
        "MEASURE: commit to {NODES} nodes healthy: {:.1}s (ideal 2 x soak {}s + intervals); status publishes: {} local, mean {} ms; over SSH: {}, mean {} ms",
        whole_fleet.as_secs_f64(),
        SOAK.as_secs(),
        publishes.len(),
        publishes.iter().sum::<u64>() / publishes.len().max(1) as u64,
        ssh.len(),
        ssh.iter().sum::<u64>() / ssh.len().max(1) as u64,
    );
}

/// Two nodes without daemons (cron's `troops pull`): node-00 the canary, node-01 the wave after.
struct Pair {
    hub: Env,
    work: DeployRepo,
    status: PathBuf,
    canary: Env,
    later: Env,
}

/// The pair's plan: canary node-00, then node-01 after `soak`.
fn pair_plan(soak: &str) -> String {
    format!("[rollout]\nwaves = [ {{ name = \"canary\", hosts = [\"node-00\"] }}, {{ name = \"later\", hosts = [\"node-01\"] }} ]\nsoak = \"{soak}\"\n\n[[step]]\nname = \"deploy\"\nrun = \"echo deployed $TROOPS_COMMIT\"\n")
}

fn pair(soak: &str) -> Pair {
    let hub = Env::new();
    let mirror = bare(&hub, "mirror.git");
    let status = bare(&hub, "status.git");
    let node = |name: &str| {
        let env = Env::new();
        env.write_config(&format!("hostname = \"{name}\"\nstatus_remote = \"status\"\n"));
        env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
        env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
        env
    };
    let (canary, later) = (node("node-00"), node("node-01"));
    let work = hub.deploy_repo("work");
    work.add_node_key(&canary, "node-00");
    work.add_node_key(&later, "node-01");
    work.commit(&hub, &[("troops.toml", &pair_plan(soak))], "plan");
    Pair { hub, work, status, canary, later }
}

impl Pair {
    fn release(&self, message: &str) -> String {
        let commit = self.work.commit(&self.hub, &[("x", message)], message);
        let out =
            self.work.push(&self.hub, &self.hub.path("mirror.git").display().to_string(), &["HEAD:main"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        commit
    }

    /// The status document `reference` holds on the status remote, if any.
    fn published(&self, reference: &str) -> Option<Value> {
        let mut command = std::process::Command::new("git");
        self.hub.hermetic(&mut command);
        let out = command
            .arg("--git-dir")
            .arg(&self.status)
            .arg("show")
            .arg(format!("{reference}:status.json"))
            .output()
            .unwrap();
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Writes `doc` at `reference` on the status remote, as whoever can write there (unsigned).
    fn forge(&self, reference: &str, doc: &Value) {
        put_status(&self.hub, &self.status, reference, doc.to_string().as_bytes(), None);
    }

    /// Writes `doc` at `reference` on the status remote signed with `node`'s key: what that node
    /// says (or whoever stole its key).
    fn say(&self, reference: &str, doc: &Value, node: &Env) {
        let key = node.state.join("ssh/id_ed25519");
        put_status(&self.hub, &self.status, reference, doc.to_string().as_bytes(), Some(&key));
    }
}

/// The time now, as a status document writes it.
pub(super) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// `doc` dated now: newer than any document of its host written before.
pub(super) fn dated(mut doc: Value) -> Value {
    doc["updated_at"] = now().into();
    doc
}

/// A status document of `host`, `state` on `deployed`, as troops writes one.
pub(super) fn status_doc(host: &str, state: &str, deployed: &str) -> Value {
    serde_json::json!({
        "schema": 1, "host": host, "version": "0.2.0", "roles": [], "wave": "canary",
        "tip": deployed, "deployed": deployed, "state": state, "since": "2020-01-01T00:00:00.000Z",
        "run": null, "hold": null, "quarantined": [], "checks": [], "heartbeat_seconds": 3600,
        "updated_at": "2020-01-01T00:00:00.000Z"
    })
}

#[test]
fn a_pulled_commit_waits_for_the_canary_but_a_push_or_a_deploy_by_a_person_does_not() {
    let p = pair("1h");
    let first = p.release("first");
    // The canary (wave 1) goes at once; its in-process pull publishes its status in the background.
    let out = p.canary.ok(&["pull"]);
    assert_eq!(deployed(&p.canary).as_deref(), Some(first.as_str()), "{out}");
    wait_until("the canary's status on the status remote", Duration::from_secs(20), || {
        p.published("refs/troops/status/node-00")
            .is_some_and(|d| d["state"] == "healthy" && d["deployed"] == first.as_str())
    });

    // node-01 pulls it, and waits: the canary has not been healthy on it for the soak (1h).
    let out = p.later.ok(&["pull"]);
    let waiting = format!("{} is not run yet: wave 2 of 2 (later): waiting for 1 of 1 canary nodes healthy on {} for 1h; 1 healthy since ", &first[..12], &first[..12]);
    assert!(out.contains(&waiting), "{out}");
    assert_eq!(deployed(&p.later), None);
    let status = p.later.ok(&["status"]);
    assert!(status.contains("wave      wave 2 of 2 (later)"), "{status}");
    assert!(status.contains("state     held since "), "{status}");
    assert!(status.contains(": wave 2 of 2 (later): waiting for 1 of 1 canary nodes"), "{status}");
    assert!(p.later.ok(&["deploy", "--dry-run"]).contains("wave 2 of 2 (later): a pulled commit waits"));
    // The daemon-less node's own status went out too, in the background.
    wait_until("node-01's held status on the status remote", Duration::from_secs(20), || {
        p.published("refs/troops/status/node-01").is_some_and(|d| d["state"] == "held")
    });

    // An operator's `troops deploy` is a person's decision: it runs.
    let out = p.later.ok(&["deploy"]);
    assert_eq!(deployed(&p.later).as_deref(), Some(first.as_str()), "{out}");

    // A status ref that speaks for another host is no report: an impostor's word that the canary
    // has long been healthy on the next commit does not let it through.
    let second = p.release("second");
    let mut forged = p.published("refs/troops/status/node-00").unwrap();
    forged["deployed"] = second.as_str().into();
    forged["run"]["commit"] = second.as_str().into();
    forged["since"] = "2020-01-01T00:00:00.000Z".into();
    p.forge("refs/troops/status/impostor", &forged);
    let out = p.later.run(&["pull"]);
    assert!(
        text(&out.stdout).contains(&format!("{} is not run yet", &second[..12])),
        "{}",
        crate::support::combined(&out)
    );
    assert_eq!(deployed(&p.later).as_deref(), Some(first.as_str()));
    let fleet = p.later.run(&["fleet"]);
    assert!(
        text(&fleet.stdout).contains("refs/troops/status/impostor: not believed (unsigned): commit "),
        "{}",
        crate::support::combined(&fleet)
    );
    // The same words at the canary's own ref, by anyone who may write there, are not the canary's.
    p.forge("refs/troops/status/node-00", &forged);
    let out = p.later.ok(&["pull"]);
    assert!(out.contains(&format!("{} is not run yet: wave 2 of 2 (later): waiting for 1 of 1 canary nodes healthy on {} for 1h; none healthy yet; node-00's document is not believed: unsigned: commit ", &second[..12], &second[..12])), "{out}");
    // The canary's own words, backdated by years, do not skip the soak: it is measured from when
    // this node first saw the canary healthy on the commit.
    forged["updated_at"] = now().into();
    p.say("refs/troops/status/node-00", &forged, &p.canary);
    let out = p.later.ok(&["pull"]);
    assert!(out.contains(&format!("{} is not run yet: wave 2 of 2 (later): waiting for 1 of 1 canary nodes healthy on {} for 1h; 1 healthy since ", &second[..12], &second[..12])), "{out}");
    assert_eq!(deployed(&p.later).as_deref(), Some(first.as_str()), "{out}");

    // A push straight to the node is a person's decision too, even of a commit the canary never ran.
    let third = p.work.commit(&p.hub, &[("x", "third")], "third");
    let out = p.work.push(&p.hub, &p.later.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(deployed(&p.later).as_deref(), Some(third.as_str()), "{}", text(&out.stderr));
}

#[test]
fn a_status_remote_that_is_down_or_hangs_never_fails_or_holds_up_a_run_and_is_retried() {
    // A status remote that hangs: it takes the connection and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = Env::new();
    env.write_config("hostname = \"node-00\"\ninterval = \"300ms\"\njitter = \"0s\"\nstatus_remote = \"status\"\nfetch_timeout = \"12s\"\n");
    env.init();
    let hanging = format!("ssh://root@127.0.0.1:{}/status.git", silent.local_addr().unwrap().port());
    env.git(&env.repo(), &["remote", "add", "status", &hanging]);
    let daemon = Daemon::start(&env);
    // The daemon's first round with the status remote connects, and hangs for 12 s from there.
    let mut hung = accept_within(&silent, "the daemon to connect to the status remote", BUDGET);
    let work = env.deploy_repo("work");
    let first = work.commit(&env, &[("troops.toml", "[[step]]\nname = \"a\"\nrun = \"true\"\n")], "first");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(deployed(&env).as_deref(), Some(first.as_str()));
    // The push ended while the status remote still hangs: it did not wait for it.
    assert!(still_open(&mut hung), "the status remote gave up before the push ended:\n{}", daemon.log());
    assert!(!daemon.log().contains("status published"), "{}", daemon.log());

    // One that refuses: logged, and the run is a success all the same.
    let refusing = format!("ssh://root@127.0.0.1:{}/status.git", crate::support::sshd::closed_port());
    env.git(&env.repo(), &["remote", "set-url", "status", &refusing]);
    let second = work.commit(&env, &[("x", "2")], "second");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(deployed(&env).as_deref(), Some(second.as_str()));
    wait_until("the refused status push logged", Duration::from_secs(40), || {
        daemon
            .log()
            .contains("WARN status not published error=pushing refs/troops/status/node-00 to remote status")
    });

    // Back up: the next try publishes what is true now.
    let status = bare(&env, "status.git");
    env.git(&env.repo(), &["remote", "set-url", "status", &status.display().to_string()]);
    wait_until("the status published once the remote is back", Duration::from_secs(20), || {
        daemon.log().contains(&format!("state=healthy deployed={second}"))
    });
    let published = env.git(
        env.tmp.path(),
        &["--git-dir", &status.display().to_string(), "show", "refs/troops/status/node-00:status.json"],
    );
    let doc: Value = serde_json::from_str(&published).unwrap();
    assert_eq!((doc["state"].as_str(), doc["deployed"].as_str()), (Some("healthy"), Some(second.as_str())));
    drop(silent);
}

#[test]
fn the_next_wave_goes_only_on_evidence_it_can_read_and_date_itself() {
    // No soak: the moment node-01 sees the canary healthy on a commit, it may run it. So each hold
    // below is for want of evidence, and the last pull shows what evidence does.
    let p = pair("0s");
    let first = p.release("first");
    let holds = |says: &str| {
        let out = p.later.run(&["pull"]);
        let said = crate::support::combined(&out);
        assert!(
            said.contains(&format!("{} is not run yet: wave 2 of 2 (later): ", &first[..12])),
            "{says}:\n{said}"
        );
        assert!(said.contains(says), "not {says:?}:\n{said}");
        assert_eq!(deployed(&p.later), None, "{says}:\n{said}");
        said
    };
    let canary = "refs/troops/status/node-00";

    // Nobody has reported: the plan names the canary, and it has said nothing.
    holds("none healthy yet; node-00: no status document");

    // Signed by the canary: a document for another host at its ref; a newer schema; one over the
    // size limit; one dated far ahead of node-01's clock.
    let said = |doc: Value| p.say(canary, &doc, &p.canary);
    said(dated(status_doc("node-05", "healthy", &first)));
    holds("node-00's document is not believed: misnamed: it speaks for another host, \"node-05\"");
    let mut newer = dated(status_doc("node-00", "healthy", &first));
    newer["schema"] = 2.into();
    said(newer);
    holds("has schema 2; this troops reads 1");
    let mut large = dated(status_doc("node-00", "healthy", &first));
    large["padding"] = "x".repeat(300 * 1024).into();
    said(large);
    holds("bytes, over the 262144 a status document may have");
    let mut ahead = status_doc("node-00", "healthy", &first);
    ahead["updated_at"] = "2100-01-01T00:00:00.000Z".into();
    said(ahead);
    holds("unreadable: it is dated 2100-01-01T00:00:00.000Z, more than 5m ahead of this reader's clock");

    // The canary died deploying it: its report goes stale three heartbeats after node-01 last saw
    // it change, by node-01's clock, and a stale member is missing evidence, not absent.
    let mut dying = dated(status_doc("node-00", "deploying", &first));
    dying["heartbeat_seconds"] = 1.into();
    said(dying);
    holds("none healthy yet");
    wait_until("node-01 saying the canary is stale", Duration::from_secs(20), || {
        holds("").contains("node-00 is stale: its status has not changed here since ")
    });

    // The canary healthy on it, but the status remote cannot be fetched: node-01 does not know
    // what the canary says now.
    said(dated(status_doc("node-00", "healthy", &first)));
    let status = p.status.display().to_string();
    p.later.git(&p.later.repo(), &["remote", "set-url", "status", "/nonexistent/status.git"]);
    holds("the status remote status could not be fetched: ");
    let status_says = p.later.ok(&["status"]);
    assert!(status_says.contains("next      held: "), "{status_says}");
    p.later.git(&p.later.repo(), &["remote", "set-url", "status", &status]);
    let out = p.later.ok(&["pull"]);
    assert_eq!(deployed(&p.later).as_deref(), Some(first.as_str()), "{out}");
}

/// The bytes of the files under `path`.
fn size_of(path: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(path) else { return 0 };
    dir.flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => size_of(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// The peak resident memory of process `pid` so far, in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What the node recorded of its last fetch of the status refs.
fn sightings(env: &Env) -> Value {
    std::fs::read(env.state.join("sightings.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn a_huge_status_ref_is_stopped_as_it_downloads_and_leaves_the_node_as_it_was() {
    let hub = Env::new();
    let mirror = bare(&hub, "mirror.git");
    let status = bare(&hub, "status.git");
    let sshd = Sshd::start(&hub.path("sshd"));
    let node = Env::new();
    node.write_config(
        "hostname = \"node-01\"\ninterval = \"2s\"\njitter = \"0s\"\nstatus_remote = \"status\"\n",
    );
    node.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
    let key = std::fs::read_to_string(node.state.join("ssh/id_ed25519.pub")).unwrap();
    sshd.authorize(key.trim());
    let known = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public_key());
    std::fs::write(node.state.join("ssh/known_hosts"), known).unwrap();
    node.git(&node.repo(), &["remote", "add", "status", &sshd.url(&status)]);
    let daemon = Daemon::start(&node);
    // The node's own status published, and the status refs fetched over SSH.
    wait_until("the node's status published and fetched", Duration::from_secs(30), || {
        sightings(&node)["fetch"]["error"].is_null() && daemon.log().contains("status published")
    });
    let (repo_before, peak_before) = (size_of(&node.state), peak_kib(daemon.child.id()));

    // A peer's ref holding 48 MB, random so that no compression makes it small on the wire.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    put_status(&hub, &status, "refs/troops/status/hog", &bytes, None);
    let started = Instant::now();
    wait_until("the node stopping the huge download", Duration::from_secs(60), || {
        sightings(&node)["fetch"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than the 33554432 bytes a fetch of them may bring; stopped"))
    });
    let stopped = started.elapsed();
    let (repo_after, peak_after) = (size_of(&node.state), peak_kib(daemon.child.id()));
    drop(daemon);

    let leftovers: Vec<_> = std::fs::read_dir(node.state.join("status.git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name.to_string_lossy().starts_with("tmp_"))
        .collect();
    assert!(leftovers.is_empty(), "a stopped download left {leftovers:?}");
    assert!(
        repo_after < repo_before + (1 << 20),
        "the state dir grew from {repo_before} to {repo_after} bytes"
    );
    assert!(
        peak_after < peak_before + 8 * 1024,
        "the daemon's peak memory grew from {peak_before} to {peak_after} KiB"
    );
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(node.state.join("status.git"))
        .args(["rev-parse", "--verify", "--quiet", "refs/troops/status/hog"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node took the huge ref in");
    eprintln!(
        "MEASURE: a 48 MiB status ref over SSH: stopped {:.1}s after it was pushed; state dir {} -> {} KiB; daemon peak RSS {} -> {} KiB",
        stopped.as_secs_f64(),
        repo_before / 1024,
        repo_after / 1024,
        peak_before,
        peak_after
    );
}

/// Writes `doc` at `reference` of the status remote `status`, as whoever can write there: signed
/// with the private key file `key` if one is given.
pub(super) fn forge(hub: &Env, status: &Path, reference: &str, doc: &Value, key: Option<&Path>) {
    put_status(hub, status, reference, doc.to_string().as_bytes(), key);
}

/// A new SSH key of `host`, its public half committed as `keys/<host>.pub` in the operator's
/// `clone` (a host that clone believes); returns the private key file.
pub(super) fn trusted_key(hub: &Env, clone: &Path, host: &str) -> PathBuf {
    let key = hub.path(&format!("{host}-key"));
    crate::support::ssh_keygen(&key, host);
    std::fs::create_dir_all(clone.join("keys")).unwrap();
    std::fs::copy(key.with_extension("pub"), clone.join(format!("keys/{host}.pub"))).unwrap();
    hub.git(clone, &["add", "keys"]);
    hub.git(clone, &["commit", "-q", "-m", &format!("{host}'s key")]);
    key
}

#[test]
fn a_status_document_that_would_drive_the_terminal_prints_escaped() {
    let hub = Env::new();
    let status = bare(&hub, "status.git");
    let clone = hub.path("clone");
    hub.git(hub.tmp.path(), &["init", "-q", &clone.display().to_string()]);
    hub.git(&clone, &["remote", "add", "status", &status.display().to_string()]);
    let commit = "1".repeat(40);
    let mut doc = status_doc("evil", "failed", &commit);
    doc["roles"] = serde_json::json!(["web", "\u{1b}[2J\u{1b}[H"]);
    doc["wave"] = "canary\nnode-99  web  rest  0123456789ab  0  healthy  1s".into();
    doc["deployed"] = "\u{1b}[31m0123456789abcdef".into();
    doc["run"] = serde_json::json!({
        "id": 7, "commit": commit, "trigger": "pull", "status": "failed",
        "started_at": "2020-01-01T00:00:00.000Z", "finished_at": "2020-01-01T00:00:01.000Z",
        "error": "nothing failed\r\u{1b}[K"
    });
    doc["hold"] = serde_json::json!({
        "commit": commit, "wave": "wave 1 of 1 (x)", "why": "\u{1b}]0;owned\u{7}waiting",
        "until": null, "halted": false, "since": "2020-01-01T00:00:00.000Z"
    });
    let key = trusted_key(&hub, &clone, "evil");
    forge(&hub, &status, "refs/troops/status/evil", &doc, Some(&key));
    let fleet = |args: &[&str]| {
        let mut command = hub.troops(&["--state-dir", "/nonexistent", "fleet", "--remote", "status"]);
        let out = command.args(args).current_dir(&clone).output().unwrap();
        assert!(out.status.success(), "{}", crate::support::combined(&out));
        text(&out.stdout)
    };

    let table = fleet(&[]);
    assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
    assert_eq!(table.lines().count(), 4, "the header, evil, its hold, the summary:\n{table}");
    for escaped in [
        "evil  web,\\u{1b}[2J\\u{1b}[H  canary\\nnode-99  web  rest  0123456789ab  0  healthy  1s  \\u{1b}[31m0123456  ?",
        "evil: \\u{1b}]0;owned\\u{7}waiting",
        "1 failed (evil: nothing failed\\r\\u{1b}[K)",
    ] {
        assert!(table.contains(escaped), "{escaped:?} in:\n{table}");
    }
    // --json keeps a peer's words as they are, in JSON's own escapes.
    let json: Value = serde_json::from_str(&fleet(&["--json"])).unwrap();
    assert_eq!(json["nodes"][0]["roles"][1], "\u{1b}[2J\u{1b}[H");
}

/// A status remote `status.git` in a hub, and node-00 publishing to it (its branch has a commit
/// with its key, none deployed).
pub(super) fn publishing_node() -> (Env, PathBuf, Env) {
    let hub = Env::new();
    let status = bare(&hub, "status.git");
    let node = Env::new();
    node.write_config("hostname = \"node-00\"\nstatus_remote = \"status\"\n");
    node.init();
    node.git(&node.repo(), &["remote", "add", "status", &status.display().to_string()]);
    // Its branch holds its key: the node believes its own status by it.
    let work = node.deploy_repo("work");
    work.add_node_key(&node, "node-00");
    work.commit(&node, &[], "node-00's key");
    work.publish(&node);
    (hub, status, node)
}

#[test]
fn a_nodes_status_chain_stays_short_however_often_it_publishes() {
    let (hub, status, node) = publishing_node();
    let git = status.display().to_string();
    let mut lengths = Vec::new();
    for _ in 0..40 {
        node.ok(&["fleet", "--publish"]);
        let count = hub
            .git(hub.tmp.path(), &["--git-dir", &git, "rev-list", "--count", "refs/troops/status/node-00"]);
        lengths.push(count.trim().parse::<usize>().unwrap());
    }
    // Sixteen commits at most; then a new chain, pushed in place of the old one.
    let expected: Vec<usize> = (0..40).map(|n| n % 16 + 1).collect();
    assert_eq!(lengths, expected);
    // What is not on a chain any more is garbage the status remote collects; what a reader
    // fetches is one commit.
    let reader = Env::new();
    reader.write_config("hostname = \"node-01\"\nstatus_remote = \"status\"\n");
    reader.init();
    reader.git(&reader.repo(), &["remote", "add", "status", &git]);
    reader.ok(&["fleet"]);
    let fetched = reader.git(
        reader.tmp.path(),
        &[
            "--git-dir",
            &reader.state.join("status.git").display().to_string(),
            "rev-list",
            "--count",
            "--all",
        ],
    );
    assert_eq!(fetched.trim(), "1", "the reader fetched more than the newest commit");
}

#[test]
fn publishers_at_once_on_one_node_each_land_in_turn_and_the_newest_stays() {
    let (hub, status, node) = publishing_node();
    let git = status.display().to_string();
    for round in 0..5 {
        // A run's background publish, the daemon's and a person's, all at once.
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let mut troops = node.troops(&["fleet", "--publish"]);
                troops.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting troops")
            })
            .collect();
        for publisher in publishers {
            let out = publisher.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", combined(&out));
        }
        let remote = hub.git(hub.tmp.path(), &["--git-dir", &git, "rev-parse", "refs/troops/status/node-00"]);
        let own = node.git(
            node.tmp.path(),
            &[
                "--git-dir",
                &node.state.join("status.git").display().to_string(),
                "rev-parse",
                "refs/troops/published",
            ],
        );
        assert_eq!(remote, own, "round {round}: the remote holds an older document than the node's last");
    }
}

#[test]
fn in_a_clone_fleet_says_where_to_look_takes_a_url_and_strict_gates_on_failures() {
    let hub = Env::new();
    let status = bare(&hub, "status.git");
    let mirror = bare(&hub, "mirror.git");
    let clone = hub.path("clone");
    hub.git(hub.tmp.path(), &["init", "-q", &clone.display().to_string()]);
    hub.git(&clone, &["remote", "add", "origin", &mirror.display().to_string()]);
    let fleet = |args: &[&str], vars: &[(&str, &Path)]| {
        let mut command = hub.troops(&["fleet"]);
        command.env_remove("TROOPS_STATE_DIR").args(args).envs(vars.iter().copied()).current_dir(&clone);
        command.output().unwrap()
    };
    let none = hub.path("no-state");

    // origin holds no status refs: the node's documents are elsewhere, and it says so.
    let out = fleet(&["--state-dir", &none.display().to_string()], &[]);
    assert!(out.status.success(), "{}", combined(&out));
    let said = text(&out.stderr);
    assert!(said.contains("remote origin (") && said.contains("holds no status refs"), "{said}");
    assert!(said.contains("name that remote or its URL with --remote"), "{said}");

    // A URL is a remote too; --strict fails on a failure report and not on a node under way.
    let commit = "1".repeat(40);
    let keys = [trusted_key(&hub, &clone, "web-1"), trusted_key(&hub, &clone, "web-2")];
    let key = |host: &str| Some(if host == "web-1" { keys[0].as_path() } else { keys[1].as_path() });
    forge(&hub, &status, "refs/troops/status/web-1", &status_doc("web-1", "healthy", &commit), key("web-1"));
    forge(
        &hub,
        &status,
        "refs/troops/status/web-2",
        &status_doc("web-2", "deploying", &commit),
        key("web-2"),
    );
    let url = status.display().to_string();
    let strict = |args: &[&str]| {
        let mut all = vec!["--state-dir", none.to_str().unwrap(), "--remote", &url];
        all.extend_from_slice(args);
        fleet(&all, &[])
    };
    let out = strict(&["--strict"]);
    assert_eq!(out.status.code(), Some(1), "the reports are old, so stale: {}", combined(&out));
    let fresh = |host: &str, state: &str| {
        let mut doc = status_doc(host, state, &commit);
        doc["updated_at"] = humantime::format_rfc3339_millis(SystemTime::now()).to_string().into();
        forge(&hub, &status, &format!("refs/troops/status/{host}"), &doc, key(host));
    };
    fresh("web-1", "healthy");
    fresh("web-2", "deploying");
    let out = strict(&["--strict"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains("web-2"), "{}", combined(&out));
    fresh("web-2", "rolled_back");
    assert_eq!(strict(&["--strict"]).status.code(), Some(1));
    assert_eq!(strict(&[]).status.code(), Some(0), "without --strict it only shows");

    // TROOPS_STATE_DIR left in the shell: the fleet is read as that node sees it, and it says so.
    let node = Env::new();
    node.ok(&["init"]);
    let out = fleet(&["--remote", &url], &[("TROOPS_STATE_DIR", &node.state)]);
    let said = text(&out.stderr);
    assert!(
        said.contains("(TROOPS_STATE_DIR is set); unset it to read this clone's remote instead"),
        "{said}"
    );
}

#[test]
fn a_node_whose_branch_forked_from_its_mirror_says_so_everywhere_and_recovers_by_the_readme() {
    let hub = Env::new();
    let mirror = bare(&hub, "mirror.git");
    let status = bare(&hub, "status.git");
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nstatus_remote = \"status\"\n");
    env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
    env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
    let work = hub.deploy_repo("work");
    work.add_node_key(&env, "web-1");
    let plan = "[[step]]\nname = \"deploy\"\nrun = \"echo deployed $TROOPS_COMMIT\"\n";
    let base = work.commit(&hub, &[("troops.toml", plan)], "base");
    let old = work.commit(&hub, &[("x", "old")], "old history");
    let push = |args: &[&str]| {
        let out = work.push(&hub, &mirror.display().to_string(), args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    push(&["HEAD:main"]);
    env.ok(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(old.as_str()));

    // The mirror is force-pushed onto another history.
    hub.git(&work.path, &["reset", "-q", "--hard", &base]);
    let new = work.commit(&hub, &[("x", "new")], "new history");
    push(&["--force", "HEAD:main"]);
    let out = env.run(&["pull"]);
    let said = combined(&out);
    assert!(said.contains("and remotes origin have forked (a force-pushed mirror?)"), "{said}");
    assert!(said.contains("When a node and its remotes fork"), "{said}");
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(old.as_str()), "nothing moved");

    let human = env.ok(&["status"]);
    assert!(human.contains("\ndiverged  remote origin has forked from branch main at "), "{human}");
    let json = env.status_json();
    assert_eq!(json["diverged"]["remotes"], serde_json::json!(["origin"]), "{json}");
    assert_eq!(json["diverged"]["tip"], old, "{json}");
    assert_eq!(json["fleet"]["diverged"], json["diverged"], "the status document says it too");
    env.ok(&["fleet", "--publish"]);
    let table = env.ok(&["fleet"]);
    assert!(table.contains("healthy, diverged"), "{table}");
    assert!(table.contains("web-1: remote origin has forked from branch main at"), "{table}");
    assert!(table.contains("1 diverged from their remotes (web-1)"), "{table}");

    // The README's recovery when the mirror's history is the right one.
    let repo = env.repo().display().to_string();
    env.git(
        env.tmp.path(),
        &["--git-dir", &repo, "update-ref", "refs/heads/main", "refs/remotes/origin/main"],
    );
    assert!(env.status_json()["diverged"].is_null(), "the branch moved: no longer what was found");
    env.ok(&["deploy"]);
    assert_eq!(env.deployed().as_deref(), Some(new.as_str()));
    env.ok(&["pull"]);
    assert!(env.status_json()["diverged"].is_null());
}
