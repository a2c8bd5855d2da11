//! Issue 3: pull deploys. A node follows three remotes (two paths, one over a real sshd on
//! 127.0.0.1) through `troops pull` and through the daemon.

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::sshd::{closed_port, Sshd};
use crate::support::{block_until, combined, output_within, text, wait_until, DeployRepo, Env, BUDGET};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// A node whose remotes are bare repos `a.git` and `b.git` in the test dir, plus `extra` remotes.
fn fleet(config: &str, extra: &[(&str, String)]) -> (Env, DeployRepo) {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\n{config}"));
    let mut args = vec!["init".to_owned()];
    for name in ["a", "b"] {
        let path = bare(&env, name);
        args.push(format!("--remote={name}={}", path.display()));
    }
    for (name, url) in extra {
        args.push(format!("--remote={name}={url}"));
    }
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let work = env.deploy_repo("work");
    (env, work)
}

fn bare(env: &Env, name: &str) -> PathBuf {
    let path = env.path(&format!("{name}.git"));
    if !path.exists() {
        env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
    }
    path
}

/// Pushes the work repo's main to remote `name` (a bare repo in the test dir), with extra args.
fn publish(env: &Env, work: &DeployRepo, name: &str, args: &[&str]) {
    let url = bare(env, name).display().to_string();
    let mut all = vec!["main"];
    all.extend_from_slice(args);
    let out = work.push(env, &url, &all);
    assert!(out.status.success(), "push to {name} failed: {}", text(&out.stderr));
}

fn pull(env: &Env) -> (i32, String) {
    let out = env.run(&["pull"]);
    (out.status.code().unwrap_or(-1), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// An sshd that lets the node in: its key authorised, the server's key in the node's known_hosts.
fn ssh_remote(env: &Env, name: &str) -> (Sshd, String) {
    let sshd = Sshd::start(&env.path("sshd"));
    let node_key = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    sshd.authorize(node_key.trim());
    let known = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public_key());
    std::fs::write(env.state.join("ssh/known_hosts"), known).unwrap();
    let url = sshd.url(&bare(env, name));
    (sshd, url)
}

#[test]
fn a_commit_on_any_one_remote_is_deployed_once_including_over_ssh() {
    let (env, work) = fleet("", &[]);
    let (_sshd, url) = ssh_remote(&env, "c");
    env.git(&env.repo(), &["remote", "add", "c", &url]);

    let first = work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish(&env, &work, "a", &[]);
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("hello from {first}")), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));

    // The other remotes catch up with the same commit: nothing runs again.
    publish(&env, &work, "b", &[]);
    publish(&env, &work, "c", &[]);
    assert_eq!(pull(&env).0, 0);
    assert_eq!(env.run_ids(), [1]);

    // A commit only on the SSH remote is fetched over SSH and deployed.
    let second = work.commit(&env, &[("x", "1")], "second");
    publish(&env, &work, "c", &[]);
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}");
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));
    assert_eq!(env.run_ids(), [1, 2]);
    assert_eq!(env.run_record(2)["trigger"], "pull");
    let reflog = env.git(&env.repo(), &["reflog", "show", "--format=%gs", "refs/heads/main"]);
    assert!(reflog.lines().next().unwrap().contains("fast-forward from remote c"), "{reflog}");
    let remotes = env.status_json()["remotes"].clone();
    let c = remotes.as_array().unwrap().iter().find(|r| r["name"] == "c").unwrap();
    assert_eq!(c["last_fetch"]["tip"], second.as_str());
}

