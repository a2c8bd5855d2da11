//! A fleet on one machine whose nodes all write to one status repo with one shared write key, as
//! with one GitHub or GitLab deploy key: any node can write any node's status ref. Only what a
//! node signed with its own key (`keys/<host>.pub` of the deploy repo) is believed: a forged
//! "healthy" canary opens no wave, a forged failure rolls nothing back, a ref set back to an old
//! genuine document is refused, and `troops fleet` lists each refused document with its reason.
//! A genuine failure at quorum, with `fleet_rollback`, rolls back a node that ran the commit early.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::fleet::{dated, status_doc};
use crate::support::{combined, put_status, text, wait_until, DeployRepo, Env};

/// canary node-00, then node-01 and node-02; no soak; a check that runs `check`, rolled back when
/// it fails; `fleet_rollback` on.
fn plan(check: &str) -> String {
    format!(
        "[rollout]\n\
         waves = [ {{ name = \"canary\", hosts = [\"node-00\"] }}, {{ name = \"later\", hosts = [\"node-01\", \"node-02\"] }} ]\n\
         soak = \"0s\"\n\
         quorum = 1.0\n\
         fleet_rollback = true\n\n\
         [health]\non_failure = \"rollback\"\n\n\
         [[step]]\nname = \"deploy\"\nrun = \"echo deployed $TROOPS_COMMIT\"\n\n\
         [[check]]\nname = \"web\"\nrun = '{check}'\nretries = 1\n"
    )
}

/// Fails on the canary only.
const BAD_ON_CANARY: &str = "test \"$TROOPS_HOST\" != node-00";

/// Nodes without daemons (cron's `troops pull`), their keys in the deploy repo, one status repo.
struct Fleet {
    hub: Env,
    work: DeployRepo,
    mirror: PathBuf,
    status: PathBuf,
    nodes: Vec<Env>,
}

