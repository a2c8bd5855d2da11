//! Rollback and quarantine (`[health] on_failure = "rollback"`, `troops rollback`) and release
//! directories (`[release]`): a failed commit is quarantined and the last good one runs again at
//! once; no pull, cron pull, daemon start or retry runs the quarantined commit again, a newer one
//! and a person's `troops deploy --commit` do; releases switch `current` atomically and a rollback
//! switches back without building.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::http::{HttpServer, Reply};
use crate::support::{combined, publish_to_a, short, text, wait_until, DeployRepo, Env};

const LIMIT: Duration = Duration::from_secs(60);

/// A node following the bare repo `a.git`, and a deploy repo to push from.
fn node() -> (Env, DeployRepo) {
    let env = Env::new();
    let work = env.init_following_a();
    (env, work)
}

/// A plan whose one step appends "TRIGGER COMMIT failed=FAILED_COMMIT" to `log`, then exits `exit`.
fn plan(log: &Path, exit: u8, on_failure: &str) -> String {
    format!(
        "[health]\non_failure = \"{on_failure}\"\n\n[[step]]\nname = \"apply\"\n\
         run = \"echo \\\"$TROOPS_TRIGGER $TROOPS_COMMIT failed=${{TROOPS_FAILED_COMMIT-}}\\\" >> {}; exit {exit}\"\n",
        log.display()
    )
}

fn push(env: &Env, work: &DeployRepo) -> String {
    let out = work.push(env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stderr)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn a_failed_commit_is_rolled_back_at_once_and_never_run_again_but_a_newer_one_is() {
    let (env, work) = node();
    let log = env.path("applied");
    let good = work.commit(&env, &[("troops.toml", &plan(&log, 0, "rollback"))], "good");
    push(&env, &work);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    // The bad commit fails; the pusher sees it quarantined and the good commit run again.
    let bad = work.commit(&env, &[("troops.toml", &plan(&log, 3, "rollback"))], "bad");
    let said = push(&env, &work);
    for line in [
        format!("remote: troops: quarantined {} (run 2: step `apply` failed (exit 3))", short(&bad)),
        format!("remote: troops: rolling back to {}, the last good commit", short(&good)),
        format!(
            "remote: troops: run 2 failed; rolled back to {} by run 3, which succeeded (troops log 3)",
            short(&good)
        ),
    ] {
        assert!(said.contains(&line), "no {line:?} in:\n{said}");
    }
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "deployed must stay at the good commit");
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(bad.as_str()), "the branch never moves back");
    let failed = env.run_record(2);
    assert_eq!(
        (failed["status"].as_str(), failed["rolled_back_by"].as_u64()),
        (Some("rolled_back"), Some(3))
    );
    let rollback = env.run_record(3);
    assert_eq!(rollback["trigger"], "rollback", "{rollback}");
    assert_eq!(
        (rollback["commit"].as_str(), rollback["rollback_of"].as_u64()),
        (Some(good.as_str()), Some(2))
    );
    assert_eq!(rollback["schema"], 2);
    assert_eq!(
        lines(&log).last().unwrap(),
        &format!("rollback {good} failed={bad}"),
        "the good plan ran again"
    );
    let status = env.status_json();
    assert_eq!(status["quarantined"][0]["commit"], bad.as_str(), "{status}");
    assert!(status["quarantined"][0]["reason"].as_str().unwrap().contains("step `apply` failed"), "{status}");
    assert_eq!(status["next"]["state"], "idle", "{status}");
    assert!(env.ok(&["status"]).contains(&format!("bad       {} quarantined", short(&bad))));

    // A cron pull that fetches the bad commit again runs nothing.
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains("is quarantined"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2, 3]);

    // Nor does a daemon that starts (its start-up pull), nor its retry timer.
    {
        let daemon = Daemon::start(&env);
        wait_until("the daemon's start-up pull to decide", LIMIT, || daemon.log().contains("nothing runs"));
        assert_eq!(env.run_ids(), [1, 2, 3], "{}", daemon.log());
        assert!(env.status_json()["daemon"]["retry_at"].is_null(), "no retry is scheduled");
    }

    // A person may run it on purpose: it fails and is rolled back again.
    let out = env.run(&["deploy", "--commit", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert_eq!(env.run_record(4)["trigger"], "manual");
    assert_eq!(env.run_record(5)["trigger"], "rollback");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    // A newer commit starts over.
    let fixed = work.commit(&env, &[("troops.toml", &plan(&log, 0, "rollback"))], "fixed");
    push(&env, &work);
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()));
    assert_eq!(env.run_record(6)["trigger"], "push");
}

