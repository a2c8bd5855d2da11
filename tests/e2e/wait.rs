//! What CI learns of a run it started: `git push` exits 0 whatever the run did (git ignores a
//! post-receive hook's exit status), so `troops wait COMMIT` on the node waits for that commit's
//! run and exits as it ended: 0 deployed, 1 failed, rolled back or quarantined, 3 out of time.

use std::fs::File;
use std::process::{Child, Output};
use std::time::Duration;

use crate::support::{combined, short, text, wait_until, DeployRepo, Env};

const LIMIT: Duration = Duration::from_secs(60);

/// A plan of one step running `run`, rolled back when it fails.
fn plan(run: &str) -> String {
    format!("[health]\non_failure = \"rollback\"\n\n[[step]]\nname = \"apply\"\nrun = '''{run}'''\n")
}

fn push(env: &Env, work: &DeployRepo) -> Output {
    work.push(env, &env.repo().display().to_string(), &["HEAD:main"])
}

/// `troops wait ARGS`: its exit code, stdout and stderr.
fn wait(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let out = env.run(&[&["wait"][..], args].concat());
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn git_push_exits_0_whatever_the_run_did_and_troops_wait_exits_as_the_run_ended() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let good = work.commit(&env, &[("troops.toml", &plan("echo good"))], "good");
    let out = push(&env, &work);
    assert!(out.status.success(), "{}", combined(&out));
    let (code, stdout, _) = wait(&env, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("troops: run 1 succeeded: 1 of 1 steps ran in "), "{stdout}");

    // The run fails and is rolled back: the pusher reads it, but git push still exits 0.
    let bad = work.commit(&env, &[("troops.toml", &plan("exit 3"))], "bad");
    let out = push(&env, &work);
    assert!(out.status.success(), "git push exited non-zero after all: {}", combined(&out));
    assert!(text(&out.stderr).contains("remote: troops: run 2 failed; rolled back"), "{}", combined(&out));

    let (code, stdout, _) = wait(&env, &[&bad]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("troops: run 2 rolled_back: step `apply` failed (exit 3); "), "{stdout}");
    assert_eq!(
        lines[1],
        format!("troops: rolled back to {} by run 3, which succeeded (troops log 3)", short(&good))
    );
    assert_eq!(
        lines[2],
        format!("troops: {} is quarantined: run 2: step `apply` failed (exit 3)", short(&bad))
    );
    // The tip is the bad commit: the default is the same answer.
    assert_eq!(wait(&env, &[]).0, Some(1));
    // The good commit's newest run is the rollback, which succeeded.
    let (code, stdout, _) = wait(&env, &[&good[..7]]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("troops: run 3 succeeded"), "{stdout}");

    // A person rolls the deployed (good) commit back by hand: its success is undone too.
    let fixed = work.commit(&env, &[("troops.toml", &plan("echo fixed"))], "fixed");
    assert!(push(&env, &work).status.success());
    assert_eq!(wait(&env, &[&fixed]).0, Some(0));
    env.ok(&["rollback", "--to", &good]);
    let (code, stdout, _) = wait(&env, &[&fixed]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{} is quarantined: rolled back by a person", short(&fixed))),
        "{stdout}"
    );
}

/// `troops ARGS` in the background, stdout and stderr to a file.
struct Background {
    child: Child,
    output: std::path::PathBuf,
}

