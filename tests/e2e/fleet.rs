//! A fleet on this machine: a dozen nodes, each with its own state dir, config and daemon, all
//! pulling from one mirror and publishing their status to one status remote (one of them over a
//! real sshd). A commit goes through the rollout waves in order, each only after the previous one
//! has soaked; a commit that fails on the canary is held everywhere else; `troops fleet` says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::sshd::Sshd;
use crate::support::{text, wait_until, DeployRepo, Env};

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

struct Member {
    name: String,
    env: Env,
    daemon: Daemon,
}

struct Fleet {
    hub: Env,
    mirror: PathBuf,
    work: DeployRepo,
    members: Vec<Member>,
    _sshd: Sshd,
}

fn bare(hub: &Env, name: &str) -> PathBuf {
    let path = hub.path(name);
    hub.git(hub.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
    path
}

/// Twelve nodes following `mirror`, publishing to `status.git` (node-11 over SSH), daemons running.
fn fleet() -> Fleet {
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
        members.push(Member { name, env, daemon });
    }
    Fleet { hub, mirror, work, members, _sshd: sshd }
}

impl Fleet {
    /// Commits a plan whose check runs `check`, pushes it to the mirror, returns it and when.
    fn release(&self, check: &str, message: &str) -> (String, Instant) {
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
fn last_published(member: &Member) -> Option<String> {
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
fn fleet_json(hub: &Env, clone: &Path) -> Value {
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

const PAIR_PLAN: &str = "[rollout]\nwaves = [ { name = \"canary\", hosts = [\"node-00\"] }, { name = \"later\", hosts = [\"node-01\"] } ]\nsoak = \"1h\"\n\n[[step]]\nname = \"deploy\"\nrun = \"echo deployed $TROOPS_COMMIT\"\n";

fn pair() -> Pair {
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
    work.commit(&hub, &[("troops.toml", PAIR_PLAN)], "plan");
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

    /// Writes `doc` at `reference` on the status remote, as whoever can write there.
    fn forge(&self, reference: &str, doc: &Value) {
        let file = self.hub.path("forged.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        let git = self.status.display().to_string();
        let blob = self
            .hub
            .git(self.hub.tmp.path(), &["--git-dir", &git, "hash-object", "-w", &file.display().to_string()]);
        let mut command = std::process::Command::new("git");
        self.hub.hermetic(&mut command);
        let mut child = command
            .args(["--git-dir", &git, "mktree"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "100644 blob {blob}\tstatus.json").unwrap();
        let tree = text(&child.wait_with_output().unwrap().stdout).trim().to_owned();
        let commit =
            self.hub.git(self.hub.tmp.path(), &["--git-dir", &git, "commit-tree", &tree, "-m", "forged"]);
        self.hub.git(self.hub.tmp.path(), &["--git-dir", &git, "update-ref", reference, &commit]);
    }
}

#[test]
fn a_pulled_commit_waits_for_the_canary_but_a_push_or_a_deploy_by_a_person_does_not() {
    let p = pair();
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
        text(&fleet.stderr)
            .contains("refs/troops/status/impostor is skipped: it speaks for another host, \"node-00\""),
        "{}",
        crate::support::combined(&fleet)
    );
    // The same words from the canary's own ref do.
    p.forge("refs/troops/status/node-00", &forged);
    let out = p.later.ok(&["pull"]);
    assert_eq!(deployed(&p.later).as_deref(), Some(second.as_str()), "{out}");

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
    let work = env.deploy_repo("work");
    let first = work.commit(&env, &[("troops.toml", "[[step]]\nname = \"a\"\nrun = \"true\"\n")], "first");
    let started = Instant::now();
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(deployed(&env).as_deref(), Some(first.as_str()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the push waited for the status remote: {:?}",
        started.elapsed()
    );
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