#[test]
fn with_on_failure_retry_a_failed_commit_is_not_quarantined_and_waits_for_its_retry() {
    let (env, work) = node();
    let log = env.path("applied");
    let good = work.commit(&env, &[("troops.toml", &plan(&log, 0, "retry"))], "good");
    push(&env, &work);
    work.commit(&env, &[("troops.toml", &plan(&log, 1, "retry"))], "bad");
    let said = push(&env, &work);
    assert!(!said.contains("quarantined") && !said.contains("rolling back"), "{said}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    // A cron pull within the backoff (30s by default) runs nothing and says when it will.
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert!(text(&out.stdout).contains("failed once (run 2); it is retried in"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2]);
    assert_eq!(env.status_json()["next"]["state"], "wait");
}

#[test]
fn troops_rollback_quarantines_the_deployed_commit_and_runs_the_one_before() {
    let (env, work) = node();
    let log = env.path("applied");
    let first = work.commit(&env, &[("troops.toml", &plan(&log, 0, "retry"))], "first");
    push(&env, &work);
    let second = work.commit(&env, &[("x", "2")], "second");
    push(&env, &work);
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));

    let out = env.run(&["rollback", "--to", "no-such-rev"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2], "a bad --to runs nothing");

    let out = env.run(&["rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    assert_eq!(lines(&log).last().unwrap(), &format!("rollback {first} failed={second}"));
    let status = env.status_json();
    assert_eq!(status["quarantined"][0]["commit"], second.as_str(), "{status}");
    assert!(status["quarantined"][0]["reason"].as_str().unwrap().contains("troops rollback"));
    // The tip is the quarantined commit: nothing runs it by itself.
    let out = env.run(&["pull"]);
    assert!(text(&out.stdout).contains("is quarantined"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2, 3]);
    // Rolling back the first too: nothing succeeded before it.
    let out = env.run(&["rollback"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert!(text(&out.stderr).contains("name a commit with --to"), "{}", combined(&out));
}

/// A plan with releases: the build step writes `version` into the release, the activate step
/// logs what `current` holds (and fails when the commit has a file `broken`).
fn release_plan(log: &Path) -> String {
    format!(
        "[health]\non_failure = \"rollback\"\n\n[release]\nkeep = 2\nkeep_failed = 1\n\n\
         [[step]]\nname = \"build\"\nrun = \"echo $TROOPS_COMMIT > version; echo build $TROOPS_COMMIT $(pwd) $TROOPS_RELEASE_DIR >> {log}\"\n\n\
         [[step]]\nname = \"activate\"\nphase = \"activate\"\nrun = \"echo activate $(cat $TROOPS_CURRENT/version) >> {log}; test ! -e broken\"\n",
        log = log.display()
    )
}

#[test]
fn releases_switch_current_atomically_roll_back_without_building_and_are_pruned() {
    let (env, work) = node();
    let log = env.path("applied");
    let current = env.state.join("current");
    let releases = env.state.join("releases");
    // A reader of `current` all along: it only ever sees a whole release.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (current, releases, stop) = (current.clone(), releases.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(target) = std::fs::read_link(&current) {
                    assert_eq!(target.parent(), Some(releases.as_path()), "{}", target.display());
                    seen.insert(target);
                }
            }
            seen
        })
    };
    let release_of = |run: u64, commit: &str| releases.join(format!("{run}-{}", short(commit)));

    let v1 = work.commit(&env, &[("troops.toml", &release_plan(&log))], "v1");
    push(&env, &work);
    assert_eq!(std::fs::read_link(&current).unwrap(), release_of(1, &v1));
    let v2 = work.commit(&env, &[("x", "2")], "v2");
    push(&env, &work);
    assert_eq!(std::fs::read_link(&current).unwrap(), release_of(2, &v2));
    assert_eq!(
        lines(&log)[2],
        format!("build {v2} {} {}", release_of(2, &v2).display(), release_of(2, &v2).display()),
        "build steps run in the release"
    );

    // v3's activate step fails: `current` goes back to v2's release, and only its activate step runs.
    let v3 = work.commit(&env, &[("broken", "")], "v3");
    let said = push(&env, &work);
    assert!(said.contains("rolled back to"), "{said}");
    assert_eq!(std::fs::read_link(&current).unwrap(), release_of(2, &v2));
    assert_eq!(
        lines(&log)[4..],
        [
            format!("build {v3} {} {}", release_of(3, &v3).display(), release_of(3, &v3).display()),
            format!("activate {v3}"),
            format!("activate {v2}")
        ],
        "the rollback did not build again"
    );
    let rollback = env.run_record(4);
    assert_eq!(rollback["steps"].as_array().unwrap().len(), 1, "{rollback}");
    assert_eq!(env.deployed().as_deref(), Some(v2.as_str()));

    // Three more good releases; keep = 2 good (the current one among them) and keep_failed = 1.
    let mut last = String::new();
    for n in 4..=6 {
        std::fs::remove_file(work.path.join("broken")).ok();
        last = work.commit(&env, &[("x", &n.to_string())], &format!("v{n}"));
        push(&env, &work);
    }
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().expect("the reader saw only whole releases");
    assert!(seen.len() >= 3, "{seen:?}");
    let mut left: Vec<PathBuf> = std::fs::read_dir(&releases).unwrap().map(|e| e.unwrap().path()).collect();
    left.sort();
    let mut want = vec![
        release_of(3, &v3),
        release_of(6, env.run_record(6)["commit"].as_str().unwrap()),
        release_of(7, &last),
    ];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(std::fs::read_link(&current).unwrap(), release_of(7, &last));
}

