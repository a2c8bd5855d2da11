//! The step runner's trust boundary: a step sees one allowlisted environment and umask 022
//! whoever triggered it (push, pull, deploy; in-process or through the daemon), and a step's end
//! ends everything it started, including what left its process group, also when the troops that
//! ran it was SIGKILLed.
//!
//! Steps write what they saw and the pids of what they started to files in the test dir; the test
//! reads them afterwards. What a failed test leaves behind is killed when it ends (`Reap`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::daemon::Daemon;
use crate::support::{text, wait_until, DeployRepo, Env};

const DEADLINE: Duration = Duration::from_secs(10);

/// What every step must see, and nothing more (`PWD` is the shell's own).
const STEP_VARS: &[&str] = &[
    "HOME",
    "LANG",
    "LOGNAME",
    "PATH",
    "PWD",
    "TROOPS_COMMIT",
    "TROOPS_CONFIG",
    "TROOPS_EXPORTS",
    "TROOPS_FLEET",
    "TROOPS_HOST",
    "TROOPS_PREVIOUS_COMMIT",
    "TROOPS_ROLES",
    "TROOPS_RUN_ID",
    "TROOPS_STATE_DIR",
    "TROOPS_STEP",
    "TROOPS_TRIGGER",
    "USER",
];

/// A node with one remote, `origin.git`, and a work repo to commit to.
fn node(env: &Env) -> DeployRepo {
    let origin = env.path("origin.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &origin.display().to_string()]);
    env.ok(&["init", &format!("--remote=origin={}", origin.display())]);
    env.deploy_repo("work")
}

/// A plan whose one step writes its umask and environment to `seen/<run id>`.
fn probe_plan(seen: &Path, nonce: &str) -> String {
    format!(
        "[[step]]\nname = \"probe\"\nrun = '{{ umask; env; }} > \"{}/$TROOPS_RUN_ID\"; : {nonce}'\n",
        seen.display()
    )
}

/// `troops ARGS` with `vars` added and umask 077, as a careless caller might have.
fn troops_as_caller(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new("/bin/sh");
    env.hermetic(&mut command);
    command
        .args(["-c", "umask 077; exec \"$0\" \"$@\"", &crate::support::bin("troops").display().to_string()])
        .args(args)
        .envs(vars.iter().copied());
    let out = command.output().unwrap();
    assert!(out.status.success(), "troops {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    out
}

/// A push to the node's repo over its local path, with `vars` in the pusher's environment.
fn push_as_pusher(env: &Env, work: &DeployRepo, vars: &[(&str, &str)]) {
    let mut command = work.push_command(env, &env.repo().display().to_string(), &["main"]);
    let out = command.envs(vars.iter().copied()).output().unwrap();
    assert!(out.status.success(), "push: {}", text(&out.stderr));
}

/// The umask and the variables run `id` saw.
fn seen(dir: &Path, id: u64) -> (String, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(dir.join(id.to_string())).unwrap();
    let mut lines = text.lines();
    let umask = lines.next().unwrap().to_owned();
    let vars = lines.filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    (umask, vars)
}

#[test]
fn no_trigger_passes_its_environment_or_umask_to_a_step() {
    let env = Env::new();
    let work = node(&env);
    let seen_dir = env.path("seen");
    std::fs::create_dir_all(&seen_dir).unwrap();
    let origin = env.path("origin.git").display().to_string();
    let leaks = [("LEAK_ME", "1"), ("SSH_AUTH_SOCK", "/tmp/agent.sock"), ("GIT_TRACE_PACKET", "0")];
    let commit = |n: &str| work.commit(&env, &[("troops.toml", &probe_plan(&seen_dir, n))], n);

    // In-process: a push (the hook runs the plan), a manual deploy, a pull.
    commit("1");
    push_as_pusher(&env, &work, &leaks);
    troops_as_caller(&env, &["deploy"], &leaks);
    commit("3");
    assert!(work.push(&env, &origin, &["main"]).status.success());
    troops_as_caller(&env, &["pull"], &leaks);
    // Through a daemon started with systemd's variables and more: a manual deploy, a push.
    let notify = env.path("notify.sock").display().to_string();
    let daemon = Daemon::start_with(&env, &[("NOTIFY_SOCKET", &notify), ("LEAK_ME", "daemon")]);
    troops_as_caller(&env, &["deploy"], &leaks);
    commit("5");
    push_as_pusher(&env, &work, &leaks);
    let log = daemon.log();
    assert!(
        log.contains("request=Run(Deploy") && log.contains("request=Run(Push)"),
        "not through the daemon:\n{log}"
    );
    drop(daemon);

    let triggers: Vec<String> = (1..=5).map(|id| env.run_record(id)["trigger"].to_string()).collect();
    assert_eq!(triggers, ["\"push\"", "\"manual\"", "\"pull\"", "\"manual\"", "\"push\""]);
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap();
    let (_, first) = seen(&seen_dir, 1);
    for id in 1..=5 {
        let (umask, vars) = seen(&seen_dir, id);
        assert_eq!(umask, "0022", "run {id}");
        assert_eq!(vars.keys().map(String::as_str).collect::<Vec<_>>(), STEP_VARS, "run {id}: {vars:?}");
        for key in ["HOME", "LANG", "LOGNAME", "PATH", "USER"] {
            assert_eq!(vars.get(key), first.get(key), "run {id}, {key}");
        }
        assert_eq!(vars["HOME"], user.dir.display().to_string(), "run {id}: the caller's HOME leaked");
        assert_eq!(vars["USER"], user.name);
        assert_eq!(vars["LANG"], "C.UTF-8");
        let bin_dir = crate::support::bin("troops").parent().unwrap().display().to_string();
        assert_eq!(
            vars["PATH"],
            format!("{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "run {id}: troops' own directory first, then the fixed PATH"
        );
    }
}

/// Kills, when dropped, every pid in the files of `dir`: what a failed test's steps left.
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in pids_in(&self.0) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

fn pids_in(dir: &Path) -> Vec<Pid> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok().map(Pid::from_raw))
        .collect()
}

/// Whether `pid` runs (a zombie does not: only its parent has yet to look).
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

/// A shell condition: process `$p` runs (a zombie does not).
const RUNS: &str = "[ -e /proc/$p ] && ! grep -q ') Z' /proc/$p/stat";

/// Steps that each leave something behind in its own way, writing its pid to `pids/<name>`; the
/// step after each writes the pid to `alive/<name>` if it still runs.
fn leaving_plan(pids: &Path, checks: &Path) -> String {
    let p = |name: &str| format!("{}/{name}", pids.display());
    let leave = |name: &str, run: &str, extra: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\nrun = '''{run}'''\n{extra}\n\
             [[step]]\nname = \"check-{name}\"\nrun = '''p=$(cat {file}); if {RUNS}; then echo $p > {checks}/{name}; fi'''\n\n",
            file = p(name),
            checks = checks.display()
        )
    };
    [
        leave("setsid", &format!("setsid sleep 60 & echo $! > {}", p("setsid")), ""),
        leave("double-fork", &format!("sh -c 'sleep 60 & echo $! > {}'", p("double-fork")), ""),
        leave(
            "ignores-term",
            // It writes its pid once it ignores SIGTERM; the step waits for that (and not for
            // the file an earlier run left).
            &format!(
                "rm -f {f}; sh -c 'trap \"\" TERM; echo $$ > {f}; exec sleep 60' & while [ ! -s {f} ]; do sleep 0.01; done",
                f = p("ignores-term")
            ),
            "kill_grace = \"300ms\"",
        ),
    ]
    .concat()
}

