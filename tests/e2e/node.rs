//! Issue 2: a node, its plan and its runner, driven through `troops init` and `troops deploy`.
//!
//! Steps prove what they did by touching marker files outside the checkout (`Marks`), so a test
//! can show that a refused run ran nothing. Processes a test starts in the background are killed
//! when it ends, passing or not (`Background`, `KillOnDrop`); steps that wait for the test poll a
//! file with a bound of their own, so even a leaked one ends by itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::{block_until, text, wait_until, DeployRepo, Env, BUDGET};

/// How long a test waits for something that takes milliseconds when all is well.
const DEADLINE: Duration = Duration::from_secs(10);

/// Marker files that steps create to show they ran.
struct Marks {
    dir: PathBuf,
}

impl Marks {
    fn new(env: &Env) -> Marks {
        let dir = env.path("marks");
        std::fs::create_dir_all(&dir).unwrap();
        Marks { dir }
    }

    /// A shell command that records that `name` ran.
    fn touch(&self, name: &str) -> String {
        format!("touch \"{}\"", self.dir.join(name).display())
    }

    /// The markers present, sorted.
    fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// `s` as a TOML basic string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// A `[[step]]` table that runs `run` with `/bin/sh -c`.
fn step(name: &str, run: &str) -> String {
    format!("[[step]]\nname = \"{name}\"\nrun = {}\n\n", quoted(run))
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn all_output(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(bytes)))
}

