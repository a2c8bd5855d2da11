//! Exports and the fleet on the run path, without daemons: a step's `$TROOPS_EXPORTS` are kept
//! and published after a run that succeeded, and only then (a failed run, a bad name, a value too
//! large or not UTF-8, a symlink: the run fails naming the step and the file, and the last good
//! exports stay); every step sees `$TROOPS_FLEET`; a cron `troops pull` on a node that watches a
//! peer's export runs its deployed commit again when that export changes (trigger `fleet`, saying
//! what changed), not when nothing did, not while paused, and a failed fleet run quarantines
//! nothing and waits for its backoff.

use std::path::Path;

use serde_json::Value;

use crate::support::{combined, text, DeployRepo, Env};

/// A node `name` following `mirror` and publishing its status to `status`.
fn node(name: &str, mirror: &Path, status: &Path) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "hostname = \"{name}\"\nstatus_remote = \"status\"\n[retry]\ninitial = \"1h\"\nmax = \"1h\"\n"
    ));
    env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
    env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
    env
}

fn exports(env: &Env) -> Value {
    env.status_json()["fleet"]["exports"].clone()
}

fn newest(env: &Env) -> Value {
    env.run_record(*env.run_ids().last().unwrap())
}

/// Commits `files` to `work` and pushes them to `mirror`.
fn release(hub: &Env, work: &DeployRepo, mirror: &Path, files: &[(&str, &str)]) -> String {
    let commit = work.commit(hub, files, "release");
    let out = work.push(hub, &mirror.display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    commit
}

#[test]
fn exports_are_kept_after_success_only_and_bad_ones_fail_the_run_naming_step_and_file() {
    let env = Env::new();
    let work = env.init_following_a();
    let step = |script: &str| {
        format!("[[step]]\nname = \"first\"\nrun = \"true\"\n\n[[step]]\nname = \"export\"\nrun = '''{script}'''\n")
    };
    work.publish_plan(
        &env,
        &step("printf '10.0.0.1:80\\n' > $TROOPS_EXPORTS/addr; printf k > $TROOPS_EXPORTS/key.pub"),
    );
    env.ok(&["deploy"]);
    assert_eq!(exports(&env), serde_json::json!({ "addr": "10.0.0.1:80\n", "key.pub": "k" }));
    let status = env.ok(&["status"]);
    assert!(status.contains("export    addr = 10.0.0.1:80\n"), "{status}");

    let bad: [(&str, &str); 5] = [
        ("printf changed > $TROOPS_EXPORTS/addr; exit 1", "step `export` failed (exit 1)"),
        ("printf x > \"$TROOPS_EXPORTS/bad name\"", "step `export` left a bad export in"),
        (
            "head -c 5000 /dev/zero | tr '\\0' x > $TROOPS_EXPORTS/addr",
            "`addr`: addr is larger than 4096 bytes",
        ),
        ("printf '\\377\\376' > $TROOPS_EXPORTS/addr", "`addr` is not UTF-8"),
        ("ln -s /etc/passwd $TROOPS_EXPORTS/addr", "`addr`"),
    ];
    for (script, why) in bad {
        work.publish_plan(&env, &step(script));
        let out = env.run(&["deploy"]);
        assert_eq!(out.status.code(), Some(1), "{script}: {}", combined(&out));
        let record = newest(&env);
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{script}: {error}");
        if !script.ends_with("exit 1") {
            assert!(error.starts_with("step `export` left a bad export in "), "{script}: {error}");
            assert_eq!(record["steps"][1]["status"], "failed", "{script}");
        }
        assert_eq!(exports(&env)["addr"], "10.0.0.1:80\n", "{script}: the last good exports stay");
    }

    // A run that succeeds replaces them whole: what it did not write is gone.
    work.publish_plan(&env, &step("printf 10.0.0.2:80 > $TROOPS_EXPORTS/addr"));
    env.ok(&["deploy"]);
    assert_eq!(exports(&env), serde_json::json!({ "addr": "10.0.0.2:80" }));
}

#[test]
fn a_cron_pull_follows_the_watched_exports() {
    let hub = Env::new();
    let (mirror, status) = (hub.bare("mirror.git"), hub.bare("status.git"));
    let app = node("app-1", &mirror, &status);
    let lb = node("lb-1", &mirror, &status);
    let addr_file = app.path("addr");
    std::fs::write(&addr_file, "10.0.0.1:80").unwrap();
    let fleet_file = lb.path("fleet.json");
    let plan = format!(
        "[roles.app]\nmatch = [\"app-*\"]\n[roles.lb]\nmatch = [\"lb-*\"]\n\n\
         [health]\non_failure = \"rollback\"\n\n\
         [[watch]]\nrole = \"app\"\nexport = \"addr\"\nroles = [\"lb\"]\nsettle = \"0s\"\n\n\
         [[step]]\nname = \"app\"\nroles = [\"app\"]\nrun = \"cp {} $TROOPS_EXPORTS/addr\"\n\n\
         [[step]]\nname = \"render\"\nroles = [\"lb\"]\n\
         run = \"cp $TROOPS_FLEET {}; ! grep -q fail $TROOPS_FLEET\"\n",
        addr_file.display(),
        fleet_file.display()
    );
    let key = |env: &Env| std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    let work = hub.deploy_repo("work");
    let (app_key, lb_key) = (key(&app), key(&lb));
    let first = release(
        &hub,
        &work,
        &mirror,
        &[("troops.toml", &plan), ("keys/app-1.pub", &app_key), ("keys/lb-1.pub", &lb_key)],
    );

    // The balancer deploys first: no peer has published yet, so its fleet is empty.
    lb.ok(&["pull"]);
    assert_eq!(lb.deployed().as_deref(), Some(first.as_str()));
    let seen: Value = serde_json::from_slice(&std::fs::read(&fleet_file).unwrap()).unwrap();
    assert_eq!(seen, serde_json::json!([]));
    let preview = lb.ok(&["deploy", "--dry-run"]);
    assert!(preview.contains("fleet: watches export addr of role app (settle 0s)"), "{preview}");

    // The app deploys and publishes its address.
    app.ok(&["pull"]);
    app.ok(&["fleet", "--publish"]);
    let preview = lb.ok(&["deploy", "--dry-run"]);
    assert!(preview.contains("fleet: 0 watched value(s) now, as the deployed run saw them"), "{preview}");

    // The balancer's next pull sees it (the status refs come with the pull) and runs for it.
    let runs = lb.run_ids().len();
    let out = lb.ok(&["pull"]);
    assert_eq!(lb.run_ids().len(), runs + 1, "{out}");
    let record = newest(&lb);
    assert_eq!(record["trigger"], "fleet", "{record:#}");
    assert_eq!(record["commit"], first.as_str());
    assert_eq!(record["fleet_changes"], serde_json::json!(["app-1 addr appeared (\"10.0.0.1:80\")"]));
    let seen: Value = serde_json::from_slice(&std::fs::read(&fleet_file).unwrap()).unwrap();
    let peer = &seen[0];
    assert_eq!((peer["host"].as_str(), peer["stale"].as_bool()), (Some("app-1"), Some(false)), "{seen:#}");
    assert_eq!(peer["exports"]["addr"], "10.0.0.1:80");
    assert_eq!(peer["roles"], serde_json::json!(["app"]));
    assert_eq!(peer["state"], "healthy");
    assert!(peer["age"].is_u64() && peer["deployed"] == first.as_str(), "{seen:#}");
    let status = lb.ok(&["status"]);
    assert!(status.contains("watching  1 watched value(s), as run"), "{status}");
    assert!(status.contains("(watched exports: app-1 addr appeared"), "{status}");

    // Nothing changed: nothing runs.
    lb.ok(&["pull"]);
    assert_eq!(lb.run_ids().len(), runs + 1);

    // A pause holds the fleet run; `resume` lets the next pull run it.
    std::fs::write(&addr_file, "10.0.0.1:81").unwrap();
    app.ok(&["deploy"]);
    app.ok(&["fleet", "--publish"]);
    lb.ok(&["pause", "--reason", "maintenance"]);
    let out = lb.run(&["pull"]);
    assert!(combined(&out).contains("is not run yet: the node is paused by"), "{}", combined(&out));
    assert_eq!(lb.run_ids().len(), runs + 1);
    lb.ok(&["resume"]);
    lb.ok(&["pull"]);
    let record = newest(&lb);
    assert_eq!(record["trigger"], "fleet");
    assert_eq!(
        record["fleet_changes"],
        serde_json::json!(["app-1 addr changed (\"10.0.0.1:80\" -> \"10.0.0.1:81\")"])
    );

    // A fleet run that fails quarantines nothing (on_failure = "rollback" notwithstanding): the
    // commit stays deployed, and the next pull waits for the backoff.
    std::fs::write(&addr_file, "fail").unwrap();
    app.ok(&["deploy"]);
    app.ok(&["fleet", "--publish"]);
    let out = lb.run(&["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let failed = newest(&lb);
    assert_eq!((failed["trigger"].as_str(), failed["status"].as_str()), (Some("fleet"), Some("failed")));
    assert_eq!(lb.deployed().as_deref(), Some(first.as_str()));
    assert!(
        lb.node_ref(&format!("refs/troops/bad/{first}")).is_none(),
        "the deployed commit is never quarantined"
    );
    let runs = lb.run_ids().len();
    let out = lb.run(&["pull"]);
    assert!(combined(&out).contains("for the watched exports failed"), "{}", combined(&out));
    assert_eq!(lb.run_ids().len(), runs, "in backoff: no run");
}

#[test]
fn hosts_that_join_within_the_settle_make_one_fleet_run_of_the_daemon() {
    let hub = Env::new();
    let (mirror, status) = (hub.bare("mirror.git"), hub.bare("status.git"));
    let lb = node("lb-1", &mirror, &status);
    lb.write_config(
        &std::fs::read_to_string(&lb.config)
            .unwrap()
            .replace("status_remote", "interval = \"500ms\"\njitter = \"100ms\"\nstatus_remote"),
    );
    let apps: Vec<Env> = (1..=4).map(|i| node(&format!("app-{i}"), &mirror, &status)).collect();
    let plan = "[roles.app]\nmatch = [\"app-*\"]\n[roles.lb]\nmatch = [\"lb-*\"]\n\n\
         [[watch]]\nrole = \"app\"\nexport = \"addr\"\nroles = [\"lb\"]\nsettle = \"3s\"\n\n\
         [[step]]\nname = \"app\"\nroles = [\"app\"]\nrun = \"echo $TROOPS_HOST:80 > $TROOPS_EXPORTS/addr\"\n\n\
         [[step]]\nname = \"render\"\nroles = [\"lb\"]\nrun = \"cat $TROOPS_FLEET\"\n";
    let key = |env: &Env| std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    let mut files = vec![("troops.toml".to_owned(), plan.to_owned()), ("keys/lb-1.pub".to_owned(), key(&lb))];
    for (i, app) in apps.iter().enumerate() {
        files.push((format!("keys/app-{}.pub", i + 1), key(app)));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let work = hub.deploy_repo("work");
    let first = release(&hub, &work, &mirror, &files);
    let _daemon = crate::support::daemon::Daemon::start(&lb);
    crate::support::wait_until("the balancer's first deploy", std::time::Duration::from_secs(20), || {
        lb.deployed().as_deref() == Some(first.as_str())
    });
    let runs = lb.run_ids().len();
    for app in &apps {
        app.ok(&["pull"]);
        app.ok(&["fleet", "--publish"]);
    }
    crate::support::wait_until("the balancer's fleet run", std::time::Duration::from_secs(30), || {
        lb.run_ids().len() > runs && newest(&lb)["status"] == "succeeded"
    });
    // Another poll and more: nothing changed since, so nothing more runs.
    let log_lines =
        |env: &Env| std::fs::read_to_string(env.path("daemon.log")).unwrap_or_default().lines().count();
    let seen = log_lines(&lb);
    crate::support::wait_until("two more polls", std::time::Duration::from_secs(20), || {
        log_lines(&lb) > seen + 4
    });
    assert_eq!(lb.run_ids().len(), runs + 1, "one run for four hosts joining");
    let record = newest(&lb);
    assert_eq!(record["trigger"], "fleet");
    let changes: Vec<&str> =
        record["fleet_changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(changes.iter().all(|c| c.contains(" addr appeared (")), "{changes:?}");
}
