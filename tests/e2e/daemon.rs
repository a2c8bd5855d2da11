//! A daemon nothing can wedge: slow or stalled readers cost it a bounded buffer, abusive socket
//! clients are dropped, a hung remote holds up no push, concurrent pulls take turns, commands
//! writing into a closed pipe exit quietly, and `troops status` never calls a daemon that does
//! not answer healthy.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::{
    accept_within, bin, output_within, still_open, text, wait_until, DeployRepo, Env, BUDGET,
};

/// What a step prints in the tests of slow readers: far more than any buffer the daemon keeps.
const BIG: usize = 40_000_000;
/// How much the daemon's memory may grow while a client does not read BIG bytes of output.
const RSS_GROWTH_LIMIT_KB: u64 = 24 * 1024;

/// A plan whose step prints BIG bytes in lines, after waiting for `gate` when given.
fn big_plan(gate: Option<&Path>) -> String {
    let wait = gate.map_or(String::new(), |gate| format!("{}; ", crate::support::block_until(gate)));
    format!("[[step]]\nname = \"big\"\nrun = '{wait}head -c {BIG} /dev/zero | tr \"\\0\" x | fold -w 99'\n")
}

/// A node with a daemon and a deploy repo that holds the plan `plan` makes (committed, not yet
/// on the node).
fn node_with_daemon(plan: impl FnOnce(&Env) -> String) -> (Env, Daemon, DeployRepo) {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let daemon = Daemon::start(&env);
    let repo = env.deploy_repo("deploy");
    repo.commit(&env, &[("troops.toml", &plan(&env))], "plan");
    (env, daemon, repo)
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `troops status` calls the daemon healthy (it calls one that has not answered within 2 s NOT
/// SERVING), and the status request straight on the socket is answered within the budget (a
/// daemon that a client holds up never answers it).
fn assert_status_answers(env: &Env) {
    let out = env.ok(&["status"]);
    assert!(out.contains("daemon    pid"), "{out}");
    let mut stream = UnixStream::connect(env.state.join("troops.sock")).unwrap();
    stream.set_read_timeout(Some(BUDGET)).unwrap();
    stream.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"done\""), "{answer}");
}

/// Waits for run `id` to end, watching the daemon's memory meanwhile; returns the peak RSS.
fn wait_for_run_watching_rss(env: &Env, daemon: &Daemon, id: u64, limit: Duration) -> u64 {
    let mut peak = 0;
    wait_until(&format!("run {id} to end"), limit, || {
        peak = peak.max(rss_kb(daemon.child.id()));
        env.run_ids().contains(&id) && env.run_record(id)["status"] != "running"
    });
    assert_eq!(env.run_record(id)["status"], "succeeded", "{}", env.run_record(id));
    peak
}

/// A child that is killed and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_pusher_that_stops_reading_costs_a_bounded_buffer_and_holds_up_nothing() {
    let (env, daemon, repo) = node_with_daemon(|_| big_plan(None));
    let before = rss_kb(daemon.child.id());
    // Nobody reads the pusher's stderr: git blocks on it, then the hook, then the daemon's writes.
    let mut command = repo.push_command(&env, &env.repo().display().to_string(), &["main"]);
    let mut pushing = Reaped(command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    wait_until("run 1 to start", Duration::from_secs(20), || env.run_ids().contains(&1));
    assert_status_answers(&env);
    let peak = wait_for_run_watching_rss(&env, &daemon, 1, Duration::from_secs(60));
    assert!(peak < before + RSS_GROWTH_LIMIT_KB, "daemon RSS grew from {before} kB to {peak} kB");
    assert_status_answers(&env);

    // The pusher reads at last: the start of the output, a notice for each gap (one, or two when
    // the pipes drained once while filling up), the gap's last lines and the run's summary.
    let mut stderr = String::new();
    pushing.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(pushing.0.wait().unwrap().success(), "{}", &stderr[stderr.len().saturating_sub(2000)..]);
    let notices: Vec<&str> = stderr.lines().filter(|l| l.contains("bytes of output skipped")).collect();
    assert!(!notices.is_empty(), "{}", &stderr[stderr.len().saturating_sub(2000)..]);
    for notice in &notices {
        let (bytes, rest) = notice.trim_start_matches("remote: troops: ").split_once(' ').unwrap();
        assert!(bytes.parse::<u64>().is_ok(), "{notice:?}");
        assert_eq!(rest.trim_end(), "bytes of output skipped; the whole log: troops log 1", "{notice:?}");
    }
    assert!(stderr.contains("run 1 succeeded"), "{}", &stderr[stderr.len().saturating_sub(2000)..]);
    println!(
        "daemon RSS {before} kB before, {peak} kB at most while the pusher did not read; {} gap notice(s)",
        notices.len()
    );
}