fn step_names(record: &Value) -> Vec<String> {
    record["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Kills, when dropped, the process (or the process group it leads) whose pid a step wrote to a
/// file: a test that fails must not leak what its steps started.
struct KillOnDrop {
    pid_file: PathBuf,
    group: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let Some(pid) = read_pid(&self.pid_file).filter(|&p| p > 1 && alive(p)) else {
            return;
        };
        let _ = if self.group {
            killpg(Pid::from_raw(pid), Signal::SIGKILL)
        } else {
            kill(Pid::from_raw(pid), Signal::SIGKILL)
        };
    }
}

/// A `troops` process running in the background, its stdout and stderr going to a file; killed
/// when dropped.
struct Background {
    child: Child,
    output: PathBuf,
}

impl Background {
    fn spawn(env: &Env, args: &[&str], output: PathBuf) -> Background {
        let file = File::create(&output).unwrap();
        let child =
            env.troops(args).stdout(file.try_clone().unwrap()).stderr(file).spawn().expect("starting troops");
        Background { child, output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits (with a deadline) for the process to end.
    fn wait(&mut self, what: &str) -> ExitStatus {
        let mut status = None;
        wait_until(what, DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record_status(env: &Env, id: u64) -> Option<String> {
    let bytes = std::fs::read(env.state.join(format!("runs/{id}/run.json"))).ok()?;
    Some(serde_json::from_slice::<Value>(&bytes).ok()?["status"].as_str()?.to_owned())
}

#[test]
fn deploy_runs_the_plan_and_records_it() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    let commit = repo.publish_plan(&env, "[[step]]\nname = \"hello\"\nrun = \"echo hello\"\n");
    let out = env.ok(&["deploy"]);
    assert!(out.contains("hello\n"), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let record = env.run_record(1);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["commit"], commit.as_str());
}

#[test]
fn node_runs_only_the_steps_of_its_roles() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nroles = [\"ops\"]\n");
    env.init();
    let marks = Marks::new(&env);
    let roles = "[roles.web]\nhosts = [\"web-1\"]\n\n\
                 [roles.frontend]\nmatch = [\"web-*\"]\n\n\
                 [roles.db]\nmatch = [\"db-*\"]\n\n\
                 [roles.mail]\nhosts = [\"web-10\", \"web-1.example.com\"]\n\n";
    let steps = [
        ("everywhere", None),
        ("web-only", Some("web")),
        ("frontend", Some("frontend")),
        ("db", Some("db")),
        ("mail", Some("mail")),
        ("ops", Some("ops")),
    ];
    let mut plan = roles.to_owned();
    for (name, role) in steps {
        let roles = role.map_or(String::new(), |r| format!("roles = [\"{r}\"]\n"));
        plan += &format!("[[step]]\nname = \"{name}\"\n{roles}run = {}\n\n", quoted(&marks.touch(name)));
    }
    let commit = env.deploy_repo("deploy").publish_plan(&env, &plan);

    assert_eq!(env.ok(&["roles"]), "frontend\nops\nweb\n");

    let dry = env.ok(&["deploy", "--dry-run"]);
    let lines: Vec<String> =
        dry.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        lines,
        [
            format!("commit {commit} on web-1 [frontend,ops,web]"),
            "run everywhere: every host".into(),
            "run web-only: role web".into(),
            "run frontend: role frontend".into(),
            "skip db: needs role db".into(),
            "skip mail: needs role mail".into(),
            "run ops: role ops".into(),
        ],
        "{dry}"
    );
    assert!(marks.list().is_empty(), "--dry-run ran steps: {:?}", marks.list());
    assert!(env.run_ids().is_empty(), "--dry-run recorded a run");
    assert_eq!(env.deployed(), None);

    env.ok(&["deploy"]);
    assert_eq!(marks.list(), ["everywhere", "frontend", "ops", "web-only"]);
    let record = env.run_record(1);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["host"], "web-1");
    assert_eq!(record["trigger"], "manual");
    assert_eq!(record["roles"], serde_json::json!(["frontend", "ops", "web"]));
    assert_eq!(step_names(&record), ["everywhere", "web-only", "frontend", "ops"]);
    for step in record["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "succeeded", "{step}");
        assert_eq!(step["exit_code"], 0, "{step}");
    }
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

#[test]
fn has_role_answers_a_step_script() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nroles = [\"cache\"]\n");
    env.init();
    let answers = env.path("answers");
    let script = format!(
        "#!/bin/sh\nfor role in web edge cache db; do\n  troops has-role \"$role\"\n  echo \"$role=$?\" >> '{}'\ndone\n",
        answers.display()
    );
    let plan = "[roles.web]\nhosts = [\"web-1\"]\n\n[roles.edge]\nmatch = [\"web-*\"]\n\n[roles.db]\nhosts = [\"db-1\"]\n\n\
                [[step]]\nname = \"probe\"\nscript = \"steps/probe.sh\"\n";
    let repo = env.deploy_repo("deploy");
    let first = repo.commit(&env, &[("steps/probe.sh", &script), ("troops.toml", plan)], "probe roles");
    repo.publish(&env);

    // The step finds the node through what troops gives it, not through the caller's environment.
    let out = env
        .troops(&["deploy"])
        .env_remove("TROOPS_STATE_DIR")
        .env_remove("TROOPS_CONFIG")
        .arg("--state-dir")
        .arg(&env.state)
        .arg("--config")
        .arg(&env.config)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", all_output(&out));
    assert_eq!(std::fs::read_to_string(&answers).unwrap(), "web=0\nedge=0\ncache=0\ndb=1\n");

    assert_eq!(code(&env.run(&["has-role", "web"])), Some(0));
    assert_eq!(code(&env.run(&["has-role", "db"])), Some(1));

    // A newer tip takes web away; a step of the older commit still answers by its own plan.
    repo.commit(
        &env,
        &[("troops.toml", &plan.replace("hosts = [\"web-1\"]", "hosts = [\"web-2\"]"))],
        "no web",
    );
    repo.publish(&env);
    assert_eq!(code(&env.run(&["has-role", "web"])), Some(1), "outside a step: the tip's plan");
    std::fs::remove_file(&answers).unwrap();
    let out = env.run(&["deploy", "--commit", &first]);
    assert_eq!(code(&out), Some(0), "{}", all_output(&out));
    assert_eq!(std::fs::read_to_string(&answers).unwrap(), "web=0\nedge=0\ncache=0\ndb=1\n");
}

/// Parses `KEY=VALUE` lines.
fn vars(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[test]
fn steps_get_the_spec_environment_cwd_and_stdin() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nroles = [\"zeta\", \"alpha\"]\n");
    env.init();
    let seen = env.path("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let probe = format!(
        "#!/bin/sh\nout='{}'/$TROOPS_RUN_ID\n\
         env | grep -E '^(TROOPS_|LEVEL=)' > \"$out\"\n\
         echo \"DATA=$(cat data.txt)\" >> \"$out\"\n\
         if [ -e .git ]; then echo GIT=present; else echo GIT=absent; fi >> \"$out\"\n\
         echo \"STDIN=$(readlink /proc/self/fd/0)\" >> \"$out\"\n",
        seen.display()
    );
    let plan = "[roles.web]\nhosts = [\"web-1\"]\n\n\
                [[step]]\nname = \"probe\"\nscript = \"probe.sh\"\nenv = { LEVEL = \"prod\" }\n";
    let repo = env.deploy_repo("deploy");
    // troops itself gets a readable stdin; its steps must not.
    let stdin = env.path("stdin.txt");
    std::fs::write(&stdin, "not for steps\n").unwrap();
    let deploy = || {
        let out = env.troops(&["deploy"]).stdin(File::open(&stdin).unwrap()).output().unwrap();
        assert_eq!(code(&out), Some(0), "{}", all_output(&out));
    };
    let first =
        repo.commit(&env, &[("probe.sh", &probe), ("troops.toml", plan), ("data.txt", "one")], "first");
    repo.publish(&env);
    deploy();
    let second = repo.commit(&env, &[("data.txt", "two")], "second");
    repo.publish(&env);
    deploy();

    let state = env.state.display().to_string();
    for (id, commit, previous, data) in [(1, &first, "", "one"), (2, &second, first.as_str(), "two")] {
        let seen = vars(&std::fs::read_to_string(seen.join(id.to_string())).unwrap());
        let expect = |key: &str, value: &str| {
            assert_eq!(seen.get(key).map(String::as_str), Some(value), "run {id}, {key}: {seen:?}")
        };
        expect("TROOPS_COMMIT", commit);
        expect("TROOPS_PREVIOUS_COMMIT", previous);
        expect("TROOPS_HOST", "web-1");
        expect("TROOPS_ROLES", "alpha,web,zeta");
        expect("TROOPS_RUN_ID", &id.to_string());
        expect("TROOPS_TRIGGER", "manual");
        expect("TROOPS_STEP", "probe");
        expect("TROOPS_STATE_DIR", &state);
        expect("LEVEL", "prod");
        expect("DATA", data);
        expect("GIT", "absent");
        expect("STDIN", "/dev/null");
    }
}

#[test]
fn failing_step_stops_the_run_and_keeps_the_deployed_commit() {
    let env = Env::new();
    env.init();
    let marks = Marks::new(&env);
    let repo = env.deploy_repo("deploy");
    let good = repo.publish_plan(&env, &step("ok", "true"));
    env.ok(&["deploy"]);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    let plan = step("before", &marks.touch("before"))
        + &step("breaks", "echo breaking; exit 3")
        + &step("after", &marks.touch("after"));
    let bad = repo.publish_plan(&env, &plan);
    let out = env.run(&["deploy"]);
    assert_eq!(code(&out), Some(1), "{}", all_output(&out));
    assert!(text(&out.stdout).contains("breaking"), "{}", all_output(&out));
    assert_eq!(marks.list(), ["before"]);
    let record = env.run_record(2);
    assert_eq!(record["commit"], bad.as_str());
    assert_eq!(record["status"], "failed");
    assert!(record["error"].as_str().is_some_and(|e| e.contains("breaks")), "{record}");
    assert!(record["finished_at"].is_string(), "{record}");
    let steps: Vec<(&str, &str, &Value)> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap(), &s["exit_code"]))
        .collect();
    assert_eq!(
        steps,
        [
            ("before", "succeeded", &Value::from(0)),
            ("breaks", "failed", &Value::from(3)),
            ("after", "not_run", &Value::Null)
        ],
        "{record}"
    );
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "a failed run moved refs/troops/deployed");
}

