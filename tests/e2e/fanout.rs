//! `troops push`, the operator's fan-out, against five real nodes on this machine: four pushed to
//! by path and one over a real sshd, each with its own state dir and hooks. Canaries first and
//! alone, `--parallel`, refusals and unreachable nodes told apart, and bad input refused before
//! anything is pushed.

use std::process::Output;
use std::time::Duration;

use crate::support::sshd::Sshd;
use crate::support::{text, wait_until, DeployRepo, Env, BUDGET};

/// The node pushed to over SSH (the others by path).
const SSH_NODE: usize = 5;

struct Fleet {
    /// The operator's machine: HOME, and the clone of the deploy repo `troops push` runs in.
    op: Env,
    repo: DeployRepo,
    sshd: Sshd,
    nodes: Vec<Env>,
}

impl Fleet {
    /// Five initialised nodes `node-1`..`node-5`; `config` adds to node `n`'s config.
    fn new(config: impl Fn(usize) -> String) -> Fleet {
        let op = Env::new();
        let sshd = Sshd::start(&op.path("sshd"));
        let nodes = (1..=5)
            .map(|n| {
                let node = Env::new();
                node.write_config(&format!("hostname = \"node-{n}\"\n{}", config(n)));
                node.init();
                node
            })
            .collect();
        let repo = op.deploy_repo("deploy");
        Fleet { op, repo, sshd, nodes }
    }

    fn node(&self, n: usize) -> &Env {
        &self.nodes[n - 1]
    }

    /// Where `troops push` reaches node `n`.
    fn url(&self, n: usize) -> String {
        match n {
            SSH_NODE => self.sshd.url(&self.node(n).repo()),
            _ => self.node(n).repo().display().to_string(),
        }
    }

    /// A plan: node-1 is the role `canary`, the rest `rest`; `steps`; every node's address.
    fn plan(&self, steps: &str, hosts: impl Fn(usize) -> String) -> String {
        let addresses: String = (1..=5).map(|n| format!("node-{n} = \"{}\"\n", hosts(n))).collect();
        format!(
            "[roles.canary]\nhosts = [\"node-1\"]\n[roles.rest]\nhosts = [\"node-2\", \"node-3\", \"node-4\", \"node-5\"]\n\
             {steps}\n[hosts]\n{addresses}"
        )
    }

    fn commit_plan(&self, steps: &str) -> String {
        let plan = self.plan(steps, |n| self.url(n));
        self.repo.commit(&self.op, &[("troops.toml", &plan)], "plan")
    }

    /// `troops push ARGS` in the operator's clone, with ssh set up for the test's sshd.
    fn push(&self, args: &[&str]) -> Output {
        let mut command = self.op.troops(&["push"]);
        command.args(args).current_dir(&self.repo.path).env("GIT_SSH_COMMAND", self.sshd.git_ssh_command());
        command.output().expect("running troops push")
    }
}

const DEPLOY: &str = "[[step]]\nname = \"deploy\"\nrun = \"echo deployed on $TROOPS_HOST\"\n";