#[test]
fn a_socket_client_that_asks_for_a_run_and_never_reads_is_dropped() {
    let (env, daemon, repo) = node_with_daemon(|_| big_plan(None));
    // On another branch than the followed one, so that only the request runs it.
    let commit = env.git(&repo.path, &["rev-parse", "HEAD"]);
    let node = env.repo().display().to_string();
    env.git(
        &repo.path,
        &["--git-dir", &node, "fetch", "-q", &repo.path.display().to_string(), "main:staging"],
    );
    let before = rss_kb(daemon.child.id());
    let mut client = UnixStream::connect(env.state.join("troops.sock")).unwrap();
    let request = format!("{{\"op\":\"run\",\"ask\":\"deploy\",\"rev\":\"{commit}\"}}\n");
    client.write_all(request.as_bytes()).unwrap();
    wait_until("run 1 to start", Duration::from_secs(20), || env.run_ids().contains(&1));
    assert_status_answers(&env);
    let peak = wait_for_run_watching_rss(&env, &daemon, 1, Duration::from_secs(60));
    assert!(peak < before + RSS_GROWTH_LIMIT_KB, "daemon RSS grew from {before} kB to {peak} kB");
    assert_status_answers(&env);
    wait_until("the stalled client to be dropped", Duration::from_secs(40), || {
        daemon.log().contains("control connection dropped error=the client read nothing for 15s")
    });
    println!("daemon RSS {before} kB before, {peak} kB at most while a socket client did not read");
}

#[test]
fn log_follow_into_a_stalled_pipe_does_not_slow_the_run() {
    let (env, _daemon, repo) = node_with_daemon(|env| big_plan(Some(&env.path("gate"))));
    let gate = env.path("gate");
    repo.publish(&env);
    wait_until("run 1 to start", Duration::from_secs(20), || env.run_ids().contains(&1));
    let follower = Reaped(env.troops(&["log", "--follow", "1"]).stdout(Stdio::piped()).spawn().unwrap());
    std::fs::write(&gate, "").unwrap();
    let started = Instant::now();
    wait_until("run 1 to end", Duration::from_secs(60), || env.run_record(1)["status"] != "running");
    assert_eq!(env.run_record(1)["status"], "succeeded");
    println!("run 1 took {:?} after the gate opened, with a follower that did not read", started.elapsed());
    drop(follower);
}

#[test]
fn garbage_huge_lines_and_idle_connections_do_not_stop_status() {
    let (env, daemon, _repo) = node_with_daemon(|_| String::new());
    let socket = env.state.join("troops.sock");
    let idle: Vec<UnixStream> = (0..200).map(|_| UnixStream::connect(&socket).unwrap()).collect();

    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage.write_all(b"hello daemon\n").unwrap();
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("bad request"), "{answer}");

    let mut huge = UnixStream::connect(&socket).unwrap();
    huge.write_all(&vec![b'x'; 100_000]).unwrap();
    let mut answer = String::new();
    huge.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.contains("bad request"), "{answer}");

    assert_status_answers(&env);
    // The idle ones are dropped after the request timeout (5 s), and the daemon says so; kept,
    // they would outlive the budget.
    for mut stream in idle {
        stream.set_read_timeout(Some(BUDGET)).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("the daemon closes an idle connection");
    }
    assert!(daemon.log().contains("no request line within 5s"), "{}", daemon.log());
    assert_status_answers(&env);
}