#[test]
fn timed_out_step_is_killed_with_its_children() {
    let env = Env::new();
    env.init();
    let marks = Marks::new(&env);
    let child_pid = env.path("child.pid");
    let step_pid = env.path("step.pid");
    let _child = KillOnDrop { pid_file: child_pid.clone(), group: false };
    let _step = KillOnDrop { pid_file: step_pid.clone(), group: true };
    let slow = format!(
        "echo $$ > \"{}\"; sleep 60 & echo $! > \"{}\"; wait",
        step_pid.display(),
        child_pid.display()
    );
    let plan = format!("[[step]]\nname = \"slow\"\nrun = {}\ntimeout = \"1s\"\n\n", quoted(&slow))
        + &step("after", &marks.touch("after"));
    env.deploy_repo("deploy").publish_plan(&env, &plan);

    let out = env.run(&["deploy"]);
    assert_eq!(code(&out), Some(1), "{}", all_output(&out));
    let record = env.run_record(1);
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["steps"][0]["status"], "timed_out", "{record}");
    assert_eq!(record["steps"][1]["status"], "not_run", "{record}");
    let ms = record["steps"][0]["duration_ms"].as_u64().unwrap();
    // Ended at its timeout: its child's `sleep 60` would have held it a minute.
    assert!((1000..1000 + BUDGET.as_millis() as u64).contains(&ms), "the 1s step took {ms} ms");
    assert!(marks.list().is_empty(), "{:?}", marks.list());
    assert_eq!(env.deployed(), None);

    let step = read_pid(&step_pid).expect("the step wrote its pid");
    let child = read_pid(&child_pid).expect("the step wrote its child's pid");
    wait_until("the timed-out step and its child to be gone", DEADLINE, || !alive(step) && !alive(child));
}