/// A service whose health is what the deployed commit's step wrote to `state`: "ok" answers 200,
/// "flaky" answers 200 for two probes after it was written and 500 after, anything else 500.
fn service(state: PathBuf) -> HttpServer {
    let since = std::sync::Mutex::new((String::new(), 0u32));
    HttpServer::start(move |_| {
        let now = std::fs::read_to_string(&state).unwrap_or_default().trim().to_owned();
        let mut since = since.lock().unwrap();
        if since.0 != now {
            *since = (now.clone(), 0);
        }
        since.1 += 1;
        match now.as_str() {
            "ok" => Reply::new(200, "ok"),
            "flaky" if since.1 <= 2 => Reply::new(200, "ok"),
            other => Reply::new(500, format!("unhealthy: {other}")),
        }
    })
}

/// A plan whose step writes `health` into `state` and whose check probes `server` every 100 ms,
/// failing after `retries` bad probes in a row, and must keep passing for `soak` (a good plan's
/// is short: every run of it waits it out).
fn checked_plan(state: &Path, health: &str, server: &HttpServer, retries: u32, soak: &str) -> String {
    format!(
        "[health]\non_failure = \"rollback\"\nsoak = \"{soak}\"\n\n[[step]]\nname = \"configure\"\n\
         run = \"echo {health} > {}\"\n\n[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = {retries}\n",
        state.display(),
        server.url("/health")
    )
}

#[test]
fn a_failing_check_or_a_soak_that_turns_bad_rolls_back_and_the_good_plan_passes_again() {
    let (env, work) = node();
    let state = env.path("service-state");
    let server = service(state.clone());
    let good = work.commit(&env, &[("troops.toml", &checked_plan(&state, "ok", &server, 2, "1s"))], "good");
    push(&env, &work);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    // The bad plans soak for a minute, which the test never waits out: a flaky service fails it
    // after four probes, whatever the load, where a 1 s soak may end before the third.
    for (case, health) in [("a failing check", "broken"), ("a soak that turns bad halfway", "flaky")] {
        let bad =
            work.commit(&env, &[("troops.toml", &checked_plan(&state, health, &server, 2, "60s"))], case);
        let said = push(&env, &work);
        assert!(said.contains("check `web` failed"), "{case}:\n{said}");
        assert!(said.contains(&format!("rolled back to {}", short(&good))), "{case}:\n{said}");
        assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "{case}");
        assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "ok", "{case}: the good plan ran again");
        let status = env.status_json();
        let quarantined: Vec<&str> =
            status["quarantined"].as_array().unwrap().iter().map(|q| q["commit"].as_str().unwrap()).collect();
        assert!(quarantined.contains(&bad.as_str()), "{case}: {status}");
        let ids = env.run_ids();
        let (failed, rollback) = (env.run_record(ids[ids.len() - 2]), env.run_record(*ids.last().unwrap()));
        assert_eq!(failed["checks"][0]["status"], "failed", "{case}: {failed}");
        assert_eq!(rollback["checks"][0]["status"], "passed", "{case}: {rollback}");
        if health == "flaky" {
            assert!(
                failed["checks"][0]["probes"].as_u64().unwrap() >= 3,
                "{case}: it passed first: {failed}"
            );
        }
    }
}