#[test]
fn running_out_of_descriptors_does_not_spin_the_daemon() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let mut command = Command::new("prlimit");
    env.hermetic(&mut command);
    command.arg("--nofile=64").arg(bin("troops")).arg("daemon");
    let daemon = Daemon::start_command(&env, command);
    let socket = env.state.join("troops.sock");
    // More connections than the daemon has descriptors: accept fails with EMFILE.
    let idle: Vec<UnixStream> = (0..200).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    wait_until("accept to fail", Duration::from_secs(10), || {
        daemon.log().contains("cannot accept control connections")
    });
    let (ticks, started) = (cpu_ticks(daemon.child.id()), Instant::now());
    wait_until("two seconds", Duration::from_secs(5), || started.elapsed() >= Duration::from_secs(2));
    let used = cpu_ticks(daemon.child.id()) - ticks;
    assert!(used < 50, "the daemon used {used} ticks of CPU in 2 s while out of descriptors");
    println!("out of descriptors, the daemon used {used} clock ticks of CPU in 2 s");
    drop(idle);
    wait_until("status to answer again", Duration::from_secs(15), || {
        env.ok(&["status"]).contains("daemon    pid")
    });
}

/// A remote whose fetch hangs: a TCP port that accepts and never says a word.
fn hung_remote() -> (std::net::TcpListener, String) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://127.0.0.1:{}/x.git", silent.local_addr().unwrap().port());
    (silent, url)
}