#[test]
fn plan_errors_are_refused_with_line_and_column_before_any_step() {
    let env = Env::new();
    env.init();
    let marks = Marks::new(&env);
    let repo = env.deploy_repo("deploy");
    let good = repo.commit(
        &env,
        &[("troops.toml", &step("ok", "true")), ("steps/ok.sh", "#!/bin/sh\ntrue\n")],
        "good",
    );
    repo.publish(&env);
    env.ok(&["deploy"]);
    // Symlinks that lead out of the checkout: to a file, through a directory, and up through `..`.
    let deep_up = format!("{}etc/passwd", "../".repeat(40));
    for (link, target) in [("steps/passwd", "/etc/passwd"), ("bin", "/bin"), ("steps/up", deep_up.as_str())] {
        std::os::unix::fs::symlink(target, repo.path.join(link)).unwrap();
    }
    let check_plan = env.path("check/troops.toml");
    std::fs::create_dir_all(check_plan.parent().unwrap()).unwrap();

    // Each plan starts with a valid step that would leave a mark if anything ran.
    let first = step("first", &marks.touch("first"));
    let cases = [
        ("bad TOML", "[[step]\nname = \"second\"\n", "5:7", "table header", true),
        ("unknown key", "[[step]]\nname = \"second\"\nrun = \"true\"\nbogus = 1\n", "8:1", "bogus", true),
        ("duplicate name", "[[step]]\nname = \"first\"\nrun = \"true\"\n", "6:8", "duplicate", true),
        (
            "run and script",
            "[[step]]\nname = \"second\"\nrun = \"true\"\nscript = \"steps/ok.sh\"\n",
            "8:10",
            "both",
            true,
        ),
        ("neither run nor script", "[[step]]\nname = \"second\"\n", "5:1", "second", true),
        ("`..` in script", "[[step]]\nname = \"second\"\nscript = \"../outside.sh\"\n", "7:10", "..", true),
        (
            "symlink to a file outside",
            "[[step]]\nname = \"second\"\nscript = \"steps/passwd\"\n",
            "7:10",
            "symlink",
            false,
        ),
        (
            "symlink to a dir outside",
            "[[step]]\nname = \"second\"\nscript = \"bin/true\"\n",
            "7:10",
            "symlink",
            false,
        ),
        (
            "symlink up and out",
            "[[step]]\nname = \"second\"\nscript = \"steps/up\"\n",
            "7:10",
            "symlink",
            false,
        ),
    ];
    for (i, (case, bad, position, words, copy)) in cases.into_iter().enumerate() {
        let plan = format!("{first}{bad}");
        repo.commit(&env, &[("troops.toml", &plan)], case);
        repo.publish(&env);
        let out = env.run(&["deploy"]);
        let output = all_output(&out);
        assert_eq!(code(&out), Some(1), "{case}: {output}");
        let id = i as u64 + 2;
        let record = env.run_record(id);
        assert_eq!(record["status"], "failed", "{case}: {record}");
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(&format!("troops.toml:{position}: ")), "{case}: {error}");
        assert!(error.contains(words), "{case}: {error}");
        assert!(output.contains(error), "{case}: the error is not shown:\n{output}");
        assert!(
            record["steps"].as_array().unwrap().iter().all(|s| s["status"] == "not_run"),
            "{case}: {record}"
        );
        assert!(marks.list().is_empty(), "{case}: a step ran: {:?}", marks.list());
        assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "{case}");

        let out = env.run(&["deploy", "--dry-run"]);
        assert_eq!(code(&out), Some(2), "{case}: {}", all_output(&out));
        assert!(
            text(&out.stderr).contains(&format!("troops.toml:{position}: ")),
            "{case}: {}",
            all_output(&out)
        );
        assert_eq!(env.run_ids().len() as u64, id, "{case}: --dry-run recorded a run");

        // `troops check` refuses the same file, where it lies in the deploy repo, and a copy
        // elsewhere (symlinks stay behind, so only the other cases travel).
        let file = repo.path.join("troops.toml");
        let out = env.run(&["check", file.to_str().unwrap()]);
        assert_eq!(code(&out), Some(2), "{case}: {}", all_output(&out));
        assert!(
            text(&out.stderr).contains(&format!("{}:{position}: ", file.display())),
            "{case}: {}",
            all_output(&out)
        );
        if copy {
            std::fs::write(&check_plan, &plan).unwrap();
            let out = env.run(&["check", check_plan.to_str().unwrap()]);
            assert_eq!(code(&out), Some(2), "{case}: {}", all_output(&out));
            assert!(
                text(&out.stderr).contains(&format!("{}:{position}: ", check_plan.display())),
                "{case}: {}",
                all_output(&out)
            );
        }
    }
    assert_eq!(env.run_ids(), (1..=cases.len() as u64 + 1).collect::<Vec<_>>());

    // In a clone, `troops check` reads what git would commit: the plan as staged.
    let plan = first + "[[step]]\nname = \"second\"\nscript = \"steps/ok.sh\"\n";
    std::fs::write(repo.path.join("troops.toml"), &plan).unwrap();
    env.git(&repo.path, &["add", "troops.toml"]);
    let out = env.run(&["check", repo.path.join("troops.toml").to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{}", all_output(&out));
    assert!(marks.list().is_empty(), "`troops check` ran a step");
}

#[test]
fn second_deploy_waits_for_the_node_lock_then_runs() {
    let env = Env::new();
    env.init();
    let go = env.path("go");
    let order = env.path("order");
    let step_pid = env.path("step.pid");
    let _step = KillOnDrop { pid_file: step_pid.clone(), group: true };
    let run = format!(
        "echo $$ > \"{}\"; {}; echo $TROOPS_RUN_ID >> \"{}\"",
        step_pid.display(),
        block_until(&go),
        order.display()
    );
    env.deploy_repo("deploy").publish_plan(&env, &step("gate", &run));

    let mut first = Background::spawn(&env, &["deploy"], env.path("first.out"));
    wait_until("run 1 to be recorded running", DEADLINE, || {
        record_status(&env, 1).as_deref() == Some("running")
    });
    let status = json(&env.run(&["status", "--json"]).stdout);
    assert_eq!(status["running"]["id"], 1, "{status}");
    let mut second = Background::spawn(&env, &["deploy"], env.path("second.out"));
    wait_until("the second deploy to say it waits", DEADLINE, || {
        second.output().contains("waiting for the node lock")
    });
    let waiting = second.output();
    assert!(waiting.contains("run 1"), "the waiter does not say what it waits for: {waiting}");
    assert_eq!(env.run_ids(), [1], "the second deploy started a run while the first held the lock");

    std::fs::write(&go, "").unwrap();
    let status = first.wait("the first deploy to end");
    assert_eq!(status.code(), Some(0), "{}", first.output());
    let status = second.wait("the second deploy to end");
    assert_eq!(status.code(), Some(0), "{}", second.output());
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "1\n2\n");
    assert_eq!(env.run_ids(), [1, 2]);
    for id in [1, 2] {
        let record = env.run_record(id);
        assert_eq!(
            (record["id"].as_u64(), record["status"].as_str()),
            (Some(id), Some("succeeded")),
            "{record}"
        );
    }
}

