//! A plan the node cannot run is caught as early as it can be, and the same way wherever: a push
//! of a plan that cannot be read is refused before the branch moves; a pulled one fails its run
//! and follows the deployed plan's `on_failure`, as a missing script does; a script that is not
//! committed or not executable fails `troops check` in the clone as it fails the run, which says
//! why.

use std::path::Path;

use crate::support::{combined, publish_to_a, short, text, DeployRepo, Env};

/// A node following the bare repo `a.git`, and a deploy repo to commit to.
fn node() -> (Env, DeployRepo) {
    let env = Env::new();
    let work = env.init_following_a();
    (env, work)
}

/// A plan with `on_failure` and one step that runs `run`.
fn plan(on_failure: &str, run: &str) -> String {
    format!("[health]\non_failure = \"{on_failure}\"\n\n[[step]]\nname = \"apply\"\nrun = \"{run}\"\n")
}

#[test]
fn a_push_of_a_plan_that_cannot_be_read_is_refused_and_the_branch_stays() {
    let (env, work) = node();
    let good = work.commit(&env, &[("troops.toml", &plan("rollback", "true"))], "good");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    assert!(out.status.success(), "{}", combined(&out));
    let cases = [
        ("a typo'd key", "[[step]]\nname = \"a\"\nrnu = \"true\"\n", "troops.toml:3:1: unknown field `rnu`"),
        ("bad TOML", "[[step]\nname = \"a\"\n", "troops.toml:1:7: "),
        ("a newer troops", "min_troops = \"99.0\"\n", "troops.toml:1:14: this plan needs troops 99.0"),
        (
            "a script outside",
            "[[step]]\nname = \"a\"\nscript = \"../x.sh\"\n",
            "troops.toml:3:10: step `a`: script",
        ),
    ];
    for (case, text_of_plan, says) in cases {
        let bad = work.commit(&env, &[("troops.toml", text_of_plan)], case);
        let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{case}: the push was accepted:\n{said}");
        let line = format!("remote: troops: refusing refs/heads/main at {}: {says}", short(&bad));
        assert!(said.contains(&line), "{case}: no {line:?} in:\n{said}");
        assert_eq!(
            env.node_ref("refs/heads/main").as_deref(),
            Some(good.as_str()),
            "{case}: the branch moved"
        );
        assert_eq!(env.run_ids(), [1], "{case}: something ran");
    }
    // No plan at all is refused too, and another branch, never deployed, takes anything.
    env.git(&work.path, &["rm", "-q", "troops.toml"]);
    let bare = work.commit(&env, &[], "no plan");
    let said = text(&work.push(&env, &env.repo().display().to_string(), &["main"]).stderr);
    assert!(said.contains(&format!("at {}: troops.toml:1:1: no such plan file", short(&bare))), "{said}");
    let out = work.push(&env, &env.repo().display().to_string(), &["main:scratch"]);
    assert!(out.status.success(), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1]);

    // A missing script cannot be seen without a checkout: the push is taken, and the run fails
    // before any step and is rolled back, as the plan asks.
    let missing = work.commit(
        &env,
        &[(
            "troops.toml",
            "[health]\non_failure = \"rollback\"\n[[step]]\nname = \"a\"\nscript = \"gone.sh\"\n",
        )],
        "missing script",
    );
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    assert!(out.status.success(), "{}", combined(&out));
    let said = text(&out.stderr);
    assert!(said.contains("step `a`: script \"gone.sh\" is not in the repo (is it committed?)"), "{said}");
    assert!(said.contains(&format!("rolled back to {} by run 3", short(&good))), "{said}");
    assert!(env.node_ref(&format!("refs/troops/bad/{missing}")).is_some());
}

#[test]
fn a_pulled_plan_that_cannot_be_read_fails_its_run_and_follows_the_deployed_plans_on_failure() {
    // The deployed plan rolls back: the broken commit is quarantined and never run again.
    let (env, work) = node();
    let good = work.commit(&env, &[("troops.toml", &plan("rollback", "true"))], "good");
    publish_to_a(&env, &work);
    assert_eq!(env.run(&["pull"]).status.code(), Some(0));
    let broken = work.commit(&env, &[("troops.toml", "[[step]]\nname = \"a\"\nrnu = \"true\"\n")], "broken");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    let said = combined(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let record = env.run_record(2);
    assert_eq!(record["status"], "rolled_back", "{record}");
    assert!(
        record["error"].as_str().unwrap().starts_with("troops.toml:3:1: unknown field `rnu`"),
        "{record}"
    );
    assert!(
        said.contains(&format!(
            "troops: quarantined {} (run 2: troops.toml:3:1: unknown field `rnu`",
            short(&broken)
        )),
        "{said}"
    );
    assert_eq!(env.run_record(3)["trigger"], "rollback");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains("is quarantined"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2, 3]);

    // The deployed plan retries: so is the broken commit, with backoff, and it is not quarantined;
    // nor is one with nothing deployed before it (there is nothing to go back to).
    for deployed in [Some("retry"), None] {
        let (env, work) = node();
        if let Some(on_failure) = deployed {
            work.commit(&env, &[("troops.toml", &plan(on_failure, "true"))], "good");
            publish_to_a(&env, &work);
            assert_eq!(env.run(&["pull"]).status.code(), Some(0));
        }
        let broken = work.commit(&env, &[("troops.toml", "[[step]\n")], "broken");
        publish_to_a(&env, &work);
        assert_eq!(env.run(&["pull"]).status.code(), Some(1), "{deployed:?}");
        let failed = *env.run_ids().last().unwrap();
        assert_eq!(env.run_record(failed)["status"], "failed", "{deployed:?}");
        assert_eq!(env.node_ref(&format!("refs/troops/bad/{broken}")), None, "{deployed:?}: quarantined");
        let out = env.run(&["pull"]);
        assert_eq!(out.status.code(), Some(1), "{deployed:?}: {}", combined(&out));
        assert!(text(&out.stdout).contains("it is retried in"), "{deployed:?}: {}", combined(&out));
        assert_eq!(env.run_ids().last(), Some(&failed), "{deployed:?}: it ran again at once");
    }
}

