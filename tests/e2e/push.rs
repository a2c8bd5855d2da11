//! Push deploys: `git push` to a node runs `troops-hook` as the repo's pre-receive
//! (refusals the pusher reads, nothing moved) and post-receive (the run, streamed to the pusher as
//! it happens, ending with its summary).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::sshd::Sshd;
use crate::support::{short, text, wait_until, DeployRepo, Env};

/// How long anything in these tests may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

/// `git push` over SSH to the node's repo (the hook then runs in sshd's session environment,
/// with nothing of the test's).
fn ssh_push_command(env: &Env, sshd: &Sshd, repo: &DeployRepo, args: &[&str]) -> Command {
    let mut command = repo.push_command(env, &sshd.url(&env.repo()), args);
    command.env("GIT_SSH_COMMAND", sshd.git_ssh_command());
    command
}

fn local_push(env: &Env, repo: &DeployRepo, args: &[&str]) -> (ExitStatus, String) {
    let out = repo.push(env, &env.repo().display().to_string(), args);
    (out.status, text(&out.stderr))
}

/// What the node said to the pusher (git's `remote:` lines), in order, padding trimmed.
fn remote_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter_map(|l| l.strip_prefix("remote: ")).map(str::trim_end).collect()
}

/// Asserts that `needles` each occur in a line of `lines`, in this order.
fn assert_in_order(lines: &[&str], needles: &[&str]) {
    let mut rest = lines.iter();
    for needle in needles {
        assert!(
            rest.any(|l| l.contains(needle)),
            "no line containing {needle:?} (in this order) in:\n{}",
            lines.join("\n")
        );
    }
}

/// A step that prints `says`, then waits for `gate` to exist (bounded, so that a failed test
/// leaves no step behind).
fn gated_step(name: &str, says: &str, gate: &Path) -> String {
    format!(
        "[[step]]\nname = \"{name}\"\nrun = '''\necho \"{says}\"\n{gate}\n'''\n",
        gate = crate::support::block_until(gate)
    )
}

/// A file a gated step waits for; opened (created) on drop too, so no step outlives a test.
struct Gate(PathBuf);