#[test]
fn waiting_deploy_does_not_name_a_finished_run() {
    use nix::fcntl::{Flock, FlockArg};
    let env = Env::new();
    env.init();
    env.deploy_repo("deploy").publish_plan(&env, &step("ok", "true"));
    env.ok(&["deploy"]);

    // Someone holds the lock without having said what for (as every trigger does at first).
    let file = std::fs::OpenOptions::new().read(true).write(true).open(env.state.join("lock")).unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let mut waiter = Background::spawn(&env, &["deploy"], env.path("waiter.out"));
    wait_until("the deploy to say it waits", DEADLINE, || {
        waiter.output().contains("waiting for the node lock")
    });
    let said = waiter.output();
    assert!(!said.contains("run 1"), "the waiter names run 1, which ended before: {said}");
    assert_eq!(env.run_ids(), [1]);

    drop(held);
    assert_eq!(waiter.wait("the waiting deploy to end").code(), Some(0), "{}", waiter.output());
    assert_eq!(env.run_record(2)["status"], "succeeded");
}

#[test]
fn killed_run_is_interrupted_and_the_next_deploy_recovers() {
    let env = Env::new();
    env.init();
    let go = env.path("go");
    let step_pid = env.path("step.pid");
    let orphan = KillOnDrop { pid_file: step_pid.clone(), group: true };
    let run = format!("echo $$ > \"{}\"; {}", step_pid.display(), block_until(&go));
    let commit = env.deploy_repo("deploy").publish_plan(&env, &step("gate", &run));

    let mut deploy = Background::spawn(&env, &["deploy"], env.path("deploy.out"));
    wait_until("the step to start", DEADLINE, || read_pid(&step_pid).is_some());
    deploy.child.kill().unwrap(); // SIGKILL
    deploy.wait("the killed deploy to be reaped");
    assert_eq!(record_status(&env, 1).as_deref(), Some("running"), "nobody was left to complete the record");

    let status = json(&env.run(&["status", "--json"]).stdout);
    assert_eq!(status["running"], Value::Null, "{status}");
    assert_eq!(status["last_run"]["id"], 1, "{status}");
    assert_eq!(status["last_run"]["status"], "interrupted", "{status}");
    let runs = json(&env.run(&["runs", "--json"]).stdout);
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
    assert_eq!(env.deployed(), None);

    // The orphaned step is nobody's now; end it, then run again.
    drop(orphan);
    std::fs::write(&go, "").unwrap();
    let out = env.run(&["deploy"]);
    assert_eq!(code(&out), Some(0), "{}", all_output(&out));
    assert!(text(&out.stdout).contains("run 1 was left running"), "{}", all_output(&out));
    let record = env.run_record(1);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert!(record["finished_at"].is_string(), "{record}");
    assert_eq!(env.run_record(2)["status"], "succeeded");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

/// Publishes `repo`'s main to the node's branch `branch` (no hooks).
fn publish_to(env: &Env, repo: &DeployRepo, branch: &str) -> String {
    let node = env.repo().display().to_string();
    env.git(
        &repo.path,
        &["--git-dir", &node, "fetch", "-q", &repo.path.display().to_string(), &format!("main:{branch}")],
    );
    env.git(&repo.path, &["rev-parse", "HEAD"])
}

#[test]
fn init_twice_keeps_key_refs_runs_and_config() {
    let env = Env::new();
    let flags =
        ["init", "--branch", "prod", "--role", "web", "--role", "db", "--remote", "origin=/srv/deploy.git"];
    let out = env.ok(&flags);
    let public = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    let private = std::fs::read(env.state.join("ssh/id_ed25519")).unwrap();
    assert!(out.contains(public.trim()), "init does not print the public key:\n{out}");
    let config = std::fs::read_to_string(&env.config).unwrap();
    assert!(config.contains("hostname = \"web-1\""), "init lost a key of the config:\n{config}");
    assert!(config.contains("branch = \"prod\""), "{config}");
    assert_eq!(env.ok(&["roles"]), "db\nweb\n");
    let node = env.repo().display().to_string();
    assert_eq!(env.git(&env.home, &["--git-dir", &node, "remote", "get-url", "origin"]), "/srv/deploy.git");

    let repo = env.deploy_repo("deploy");
    repo.commit(&env, &[("troops.toml", &step("ok", "true"))], "plan");
    let commit = publish_to(&env, &repo, "prod");
    env.ok(&["deploy"]);
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));

    let mut again = flags.to_vec();
    again.extend(["--remote", "backup=/srv/backup.git"]);
    env.ok(&again);
    assert_eq!(std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap(), public);
    assert_eq!(std::fs::read(env.state.join("ssh/id_ed25519")).unwrap(), private);
    let config_again = std::fs::read_to_string(&env.config).unwrap();
    assert_eq!(config_again, config, "a second init with the same flags changed the config");
    assert_eq!(config_again.matches("\"web\"").count(), 1, "{config}");
    assert_eq!(env.node_ref("refs/heads/prod").as_deref(), Some(commit.as_str()));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    assert_eq!(env.run_ids(), [1]);
    assert_eq!(env.run_record(1)["status"], "succeeded");
    assert_eq!(env.git(&env.home, &["--git-dir", &node, "remote", "get-url", "origin"]), "/srv/deploy.git");
    assert_eq!(env.git(&env.home, &["--git-dir", &node, "remote", "get-url", "backup"]), "/srv/backup.git");
}

