//! One dispatch for every trigger: the same asks of a node without a daemon (the CLI and the hook
//! run them in-process) and of a node whose daemon runs them give the same runs, the same records
//! and the same exit codes.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::{combined, wait_until, DeployRepo, Env};

const GOOD: &str = "[health]\non_failure = \"rollback\"\n[[step]]\nname = \"ok\"\nrun = \"echo ok\"\n";
const BAD: &str = "[health]\non_failure = \"rollback\"\n[[step]]\nname = \"ok\"\nrun = \"exit 1\"\n";

/// One node, its mirror `a.git`, and the deploy repo commits are made in.
struct Node {
    env: Env,
    work: DeployRepo,
    mirror: PathBuf,
    /// Commit ids by the names the scenario gives them, so two nodes' records compare.
    names: Vec<(String, String)>,
    daemon: Option<Daemon>,
}

impl Node {
    fn new(with_daemon: bool) -> Node {
        let env = Env::new();
        env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
        let mirror = env.path("a.git");
        env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &mirror.display().to_string()]);
        env.ok(&["init", &format!("--remote=a={}", mirror.display())]);
        let work = env.deploy_repo("work");
        let daemon = with_daemon.then(|| Daemon::start(&env));
        Node { env, work, mirror, names: Vec::new(), daemon }
    }

    fn commit(&mut self, name: &str, plan: &str) -> String {
        let id = self.work.commit(&self.env, &[("troops.toml", plan), ("name", name)], name);
        self.names.push((id.clone(), name.to_owned()));
        id
    }

    fn name(&self, id: &str) -> String {
        self.names.iter().find(|(i, _)| i == id).map_or(id.to_owned(), |(_, n)| n.clone())
    }

    fn to_mirror(&self) {
        let out = self.work.push(&self.env, &self.mirror.display().to_string(), &["--force", "HEAD:main"]);
        assert!(out.status.success(), "{}", combined(&out));
    }

    /// `troops ARGS`: its exit code.
    fn troops(&self, args: &[&str]) -> i32 {
        self.env.run(args).status.code().unwrap_or(-1)
    }

    /// The runs recorded after `seen` of them.
    fn runs_since(&self, seen: usize) -> Vec<Run> {
        let ids = self.env.run_ids();
        ids[seen.min(ids.len())..]
            .iter()
            .map(|id| {
                let record = self.env.run_record(*id);
                let field = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
                Run {
                    trigger: field("trigger"),
                    status: field("status"),
                    commit: self.name(&field("commit")),
                }
            })
            .collect()
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

/// A run, as the scenario compares it: its trigger, status and the name of its commit.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    trigger: String,
    status: String,
    commit: String,
}

/// What one ask of the scenario gave: its exit code and the runs it made.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    what: &'static str,
    exit: i32,
    runs: Vec<Run>,
}

/// The scenario: a push, pulls, a failed pull and its rollback, a person's deploys and rollback,
/// and pulls with no remote to fetch.
fn scenario(with_daemon: bool) -> Vec<Asked> {
    let mut node = Node::new(with_daemon);
    let mut steps = Vec::new();
    let mut seen = 0;
    let mut step = |node: &Node, what: &'static str, exit: i32| {
        let runs = node.runs_since(seen);
        seen += runs.len();
        steps.push(Asked { what, exit, runs });
    };

    node.commit("A", GOOD);
    let out = node.work.push(&node.env, &node.env.repo().display().to_string(), &["HEAD:main"]);
    step(&node, "git push of a good commit", i32::from(!out.status.success()));
    node.commit("B", GOOD);
    node.to_mirror();
    step(&node, "pull of a good commit", node.troops(&["pull"]));
    node.commit("C", BAD);
    node.to_mirror();
    step(&node, "pull of a bad commit", node.troops(&["pull"]));
    step(&node, "pull of nothing new", node.troops(&["pull"]));
    step(&node, "deploy of the quarantined tip", node.troops(&["deploy"]));
    let a = node.names[0].0.clone();
    step(&node, "deploy of an older commit", node.troops(&["deploy", "--commit", &a]));
    step(&node, "rollback", node.troops(&["rollback"]));
    let b = node.names[1].0.clone();
    step(&node, "rollback to the deployed commit", node.troops(&["rollback", "--to", &b]));

    // The mirror goes away, and the tip moves by hand: the pull has no remote, but a due tip.
    std::fs::rename(&node.mirror, node.env.path("gone.git")).unwrap();
    let d = node.commit("D", GOOD);
    let git_dir = node.env.repo().display().to_string();
    let work = node.work.path.display().to_string();
    node.env.git(&node.work.path, &["--git-dir", &git_dir, "fetch", "-q", &work, "main:refs/objects"]);
    node.env.git(&node.work.path, &["--git-dir", &git_dir, "update-ref", "refs/heads/main", &d]);
    if with_daemon {
        // The daemon runs a branch moved by hand on its own, as a tick; the CLI's pull does.
        wait_until("the daemon to run the moved branch", Duration::from_secs(20), || {
            node.env.deployed().as_deref() == Some(d.as_str())
        });
        step(&node, "a due tip with no remote", 0);
    } else {
        step(&node, "a due tip with no remote", node.troops(&["pull"]));
    }
    step(&node, "pull with no remote and nothing due", node.troops(&["pull"]));
    if with_daemon {
        for asked in ["request=Run(Push)", "request=Pull", "request=Run(Deploy", "request=Run(Rollback"] {
            assert!(node.log().contains(asked), "{asked} did not go through the daemon:\n{}", node.log());
        }
    }
    steps
}

#[test]
fn every_trigger_gives_the_same_runs_records_and_exit_codes_in_process_and_through_the_daemon() {
    let here = scenario(false);
    let daemon = scenario(true);
    let run = |trigger: &str, status: &str, commit: &str| Run {
        trigger: trigger.to_owned(),
        status: status.to_owned(),
        commit: commit.to_owned(),
    };
    let asked = |what, exit, runs| Asked { what, exit, runs };
    // What it is, spelled out once, so that both ways are checked against the SPEC, not just
    // against each other.
    let want = vec![
        asked("git push of a good commit", 0, vec![run("push", "succeeded", "A")]),
        asked("pull of a good commit", 0, vec![run("pull", "succeeded", "B")]),
        asked(
            "pull of a bad commit",
            1,
            vec![run("pull", "rolled_back", "C"), run("rollback", "succeeded", "B")],
        ),
        asked("pull of nothing new", 0, vec![]),
        asked(
            "deploy of the quarantined tip",
            1,
            vec![run("manual", "rolled_back", "C"), run("rollback", "succeeded", "B")],
        ),
        asked("deploy of an older commit", 0, vec![run("manual", "succeeded", "A")]),
        asked("rollback", 0, vec![run("rollback", "succeeded", "B")]),
        asked("rollback to the deployed commit", 2, vec![]),
        asked("a due tip with no remote", 0, vec![run("pull", "succeeded", "D")]),
        asked("pull with no remote and nothing due", 3, vec![]),
    ];
    assert_eq!(here, want, "in-process");
    assert_eq!(daemon, want, "through the daemon");
}