fn fleet(hosts: &[&str]) -> Fleet {
    let hub = Env::new();
    let bare = |name: &str| {
        let path = hub.path(name);
        hub.git(hub.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
        path
    };
    let (mirror, status) = (bare("mirror.git"), bare("status.git"));
    let work = hub.deploy_repo("work");
    let nodes = hosts
        .iter()
        .map(|host| {
            let env = Env::new();
            let textfile = env.path("troops.prom");
            env.write_config(&format!(
                "hostname = \"{host}\"\nstatus_remote = \"status\"\n[metrics]\ntextfile = \"{}\"\n",
                textfile.display()
            ));
            env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
            env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
            work.add_node_key(&env, host);
            env
        })
        .collect();
    Fleet { hub, work, mirror, status, nodes }
}

impl Fleet {
    fn release(&self, check: &str, message: &str) -> String {
        let commit = self.work.commit(&self.hub, &[("troops.toml", &plan(check)), ("x", message)], message);
        let out = self.work.push(&self.hub, &self.mirror.display().to_string(), &["HEAD:main"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        commit
    }

    /// The status commit and document `host`'s ref holds on the status remote, if any.
    fn published(&self, host: &str) -> Option<(String, Value)> {
        let reference = format!("refs/troops/status/{host}");
        let git = |args: &[&str]| {
            let mut command = std::process::Command::new("git");
            self.hub.hermetic(&mut command);
            let out = command.arg("--git-dir").arg(&self.status).args(args).output().unwrap();
            out.status.success().then(|| text(&out.stdout))
        };
        let commit = git(&["rev-parse", "--verify", "--quiet", &reference])?;
        let doc = git(&["show", &format!("{reference}:status.json")])?;
        Some((commit.trim().to_owned(), serde_json::from_str(&doc).unwrap()))
    }

    /// Waits until `host`'s published document satisfies `says`.
    fn wait_published(&self, host: &str, what: &str, says: impl Fn(&Value) -> bool) -> String {
        let mut found = None;
        wait_until(&format!("{host}'s status on the status remote: {what}"), Duration::from_secs(30), || {
            found = self.published(host).filter(|(_, doc)| says(doc)).map(|(commit, _)| commit);
            found.is_some()
        });
        found.unwrap()
    }

    /// Writes `doc` at `host`'s status ref as anyone with the shared write key can, signed with
    /// the private key file `key` if one is given.
    fn write(&self, host: &str, doc: &Value, key: Option<&Path>) {
        let reference = format!("refs/troops/status/{host}");
        put_status(&self.hub, &self.status, &reference, doc.to_string().as_bytes(), key);
    }
}

fn deployed(env: &Env) -> Option<String> {
    env.deployed()
}

/// `troops fleet --json` on `node`: the believed hosts, and the refused refs by host with reason.
fn fleet_json(node: &Env) -> Value {
    let out = node.run(&["fleet", "--json"]);
    assert!(out.status.success(), "{}", combined(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused(view: &Value, host: &str) -> Option<String> {
    view["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .map(|r| r["reason"].as_str().unwrap().to_owned())
}

#[test]
fn a_node_with_the_shared_write_key_can_make_no_wave_start_halt_or_roll_back() {
    let f = fleet(&["node-00", "node-01", "node-02"]);
    let (canary, later, rogue) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let rogue_key = rogue.state.join("ssh/id_ed25519");
    let first = f.release("true", "first");
    canary.ok(&["pull"]);
    assert_eq!(deployed(canary).as_deref(), Some(first.as_str()));
    let genuine = f.wait_published("node-00", "healthy on the first commit", |d| {
        d["state"] == "healthy" && d["deployed"] == first.as_str()
    });
    let out = later.ok(&["pull"]);
    assert_eq!(deployed(later).as_deref(), Some(first.as_str()), "the canary's word opened the wave: {out}");

    // A second commit the canary has not run. The rogue node writes that the canary is healthy on
    // it: unsigned, then signed with its own key. Neither opens the next wave.
    let second = f.release("true", "second");
    let mut healthy = dated(status_doc("node-00", "healthy", &second));
    healthy["wave"] = "canary".into();
    for (key, reason) in [(None, "unsigned"), (Some(rogue_key.as_path()), "wrong_key")] {
        f.write("node-00", &dated(healthy.clone()), key);
        let out = later.ok(&["pull"]);
        assert!(out.contains(&format!("{} is not run yet", &second[..12])), "{reason}: {out}");
        assert!(out.contains(&format!("node-00's document is not believed: {reason}: ")), "{reason}: {out}");
        assert_eq!(deployed(later).as_deref(), Some(first.as_str()), "{reason}: {out}");
        let view = fleet_json(later);
        assert_eq!(refused(&view, "node-00").as_deref(), Some(reason), "{view}");
    }
    let table = later.ok(&["fleet"]);
    assert!(
        table.contains("refs/troops/status/node-00: not believed (wrong_key): signed by SHA256:"),
        "{table}"
    );
    assert!(table.contains(", 1 not believed"), "{table}");
    let metrics = std::fs::read_to_string(later.path("troops.prom")).unwrap();
    assert!(metrics.contains("troops_fleet_refused{reason=\"wrong_key\"} 1"), "{metrics}");

    // The rogue writes that the canary failed on the first commit, which every node runs: with
    // fleet_rollback, a believed report would roll them back. This one halts and rolls back nothing.
    let mut failed = dated(status_doc("node-00", "failed", &first));
    failed["run"] = serde_json::json!({
        "id": 9, "commit": first, "trigger": "pull", "status": "failed",
        "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01T00:00:01.000Z", "error": "forged"
    });
    f.write("node-00", &failed, Some(&rogue_key));
    let out = later.ok(&["pull"]);
    assert_eq!(deployed(later).as_deref(), Some(first.as_str()), "{out}");
    assert!(!out.contains("rolling back") && !out.contains("quarantined"), "{out}");
    assert_eq!(later.run_ids().len(), 1, "node-01 ran something: {out}");
    assert!(
        later.node_ref(&format!("refs/troops/bad/{first}")).is_none(),
        "the forged failure quarantined it"
    );
    assert!(!later.ok(&["fleet"]).contains("fleet rollback"), "a forged report decided a rollback");

    // The rogue sets the canary's ref back to its own older, genuine document: refused, and said.
    canary.ok(&["fleet", "--publish"]);
    let newer = f.wait_published("node-00", "a newer document", |d| d["state"] == "healthy");
    assert_ne!(newer, genuine);
    later.ok(&["fleet"]);
    f.hub.git(
        f.hub.tmp.path(),
        &["--git-dir", &f.status.display().to_string(), "update-ref", "refs/troops/status/node-00", &genuine],
    );
    let view = fleet_json(later);
    assert_eq!(refused(&view, "node-00").as_deref(), Some("rewound"), "{view}");
    let table = later.ok(&["fleet"]);
    assert!(table.contains("refs/troops/status/node-00: not believed (rewound): it is dated "), "{table}");
    assert!(table.contains("believed here before: the ref was set back"), "{table}");

    // Unsigned, misnamed and unknown-host documents: ignored, each listed with its reason.
    f.write("node-01", &dated(status_doc("node-01", "failed", &first)), None);
    f.write("node-02", &dated(status_doc("node-00", "healthy", &second)), Some(&rogue_key));
    f.write("ghost", &dated(status_doc("ghost", "failed", &first)), Some(&rogue_key));
    let view = fleet_json(canary);
    for (host, reason) in [("node-02", "misnamed"), ("ghost", "no_key")] {
        assert_eq!(refused(&view, host).as_deref(), Some(reason), "{host}: {view}");
    }
    let hosts: Vec<&str> =
        view["nodes"].as_array().unwrap().iter().map(|n| n["host"].as_str().unwrap()).collect();
    assert!(!hosts.contains(&"ghost") && !hosts.contains(&"node-02"), "{view}");
    // node-01's own ref, unsigned: its peers refuse it (its own node skips its own ref on fetch).
    let view = fleet_json(rogue);
    assert_eq!(refused(&view, "node-01").as_deref(), Some("unsigned"), "{view}");
}

#[test]
fn a_genuine_failure_at_quorum_rolls_back_a_node_that_ran_the_commit_early() {
    let f = fleet(&["node-00", "node-01"]);
    let (canary, early) = (&f.nodes[0], &f.nodes[1]);
    let first = f.release("true", "first");
    canary.ok(&["pull"]);
    f.wait_published("node-00", "healthy on the first commit", |d| d["deployed"] == first.as_str());
    early.ok(&["pull"]);
    assert_eq!(deployed(early).as_deref(), Some(first.as_str()));

    // A commit that fails on the canary only, which a person runs on node-01 first.
    let bad = f.release(BAD_ON_CANARY, "bad on the canary");
    early.ok(&["pull"]);
    let out = early.ok(&["deploy"]);
    assert_eq!(deployed(early).as_deref(), Some(bad.as_str()), "{out}");

    // The canary runs it, fails, rolls back, and says so, signed.
    let out = canary.run(&["pull"]);
    assert_eq!(deployed(canary).as_deref(), Some(first.as_str()), "{}", combined(&out));
    f.wait_published("node-00", "rolled back", |d| d["state"] == "rolled_back");

    // node-01's next pull believes it: 1 of 1 canary nodes at quorum 1.0 says the commit failed.
    let out = early.ok(&["pull"]);
    let why = format!("the fleet reports {} failed: 1 of 1 canary nodes (node-00) at quorum 1", &bad[..12]);
    assert!(
        out.contains(&format!("quarantined {} (rolled back by fleet_rollback ({why}) at ", &bad[..12])),
        "{out}"
    );
    assert_eq!(deployed(early).as_deref(), Some(first.as_str()), "{out}");
    let last = early.run_record(*early.run_ids().last().unwrap());
    assert_eq!((last["trigger"].as_str(), last["commit"].as_str()), (Some("rollback"), Some(first.as_str())));
    // It stays back: the quarantined tip does not run again.
    early.ok(&["pull"]);
    assert_eq!(deployed(early).as_deref(), Some(first.as_str()));
    let table = early.ok(&["fleet"]);
    assert!(table.contains(&format!("fleet rollback: {why}; every node that runs it rolls back")), "{table}");
}