#[test]
fn an_unknown_or_changed_ssh_host_key_is_refused_by_name() {
    let (env, work) = fleet("", &[]);
    let (_sshd, url) = ssh_remote(&env, "c");
    std::fs::write(env.state.join("ssh/known_hosts"), "").unwrap();
    env.git(&env.repo(), &["remote", "add", "c", &url]);
    work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish(&env, &work, "c", &[]);
    let (code, out) = pull(&env);
    assert!(out.contains("remote c") && out.contains("unknown host [127.0.0.1]:"), "{out}");
    assert_eq!(code, 0, "a and b were fetched (empty), so not every remote failed: {out}");
    assert_eq!(env.node_ref("refs/heads/main"), None);
    assert!(env.run_ids().is_empty());

    // Another key listed for that host: a replaced server, or a man in the middle.
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let other_key = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    std::fs::write(env.state.join("ssh/known_hosts"), format!("[127.0.0.1]:{port} {other_key}")).unwrap();
    let (_, out) = pull(&env);
    assert!(out.contains(&format!("host key of [127.0.0.1]:{port} does not match")), "{out}");
    assert_eq!(env.node_ref("refs/heads/main"), None);
    assert!(env.run_ids().is_empty());
}

#[test]
fn a_force_pushed_remote_is_refused_by_name_and_nothing_moves() {
    let (env, work) = fleet("", &[]);
    let first = work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish(&env, &work, "a", &[]);
    publish(&env, &work, "b", &[]);
    assert_eq!(pull(&env).0, 0);

    env.git(&work.path, &["commit", "-q", "--amend", "-m", "rewritten"]);
    publish(&env, &work, "b", &["--force"]);
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("remote b:") && out.contains("force-push or rewritten history"), "{out}");
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(first.as_str()));
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    assert_eq!(env.run_ids(), [1]);
    let remotes = env.status_json()["remotes"].clone();
    let b = remotes.as_array().unwrap().iter().find(|r| r["name"] == "b").unwrap();
    assert!(b["last_fetch"]["refused"].as_str().unwrap().contains("refused"), "{b}");
}

#[test]
fn remotes_that_fork_are_refused_together() {
    let (env, work) = fleet("", &[]);
    let base = work.commit(&env, &[("troops.toml", PLAN)], "base");
    publish(&env, &work, "a", &[]);
    publish(&env, &work, "b", &[]);
    assert_eq!(pull(&env).0, 0);

    work.commit(&env, &[("x", "one")], "one");
    publish(&env, &work, "a", &[]);
    env.git(&work.path, &["reset", "-q", "--hard", &base]);
    work.commit(&env, &[("x", "two")], "two");
    publish(&env, &work, "b", &["--force"]);
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("remotes a, b offer forked histories"), "{out}");
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(base.as_str()));
    assert_eq!(env.run_ids(), [1]);
}

#[test]
fn pulls_that_bring_objects_keep_the_packs_few() {
    let (env, work) = fleet("", &[]);
    let repo = env.repo().display().to_string();
    // git's thresholds, lowered: repack once more than 3 packs pile up; in the foreground.
    for (key, value) in [("gc.autoPackLimit", "3"), ("gc.autoDetach", "false")] {
        env.git(env.tmp.path(), &["--git-dir", &repo, "config", key, value]);
    }
    let packs = || {
        std::fs::read_dir(env.repo().join("objects/pack"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "pack"))
            .count()
    };
    for i in 0..6 {
        work.commit(&env, &[("troops.toml", PLAN), ("n", &i.to_string())], &format!("commit {i}"));
        publish(&env, &work, "a", &[]);
        let (code, out) = pull(&env);
        assert_eq!(code, 0, "{out}");
        assert!(packs() <= 3, "pull {i} left {} packs", packs());
    }
    assert_eq!(env.deployed(), env.node_ref("refs/heads/main"));
}

#[test]
fn unreachable_remotes_are_skipped_within_their_timeout() {
    // One port refuses at once; one accepts and never says a word (a hung server).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = [
        ("closed", format!("ssh://git@127.0.0.1:{}/x.git", closed_port())),
        ("silent", format!("ssh://git@127.0.0.1:{}/x.git", silent.local_addr().unwrap().port())),
    ];
    let (env, work) = fleet("fetch_timeout = \"2s\"\n", &extra);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish(&env, &work, "a", &[]);
    // The silent remote would hold a pull that did not give up on it forever.
    let out = output_within("troops pull", &mut env.troops(&["pull"]), BUDGET);
    let out_text = combined(&out);
    assert_eq!(out.status.code(), Some(0), "{out_text}");
    assert!(out_text.contains("remote closed (") && out_text.contains("remote silent ("), "{out_text}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

#[test]
fn a_node_without_remotes_says_so_and_runs_nothing() {
    let env = Env::new();
    env.init();
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("has no remotes to fetch; add one with `git --git-dir="), "{out}");
    assert!(env.run_ids().is_empty());
}