#[test]
fn what_a_step_leaves_behind_ends_with_it_in_process_and_through_the_daemon() {
    let env = Env::new();
    let work = node(&env);
    let pids = env.path("pids");
    let checks = env.path("alive");
    std::fs::create_dir_all(&pids).unwrap();
    std::fs::create_dir_all(&checks).unwrap();
    let _reap = Reap(pids.clone());
    work.commit(&env, &[("troops.toml", &leaving_plan(&pids, &checks))], "leave");
    work.publish(&env);

    let out = env.run(&["deploy"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let daemon = Daemon::start(&env);
    let out = env.run(&["deploy"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    drop(daemon);

    for id in [1, 2] {
        assert_eq!(env.run_record(id)["status"], "succeeded", "{}", env.run_log(id));
    }
    let left: Vec<String> = std::fs::read_dir(&checks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(left.is_empty(), "still alive when the next step started: {left:?}");
    assert_eq!(pids_in(&pids).len(), 3);
    assert!(pids_in(&pids).into_iter().all(|pid| !alive(pid)));
    // The step that ignored SIGTERM took its grace, not the default 10 s.
    let ms = env.run_record(2)["steps"][4]["duration_ms"].as_u64().unwrap();
    assert!((300..5000).contains(&ms), "{ms} ms: {}\n{}", env.run_record(2), env.run_log(2));
}

#[test]
fn a_timeout_or_a_stopped_daemon_ends_the_step_and_its_descendants() {
    let env = Env::new();
    let work = node(&env);
    let pids = env.path("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let _reap = Reap(pids.clone());
    let p = pids.display();
    let plan = format!(
        "[[step]]\nname = \"slow\"\ntimeout = \"500ms\"\n\
         run = 'setsid sleep 60 & echo $! > \"{p}/timeout-setsid\"; sh -c \"sleep 60 & echo \\$! > {p}/timeout-double\"; echo $$ > \"{p}/timeout-main\"; sleep 60'\n"
    );
    work.commit(&env, &[("troops.toml", &plan)], "slow");
    work.publish(&env);
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("timed out after 500ms; ending everything it started"),
        "{}",
        text(&out.stdout)
    );
    let record = env.run_record(1);
    assert_eq!(record["steps"][0]["status"], "timed_out", "{record}");
    assert_eq!(pids_in(&pids).len(), 3);
    assert!(pids_in(&pids).into_iter().all(|pid| !alive(pid)), "troops returned before they were gone");

    // The daemon asked to stop mid-step: the step and what it started end now, not when done.
    let plan = format!(
        "[[step]]\nname = \"long\"\nkill_grace = \"300ms\"\n\
         run = 'setsid sh -c \"trap \\\"\\\" TERM; exec sleep 60\" & echo $! > \"{p}/stop-setsid\"; echo started; sleep 60'\n\
         [[step]]\nname = \"next\"\nrun = 'echo next'\n"
    );
    work.commit(&env, &[("troops.toml", &plan)], "long");
    work.publish(&env);
    let mut daemon = Daemon::start(&env);
    wait_until("the step to start", DEADLINE, || env.run_log(2).contains("started"));
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let record = env.run_record(2);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["steps"][0]["status"], "interrupted", "{record}");
    assert_eq!(record["steps"][1]["status"], "not_run", "{record}");
    let stubborn = std::fs::read_to_string(pids.join("stop-setsid")).unwrap().trim().parse().unwrap();
    assert!(!alive(Pid::from_raw(stubborn)), "the daemon exited before the step's setsid child was gone");
}

/// A node whose tip's plan (`leftover_plan`, published) leaves a ticking process behind; its
/// processes write their pids into `pids`, which is reaped at the end.
struct Leaving {
    env: Env,
    pids: PathBuf,
    ticks: PathBuf,
    commit: String,
    _reap: Reap,
}

fn leaving() -> Leaving {
    let env = Env::new();
    let work = node(&env);
    let pids = env.path("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let ticks = env.path("ticks");
    let plan = leftover_plan(&pids, &ticks, &env.path("gate"));
    work.commit(&env, &[("troops.toml", &plan)], "leave");
    let commit = work.publish(&env);
    Leaving { _reap: Reap(pids.clone()), env, pids, ticks, commit }
}

/// A plan whose step starts a `setsid` loop that appends to `ticks` (its pid in `pids/leftover`,
/// its supervisor's in `pids/supervisor`) and waits for `gate`; a rerun records in `pids/overlap`
/// whether the old loop was still alive when it started.
fn leftover_plan(pids: &Path, ticks: &Path, gate: &Path) -> String {
    let p = pids.display();
    format!(
        "[[step]]\nname = \"leave\"\nrun = '''\n\
         if [ -e \"{p}/leftover\" ]; then p=$(cat \"{p}/leftover\"); if {RUNS}; then echo $p > \"{p}/overlap\"; fi; exit 0; fi\n\
         setsid sh -c 'while :; do echo tick >> \"{ticks}\"; sleep 0.05; done' & echo $! > \"{p}/leftover\"\n\
         echo $PPID > \"{p}/supervisor\"\n\
         echo started\n\
         {gate}\n'''\n",
        ticks = ticks.display(),
        gate = crate::support::block_until(gate)
    )
}

/// The pid a step writes into `file` (`echo $! > file`), once it is whole: the shell makes the
/// file empty before it writes the line, and a step's background process may run (tick, say)
/// before the step gets that far.
fn pid_in(file: PathBuf) -> Pid {
    let mut pid = None;
    wait_until(&format!("a whole pid in {}", file.display()), DEADLINE, || {
        pid = std::fs::read_to_string(&file).ok().and_then(|s| s.strip_suffix('\n')?.parse().ok());
        pid.is_some()
    });
    Pid::from_raw(pid.unwrap())
}

/// Once the step of `leftover_plan` ticks, SIGKILLs the step's supervisor and then `troops`
/// (frozen first, so that neither can clean up or record anything; `reap` waits for it): what a
/// `kill -9` of the whole process group or the OOM killer leaves behind. Returns the leftover,
/// still alive.
fn kill_troops_and_supervisor(pids: &Path, ticks: &Path, troops: Pid, reap: impl FnOnce()) -> Pid {
    wait_until("the leftover to tick", DEADLINE, || std::fs::metadata(ticks).is_ok_and(|m| m.len() > 0));
    let (leftover, supervisor) = (pid_in(pids.join("leftover")), pid_in(pids.join("supervisor")));
    kill(troops, Signal::SIGSTOP).unwrap();
    kill(supervisor, Signal::SIGKILL).unwrap();
    kill(troops, Signal::SIGKILL).unwrap();
    reap();
    wait_until("the supervisor to be gone", DEADLINE, || !alive(supervisor));
    assert!(alive(leftover), "nothing left to recover from");
    leftover
}

#[test]
fn leftovers_of_a_sigkilled_deploy_are_ended_before_the_next_run() {
    let Leaving { env, pids, ticks, _reap, .. } = leaving();

    let mut deploy = env.troops(&["deploy"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let troops = Pid::from_raw(deploy.id() as i32);
    let leftover = kill_troops_and_supervisor(&pids, &ticks, troops, || {
        deploy.wait().unwrap();
    });

    // An operator trying a step by hand with another run's identity is no leftover.
    let mut bystander = Command::new("sleep")
        .arg("30")
        .env("TROOPS_STATE_DIR", &env.state)
        .env("TROOPS_RUN_ID", "7")
        .spawn()
        .unwrap();
    let out = env.run(&["deploy"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was ended");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    assert!(stdout.contains("run 1 was left running"), "{stdout}");
    assert!(stdout.contains("left running by an interrupted run"), "{stdout}");
    assert!(!pids.join("overlap").exists(), "the rerun started while the old step ran:\n{stdout}");
    assert!(!alive(leftover));
    assert_eq!(env.run_record(2)["status"], "succeeded");
}

#[test]
fn leftovers_of_a_sigkilled_daemon_are_ended_before_its_restart_runs_again() {
    let Leaving { env, pids, ticks, commit, _reap } = leaving();

    let mut daemon = Daemon::start(&env);
    let troops = Pid::from_raw(daemon.child.id() as i32);
    let leftover = kill_troops_and_supervisor(&pids, &ticks, troops, || {
        daemon.wait_exit(DEADLINE);
    });
    assert_eq!(env.run_record(1)["status"], "running");

    let _daemon = Daemon::start(&env);
    wait_until("the restarted daemon to run the tip again", DEADLINE, || {
        env.deployed().as_deref() == Some(commit.as_str())
    });
    assert_eq!(env.run_record(1)["status"], "interrupted");
    assert!(!pids.join("overlap").exists(), "the rerun started while the old step ran");
    assert!(!alive(leftover));
}

#[test]
fn a_sigkilled_daemon_takes_its_step_and_what_it_started_along() {
    let Leaving { env, pids, ticks, _reap, .. } = leaving();

    let mut daemon = Daemon::start(&env);
    wait_until("the leftover to tick", DEADLINE, || std::fs::metadata(&ticks).is_ok_and(|m| m.len() > 0));
    // Read before the kill: the step's tree ends with the daemon, maybe before it wrote them.
    let (leftover, supervisor) = (pid_in(pids.join("leftover")), pid_in(pids.join("supervisor")));
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(DEADLINE);
    // Its supervisor, told by the kernel that its parent died, ends the step's whole tree.
    wait_until("the step's processes to end with the daemon", DEADLINE, || {
        !alive(leftover) && !alive(supervisor)
    });
}