#[test]
fn a_daemon_killed_while_checking_rolls_back_when_it_starts_again() {
    let (env, work) = node();
    let state = env.path("service-state");
    let server = service(state.clone());
    let good = work.commit(&env, &[("troops.toml", &checked_plan(&state, "ok", &server, 2, "1s"))], "good");
    push(&env, &work);
    // The bad commit's check keeps probing for a minute: long enough to kill the daemon meanwhile.
    work.commit(&env, &[("troops.toml", &checked_plan(&state, "broken", &server, 600, "1s"))], "bad");
    let mut daemon = Daemon::start(&env);
    let mut pusher =
        work.push_command(&env, &env.repo().display().to_string(), &["HEAD:main"]).spawn().unwrap();
    wait_until("the bad commit's checks", LIMIT, || {
        env.run_ids().len() == 2 && env.run_record(2)["status"] == "checking"
    });
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(LIMIT);
    pusher.wait().unwrap();
    assert_eq!(env.run_record(2)["status"], "checking", "the record says what was under way");

    let daemon = Daemon::start(&env);
    // The rollback's record ends first, then it marks the run it undid.
    wait_until("the rollback at start", LIMIT, || {
        env.run_ids().len() == 3 && env.run_record(2)["status"] == "rolled_back"
    });
    assert_eq!(env.run_record(3)["trigger"], "rollback", "{}", daemon.log());
    let failed = env.run_record(2);
    assert_eq!(
        (failed["status"].as_str(), failed["rolled_back_by"].as_u64()),
        (Some("rolled_back"), Some(3))
    );
    assert!(failed["error"].as_str().unwrap().contains("troops died during the health checks"), "{failed}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "ok");
}

/// A plan with releases switched to `link`: the build step logs what it builds, the activate step
/// fails when the commit has a file `broken`.
fn link_plan(log: &Path, link: &Path, on_failure: &str) -> String {
    format!(
        "[health]\non_failure = \"{on_failure}\"\n\n[release]\nkeep = 1\nkeep_failed = 1\nlink = \"{}\"\n\n\
         [[step]]\nname = \"build\"\nrun = \"echo build $TROOPS_COMMIT >> {log}\"\n\n\
         [[step]]\nname = \"activate\"\nphase = \"activate\"\nrun = \"test ! -e broken\"\n",
        link.display(),
        log = log.display()
    )
}

#[test]
fn a_rollback_puts_back_every_link_the_failed_run_switched_and_retention_keeps_their_releases() {
    let (env, work) = node();
    let log = env.path("built");
    let (a, b) = (env.path("srv/a/current"), env.path("srv/b/current"));
    let release_of = |run: u64, commit: &str| env.state.join(format!("releases/{run}-{}", short(commit)));

    // g1 serves through b, then g2 through a; b still points at g1's release, which retention
    // (keep = 1) must not delete while it does.
    let g1 = work.commit(&env, &[("troops.toml", &link_plan(&log, &b, "rollback"))], "g1");
    push(&env, &work);
    let g2 = work.commit(&env, &[("troops.toml", &link_plan(&log, &a, "rollback"))], "g2");
    push(&env, &work);
    assert_eq!(std::fs::read_link(&a).unwrap(), release_of(2, &g2));
    assert_eq!(std::fs::read_link(&b).unwrap(), release_of(1, &g1));
    assert!(release_of(1, &g1).is_dir(), "retention deleted what b points at");

    // The failing commit moves the link back to b and switches it: the rollback to g2 must put b
    // back where it was as well as a.
    let bad = work.commit(&env, &[("troops.toml", &link_plan(&log, &b, "rollback")), ("broken", "")], "bad");
    let said = push(&env, &work);
    assert!(said.contains(&format!("rolled back to {} by run 4, which succeeded", short(&g2))), "{said}");
    assert!(
        said.contains(&format!(
            "{} -> {} (where it pointed before",
            b.display(),
            release_of(1, &g1).display()
        )),
        "{said}"
    );
    assert_eq!(std::fs::read_link(&a).unwrap(), release_of(2, &g2), "{said}");
    assert_eq!(std::fs::read_link(&b).unwrap(), release_of(1, &g1), "{said}");
    assert_eq!(env.run_record(4)["steps"].as_array().unwrap().len(), 1, "the rollback built again");

    // A newer good commit through a: retention runs again, and b's release stays.
    std::fs::remove_file(work.path.join("broken")).unwrap();
    let g3 = work.commit(&env, &[("troops.toml", &link_plan(&log, &a, "rollback"))], "g3");
    push(&env, &work);
    assert_eq!(std::fs::read_link(&a).unwrap(), release_of(5, &g3));
    for link in [&a, &b] {
        let target = std::fs::read_link(link).unwrap();
        assert!(target.is_dir(), "{} dangles at {}", link.display(), target.display());
    }
    // keep = 1 and keep_failed = 1: g3's (a points at it), the failed one, and g1's, which b
    // points at; g2's release goes.
    let mut left: Vec<PathBuf> =
        std::fs::read_dir(env.state.join("releases")).unwrap().map(|e| e.unwrap().path()).collect();
    left.sort();
    assert_eq!(left, [release_of(1, &g1), release_of(3, &bad), release_of(5, &g3)]);
}

#[test]
fn a_rollback_reuses_the_good_release_after_its_run_record_was_pruned_and_keeps_it() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\nkeep_runs = 2\n");
    env.init();
    let work = env.deploy_repo("work");
    let log = env.path("built");
    let current = env.state.join("current");
    let good = work.commit(&env, &[("troops.toml", &release_plan(&log))], "good");
    work.publish(&env);
    env.ok(&["deploy"]);
    let good_release = env.state.join(format!("releases/1-{}", short(&good)));
    assert_eq!(std::fs::read_link(&current).unwrap(), good_release);

    // Three failed runs since (a person runs the broken commit again and again); the good run's
    // record is pruned (keep_runs = 2) before the third one fails and is rolled back.
    work.commit(&env, &[("broken", "")], "broken");
    work.publish(&env);
    for _ in 0..3 {
        let out = env.run(&["deploy"]);
        assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    }
    let ids = env.run_ids();
    assert!(!ids.contains(&1), "run 1's record was not pruned: {ids:?}");
    let rollback = env.run_record(*ids.last().unwrap());
    assert_eq!(
        (rollback["trigger"].as_str(), rollback["commit"].as_str()),
        (Some("rollback"), Some(good.as_str()))
    );
    assert_eq!(rollback["steps"].as_array().unwrap().len(), 1, "it built again: {rollback}");
    assert_eq!(
        lines(&log).iter().filter(|l| l.starts_with(&format!("build {good}"))).count(),
        1,
        "built twice"
    );
    assert_eq!(std::fs::read_link(&current).unwrap(), good_release);
    assert!(good_release.join("version").is_file(), "retention deleted the good release");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
}

#[test]
fn troops_rollback_to_a_quarantined_commit_is_refused_and_nothing_moves() {
    let (env, work) = node();
    let log = env.path("applied");
    let good = work.commit(&env, &[("troops.toml", &plan(&log, 0, "rollback"))], "good");
    push(&env, &work);
    // The tip fails and is quarantined; the good commit runs again and stays deployed.
    let bad = work.commit(&env, &[("troops.toml", &plan(&log, 3, "rollback"))], "bad");
    push(&env, &work);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    let before = (env.run_ids(), env.status_json()["quarantined"].clone(), lines(&log));

    for to in [bad.as_str(), &bad[..12], "HEAD"] {
        let out = env.run(&["rollback", "--to", to]);
        assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
        let said = text(&out.stderr);
        assert!(said.contains(&format!("{} is quarantined (run ", short(&bad))), "{said}");
        assert!(said.contains(&format!("troops deploy --commit {}", short(&bad))), "{said}");
        assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "{said}");
        assert_eq!((env.run_ids(), env.status_json()["quarantined"].clone(), lines(&log)), before, "{said}");
    }
}