#[test]
fn no_remote_fetched_is_exit_3() {
    let extra = [("closed", format!("ssh://git@127.0.0.1:{}/x.git", closed_port()))];
    let env = Env::new();
    env.ok(&["init", &format!("--remote={}={}", extra[0].0, extra[0].1)]);
    let (code, out) = pull(&env);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no remote could be fetched"), "{out}");
}

#[test]
fn a_due_tip_runs_when_no_remote_answers_as_the_daemon_runs_it() {
    let extra = [("closed", format!("ssh://git@127.0.0.1:{}/x.git", closed_port()))];
    let env = Env::new();
    env.ok(&["init", &format!("--remote={}={}", extra[0].0, extra[0].1)]);
    // The branch moved while no remote answers (a push whose run was killed, say).
    let tip = env.deploy_repo("work").publish_plan(&env, PLAN);
    let (code, out) = pull(&env);
    assert!(out.contains("remote closed (ssh://") && out.contains("could not be fetched"), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()), "{out}");
    assert_eq!(code, 0, "the run that was due ran, and succeeded: {out}");
    // Nothing is due any more: then no remote answering is exit 3.
    let (code, out) = pull(&env);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no remote could be fetched"), "{out}");
}

#[test]
fn the_daemon_picks_up_a_new_commit_within_interval_and_jitter() {
    let (env, work) = fleet("interval = \"1s\"\njitter = \"1s\"\n", &[]);
    work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish(&env, &work, "a", &[]);
    let daemon = Daemon::start(&env);
    wait_until("the first deploy", Duration::from_secs(10), || env.deployed().is_some());
    let second = work.commit(&env, &[("x", "1")], "second");
    publish(&env, &work, "b", &[]);
    // Within the budget: far under the 60 s default interval a daemon that ignored these would wait.
    wait_until("the second deploy", BUDGET, || env.deployed().as_deref() == Some(second.as_str()));
    assert_eq!(env.run_ids(), [1, 2], "{}", daemon.log());
    assert!(daemon.log().contains("fast-forwarded"), "{}", daemon.log());
}

#[test]
fn a_failing_tip_is_retried_with_growing_gaps_and_a_fix_deploys_at_once() {
    let (env, work) = fleet("interval = \"1h\"\n[retry]\ninitial = \"300ms\"\nmax = \"1200ms\"\n", &[]);
    work.commit(&env, &[("troops.toml", "[[step]]\nname = \"broken\"\nrun = \"exit 1\"\n")], "broken");
    publish(&env, &work, "a", &[]);
    let daemon = Daemon::start(&env);
    wait_until("a first run and three retries", Duration::from_secs(20), || {
        env.run_ids().len() >= 4 && env.run_record(4)["status"] == "failed"
    });
    let records: Vec<Value> = (1..=4).map(|id| env.run_record(id)).collect();
    assert_eq!(records[0]["trigger"], "pull");
    assert!(records[1..].iter().all(|r| r["trigger"] == "retry"), "{records:?}");
    let started: Vec<Duration> = records
        .iter()
        .map(|r| {
            humantime::parse_rfc3339(r["started_at"].as_str().unwrap())
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
        })
        .collect();
    let gaps: Vec<Duration> = started.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(300) && gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "gaps {gaps:?} must grow from 300ms"
    );
    assert!(env.deployed().is_none());

    // A fixing commit does not wait for the backoff: `troops pull` goes through the daemon.
    let fix = work.commit(&env, &[("troops.toml", PLAN)], "fix");
    publish(&env, &work, "a", &[]);
    let (code, out) = pull(&env);
    assert_eq!(code, 0, "{out}\n{}", daemon.log());
    assert!(out.contains(&format!("hello from {fix}")), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(fix.as_str()));
}