/// `troops check` run in `dir`: exit code, stdout, stderr.
fn check(env: &Env, dir: &Path) -> (Option<i32>, String, String) {
    let out = env.troops(&["check"]).current_dir(dir).output().unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn troops_check_in_a_clone_checks_what_git_would_deploy_not_the_work_tree() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let work = env.deploy_repo("work");
    let plan = "[[step]]\nname = \"config\"\nscript = \"steps/config.sh\"\n";
    std::fs::write(work.path.join("troops.toml"), plan).unwrap();
    std::fs::create_dir_all(work.path.join("steps")).unwrap();
    let script = work.path.join("steps/config.sh");
    std::fs::write(&script, "#!/bin/sh\necho configured\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The plan is committed, the script is not: on the node it would not be there.
    env.git(&work.path, &["add", "troops.toml"]);
    env.git(&work.path, &["commit", "-q", "-m", "plan"]);
    let (code, _, stderr) = check(&env, &work.path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("troops.toml:3:10: step `config`: script \"steps/config.sh\" is not in the repo"),
        "{stderr}"
    );
    assert!(stderr.contains("not the work tree, which differs in steps/config.sh (untracked)"), "{stderr}");

    // Committed without its executable bit (the work tree's bit is not what git holds).
    env.git(&work.path, &["add", "steps/config.sh"]);
    env.git(&work.path, &["update-index", "--chmod=-x", "steps/config.sh"]);
    env.git(&work.path, &["commit", "-q", "-m", "script"]);
    let (code, _, stderr) = check(&env, &work.path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "step `config`: script \"steps/config.sh\" is not executable (mode 644); commit it with its \
             executable bit: git update-index --chmod=+x steps/config.sh"
        ),
        "{stderr}"
    );
    // The node fails it the same way, before any step, and says so in the run's error.
    env.init();
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    assert!(out.status.success(), "{}", combined(&out));
    let error = env.run_record(1)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("script \"steps/config.sh\" is not executable (mode 644)"), "{error}");

    // The fix the error names, staged: check passes, what the next commit holds.
    env.git(&work.path, &["update-index", "--chmod=+x", "steps/config.sh"]);
    let (code, stdout, stderr) = check(&env, &work.path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("troops.toml: ok (git's index: what the next commit holds): 1 steps"),
        "{stdout}"
    );
    assert_eq!(stderr, "", "the work tree is what is staged");

    // A broken plan in the work tree, not staged: not what a push would deploy; named, not checked.
    std::fs::write(work.path.join("troops.toml"), "[[step]\n").unwrap();
    let (code, _, stderr) = check(&env, &work.path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("which differs in troops.toml (changed)"), "{stderr}");
    env.git(&work.path, &["add", "troops.toml"]);
    let (code, _, stderr) = check(&env, &work.path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("troops.toml:1:7: "), "{stderr}");

    // Outside a clone (a plan in a plain directory) the files where they lie are checked.
    let plain = env.path("plain");
    std::fs::create_dir_all(plain.join("steps")).unwrap();
    std::fs::write(plain.join("troops.toml"), plan).unwrap();
    std::fs::write(plain.join("steps/config.sh"), "#!/bin/sh\n").unwrap();
    let (code, _, stderr) = check(&env, &plain);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not executable (mode 644)"), "{stderr}");
    std::fs::set_permissions(plain.join("steps/config.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stdout, stderr) = check(&env, &plain);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("troops.toml: ok: 1 steps"), "{stdout}");
}

#[test]
fn a_step_that_cannot_start_fails_with_the_reason_in_the_run_and_the_quarantine() {
    let (env, work) = node();
    let good = work.commit(&env, &[("troops.toml", &plan("rollback", "true"))], "good");
    assert!(work.push(&env, &env.repo().display().to_string(), &["main"]).status.success());
    // An executable script whose interpreter this host does not have.
    let bad = work.commit(
        &env,
        &[
            (
                "troops.toml",
                "[health]\non_failure = \"rollback\"\n[[step]]\nname = \"py\"\nscript = \"x.py\"\n",
            ),
            ("x.py", "#!/nonexistent/python3\nprint('x')\n"),
        ],
        "no interpreter",
    );
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    assert!(out.status.success(), "{}", combined(&out));
    let reason = "step `py` failed (exit 127): script x.py could not be started: No such file or directory";
    let record = env.run_record(2);
    assert!(record["error"].as_str().unwrap().starts_with(reason), "{record}");
    assert!(text(&out.stderr).contains("==> py failed (exit 127): script x.py could not be started"));
    let quarantine = env.status_json()["quarantined"][0].clone();
    assert_eq!(quarantine["commit"], bad.as_str(), "{quarantine}");
    assert!(quarantine["reason"].as_str().unwrap().contains(reason), "{quarantine}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
}