impl Gate {
    fn open(&self) {
        std::fs::write(&self.0, "").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

/// A `git push` in flight, in its own process group, whose stderr the test reads line by line as
/// git writes it.
struct Pushing {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Pushing {
    fn start(mut command: Command) -> Pushing {
        command.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
        let mut child = command.spawn().expect("starting git push");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Pushing { child, lines, seen: Vec::new() }
    }

    /// Reads the pusher's stderr until a line contains `needle` and returns that line; fails the
    /// test if the push ends first or `LIMIT` passes.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the pusher saw no {needle:?} within {LIMIT:?}; it saw:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the push ended without showing {needle:?}; it showed:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Waits for the push to end: its exit status and all it wrote to stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + LIMIT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the push did not end within {LIMIT:?}; it showed:\n{}", self.seen.join("\n"))
                }
            }
        }
        let status = self.child.wait().unwrap();
        (status, self.seen.join("\n") + "\n")
    }

    /// The pusher vanishes: `signal` goes to its whole process group (git, and ssh or, for a
    /// local push, receive-pack and the hook), as a terminal's Ctrl-C (SIGINT) or a lost
    /// connection would have it; waits for git to end.
    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Pushing {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

const PLAN: &str = r#"
[[step]]
name = "hello"
run = 'echo "hello from $TROOPS_HOST at $TROOPS_COMMIT ($TROOPS_TRIGGER)"'

[[step]]
name = "environment"
run = 'echo "GIT_DIR=${GIT_DIR-unset} GIT_QUARANTINE_PATH=${GIT_QUARANTINE_PATH-unset}"'
"#;

#[test]
fn push_over_ssh_runs_the_plan_and_shows_it_to_the_pusher() {
    let env = Env::new();
    env.init();
    let sshd = Sshd::start(&env.path("sshd"));
    let repo = env.deploy_repo("deploy");
    let commit = repo.commit(&env, &[("troops.toml", PLAN)], "plan");

    let out = ssh_push_command(&env, &sshd, &repo, &["main"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "push failed:\n{stderr}\nsshd log:\n{}", sshd.log());
    let lines = remote_lines(&stderr);
    assert_in_order(
        &lines,
        &[
            &format!("troops: run 1 (push) of {} on web-1", short(&commit)),
            "==> hello",
            &format!("hello from web-1 at {commit} (push)"),
            "==> environment",
            "GIT_DIR=unset GIT_QUARANTINE_PATH=unset",
        ],
    );
    let summary = lines.last().expect("the node said something");
    assert!(
        summary.starts_with("troops: run 1 succeeded")
            && summary.contains("2 of 2 steps")
            && summary.ends_with("(troops log 1)"),
        "last line is not the summary: {summary:?}\n{stderr}"
    );

    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(commit.as_str()));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let record = env.run_record(1);
    assert_eq!((record["trigger"].as_str(), record["status"].as_str()), (Some("push"), Some("succeeded")));
    assert_eq!(record["commit"], commit.as_str());
    assert!(env.run_log(1).contains(&format!("hello from web-1 at {commit}")));
}

#[test]
fn a_failing_step_is_shown_and_the_deployed_commit_stays() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    let good = repo.commit(&env, &[("troops.toml", "[[step]]\nname = \"ok\"\nrun = \"true\"\n")], "good");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success() && stderr.contains("run 1 succeeded"), "{stderr}");

    let plan = "[[step]]\nname = \"first\"\nrun = \"echo first ran\"\n\
                [[step]]\nname = \"broken\"\nrun = \"echo about to fail; exit 3\"\n\
                [[step]]\nname = \"after\"\nrun = \"echo must not run\"\n";
    let bad = repo.commit(&env, &[("troops.toml", plan)], "bad");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    // The branch moved (git accepted it before the run); the pusher learns how the run went.
    assert!(status.success(), "{stderr}");
    let lines = remote_lines(&stderr);
    assert_in_order(
        &lines,
        &["==> first", "first ran", "==> broken", "about to fail", "broken failed (exit 3)"],
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with("troops: run 2 failed")
            && summary.contains("`broken`")
            && summary.ends_with("(troops log 2)"),
        "{summary:?}\n{stderr}"
    );
    assert!(!stderr.contains("must not run"), "{stderr}");

    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(bad.as_str()));
    assert_eq!(
        env.deployed().as_deref(),
        Some(good.as_str()),
        "refs/troops/deployed moved after a failed run"
    );
    let record = env.run_record(2);
    assert_eq!(record["status"], "failed");
    let steps: Vec<&str> =
        record["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["succeeded", "failed", "not_run"]);
}

/// A node with one deployed commit (run 1), pushed over SSH, and the SSH server to push again.
fn deployed_node() -> (Env, Sshd, DeployRepo, String) {
    let env = Env::new();
    env.init();
    let sshd = Sshd::start(&env.path("sshd"));
    let repo = env.deploy_repo("deploy");
    let marker = env.path("ran");
    let plan =
        format!("[[step]]\nname = \"mark\"\nrun = \"echo $TROOPS_COMMIT >> '{}'\"\n", marker.display());
    let commit = repo.commit(&env, &[("troops.toml", &plan)], "plan");
    let out = ssh_push_command(&env, &sshd, &repo, &["main"]).output().unwrap();
    assert!(
        out.status.success() && env.deployed().as_deref() == Some(commit.as_str()),
        "{}",
        text(&out.stderr)
    );
    (env, sshd, repo, commit)
}

/// Nothing moved and nothing ran since run 1 deployed `commit`.
fn assert_untouched(env: &Env, commit: &str) {
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(commit), "the branch moved");
    assert_eq!(env.deployed().as_deref(), Some(commit), "refs/troops/deployed moved");
    assert_eq!(env.run_ids(), [1], "something ran");
    assert_eq!(std::fs::read_to_string(env.path("ran")).unwrap(), format!("{commit}\n"), "a step ran");
}