#[test]
fn a_node_that_was_never_initialised_is_one_clear_sentence() {
    let env = Env::new();
    for args in [&["status"][..], &["deploy"], &["pull"], &["runs"]] {
        let out = env.run(args);
        assert_eq!(code(&out), Some(3), "{args:?}: {}", all_output(&out));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(&env.repo().display().to_string()), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("No such file or directory").count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("did you run `troops init`?"), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_node_config_is_refused_with_file_line_and_key() {
    let env = Env::new();
    env.init();
    let marks = Marks::new(&env);
    env.deploy_repo("deploy").publish_plan(&env, &step("mark", &marks.touch("mark")));
    let config = env.config.display().to_string();
    for (body, line, key) in [
        ("hostname = \"web-1\"\nbogus_key = 1\n", 2, "bogus_key"),
        ("hostname = \"web-1\"\n\n[retry]\ninitial = \"soon\"\n", 4, "retry.initial"),
        ("hostname = \"web-1\"\ninterval = 5\n", 2, "`interval`"),
    ] {
        env.write_config(body);
        for args in [&["status"][..], &["deploy"]] {
            let out = env.run(args);
            assert_eq!(code(&out), Some(2), "{args:?} with {body:?}: {}", all_output(&out));
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(&format!("{config}:{line}")) && stderr.contains(key),
                "{args:?} with {body:?}: {stderr}"
            );
        }
    }
    assert!(env.run_ids().is_empty());
    assert!(marks.list().is_empty());
    assert_eq!(env.deployed(), None);
}

#[test]
fn log_and_runs_show_the_history() {
    let env = Env::new();
    env.init();
    let commit =
        env.deploy_repo("deploy").publish_plan(&env, &step("say", "echo output of run $TROOPS_RUN_ID"));
    env.ok(&["deploy"]);
    env.ok(&["deploy"]);

    let latest = env.ok(&["log"]);
    assert!(latest.contains("output of run 2\n") && !latest.contains("output of run 1"), "{latest}");
    assert_eq!(latest, env.run_log(2));
    let first = env.ok(&["log", "1"]);
    assert!(first.contains("output of run 1\n") && !first.contains("output of run 2"), "{first}");
    let out = env.run(&["log", "99"]);
    assert_eq!(code(&out), Some(2), "{}", all_output(&out));
    assert!(text(&out.stderr).contains("99"), "{}", all_output(&out));
    assert!(out.stdout.is_empty(), "{}", all_output(&out));

    let runs = json(&env.run(&["runs", "--json"]).stdout);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["id"], i as u64 + 1, "{run}");
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["trigger"], "manual", "{run}");
        assert_eq!(run["commit"], commit.as_str(), "{run}");
        assert_eq!(run["steps"][0]["name"], "say", "{run}");
    }
    assert_eq!(runs[1]["previous_commit"], commit.as_str());
    assert_eq!(runs[0]["previous_commit"], Value::Null);
    let table = env.ok(&["runs"]);
    assert_eq!(table.lines().count(), 3, "a header and two runs: {table}");
}

