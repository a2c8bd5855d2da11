//! Steps by path (`paths` on a step or check): a run runs what its commit changed since the last
//! successful deploy, says what it skipped and why (output, `troops log`, run.json, `--dry-run`),
//! and runs everything on a first deploy, when asked (`--all-steps`), and for a step whose
//! definition changed; a fix after a failed run redoes what failed; a rollback runs what differs
//! between the commit it leaves and the one it goes back to.

use std::path::Path;

use crate::support::{combined, short, DeployRepo, Env};

/// A plan: `nginx` (paths nginx/**), `app` (a script, paths app/**; it fails while
/// `flags/broken` exists), `always` (no paths), a check `site` (paths nginx/**); each step appends
/// its name to `log`.
fn plan(log: &Path, extra: &str) -> String {
    format!(
        "{extra}\n[[step]]\nname = \"nginx\"\nrun = \"echo nginx >> {log}\"\npaths = [\"nginx/**\"]\n\n\
         [[step]]\nname = \"app\"\nscript = \"steps/app.sh\"\npaths = [\"app\"]\n\n\
         [[step]]\nname = \"always\"\nrun = \"echo always >> {log}\"\n\n\
         [[check]]\nname = \"site\"\nrun = \"test -f nginx/site.conf\"\ninterval = \"100ms\"\npaths = [\"nginx/**\"]\n",
        log = log.display()
    )
}

fn app_script(log: &Path) -> String {
    format!("#!/bin/sh\necho app >> {}\ntest ! -f flags/broken\n", log.display())
}

/// A node with the plan deployed once (every step: its first deploy), the log emptied after.
fn deployed_node(extra: &str) -> (Env, DeployRepo, std::path::PathBuf) {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let log = env.path("ran");
    work.commit(
        &env,
        &[
            ("troops.toml", &plan(&log, extra)),
            ("steps/app.sh", &app_script(&log)),
            ("nginx/site.conf", "server {}\n"),
            ("app/version", "1\n"),
        ],
        "first",
    );
    work.publish(&env);
    let out = env.ok(&["deploy"]);
    assert!(out.contains("3 of 3 steps"), "{out}");
    assert_eq!(ran(&log), ["nginx", "app", "always"], "a first deploy runs every step");
    let record = env.run_record(1);
    assert!(record["steps"].as_array().unwrap().iter().all(|s| s["status"] == "succeeded"), "{record}");
    (env, work, log)
}

/// The steps that ran since the log was last emptied, in order; empties it.
fn ran(log: &Path) -> Vec<String> {
    let lines = std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect();
    let _ = std::fs::remove_file(log);
    lines
}

/// `troops deploy ARGS` of the work repo's newest commit, published; its output.
fn deploy(env: &Env, work: &DeployRepo, args: &[&str]) -> String {
    work.publish(env);
    let out = env.run(&[&["deploy"], args].concat());
    combined(&out)
}

/// Run `id`'s steps as (name, status, why skipped).
fn steps(env: &Env, id: u64) -> Vec<(String, String, String)> {
    let record = env.run_record(id);
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("status"), field("skipped"))
        })
        .collect()
}