#[test]
fn a_force_push_is_refused_by_the_node() {
    let (env, sshd, repo, commit) = deployed_node();
    env.git(&repo.path, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let rewritten = env.git(&repo.path, &["rev-parse", "HEAD"]);

    let out = ssh_push_command(&env, &sshd, &repo, &["--force", "main"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the force push succeeded:\n{stderr}");
    let refusal = format!(
        "troops: refusing non-fast-forward update of refs/heads/main ({} does not descend from {})",
        short(&rewritten),
        short(&commit)
    );
    assert!(remote_lines(&stderr).contains(&refusal.as_str()), "no {refusal:?} in:\n{stderr}");
    assert!(stderr.contains("pre-receive hook declined"), "{stderr}");
    assert_untouched(&env, &commit);
}

#[test]
fn deleting_the_deploy_branch_is_refused_by_the_node() {
    let (env, sshd, repo, commit) = deployed_node();
    let out = ssh_push_command(&env, &sshd, &repo, &["--delete", "main"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the deletion succeeded:\n{stderr}");
    let refusal = format!(
        "troops: refusing to delete refs/heads/main (at {}), the branch this node deploys",
        short(&commit)
    );
    assert!(remote_lines(&stderr).contains(&refusal.as_str()), "no {refusal:?} in:\n{stderr}");
    assert_untouched(&env, &commit);
}

#[test]
fn pushes_cannot_write_the_nodes_own_refs() {
    let (env, _sshd, repo, commit) = deployed_node();
    let next = repo.commit(&env, &[("other.txt", "x")], "not deployed");
    let (status, stderr) = local_push(&env, &repo, &["--force", &format!("{next}:refs/troops/deployed")]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("troops: refusing to update refs/troops/deployed: refs/troops/* belongs to the node"),
        "{stderr}"
    );
    assert_untouched(&env, &commit);
}

#[test]
fn a_push_to_another_branch_deploys_nothing() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    let marker = env.path("ran");
    let commit = repo.commit(
        &env,
        &[("troops.toml", &format!("[[step]]\nname = \"mark\"\nrun = \"touch '{}'\"\n", marker.display()))],
        "plan",
    );
    let (status, stderr) = local_push(&env, &repo, &["main:feature"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "troops: refs/heads/feature is not refs/heads/main, the branch this node deploys; nothing runs"
        ),
        "{stderr}"
    );
    assert_eq!(env.node_ref("refs/heads/feature").as_deref(), Some(commit.as_str()));
    assert_eq!(env.node_ref("refs/heads/main"), None);
    assert_eq!(env.deployed(), None);
    assert!(env.run_ids().is_empty() && !marker.exists(), "something ran");
}

/// Run 1 pushed by `first` (a client of its own) blocks on a gate; returns it once the pusher sees
/// its step running.
fn push_a_blocked_run(env: &Env, gate: &Gate) -> (DeployRepo, String, Pushing) {
    let first = env.deploy_repo("first");
    let plan = gated_step("slow", "step of $TROOPS_COMMIT", &gate.0);
    let c1 = first.commit(env, &[("troops.toml", &plan)], "slow plan");
    let mut pushing = Pushing::start(first.push_command(env, &env.repo().display().to_string(), &["main"]));
    pushing.wait_for(&format!("step of {c1}"));
    (first, c1, pushing)
}

#[test]
fn two_pushes_at_once_both_run_one_after_the_other() {
    let env = Env::new();
    env.init();
    let gate = Gate(env.path("gate"));
    let (_first, c1, first_push) = push_a_blocked_run(&env, &gate);

    // A second client pushes on top while run 1 holds the node.
    let second = env.clone_node("second");
    let c2 = second.commit(&env, &[("second.txt", "2")], "second");
    let mut second_push =
        Pushing::start(second.push_command(&env, &env.repo().display().to_string(), &["main"]));
    let waiting = second_push.wait_for("troops: waiting for the node lock");
    assert!(waiting.contains("run 1 (push)"), "{waiting}");
    assert_eq!(env.run_ids(), [1], "the second push did not wait");

    gate.open();
    let (status, first_out) = first_push.finish();
    assert!(status.success() && first_out.contains("troops: run 1 succeeded"), "{first_out}");
    let (status, second_out) = second_push.finish();
    assert!(status.success(), "{second_out}");
    assert_in_order(
        &remote_lines(&second_out),
        &[
            &format!("troops: run 2 (push) of {}", short(&c2)),
            &format!("step of {c2}"),
            "troops: run 2 succeeded",
        ],
    );

    let (one, two) = (env.run_record(1), env.run_record(2));
    assert_eq!((one["commit"].as_str(), two["commit"].as_str()), (Some(c1.as_str()), Some(c2.as_str())));
    assert!(two["started_at"].as_str() >= one["finished_at"].as_str(), "runs overlapped: {one}\n{two}");
    assert_eq!(env.deployed().as_deref(), Some(c2.as_str()));
}

#[test]
fn pushes_that_arrive_during_a_run_coalesce_into_one_run_of_the_newest() {
    let env = Env::new();
    env.init();
    let gate = Gate(env.path("gate"));
    let (_first, _c1, first_push) = push_a_blocked_run(&env, &gate);
    let url = env.repo().display().to_string();

    let second = env.clone_node("second");
    second.commit(&env, &[("second.txt", "2")], "second");
    let mut second_push = Pushing::start(second.push_command(&env, &url, &["main"]));
    second_push.wait_for("troops: waiting for the node lock");
    let third = env.clone_node("third");
    let c3 = third.commit(&env, &[("third.txt", "3")], "third");
    let mut third_push = Pushing::start(third.push_command(&env, &url, &["main"]));
    third_push.wait_for("troops: waiting for the node lock");

    gate.open();
    let outputs: Vec<String> = [first_push, second_push, third_push]
        .into_iter()
        .map(|p| {
            let (status, out) = p.finish();
            assert!(status.success(), "{out}");
            out
        })
        .collect();
    // Whichever waiting push took the node first ran the newest tip; the other found it deployed.
    let ran = outputs[1..].iter().filter(|o| o.contains("troops: run 2 succeeded")).count();
    let skipped = format!(
        "troops: {}, the tip of refs/heads/main, is deployed already by run 2 (troops log 2); nothing runs",
        short(&c3)
    );
    let found_done = outputs[1..].iter().filter(|o| o.contains(&skipped)).count();
    assert_eq!((ran, found_done), (1, 1), "{outputs:#?}");
    assert_eq!(env.run_ids(), [1, 2]);
    assert_eq!(env.run_record(2)["commit"], c3.as_str());
    assert_eq!(env.deployed().as_deref(), Some(c3.as_str()));
}

#[test]
fn the_pusher_sees_each_line_while_the_step_still_runs() {
    let env = Env::new();
    env.init();
    let sshd = Sshd::start(&env.path("sshd"));
    let gate = Gate(env.path("gate"));
    let repo = env.deploy_repo("deploy");
    let commit = repo.commit(
        &env,
        &[("troops.toml", &gated_step("slow", "first line, then the gate", &gate.0))],
        "plan",
    );

    let mut pushing = Pushing::start(ssh_push_command(&env, &sshd, &repo, &["main"]));
    let line = pushing.wait_for("first line, then the gate");
    assert!(line.starts_with("remote: "), "{line}");
    // The step is still blocked: the line came through while it ran.
    assert!(!gate.0.exists());
    assert_eq!(env.run_record(1)["status"], "running");
    gate.open();
    let (status, stderr) = pushing.finish();
    assert!(status.success(), "{stderr}");
    assert!(remote_lines(&stderr).last().unwrap().starts_with("troops: run 1 succeeded"), "{stderr}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

/// Pushes a plan whose first step waits for a gate, lets `hang_up` make the pusher go away while
/// it waits, then opens the gate: the run must go on to the end and be recorded.
fn run_outlives_the_pusher(ssh: bool, hang_up: impl FnOnce(&mut Pushing)) {
    let env = Env::new();
    env.init();
    let sshd = ssh.then(|| Sshd::start(&env.path("sshd")));
    let gate = Gate(env.path("gate"));
    let repo = env.deploy_repo("deploy");
    let plan = gated_step("slow", "waiting for the gate", &gate.0)
        + "[[step]]\nname = \"later\"\nrun = \"echo later step ran\"\n";
    let commit = repo.commit(&env, &[("troops.toml", &plan)], "plan");
    let command = match &sshd {
        Some(sshd) => ssh_push_command(&env, sshd, &repo, &["main"]),
        None => repo.push_command(&env, &env.repo().display().to_string(), &["main"]),
    };

    let mut pushing = Pushing::start(command);
    pushing.wait_for("waiting for the gate");
    hang_up(&mut pushing);
    gate.open();
    // The hook, orphaned now, holds the node lock until the run is wholly done (record, refs).
    wait_until("run 1 to end and free the node", LIMIT, || {
        env.run_record(1)["status"] != "running" && lock_is_free(&env)
    });
    let record = env.run_record(1);
    assert_eq!(record["status"], "succeeded", "{record}\n{}", env.run_log(1));
    assert!(env.run_log(1).contains("later step ran"), "{}", env.run_log(1));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

/// True when nobody holds the node lock (the test takes it for an instant to find out).
fn lock_is_free(env: &Env) -> bool {
    let file = std::fs::File::open(env.state.join("lock")).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

#[test]
fn a_dropped_ssh_connection_does_not_stop_the_run() {
    run_outlives_the_pusher(true, Pushing::kill);
}

#[test]
fn ctrl_c_on_a_local_push_does_not_stop_the_run() {
    run_outlives_the_pusher(false, |pushing| pushing.signal(nix::sys::signal::Signal::SIGINT));
}

#[test]
fn a_pusher_who_stops_reading_does_not_stall_a_run_in_process() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    // Far more output than the pipes between the step and the pusher hold, then another step.
    let plan = "[[step]]\nname = \"loud\"\nrun = \"yes 'output nobody reads' | head -c 8000000\"\n\
                [[step]]\nname = \"later\"\nrun = \"echo later step ran\"\n";
    let commit = repo.commit(&env, &[("troops.toml", plan)], "plan");
    // The pusher's stderr is a pipe that nobody reads, held open until the test ends: git push
    // stops reading receive-pack's side band, which stops reading the hook's stderr.
    let mut command = repo.push_command(&env, &env.repo().display().to_string(), &["main"]);
    command.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    let mut child = command.spawn().unwrap();
    let _unread = child.stderr.take();
    let pushing = Pushing { child, lines: mpsc::channel().1, seen: Vec::new() };

    // The hook waits for the pusher at most its patience (15 s), once; then the run goes on.
    wait_until("run 1 to end and free the node", LIMIT, || {
        env.run_ids().contains(&1) && env.run_record(1)["status"] != "running" && lock_is_free(&env)
    });
    let record = env.run_record(1);
    assert_eq!(record["status"], "succeeded", "{record}");
    let log = env.run_log(1);
    assert!(log.len() > 8_000_000 && log.contains("later step ran"), "the log lost output");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let mut pushing = pushing;
    assert!(matches!(pushing.child.try_wait(), Ok(None)), "the pusher was never stalled");
}

#[test]
fn the_hook_asks_a_listening_daemon_to_run_the_tip_and_relays_its_answer() {
    let env = Env::new();
    env.init();
    // A stand-in daemon on the node's socket: it answers one request with output and the end.
    let listener = std::os::unix::net::UnixListener::bind(env.state.join("troops.sock")).unwrap();
    let (tx, requests) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        let mut stream = &stream;
        writeln!(stream, "{}", serde_json::json!({"output": "daemon: running it\n"})).unwrap();
        writeln!(stream, "{}", serde_json::json!({"done": {"exit": 0, "error": null}})).unwrap();
        tx.send(request).unwrap();
    });
    let repo = env.deploy_repo("deploy");
    repo.commit(&env, &[("troops.toml", PLAN)], "plan");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success(), "{stderr}");

    let request: serde_json::Value =
        serde_json::from_str(&requests.recv_timeout(LIMIT).expect("the hook asked the daemon")).unwrap();
    assert_eq!(request, serde_json::json!({"op": "run", "ask": "push"}));
    assert!(remote_lines(&stderr).contains(&"daemon: running it"), "{stderr}");
    assert!(env.run_ids().is_empty(), "the hook ran the plan itself");
    assert_eq!(env.deployed(), None);
}

#[test]
fn with_a_daemon_running_the_push_runs_in_the_daemon_and_streams_from_there() {
    let env = Env::new();
    env.init();
    let sshd = Sshd::start(&env.path("sshd"));
    let daemon = Daemon::start(&env);
    let gate = Gate(env.path("gate"));
    let repo = env.deploy_repo("deploy");
    // A step's parent is its supervisor, whose parent is the process that runs the plan.
    let says = "run by pid $(cut -d' ' -f4 /proc/$PPID/stat)";
    let commit = repo.commit(&env, &[("troops.toml", &gated_step("where", says, &gate.0))], "plan");

    let mut pushing = Pushing::start(ssh_push_command(&env, &sshd, &repo, &["main"]));
    let line = pushing.wait_for("run by pid");
    assert!(
        line.trim_end().ends_with(&format!("run by pid {}", daemon.child.id())),
        "not run by the daemon: {line}\n{}",
        daemon.log()
    );
    gate.open();
    let (status, stderr) = pushing.finish();
    assert!(status.success(), "{stderr}\n{}", daemon.log());
    let summary = *remote_lines(&stderr).last().unwrap();
    assert!(
        summary.starts_with("troops: run 1 succeeded") && summary.ends_with("(troops log 1)"),
        "{summary:?}\n{stderr}"
    );
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

/// A push whose tip a manual run deployed already says so (and which run did), with or without a
/// daemon, and runs nothing.
fn pushing_a_deployed_commit_says_so(daemon: bool) {
    let env = Env::new();
    env.init();
    let _daemon = daemon.then(|| Daemon::start(&env));
    let repo = env.deploy_repo("deploy");
    let plan = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";
    let first = repo.commit(&env, &[("troops.toml", plan)], "first");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success() && stderr.contains("run 1 succeeded"), "{stderr}");

    // The next commit reaches the node on another branch and is deployed by hand first.
    let second = repo.commit(&env, &[("x", "2")], "second");
    let (status, stderr) = local_push(&env, &repo, &["main:staging"]);
    assert!(status.success(), "{stderr}");
    let out = env.ok(&["deploy", "--commit", &second]);
    assert!(out.contains(&format!("hello from {second}")), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));

    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success(), "{stderr}");
    let said = format!(
        "troops: {}, the tip of refs/heads/main, is deployed already by run 2 (troops log 2); nothing runs",
        short(&second)
    );
    assert!(remote_lines(&stderr).contains(&said.as_str()), "no {said:?} in:\n{stderr}");
    assert!(!stderr.contains("hello from"), "{stderr}");
    assert_eq!(env.run_ids(), [1, 2]);
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(second.as_str()));
    assert_ne!(first, second);
}

#[test]
fn a_push_of_a_deployed_commit_says_so_and_runs_nothing() {
    pushing_a_deployed_commit_says_so(false);
}

#[test]
fn a_push_of_a_deployed_commit_says_so_through_the_daemon_too() {
    pushing_a_deployed_commit_says_so(true);
}

/// The group that stands for `admin_group` here: `users` (gid 100 on Debian), so the test needs
/// no new group on the machine.
pub(crate) const GROUP: &str = "users";
/// A uid no account has: a member of GROUP who is not root.
pub(crate) const MEMBER: &str = "4242";

/// `command` (made by `Env::hermetic`, so with a cleared environment), run as MEMBER with GROUP
/// as its only group (setpriv, util-linux).
pub(crate) fn as_member(command: Command) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--reuid", MEMBER, "--regid", MEMBER, "--groups", &group_id().to_string(), "--"])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped.env_clear().stdin(Stdio::null());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

pub(crate) fn group_id() -> u32 {
    let out = Command::new("getent").args(["group", GROUP]).output().unwrap();
    let line = text(&out.stdout);
    line.split(':')
        .nth(2)
        .and_then(|gid| gid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {GROUP} on this machine"))
}

#[test]
fn members_of_admin_group_push_and_run_beside_root() {
    if !crate::support::require_root("giving the node to a group and acting as another user") {
        return;
    }
    let gid = group_id();
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\nadmin_group = \"{GROUP}\"\nkeep_runs = 2\n"));
    // The member must reach the node and the repos in the test's (private) temp dir.
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.init();

    for (path, mode) in [
        ("", 0o2050),
        ("repo", 0o2050),
        ("repo/main.git", 0o3070),
        ("repo/main.git/objects", 0o3070),
        ("repo/main.git/refs/heads", 0o2070),
        ("runs", 0o3070),
        ("work", 0o3070),
        ("lock", 0o060),
    ] {
        let meta = std::fs::metadata(env.state.join(path)).unwrap();
        assert_eq!(meta.gid(), gid, "{path} is not the group's");
        assert_eq!(meta.mode() & mode, mode, "{path} has mode {:o}", meta.mode());
    }
    let ssh = std::fs::metadata(env.state.join("ssh")).unwrap();
    assert_eq!((ssh.gid(), ssh.mode() & 0o777), (0, 0o700), "the node's key must stay root's");

    // Git itself refuses a repo its user does not own unless told it is safe (README: `git config
    // --system --add safe.directory ...`); here the member's global config says so.
    let safe = env.path("member.gitconfig");
    let repo = env.deploy_repo("deploy");
    std::fs::write(
        &safe,
        format!("[safe]\n\tdirectory = {}\n\tdirectory = {}\n", env.repo().display(), repo.path.display()),
    )
    .unwrap();
    let plan = "[[step]]\nname = \"who\"\nrun = \"steps/who.sh\"\n";
    let who = "#!/bin/sh\necho \"ran as uid $(id -u)\"\n";
    let url = env.repo().display().to_string();
    let member_push = |repo: &DeployRepo| {
        let mut command = repo.push_command(&env, &url, &["main"]);
        command.env("GIT_CONFIG_GLOBAL", &safe);
        let out = as_member(command).output().unwrap();
        (out.status, text(&out.stderr))
    };

    // Root deploys first, then the member twice: the member's runs leave root's checkout and
    // record alone (runs/ and work/ are sticky), and prune only the member's own (keep_runs = 2).
    repo.commit(&env, &[("troops.toml", plan), ("steps/who.sh", who)], "root");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(
        status.success() && stderr.contains("ran as uid 0") && stderr.contains("run 1 succeeded"),
        "{stderr}"
    );
    for (n, name) in [(2, "member"), (3, "member again")] {
        let commit = repo.commit(&env, &[(&format!("{n}.txt"), name)], name);
        let (status, stderr) = member_push(&repo);
        assert!(status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("ran as uid {MEMBER}"))
                && stderr.contains(&format!("run {n} succeeded")),
            "{stderr}"
        );
        assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    }
    assert_eq!(env.run_ids(), [1, 2, 3], "root's run 1 is not the member's to prune");
    // Root goes by its own records, not the member's (README, "The trust boundary"): its next
    // run keeps its own newest two, and the member's, which are newer than those.
    repo.commit(&env, &[("4.txt", "root again")], "root again");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success() && stderr.contains("run 4 succeeded"), "{stderr}");
    assert_eq!(env.run_ids(), [1, 2, 3, 4]);
    let record = std::fs::metadata(env.state.join("runs/3/run.json")).unwrap();
    assert_eq!((record.uid(), record.gid()), (MEMBER.parse().unwrap(), gid));
    // Its run after that keeps 4 and 5, and prunes everything older, the member's runs too.
    repo.commit(&env, &[("5.txt", "root once more")], "root once more");
    let (status, stderr) = local_push(&env, &repo, &["main"]);
    assert!(status.success() && stderr.contains("run 5 succeeded"), "{stderr}");
    assert_eq!(env.run_ids(), [4, 5]);
}