#[test]
fn runs_show_each_runs_wall_time_in_columns_and_status_the_last_run_in_one_sentence() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    // The step takes no time; the run takes 1 s more, waiting for its check.
    let checked = format!(
        "{}[[check]]\nname = \"later\"\nrun = \"true\"\nstart_period = \"1s\"\n",
        step("say", "echo hello")
    );
    repo.publish_plan(&env, &checked);
    env.ok(&["deploy"]);
    repo.publish_plan(&env, &step("broken", "echo broken; exit 3"));
    assert_eq!(code(&env.run(&["deploy"])), Some(1));

    let table = env.ok(&["runs"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert_eq!(
        lines[0], "RUN  STATUS     TRIGGER  COMMIT        STARTED                   DURATION  ERROR",
        "{table}"
    );
    // Every row lines up under the header: left columns at their header's start, DURATION at its end.
    let start = |line: &str, word: &str| line.find(word).unwrap();
    let record = |id: u64| env.run_record(id);
    let before_error =
        |line: &str| line.get(..start(lines[0], "ERROR")).unwrap_or(line).trim_end().to_owned();
    for (line, id) in [(lines[1], 1), (lines[2], 2)] {
        let r = record(id);
        for (column, value) in [
            ("STATUS", r["status"].as_str().unwrap()),
            ("TRIGGER", "manual"),
            ("COMMIT", &r["commit"].as_str().unwrap()[..12]),
            ("STARTED", r["started_at"].as_str().unwrap()),
        ] {
            assert_eq!(start(line, value), start(lines[0], column), "{column} of run {id}:\n{table}");
        }
        let duration = before_error(line);
        assert_eq!(duration.len(), start(lines[0], "DURATION") + "DURATION".len(), "{table}");
    }
    // The run's wall time, start to end: the check's second counts, though no step took it.
    let seconds = |line: &str| -> f64 {
        let cells = before_error(line);
        cells.rsplit(' ').next().unwrap().strip_suffix('s').unwrap().parse().unwrap()
    };
    assert!(seconds(lines[1]) >= 1.0, "{table}");
    assert!(lines[2].ends_with("  step `broken` failed (exit 3)"), "{table}");

    let status = env.ok(&["status"]);
    let last = status.lines().find(|l| l.starts_with("last run  ")).unwrap();
    let r = record(2);
    let prefix = format!(
        "last run  run 2 (manual) of {} failed at {} after ",
        &r["commit"].as_str().unwrap()[..12],
        r["finished_at"].as_str().unwrap()
    );
    assert!(last.starts_with(&prefix), "{last}");
    assert!(last.ends_with("s: step `broken` failed (exit 3); its output: troops log 2"), "{last}");
    assert_eq!(last.matches("run 2").count(), 1, "{last}");
}

#[test]
fn keep_runs_prunes_old_runs_and_never_reuses_ids() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nkeep_runs = 2\n");
    env.init();
    env.deploy_repo("deploy").publish_plan(&env, &step("say", "echo run $TROOPS_RUN_ID"));
    for _ in 0..3 {
        env.ok(&["deploy"]);
    }
    assert_eq!(env.run_ids(), [2, 3]);
    env.ok(&["deploy"]);
    assert_eq!(env.run_ids(), [3, 4]);
    assert_eq!(env.run_record(4)["id"], 4);
    assert!(env.run_log(4).contains("run 4\n"), "{}", env.run_log(4));
}

#[test]
fn log_follow_streams_a_running_run_until_it_ends() {
    let env = Env::new();
    env.init();
    let go = env.path("go");
    let run = format!("echo before; {}; echo after", block_until(&go));
    env.deploy_repo("deploy").publish_plan(&env, &step("gate", &run));
    let mut deploy = Background::spawn(&env, &["deploy"], env.path("deploy.out"));
    wait_until("the step to print", DEADLINE, || env.run_ids() == [1] && env.run_log(1).contains("before"));

    let mut follow = Background::spawn(&env, &["log", "--follow"], env.path("follow.out"));
    wait_until("log --follow to show the first line", DEADLINE, || follow.output().contains("before"));
    assert!(follow.child.try_wait().unwrap().is_none(), "log --follow ended while the run goes on");
    std::fs::write(&go, "").unwrap();
    assert_eq!(follow.wait("log --follow to end with the run").code(), Some(0));
    let out = follow.output();
    assert!(out.contains("after") && out.contains("run 1 succeeded"), "{out}");
    assert_eq!(deploy.wait("the deploy").code(), Some(0));
}