impl Background {
    fn spawn(env: &Env, args: &[&str], name: &str) -> Background {
        let output = env.path(name);
        let file = File::create(&output).unwrap();
        let child = env.troops(args).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
        Background { child, output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    fn ended(&mut self) -> Option<i32> {
        self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }

    fn wait(&mut self, what: &str) -> Option<i32> {
        let mut code = None;
        wait_until(what, LIMIT, || {
            code = self.ended();
            code.is_some()
        });
        code
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn troops_wait_waits_for_a_run_under_way_and_gives_up_at_its_timeout() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let (started, go) = (env.path("started"), env.path("go"));
    let run = format!("touch {}; {}; echo released", started.display(), crate::support::block_until(&go));
    let commit = work.commit(&env, &[("troops.toml", &plan(&run))], "gated");
    work.publish(&env);

    // Not on the node yet: a full id is waited for, then given up on; an unknown name is bad input.
    let (code, _, stderr) = wait(&env, &["--timeout", "300ms", &"7".repeat(40)]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("timed out after 300ms waiting: 777777777777 is not in the node repo yet"),
        "{stderr}"
    );
    let (code, _, stderr) = wait(&env, &["no-such-rev"]);
    assert_eq!(code, Some(2), "{stderr}");
    for (timeout, says) in [("0s", "must be more than zero"), ("2years", "is too long; at most 1year")] {
        let (code, _, stderr) = wait(&env, &["--timeout", timeout]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // On the branch, but nothing ran it yet (no daemon): waiting, and it says for what.
    let (code, _, stderr) = wait(&env, &["--timeout", "200ms"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{} has not run yet: it runs next", short(&commit))), "{stderr}");

    let mut deploy = Background::spawn(&env, &["deploy"], "deploy.out");
    wait_until("the step to start", LIMIT, || started.exists());
    let (code, _, stderr) = wait(&env, &["--timeout", "300ms", &commit]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("waiting: run 1 of"), "{stderr}");
    assert!(stderr.contains("is running"), "{stderr}");

    let mut waiting = Background::spawn(&env, &["wait", &commit], "wait.out");
    wait_until("troops wait to say what it waits for", LIMIT, || waiting.output().contains("run 1 of"));
    assert_eq!(waiting.ended(), None, "troops wait ended while the run was under way: {}", waiting.output());
    std::fs::write(&go, "").unwrap();
    assert_eq!(deploy.wait("the deploy to end"), Some(0), "{}", deploy.output());
    assert_eq!(waiting.wait("troops wait to end"), Some(0), "{}", waiting.output());
    assert!(
        waiting.output().contains("troops: run 1 succeeded: 1 of 1 steps ran in"),
        "{}",
        waiting.output()
    );
}

#[test]
fn a_commit_a_newer_push_ran_in_its_place_stands_with_that_run() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let first = work.commit(&env, &[("troops.toml", &plan("echo one"))], "one");
    work.publish(&env);
    let second = work.commit(&env, &[("troops.toml", &plan("exit 4"))], "two");
    work.publish(&env);
    // One run, of the tip; the first commit never ran by itself.
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    let (code, stdout, _) = wait(&env, &[&first]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "troops: {} did not run by itself: the branch moved on to {}, which holds it\ntroops: run 1 failed: step `apply` failed (exit 4)",
            short(&first),
            short(&second)
        )),
        "{stdout}"
    );
    // A commit off the branch is never run by the node: waited for until the timeout.
    env.git(&work.path, &["checkout", "-q", "-b", "side", &first]);
    let side = work.commit(&env, &[("side", "x")], "side");
    env.git(&work.path, &["push", "-q", &env.repo().display().to_string(), "side"]);
    let (code, _, stderr) = wait(&env, &["--timeout", "200ms", &side]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{} is not on branch main yet", short(&side))), "{stderr}");
}

#[test]
fn a_failed_run_has_ended_once_the_rollback_it_led_to_has() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let (started, go) = (env.path("started"), env.path("go"));
    // The good plan's step holds the rollback until the test lets it go.
    let hold = format!(
        "if [ \"$TROOPS_TRIGGER\" = rollback ]; then touch {}; {}; fi",
        started.display(),
        crate::support::block_until(&go)
    );
    let good = work.commit(&env, &[("troops.toml", &plan(&hold))], "good");
    work.publish(&env);
    env.ok(&["deploy"]);
    let bad = work.commit(&env, &[("troops.toml", &plan("exit 5"))], "bad");
    work.publish(&env);
    let mut deploy = Background::spawn(&env, &["deploy"], "deploy.out");
    wait_until("the rollback's step to start", LIMIT, || started.exists());

    let mut waiting = Background::spawn(&env, &["wait", &bad], "wait.out");
    wait_until("troops wait to say what it waits for", LIMIT, || waiting.output().contains("waiting:"));
    assert!(waiting.output().contains("run 2 of"), "{}", waiting.output());
    assert!(waiting.output().contains("failed; run 3, its rollback, is running"), "{}", waiting.output());
    assert_eq!(waiting.ended(), None, "it ended before the rollback did: {}", waiting.output());
    std::fs::write(&go, "").unwrap();
    assert_eq!(deploy.wait("the deploy to end"), Some(1), "{}", deploy.output());
    assert_eq!(waiting.wait("troops wait to end"), Some(1), "{}", waiting.output());
    let said = waiting.output();
    assert!(said.contains("troops: run 2 rolled_back: step `apply` failed (exit 5)"), "{said}");
    assert!(
        said.contains(&format!("troops: rolled back to {} by run 3, which succeeded", short(&good))),
        "{said}"
    );
}