#[test]
fn deploy_through_the_socket_streams_output() {
    let (env, work) = fleet("interval = \"1h\"\n", &[]);
    let gate = env.path("go");
    // Only the manual run waits for the gate; the daemon's start-up cycle runs straight through.
    let plan = format!(
        "[[step]]\nname = \"slow\"\nrun = \"if [ $TROOPS_TRIGGER = manual ]; then echo first-line; {}; fi; echo last-line\"\n",
        block_until(&gate)
    );
    work.commit(&env, &[("troops.toml", &plan)], "slow");
    work.publish(&env);
    let daemon = Daemon::start(&env);
    wait_until("the start-up run", Duration::from_secs(10), || env.deployed().is_some());
    let mut client = env.troops(&["deploy"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !text(&seen).contains("first-line") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "deploy ended before streaming: {}\n{}", text(&seen), daemon.log());
        seen.extend_from_slice(&buf[..n]);
    }
    // The step is still blocked on the gate, so that line came from the daemon while it ran.
    assert!(!text(&seen).contains("last-line"));
    assert_eq!(env.run_record(2)["status"], "running");
    std::fs::write(&gate, "").unwrap();
    stdout.read_to_end(&mut seen).unwrap();
    assert!(client.wait().unwrap().success());
    let out = text(&seen);
    assert!(out.contains("last-line") && out.contains("run 2 succeeded"), "{out}");
    assert!(daemon.log().contains("control request"), "{}", daemon.log());
}

#[test]
fn sigterm_mid_step_ends_the_step_then_exits_0() {
    let (env, work) = fleet("interval = \"1h\"\n", &[]);
    let gate = env.path("go");
    let plan = format!(
        "[[step]]\nname = \"slow\"\nrun = \"echo started; {}; echo finished\"\n\
         [[step]]\nname = \"next\"\nrun = \"echo next\"\n",
        block_until(&gate)
    );
    work.commit(&env, &[("troops.toml", &plan)], "slow");
    publish(&env, &work, "a", &[]);
    let mut daemon = Daemon::start(&env);
    wait_until("the step to start", Duration::from_secs(10), || {
        env.run_ids() == [1]
            && std::fs::read_to_string(env.state.join("runs/1/output.log"))
                .unwrap_or_default()
                .contains("started")
    });
    daemon.signal(Signal::SIGTERM);
    // The gate never opens: the daemon ends the step rather than wait for it.
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(daemon.log().contains("stopping"), "{}", daemon.log());
    let record = env.run_record(1);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["steps"][0]["status"], "interrupted");
    assert_eq!(record["steps"][1]["status"], "not_run");
    assert!(!env.run_log(1).contains("finished"));
    assert!(env.run_log(1).contains("ending step `slow`"), "{}", env.run_log(1));
    assert!(env.deployed().is_none());
    assert!(!env.state.join("troops.sock").exists());
}

#[test]
fn a_daemon_killed_mid_run_marks_it_interrupted_and_runs_the_tip_again_on_restart() {
    let (env, work) = fleet("interval = \"1h\"\n", &[]);
    let gate = env.path("go");
    let plan =
        format!("[[step]]\nname = \"slow\"\nrun = \"echo started; {}; echo finished\"\n", block_until(&gate));
    let commit = work.commit(&env, &[("troops.toml", &plan)], "slow");
    publish(&env, &work, "a", &[]);
    let mut daemon = Daemon::start(&env);
    wait_until("the step to start", Duration::from_secs(10), || {
        std::fs::read_to_string(env.state.join("runs/1/output.log")).unwrap_or_default().contains("started")
    });
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(env.run_record(1)["status"], "running", "nobody was left to complete the record");
    // For the rerun (the killed daemon's step ended with it).
    std::fs::write(&gate, "").unwrap();

    let _daemon = Daemon::start(&env);
    wait_until("the restarted daemon to run the tip again", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(commit.as_str())
    });
    assert_eq!(env.run_record(1)["status"], "interrupted");
    let record = env.run_record(2);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["commit"], commit.as_str());
    assert_eq!(env.run_ids(), [1, 2]);
}

