//! Inputs at their limits: huge durations and counts, names with control characters, plans and
//! configs that are not UTF-8 text or not files, deploy repos with submodules, corrupt run
//! records. Nothing accepted may panic, and each failure lands in its SPEC exit class: a broken
//! deploy repo is a failed run (exit 1, retried with backoff), bad local input is exit 2.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::{text, wait_until, DeployRepo, Env};

const LIMIT: Duration = Duration::from_secs(60);
const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// Exit code and stdout plus stderr of `troops ARGS`.
fn troops(env: &Env, args: &[&str]) -> (i32, String) {
    let out = env.run(args);
    (out.status.code().unwrap_or(-1), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// A bare repo `name.git` in the test dir, added to the node as remote `name`.
fn remote(env: &Env, name: &str) -> PathBuf {
    let path = env.path(&format!("{name}.git"));
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
    env.git(&env.repo(), &["remote", "add", name, &path.display().to_string()]);
    path
}

/// Pushes the deploy repo's main to `url` (a remote, or the node itself: then its hooks run
/// the deploy); returns git's stderr, where the hook's output is.
fn push(env: &Env, repo: &DeployRepo, url: &std::path::Path) -> String {
    let out = repo.push(env, &url.display().to_string(), &["main"]);
    assert!(out.status.success(), "push to {} failed: {}", url.display(), text(&out.stderr));
    text(&out.stderr)
}

/// Commits the deploy repo as it is on disk (after the test shaped its files by hand).
fn commit_all(env: &Env, repo: &DeployRepo, message: &str) -> String {
    env.git(&repo.path, &["add", "-A"]);
    env.git(&repo.path, &["commit", "-q", "-m", message]);
    env.git(&repo.path, &["rev-parse", "HEAD"])
}

#[test]
fn durations_past_their_bound_are_refused_naming_the_bound() {
    let env = Env::new();
    let plan = env.path("troops.toml");
    std::fs::write(&plan, "[[step]]\nname = \"a\"\nrun = \"true\"\ntimeout = \"1000000000years\"\n").unwrap();
    let (code, out) = troops(&env, &["check", &plan.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("troops.toml:4:11: step `a`: `timeout` \"1000000000years\" is too long; at most 1year"),
        "{out}"
    );

    // The operator's side: the node config, for any command.
    env.write_config("hostname = \"web-1\"\ninterval = \"1000000000years\"\n");
    for args in [&["status"][..], &["init"], &["daemon"]] {
        let (code, out) = troops(&env, args);
        assert_eq!(code, 2, "troops {args:?}: {out}");
        assert!(
            out.contains("troops.toml:2:12: `interval` \"1000000000years\" is too long; at most 1year"),
            "{out}"
        );
    }
    env.write_config("hostname = \"web-1\"\nfetch_timeout = \"2days\"\n");
    let (code, out) = troops(&env, &["status"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("`fetch_timeout` \"2days\" is too long; at most 1day"), "{out}");

    // The command line's, in the same words after the flag: `troops push` is refused before it
    // looks for a clone, as `troops wait` is before it looks at the node.
    for args in [&["push", "--timeout", "2years"][..], &["wait", "--timeout", "2years"]] {
        let (code, out) = troops(&env, args);
        assert_eq!(code, 2, "troops {args:?}: {out}");
        assert!(out.contains("'--timeout <DURATION>': \"2years\" is too long; at most 1year"), "{out}");
    }
}

#[test]
fn the_largest_accepted_durations_and_counts_never_panic_the_cli_or_the_daemon() {
    let env = Env::new();
    env.write_config(
        "hostname = \"web-1\"\ninterval = \"1year\"\njitter = \"1year\"\nfetch_timeout = \"1day\"\n\
         keep_runs = 9223372036854775807\n[retry]\ninitial = \"1year\"\nmax = \"1year\"\n",
    );
    env.init();
    let origin = remote(&env, "a");
    let work = env.deploy_repo("work");
    // Past 24.8 days a step's poll timeout no longer fits in milliseconds of an i32.
    let long_step = "[[step]]\nname = \"long\"\nrun = \"echo long step\"\ntimeout = \"1year\"\n";
    let first = work.publish_plan(&env, long_step);

    // The CLI, in-process: deploy and pull.
    let (code, out) = troops(&env, &["deploy"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("long step"), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    push(&env, &work, &origin);
    let (code, out) = troops(&env, &["pull"]);
    assert_eq!(code, 0, "{out}");

    // The daemon: its timer, a push it runs, a failed tip's retry a year away.
    let mut daemon = Daemon::start(&env);
    work.commit(&env, &[("troops.toml", "[[step]]\nname = \"no\"\nrun = \"exit 1\"\n")], "fails");
    let said = push(&env, &work, &env.repo());
    assert!(said.contains("run 2 failed"), "{said}");
    wait_until("the daemon to schedule the failed tip's retry", LIMIT, || {
        !env.status_json()["daemon"]["retry_at"].is_null()
    });
    let status = env.status_json();
    let retry_at = status["daemon"]["retry_at"].as_str().unwrap();
    let next_pull_at = status["daemon"]["next_pull_at"].as_str().unwrap();
    let (retry_at, next_pull_at) =
        (humantime::parse_rfc3339(retry_at).unwrap(), humantime::parse_rfc3339(next_pull_at).unwrap());
    assert!(retry_at > std::time::SystemTime::now() + Duration::from_secs(300 * 86_400), "{status}");
    // The first tick falls anywhere in the first period (up to two years here).
    assert!(next_pull_at > std::time::SystemTime::now(), "{status}");
    assert_eq!(status["last_run"]["status"], "failed", "{status}");
    assert!(env.ok(&["status"]).contains("the failed tip again at"));
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon died:\n{}", daemon.log());
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[test]
fn control_characters_in_names_are_refused_with_line_and_column() {
    let env = Env::new();
    // The operator's config: a hostname pasted with its newline.
    env.write_config("branch = \"main\"\nhostname = \"web-1\\n\"\n");
    let (code, out) = troops(&env, &["status"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("troops.toml:2:12: `hostname`: \"web-1\\n\" has a control character (\\u{a})"),
        "{out}"
    );
    env.write_config("hostname = \"web-1\"\nroles = [\"web\", \"\\u001b[2J\"]\n");
    let (code, out) = troops(&env, &["init"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("troops.toml:2:17: `roles`: \"\\u{1b}[2J\" has a control character"), "{out}");

    // The deploy repo's CI, and a pusher: a step name that would forge a line of output.
    env.write_config("hostname = \"web-1\"\n");
    let plan =
        "[roles.web]\nhosts = [\"web-1\"]\n\n[[step]]\nname = \"ok\\r==> fake succeeded\"\nrun = \"true\"\n";
    let file = env.path("troops.toml.plan");
    std::fs::write(&file, plan).unwrap();
    let (code, out) = troops(&env, &["check", &file.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("troops.toml.plan:5:8: step name \"ok\\r==> fake succeeded\" has a control character"),
        "{out}"
    );

    env.init();
    let work = env.deploy_repo("work");
    work.commit(&env, &[("troops.toml", plan)], "forged step");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "the push was accepted:\n{said}");
    assert!(said.contains("troops.toml:5:8: step name"), "{said}");
    assert_eq!(env.node_ref("refs/heads/main"), None, "the branch moved");
    assert_eq!(env.run_ids(), Vec::<u64>::new(), "something ran");
    assert_eq!(env.deployed(), None);
}

#[test]
fn a_config_or_plan_that_is_not_utf8_is_bad_input() {
    let env = Env::new();
    std::fs::write(&env.config, b"hostname = \"web-1\"\nroles = [\"w\xffb\"]\n").unwrap();
    for args in [&["status"][..], &["init"], &["runs"], &["pull"]] {
        let (code, out) = troops(&env, args);
        assert_eq!(code, 2, "troops {args:?}: {out}");
        assert!(out.contains("troops.toml:2:12: the config is not UTF-8 text (byte 0xff)"), "{out}");
    }
    env.write_config("hostname = \"web-1\"\n");
    let plan = env.path("plan/troops.toml");
    std::fs::create_dir_all(plan.parent().unwrap()).unwrap();
    std::fs::write(&plan, b"[[step]]\nname = \"\xfe\"\nrun = \"true\"\n").unwrap();
    let (code, out) = troops(&env, &["check", &plan.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("plan/troops.toml:2:9: the plan is not UTF-8 text (byte 0xfe)"), "{out}");
    let dir = env.path("dir/troops.toml");
    std::fs::create_dir_all(&dir).unwrap();
    let (code, out) = troops(&env, &["check", &dir.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is a directory"), "{out}");
}

#[test]
fn a_plan_that_is_not_utf8_or_not_a_file_is_refused_by_a_push_and_fails_a_pull_as_a_run() {
    let env = Env::new();
    env.init();
    let origin = remote(&env, "a");
    let work = env.deploy_repo("work");

    // A plan that is not UTF-8: a push of it is refused before the branch moves; a pull fails
    // its run.
    std::fs::write(work.path.join("troops.toml"), b"[[step]]\nname = \"\xff\"\nrun = \"true\"\n").unwrap();
    commit_all(&env, &work, "latin-1 plan");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "the push was accepted:\n{said}");
    assert!(said.contains("troops.toml:2:9: the plan is not UTF-8 text (byte 0xff)"), "{said}");
    assert_eq!((env.node_ref("refs/heads/main"), env.run_ids()), (None, vec![]));
    push(&env, &work, &origin);
    let (code, out) = troops(&env, &["pull"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("troops.toml:2:9: the plan is not UTF-8 text (byte 0xff)"), "{out}");
    assert!(out.contains("run 1 failed"), "{out}");
    assert_eq!(env.run_record(1)["status"], "failed");
    let shown = env.ok(&["status"]);
    assert!(
        shown.contains("plan      invalid at the tip: troops.toml:2:9: the plan is not UTF-8"),
        "{shown}"
    );
    let (code, out) = troops(&env, &["roles"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = troops(&env, &["deploy"]);
    assert_eq!(code, 1, "a broken deploy repo is a failed run, not the environment: {out}");
    assert_eq!(env.run_record(2)["status"], "failed");

    // A pull: the plan is a directory.
    std::fs::remove_file(work.path.join("troops.toml")).unwrap();
    work.commit(&env, &[("troops.toml/step.toml", PLAN)], "plan in a directory");
    push(&env, &work, &origin);
    let (code, out) = troops(&env, &["pull"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("troops.toml:1:1: the plan is a directory"), "{out}");
    let record = env.run_record(3);
    assert_eq!((record["status"].as_str(), record["trigger"].as_str()), (Some("failed"), Some("pull")));
}

#[test]
fn a_symlinked_plan_fails_in_the_daemon_and_is_retried_with_backoff_not_at_once() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n[retry]\ninitial = \"1h\"\nmax = \"2h\"\n");
    env.init();
    let origin = remote(&env, "a");
    let work = env.deploy_repo("work");
    work.commit(&env, &[("real.toml", PLAN)], "real plan");
    std::os::unix::fs::symlink("real.toml", work.path.join("troops.toml")).unwrap();
    let tip = commit_all(&env, &work, "symlinked plan");
    push(&env, &work, &origin);

    let daemon = Daemon::start(&env);
    wait_until("the failed run's retry to be scheduled", LIMIT, || {
        !env.status_json()["daemon"]["retry_at"].is_null()
    });
    assert_eq!(env.run_ids(), [1], "the failed tip ran again at once:\n{}", daemon.log());
    let record = env.run_record(1);
    assert_eq!((record["status"].as_str(), record["commit"].as_str()), (Some("failed"), Some(tip.as_str())));
    assert!(record["error"].as_str().unwrap().contains("troops.toml:1:1: the plan is a symlink"), "{record}");
    assert!(daemon.log().contains("will retry"), "{}", daemon.log());

    // A push of the same content as a new commit is refused before the branch moves; pulled, the
    // new commit resets the backoff and fails the same way.
    let another = work.commit(&env, &[("x", "1")], "another");
    let out = work.push(&env, &env.repo().display().to_string(), &["main"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("troops.toml:1:1: the plan is a symlink"), "{}", text(&out.stderr));
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(tip.as_str()));
    push(&env, &work, &origin);
    let (code, out) = troops(&env, &["pull"]);
    assert_eq!(code, 1, "{out}");
    let record = env.run_record(2);
    assert_eq!(
        (record["status"].as_str(), record["commit"].as_str()),
        (Some("failed"), Some(another.as_str()))
    );
    assert_eq!(env.run_ids(), [1, 2]);
}

/// A deploy repo whose `lib` is a submodule (a real `git submodule add` of another repo).
fn with_submodule(env: &Env) -> DeployRepo {
    let lib = env.deploy_repo("lib");
    lib.commit(env, &[("lib.txt", "library\n")], "lib");
    let work = env.deploy_repo("work");
    let check = "[[step]]\nname = \"look\"\nrun = '''\ncat .gitmodules\ntest -d lib\ntest -z \"$(ls -A lib)\"\necho lib is empty\n'''\n";
    work.commit(env, &[("troops.toml", check)], "plan");
    env.git(
        &work.path,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            &lib.path.display().to_string(),
            "lib",
        ],
    );
    work.commit(env, &[], "submodule");
    work
}

#[test]
fn a_deploy_repo_with_a_submodule_deploys_by_push_and_by_pull() {
    // By push (the hook runs it).
    let env = Env::new();
    env.init();
    let work = with_submodule(&env);
    let said = push(&env, &work, &env.repo());
    assert!(said.contains("lib is empty"), "{said}");
    assert!(said.contains("run 1 succeeded"), "{said}");
    let tip = env.git(&work.path, &["rev-parse", "HEAD"]);
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()));

    // By pull, from a remote.
    let env = Env::new();
    env.init();
    let origin = remote(&env, "a");
    let work = with_submodule(&env);
    push(&env, &work, &origin);
    let (code, out) = troops(&env, &["pull"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("url = ") && out.contains("lib is empty"), "{out}");
    let tip = env.git(&work.path, &["rev-parse", "HEAD"]);
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()));
}

#[test]
fn corrupt_run_records_are_reported_and_skipped_and_their_ids_never_reused() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    work.publish_plan(&env, PLAN);
    for _ in 0..3 {
        env.ok(&["deploy"]);
    }
    let record = |id: u64| env.state.join(format!("runs/{id}/run.json"));
    std::fs::write(record(1), "{\"id\": 1, \"trig").unwrap();
    std::fs::write(record(2), "").unwrap();

    let warned = |out: &str| {
        for id in [1, 2] {
            let path = record(id).display().to_string();
            assert!(
                out.contains(&format!("warning: run {id} is skipped: {path}: not a run record")),
                "{out}"
            );
        }
    };
    let out = env.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    warned(&text(&out.stderr));
    assert!(text(&out.stdout).contains("last run  run 3 (manual) of "), "{}", text(&out.stdout));
    let json = env.status_json();
    assert_eq!(json["unreadable_runs"].as_array().unwrap().len(), 2, "{json}");
    let out = env.run(&["runs", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    warned(&text(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect::<Vec<_>>(), [3]);

    // The next deploy works and takes a new id; then the newest record is the corrupt one.
    env.ok(&["deploy"]);
    assert_eq!(env.run_ids(), [1, 2, 3, 4]);
    std::fs::write(record(4), "garbage\n").unwrap();
    // A record that parses but holds no commit id there is no record either: skipped, and the
    // warning quotes what it holds, escaped.
    let mut three = env.run_record(3);
    let held = format!("x{}\u{1b}[2J", "é".repeat(13));
    three["commit"] = held.clone().into();
    std::fs::write(record(3), three.to_string()).unwrap();
    let out = env.run(&["runs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1, "the header alone: {}", text(&out.stdout));
    let skipped = format!(
        "warning: run 3 is skipped: {}: not a run record: invalid value: string {held:?}, expected a commit id",
        record(3).display()
    );
    assert!(text(&out.stderr).contains(&skipped), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains('\u{1b}'), "{}", text(&out.stderr));
    assert!(env.ok(&["status"]).contains("last run  none"));
    for args in [&["log"][..], &["log", "4"], &["log", "--follow"], &["log", "2"]] {
        let out = env.run(args);
        assert!(out.status.success(), "troops {args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("hello from"), "troops {args:?}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("not a run record"), "troops {args:?}: {}", text(&out.stderr));
    }

    // A push runs after it, in the daemon, and gets id 5.
    let daemon = Daemon::start(&env);
    work.commit(&env, &[("x", "1")], "next");
    let said = push(&env, &work, &env.repo());
    assert!(said.contains("run 5 succeeded"), "{said}\n{}", daemon.log());
    assert_eq!(env.run_ids(), [1, 2, 3, 4, 5]);
    assert_eq!(env.status_json()["last_run"]["id"], 5);
}

#[test]
fn a_commit_whose_tree_the_filesystem_refuses_fails_as_a_run_by_push_and_by_pull() {
    let env = Env::new();
    env.init();
    let origin = remote(&env, "a");
    let work = env.deploy_repo("work");
    work.commit(&env, &[("troops.toml", PLAN)], "plan");
    // A file name longer than any Linux filesystem takes (255 bytes), made with git's plumbing.
    let blob = env.git(&work.path, &["hash-object", "-w", "troops.toml"]);
    let long = "n".repeat(300);
    env.git(&work.path, &["update-index", "--add", "--cacheinfo", &format!("100644,{blob},{long}")]);
    env.git(&work.path, &["commit", "-q", "-m", "a name too long"]);

    let said = push(&env, &work, &env.repo());
    assert!(said.contains("cannot be checked out into"), "{said}");
    assert!(said.contains("run 1 failed"), "{said}");
    assert_eq!(env.deployed(), None);
    let (code, out) = troops(&env, &["deploy"]);
    assert_eq!(code, 1, "the commit's fault is a failed run, not the environment: {out}");

    // A second node, pulling the same commit.
    let other = Env::new();
    other.init();
    let origin_url = origin.display().to_string();
    push(&env, &work, &origin);
    other.git(&other.repo(), &["remote", "add", "a", &origin_url]);
    let (code, out) = troops(&other, &["pull"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be checked out into"), "{out}");
    assert_eq!(other.run_record(1)["status"], "failed");
}