#[test]
fn a_commit_that_changes_only_nginx_runs_only_the_nginx_steps_and_says_what_it_skipped() {
    let (env, work, log) = deployed_node("");
    let first = env.deployed().unwrap();
    work.commit(&env, &[("nginx/site.conf", "server { listen 80; }\n")], "nginx only");

    // The preview says it before, and the run then does it.
    work.publish(&env);
    let dry = env.ok(&["deploy", "--dry-run"]);
    let skip_app = format!("skip app: every host; no change under app since {}", short(&first));
    assert!(dry.contains("run  nginx: every host; changed: nginx/site.conf"), "{dry}");
    assert!(dry.contains(&skip_app), "{dry}");
    assert!(dry.contains("run  always: every host\n"), "{dry}");
    assert!(dry.contains("run  check site: every host; changed: nginx/site.conf"), "{dry}");

    let out = deploy(&env, &work, &[]);
    assert_eq!(ran(&log), ["nginx", "always"], "{out}");
    let why = format!("no change under app since {}", short(&first));
    assert!(out.contains("2 of 3 steps (1 skipped: nothing under their paths changed)"), "{out}");
    assert!(out.contains(&format!("==> app skipped: {why}")), "{out}");
    assert!(out.contains("run 2 succeeded: 2 of 3 steps ran"), "{out}");
    assert_eq!(
        steps(&env, 2),
        [
            ("nginx".into(), "succeeded".into(), String::new()),
            ("app".into(), "skipped".into(), why.clone()),
            ("always".into(), "succeeded".into(), String::new()),
        ]
    );
    assert!(env.ok(&["log", "2"]).contains(&format!("==> app skipped: {why}")));
    let check = &env.run_record(2)["checks"][0];
    assert_eq!((check["name"].as_str(), check["status"].as_str()), (Some("site"), Some("passed")), "{check}");

    // A commit that changes nothing under any paths: only `always`, and the check is skipped too.
    work.commit(&env, &[("README.md", "docs\n")], "docs");
    let out = deploy(&env, &work, &[]);
    assert_eq!(ran(&log), ["always"], "{out}");
    let check = &env.run_record(3)["checks"][0];
    assert_eq!(check["status"].as_str(), Some("skipped"), "{check}");
    assert!(out.contains("==> check site skipped: no change under nginx/** since"), "{out}");

    // A person who asks for every step gets every step.
    let out = deploy(&env, &work, &["--all-steps"]);
    assert_eq!(ran(&log), ["nginx", "app", "always"], "{out}");
    assert!(!out.contains("skipped"), "{out}");
}

#[test]
fn a_failed_run_followed_by_a_fix_reruns_what_failed() {
    let (env, work, log) = deployed_node("");
    // app changes and fails (the flag is outside its paths); the fix only removes the flag.
    work.commit(&env, &[("app/version", "2\n"), ("flags/broken", "")], "app 2, broken");
    let out = deploy(&env, &work, &[]);
    assert_eq!(ran(&log), ["app"], "{out}");
    assert_eq!(env.run_record(2)["status"], "failed");
    env.git(&work.path, &["rm", "-q", "flags/broken"]);
    let fixed = work.commit(&env, &[], "fixed");
    let out = deploy(&env, &work, &[]);
    // Since the last successful deploy, not since the failed run: app/version changed, app runs.
    assert_eq!(ran(&log), ["app", "always"], "{out}");
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()), "{out}");
}

#[test]
fn a_step_whose_definition_changed_runs_and_a_renamed_one_runs_under_its_new_name() {
    let (env, work, log) = deployed_node("");
    let text = std::fs::read_to_string(work.path.join("troops.toml")).unwrap();
    // nginx's command changes; `always` is renamed; app's definition is untouched.
    let edited = text
        .replace("echo nginx >>", "echo nginx  >>")
        .replace("name = \"always\"", "name = \"every-time\"")
        .replace("echo always", "echo every-time");
    work.commit(&env, &[("troops.toml", &edited)], "plan edited");
    let out = deploy(&env, &work, &[]);
    assert_eq!(ran(&log), ["nginx", "every-time"], "{out}");
    assert!(out.contains("==> app skipped: no change under app since"), "{out}");
    let record = env.run_record(2);
    assert_eq!(record["steps"][0]["status"], "succeeded", "{record}");

    // The plan file changing around a step (a comment) is no change of the step.
    work.commit(&env, &[("troops.toml", &format!("# a comment\n{edited}"))], "comment");
    let out = deploy(&env, &work, &[]);
    assert_eq!(ran(&log), ["every-time"], "{out}");
}

#[test]
fn a_rollback_runs_the_steps_whose_files_differ_between_the_two_commits() {
    let (env, work, log) = deployed_node("[health]\non_failure = \"rollback\"\n");
    let good = env.deployed().unwrap();
    // The bad commit changes nginx's config so that its check fails (and app's version).
    env.git(&work.path, &["mv", "nginx/site.conf", "nginx/site.conf.off"]);
    let bad = work.commit(&env, &[("app/version", "2\n")], "bad nginx");
    let out = deploy(&env, &work, &[]);
    // Run 2 (nginx, app, always) fails its check; run 3 goes back to the good commit and redoes
    // nginx and app (both differ between bad and good), and always.
    assert_eq!(ran(&log), ["nginx", "app", "always", "nginx", "app", "always"], "{out}");
    assert_eq!(env.run_record(2)["status"], "rolled_back", "{out}");
    let rollback = env.run_record(3);
    assert_eq!(
        (rollback["trigger"].as_str(), rollback["status"].as_str()),
        (Some("rollback"), Some("succeeded"))
    );
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(bad.as_str()));
}