#[test]
fn status_shows_the_daemon_its_next_pull_and_its_retry() {
    let (env, work) = fleet("interval = \"1h\"\n[retry]\ninitial = \"1h\"\nmax = \"2h\"\n", &[]);
    assert!(env.status_json()["daemon"].is_null(), "{}", env.status_json());
    assert!(env.ok(&["status"]).contains("daemon    not running"));
    work.commit(&env, &[("troops.toml", "[[step]]\nname = \"fail\"\nrun = \"exit 1\"\n")], "failing");
    publish(&env, &work, "a", &[]);

    let mut daemon = Daemon::start(&env);
    wait_until("the failed start-up run's retry to be due", Duration::from_secs(10), || {
        !env.status_json()["daemon"]["retry_at"].is_null()
    });
    let daemon_status = env.status_json()["daemon"].clone();
    assert_eq!(daemon_status["pid"], daemon.child.id(), "{daemon_status}");
    for key in ["started_at", "next_pull_at", "retry_at"] {
        let at = daemon_status[key].as_str().unwrap_or_else(|| panic!("{key}: {daemon_status}"));
        humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{key} {at}: {e}"));
    }
    let text = env.ok(&["status"]);
    assert!(text.contains(&format!("daemon    pid {} since ", daemon.child.id())), "{text}");
    assert!(text.contains("; the failed tip again at "), "{text}");

    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    assert!(env.status_json()["daemon"].is_null(), "{}", env.status_json());
}

#[test]
fn a_peer_outside_the_group_is_refused_by_the_socket() {
    if !crate::support::require_root("acting as another user") {
        return;
    }
    let (env, work) = fleet("interval = \"1h\"\nadmin_group = \"troops-e2e-nobody-has-this\"\n", &[]);
    work.commit(&env, &[("troops.toml", PLAN)], "first");
    let daemon = Daemon::start(&env);
    // Open every path to others, so only the daemon's own check can refuse.
    use std::os::unix::fs::PermissionsExt;
    for dir in [env.tmp.path().to_owned(), env.state.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(env.state.join("troops.sock"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut command = std::process::Command::new("setpriv");
    env.hermetic(&mut command);
    let troops = crate::support::bin("troops");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(troops).arg("deploy");
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("permission denied: uid 65534"), "{}", text(&out.stderr));
    assert!(daemon.log().contains("control connection refused"), "{}", daemon.log());
    assert!(env.run_ids().is_empty());
}

#[test]
fn a_push_while_the_daemon_runs_goes_through_the_daemon() {
    let (env, work) = fleet("interval = \"1h\"\n", &[]);
    let daemon = Daemon::start(&env);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("remote: hello from {commit}")) && stderr.contains("run 1 succeeded"),
        "{stderr}"
    );
    assert!(daemon.log().contains("control request request=Run(Push)"), "{}", daemon.log());
    assert_eq!(env.run_ids(), [1], "one run, not one per trigger");
    assert_eq!(env.run_record(1)["trigger"], "push");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    // Its start-up cycle found no commits anywhere: nothing to run, and nothing to complain of.
    assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
}

#[test]
fn a_push_during_a_pull_cycle_runs_once_in_it_as_a_push() {
    // A hung remote keeps the daemon's start-up cycle fetching while the push arrives.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("ssh://git@127.0.0.1:{}/x.git", silent.local_addr().unwrap().port());
    let (env, work) = fleet("interval = \"1h\"\nfetch_timeout = \"5s\"\n", &[("hung", hung)]);
    let daemon = Daemon::start(&env);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("remote: hello from {commit}")), "{stderr}\n{}", daemon.log());
    assert!(stderr.contains("run 1 succeeded"), "{stderr}");
    // The fetch goes on by itself: the push did not wait for it.
    assert!(
        !daemon.log().contains("fetch failed remote=hung"),
        "the push waited for the fetch:\n{}",
        daemon.log()
    );
    wait_until("the fetch to give up", Duration::from_secs(15), || {
        daemon.log().contains("fetch failed remote=hung")
    });
    assert_eq!(env.run_ids(), [1], "one run, not one per trigger");
    assert_eq!(env.run_record(1)["trigger"], "push");
}