/// A node following bare repo `a.git` and `extra` remotes; returns it and a repo to publish from.
fn following(config: &str, extra: &[(&str, &str)]) -> (Env, DeployRepo) {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\n{config}"));
    let a = env.path("a.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &a.display().to_string()]);
    let mut args = vec!["init".to_owned(), format!("--remote=a={}", a.display())];
    args.extend(extra.iter().map(|(name, url)| format!("--remote={name}={url}")));
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let work = env.deploy_repo("work");
    (env, work)
}

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

#[test]
fn a_push_does_not_wait_for_the_daemons_fetch_of_a_hung_remote() {
    let (silent, url) = hung_remote();
    let (env, work) = following("interval = \"1h\"\nfetch_timeout = \"60s\"\n", &[("slow", &url)]);
    let daemon = Daemon::start(&env);
    // The start-up cycle's fetch of `slow` connects, and hangs for 60 s from there.
    let mut fetch = accept_within(&silent, "the daemon's fetch of the hung remote", BUDGET);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("hello from {commit}")) && stderr.contains("run 1 succeeded"),
        "{stderr}"
    );
    // The push ended while the fetch still hangs: it did not wait for it.
    assert!(still_open(&mut fetch), "the fetch ended before the push did:\n{}", daemon.log());
    assert!(!daemon.log().contains("fetch failed remote=slow"), "{}", daemon.log());

    // A pull asked meanwhile says what it waits for while the fetch still hangs, not after.
    let mut pull = Reaped(env.troops(&["pull"]).stdout(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(pull.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(still_open(&mut fetch), "the pull said nothing until the fetch ended: {line:?}");
    assert!(
        line.starts_with("troops: waiting for the daemon's fetch under way (started ")
            && line.trim_end().ends_with("gives up after 1m), then fetching again"),
        "{line:?}"
    );
}

#[test]
fn two_pulls_at_once_without_a_daemon_both_succeed_and_run_once() {
    let (env, work) = following("", &[]);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    work.push(&env, &env.path("a.git").display().to_string(), &["main"]);
    let pulls: Vec<Child> = (0..2)
        .map(|_| env.troops(&["pull"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<_> = pulls.into_iter().map(|p| p.wait_with_output().unwrap()).collect();
    let said: Vec<String> = outs.iter().map(|o| format!("{}{}", text(&o.stdout), text(&o.stderr))).collect();
    for (out, said) in outs.iter().zip(&said) {
        assert!(out.status.success(), "{said}");
    }
    assert_eq!(env.run_ids(), [1], "{said:?}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    assert_eq!(said.iter().filter(|s| s.contains("is deployed already by run 1")).count(), 1, "{said:?}");
}

#[test]
fn a_pull_behind_another_pulls_fetch_says_what_it_waits_for() {
    let (_silent, url) = hung_remote();
    let (env, work) = following("fetch_timeout = \"3s\"\n", &[("slow", &url)]);
    let commit = work.commit(&env, &[("troops.toml", PLAN)], "first");
    work.push(&env, &env.path("a.git").display().to_string(), &["main"]);
    let first = env.troops(&["pull"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("the first pull to hold the fetch lock", Duration::from_secs(10), || {
        let Ok(lock) = std::fs::File::open(env.state.join("fetch.lock")) else { return false };
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    });
    let second = env.run(&["pull"]);
    let first = first.wait_with_output().unwrap();
    let said = [&first, &second].map(|o| format!("{}{}", text(&o.stdout), text(&o.stderr)));
    assert!(first.status.success() && second.status.success(), "{said:?}");
    assert!(
        said[1].starts_with("troops: waiting for another fetch of this node's remotes to end\n"),
        "{said:?}"
    );
    assert_eq!(env.run_ids(), [1], "{said:?}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

/// Runs troops with its stdout a pipe whose reader is gone: every write fails with EPIPE.
fn into_closed_pipe(env: &Env, args: &[&str]) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    env.troops(args).stdout(Stdio::from(write)).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn commands_writing_into_a_closed_pipe_exit_quietly() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    repo.publish_plan(&env, &big_plan(None).replace(&BIG.to_string(), "1000000"));
    env.ok(&["deploy"]);
    for args in [&["log"][..], &["runs"], &["runs", "--json"], &["status"], &["log", "--follow", "1"]] {
        let out = into_closed_pipe(&env, args);
        assert_eq!(out.status.code(), Some(0), "troops {args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "troops {args:?}");
    }
    // `troops log | head -1` as a shell runs it.
    for pipeline in ["troops log | head -1", "troops runs | head -1"] {
        let mut command = Command::new("bash");
        env.hermetic(&mut command);
        let script = format!("set -o pipefail; {pipeline}; echo \"exit=$?\"");
        let out = command.args(["-c", &script]).output().unwrap();
        let stdout = text(&out.stdout);
        assert!(stdout.ends_with("\nexit=0\n") && stdout.lines().count() == 2, "{pipeline}: {stdout}");
        assert_eq!(text(&out.stderr), "", "{pipeline}");
    }
}

#[test]
fn status_calls_a_daemon_that_does_not_answer_not_serving() {
    let env = Env::new();
    env.init();
    // Something holds the socket and never answers.
    let wedged = UnixListener::bind(env.state.join("troops.sock")).unwrap();
    let out = output_within("troops status", &mut env.troops(&["status"]), BUDGET);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = text(&out.stdout);
    assert!(
        out.contains("daemon    NOT SERVING: the daemon at ") && out.contains("did not answer within 2s"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["serving"], false, "{json}");
    drop(wedged);
    std::fs::remove_file(env.state.join("troops.sock")).unwrap();

    // A real daemon that stopped answering.
    let daemon = Daemon::start(&env);
    daemon.signal(Signal::SIGSTOP);
    let out = env.ok(&["status"]);
    daemon.signal(Signal::SIGCONT);
    assert!(out.contains("daemon    NOT SERVING"), "{out}");
    wait_until("the daemon to answer again", Duration::from_secs(10), || {
        env.ok(&["status"]).contains("daemon    pid")
    });
}

/// A step that upgrades troops (as `apt-get install troops` does: a new file renamed over the
/// executable) is not ended by it: the daemon finishes the run, then re-executes the new binary,
/// same pid, and serves again. Two upgrades in a row, so the restarted daemon does it too.
#[test]
fn a_step_that_replaces_the_troops_executable_finishes_and_the_daemon_restarts_into_it() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let installed = env.path("bin/troops");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(bin("troops"), &installed).unwrap();
    let mut command = Command::new(&installed);
    env.hermetic(&mut command);
    command.arg("daemon");
    let mut daemon = Daemon::start_command(&env, command);
    let pid = daemon.child.id();
    let work = env.deploy_repo("work");
    let node = env.repo().display().to_string();
    let upgrade = format!(
        "[[step]]\nname = \"upgrade\"\nrun = \"cp {0} {1}.new && mv -f {1}.new {1} && echo upgraded\"\n",
        bin("troops").display(),
        installed.display()
    );
    for round in 1..=2 {
        work.commit(&env, &[("troops.toml", &upgrade), ("round", &round.to_string())], "upgrade");
        let out = work.push(&env, &node, &["main"]);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("upgraded") && stderr.contains(&format!("run {round} succeeded")),
            "{stderr}"
        );
        wait_until("the restart into the new executable", Duration::from_secs(20), || {
            daemon.log().matches("daemon started").count() == round + 1
        });
        assert!(
            daemon.log().contains("the troops executable was replaced; restarting into it"),
            "{}",
            daemon.log()
        );
        assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon exited:\n{}", daemon.log());
        let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
        assert_eq!(status["daemon"]["pid"], pid, "{status}");
    }
    assert_eq!(env.run_record(2)["status"], "succeeded");
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "{}", daemon.log());
}