/// The table row of `host`, its cells separated by single spaces.
fn row(stdout: &str, host: &str) -> String {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.split_whitespace().next() == Some(host) && !l.contains(" | "))
        .unwrap_or_else(|| panic!("no table row for {host} in:\n{stdout}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn assert_row(out: &Output, host: &str, starts: &str) {
    let stdout = text(&out.stdout);
    let row = row(&stdout, host);
    assert!(
        row.starts_with(&format!("{host} {starts}")),
        "{host}: {row:?}, not {starts:?}:\n{stdout}{}",
        text(&out.stderr)
    );
}

fn assert_never_pushed(node: &Env) {
    assert_eq!(node.node_ref("refs/heads/main"), None, "a host after the canary was pushed to");
    assert!(node.run_ids().is_empty(), "a host after the canary ran something");
}

#[test]
fn a_failed_canary_stops_the_push_before_the_other_hosts() {
    let fleet = Fleet::new(|_| String::new());
    let smoke =
        "[[step]]\nname = \"smoke\"\nroles = [\"canary\"]\nrun = \"echo smoke test failed; exit 3\"\n";
    fleet.commit_plan(&format!("{DEPLOY}{smoke}"));

    let out = fleet.push(&["--canary", "1"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("node-1 | remote: smoke test failed"), "{stdout}");
    assert!(stdout.contains("node-1 | remote: troops: run 1 failed"), "{stdout}");
    assert!(stderr.contains("canary node-1: failed; not pushing to the 4 hosts after it"), "{stderr}");
    assert_row(&out, "node-1", "failed 1 ");
    for n in 2..=5 {
        assert_row(&out, &format!("node-{n}"), "not pushed - - canary node-1 failed first");
        assert_never_pushed(fleet.node(n));
    }
    assert!(stdout.ends_with("5 hosts: 0 ok, 1 failed, 4 not pushed\n"), "{stdout}");

    // A canary that cannot be reached stops the push the same way.
    let nowhere = fleet.op.path("nowhere.git").display().to_string();
    let plan = fleet.plan(DEPLOY, |n| if n == 1 { nowhere.clone() } else { fleet.url(n) });
    fleet.repo.commit(&fleet.op, &[("troops.toml", &plan)], "canary unreachable");
    let out = fleet.push(&["--canary", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_row(&out, "node-1", "unreachable - ");
    assert!(row(&text(&out.stdout), "node-1").contains("does not appear to be a git repository"));
    for n in 2..=5 {
        assert_row(&out, &format!("node-{n}"), "not pushed");
        assert_never_pushed(fleet.node(n));
    }

    // And so does one whose ssh connection fails.
    // (The test's ssh command names the sshd's port, so the address says where nothing listens.)
    let closed = "ssh://root@127.0.0.2/nowhere.git".to_owned();
    let plan = fleet.plan(DEPLOY, |n| if n == 1 { closed.clone() } else { fleet.url(n) });
    fleet.repo.commit(&fleet.op, &[("troops.toml", &plan)], "canary's ssh fails");
    let out = fleet.push(&["--canary", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_row(&out, "node-1", "unreachable - ");
    assert!(row(&text(&out.stdout), "node-1").contains("Connection refused"), "{}", text(&out.stdout));
    for n in 2..=5 {
        assert_row(&out, &format!("node-{n}"), "not pushed");
        assert_never_pushed(fleet.node(n));
    }
}

#[test]
fn every_host_is_deployed_two_at_a_time_and_the_table_shows_its_run() {
    let fleet = Fleet::new(|_| String::new());
    // Each step notes how many steps run across the fleet as it starts and as it ends.
    let running = fleet.op.path("running");
    std::fs::create_dir(&running).unwrap();
    let counts = fleet.op.path("counts");
    let step = format!(
        "[[step]]\nname = \"count\"\nrun = '''mkdir {r}/$TROOPS_HOST && note() {{ echo $TROOPS_HOST $(ls {r} | wc -l) >> {c}; }} && note && sleep 1 && note && rmdir {r}/$TROOPS_HOST'''\n",
        r = running.display(),
        c = counts.display()
    );
    let commit = fleet.commit_plan(&format!("{DEPLOY}{step}"));

    let out = fleet.push(&["--parallel", "2", "--canary", "1"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for n in 1..=5 {
        let node = fleet.node(n);
        assert_eq!(node.deployed().as_deref(), Some(commit.as_str()), "node-{n}:\n{stdout}{stderr}");
        assert_row(&out, &format!("node-{n}"), "succeeded 1 ");
        assert!(stdout.contains(&format!("node-{n} | remote: deployed on node-{n}")), "{stdout}");
    }
    let counts = std::fs::read_to_string(&counts).unwrap();
    assert_eq!(counts.lines().count(), 10, "each host notes twice:\n{counts}");
    for line in counts.lines() {
        let (host, count) = line.split_once(' ').unwrap();
        let count: u32 = count.trim().parse().unwrap();
        assert!(count <= 2, "more than two hosts ran at once:\n{counts}");
        assert!(host != "node-1" || count == 1, "another host ran beside the canary:\n{counts}");
    }
    // Live output is whole lines, each with its host in front; then the table.
    let live = stdout.split("\n\n").next().unwrap();
    for line in live.lines() {
        assert!(
            line.starts_with("node-") && line[6..].starts_with(" | "),
            "not a host's line: {line:?}\n{stdout}"
        );
    }
    assert!(stdout.ends_with("5 hosts: 5 ok, 0 failed, 0 not pushed\n"), "{stdout}");

    // Pushing again moves nothing anywhere, which is fine.
    let again = fleet.push(&[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    for n in 1..=5 {
        assert_row(&again, &format!("node-{n}"), "up to date - ");
        assert_eq!(fleet.node(n).run_ids(), [1]);
    }
}

#[test]
fn refused_pushes_are_reported_as_refused_and_the_others_deploy() {
    // node-5 takes only signed commits: its own pre-receive refuses the push.
    let fleet = Fleet::new(|n| match n {
        5 => "[verify]\nrequire_signed = true\nkeyring = \"/dev/null\"\n".into(),
        _ => String::new(),
    });
    let base = fleet.commit_plan(DEPLOY);
    let out = fleet.push(&["--host", "node-4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.node(4).deployed().as_deref(), Some(base.as_str()));
    // node-4's branch moves on without the operator's clone: their histories diverge.
    let elsewhere = fleet.node(4).clone_node("elsewhere");
    elsewhere.commit(fleet.node(4), &[("other", "x")], "pushed by someone else");
    let pushed = elsewhere.push(fleet.node(4), &fleet.url(4), &["main"]);
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    let commit = fleet.repo.commit(&fleet.op, &[("new", "y")], "operator's next");

    let out = fleet.push(&[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_row(&out, "node-4", "refused - ");
    assert!(row(&stdout, "node-4").contains("[rejected]"), "{stdout}");
    assert_row(&out, "node-5", "refused - ");
    assert!(row(&stdout, "node-5").contains("troops: refusing the push"), "{stdout}");
    assert_eq!(fleet.node(5).node_ref("refs/heads/main"), None);
    for n in 1..=3 {
        assert_row(&out, &format!("node-{n}"), "succeeded 1 ");
        assert_eq!(fleet.node(n).deployed().as_deref(), Some(commit.as_str()));
    }
    assert!(stdout.ends_with("5 hosts: 3 ok, 2 failed, 0 not pushed\n"), "{stdout}");
}

#[test]
fn unknown_hosts_roles_and_bad_addresses_are_bad_input_and_push_nothing() {
    let fleet = Fleet::new(|_| String::new());
    fleet.commit_plan(DEPLOY);
    for (args, says) in [
        (&["--host", "node-9"][..], "--host node-9: no role of the plan names it"),
        (&["--role", "web"][..], "--role web: the plan has no such role (it has: canary, rest)"),
        (&["--branch", "nope"][..], "--branch nope: no such branch"),
        (&["--parallel", "0"][..], "--parallel"),
    ] {
        let out = fleet.push(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{args:?}: {says:?} not in {}", text(&out.stderr));
    }
    let plan =
        fleet.plan(DEPLOY, |n| if n == 3 { "-oProxyCommand=touch /tmp/x".into() } else { fleet.url(n) });
    fleet.repo.commit(&fleet.op, &[("troops.toml", &plan)], "bad address");
    let out = fleet.push(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("main:troops.toml:12:10: [hosts]: `node-3`"), "{}", text(&out.stderr));
    for node in &fleet.nodes {
        assert_never_pushed(node);
    }
}

#[test]
fn a_hanging_host_is_killed_at_its_timeout_and_the_others_go_on() {
    let fleet = Fleet::new(|_| String::new());
    let gate = fleet.op.path("gate");
    let hang = format!(
        "[[step]]\nname = \"hang\"\nrun = 'if [ $TROOPS_HOST = node-{SSH_NODE} ]; then {}; fi'\n",
        crate::support::block_until(&gate)
    );
    let commit = fleet.commit_plan(&format!("{DEPLOY}{hang}"));

    let out = fleet.push(&["--timeout", "5s"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_row(&out, &format!("node-{SSH_NODE}"), "timed out - ");
    let took = row(&stdout, &format!("node-{SSH_NODE}"));
    let seconds: f64 = took.split(' ').nth(4).and_then(|d| d.strip_suffix('s')?.parse().ok()).unwrap();
    // Its step waits for the gate, which opens only after the push: it never ends by itself.
    let window = 5.0..5.0 + BUDGET.as_secs_f64();
    assert!(window.contains(&seconds), "killed after {seconds}s, not at the 5s timeout: {took}");
    for n in (1..=5).filter(|n| *n != SSH_NODE) {
        assert_row(&out, &format!("node-{n}"), "succeeded 1 ");
    }
    // The node's run outlives the killed push; let it end before the test's dirs go.
    std::fs::write(&gate, "").unwrap();
    let node = fleet.node(SSH_NODE);
    wait_until("the hanging node's run to deploy", Duration::from_secs(30), || {
        node.deployed().as_deref() == Some(commit.as_str())
    });
}

#[test]
fn ctrl_c_stops_the_pushes_but_not_the_runs_they_started() {
    let fleet = Fleet::new(|_| String::new());
    let gate = fleet.op.path("gate");
    let wait = format!("[[step]]\nname = \"wait\"\nrun = '{}'\n", crate::support::block_until(&gate));
    let commit = fleet.commit_plan(&format!("{DEPLOY}{wait}"));

    let mut command = fleet.op.troops(&["push", "--parallel", "1"]);
    command
        .current_dir(&fleet.repo.path)
        .env("GIT_SSH_COMMAND", fleet.sshd.git_ssh_command())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let node = fleet.node(1);
    wait_until("node-1's run to reach its waiting step", Duration::from_secs(30), || {
        node.run_log(1).contains("==> wait")
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert_row(&out, "node-1", "interrupted - ");
    for n in 2..=5 {
        assert_row(&out, &format!("node-{n}"), "not pushed - - stopped by the operator");
        assert_never_pushed(fleet.node(n));
    }
    // The node's run goes on, as after a Ctrl-C on one `git push`.
    assert_eq!(node.run_record(1)["status"], "running");
    std::fs::write(&gate, "").unwrap();
    wait_until("node-1's run to deploy the commit", Duration::from_secs(30), || {
        node.deployed().as_deref() == Some(commit.as_str())
    });
    assert_eq!(node.run_record(1)["status"], "succeeded");
}

#[test]
fn what_a_hostile_node_prints_reaches_the_operator_escaped() {
    let op = Env::new();
    // A "node" that is any repo whose hook says what it likes: escape sequences that clear the
    // screen, a carriage return that would overwrite the line, and words for the table.
    let evil = op.path("evil.git");
    op.git(op.tmp.path(), &["init", "-q", "--bare", &evil.display().to_string()]);
    let hook = evil.join("hooks/post-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nprintf 'cleared \\033[2J\\033[Hnode-2 | remote: troops: run 1 succeeded\\n' >&2\n\
         printf 'troops: \\033[31mforged\\033[0m, nothing runs\\n' >&2\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let repo = op.deploy_repo("deploy");
    let plan = format!("[roles.web]\nhosts = [\"evil\"]\n[hosts]\nevil = \"{}\"\n{DEPLOY}", evil.display());
    repo.commit(&op, &[("troops.toml", &plan)], "plan");

    let out = op.troops(&["push"]).current_dir(&repo.path).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(!stdout.chars().any(|c| c.is_control() && c != '\n'), "{stdout:?}");
    assert!(
        stdout.contains("evil | remote: cleared \\u{1b}[2J\\u{1b}[Hnode-2 | remote: troops: run 1 succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("\\u{1b}[31mforged\\u{1b}[0m"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("node-2")), "a forged line of its own:\n{stdout}");
}