#[test]
fn the_daemon_reloads_its_config_on_edit_and_on_sighup() {
    let (env, work) = fleet("interval = \"1h\"\n", &[]);
    work.commit(
        &env,
        &[("troops.toml", "[[step]]\nname = \"host\"\nrun = \"echo host=$TROOPS_HOST\"\n")],
        "first",
    );
    work.publish(&env);
    let daemon = Daemon::start(&env);
    wait_until("the start-up run", Duration::from_secs(10), || env.deployed().is_some());

    // An edit of the file is noticed by itself.
    env.write_config("hostname = \"web-2\"\ninterval = \"1h\"\n");
    wait_until("the reload", Duration::from_secs(10), || {
        daemon.log().matches("config reloaded").count() >= 1
    });
    assert!(env.ok(&["deploy"]).contains("host=web-2"));

    // A broken edit is refused, naming the line, and the daemon goes on.
    env.write_config("hostname = \"web-3\"\nintervall = \"1h\"\n");
    wait_until("the refusal", Duration::from_secs(10), || daemon.log().contains("config not reloaded"));
    assert!(daemon.log().contains("troops.toml:2:1: unknown field `intervall`"), "{}", daemon.log());

    // SIGHUP reloads too.
    env.write_config("hostname = \"web-4\"\ninterval = \"1h\"\n");
    daemon.signal(Signal::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || {
        daemon.log().matches("config reloaded").count() >= 2
    });
    assert!(env.ok(&["deploy"]).contains("host=web-4"));

    // A new branch is watched from the reload on: a commit that lands on it runs at once.
    env.write_config("hostname = \"web-4\"\ninterval = \"1h\"\nbranch = \"prod\"\n");
    wait_until("the reload", Duration::from_secs(10), || {
        daemon.log().matches("config reloaded").count() >= 3
    });
    let second = work.commit(&env, &[("n", "2")], "second");
    let repo = env.repo().display().to_string();
    env.git(&work.path, &["--git-dir", &repo, "fetch", "-q", &work.path.display().to_string(), "main:prod"]);
    wait_until("the run of prod's new tip", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(second.as_str())
    });
}

#[test]
fn a_remotes_file_cut_short_by_a_crash_is_nothing_known_until_the_next_pull() {
    let env = Env::new();
    let work = env.init_following_a();
    work.commit(&env, &[("troops.toml", "[[step]]\nname = \"x\"\nrun = \"true\"\n")], "plan");
    crate::support::publish_to_a(&env, &work);
    env.ok(&["pull"]);
    let remotes = env.state.join("remotes.json");
    let whole = std::fs::read(&remotes).unwrap();
    // remotes.json is written every cycle without a disk flush: a crash of the machine can cut it.
    for cut in [&whole[..whole.len() / 2], b"".as_slice()] {
        std::fs::write(&remotes, cut).unwrap();
        let out = env.run(&["status"]);
        assert!(out.status.success(), "{}", combined(&out));
        let said = text(&out.stderr);
        assert!(said.contains("the remotes' last fetches are unknown until the next pull"), "{said}");
        assert!(said.contains(&remotes.display().to_string()), "the file is named: {said}");
        assert!(env.status_json()["remotes"][0]["last_fetch"].is_null(), "nothing known");
        env.ok(&["pull"]);
        let out = env.run(&["status"]);
        assert!(text(&out.stderr).is_empty(), "{}", combined(&out));
        assert!(!env.status_json()["remotes"][0]["last_fetch"].is_null(), "written anew");
    }
}
