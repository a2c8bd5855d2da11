//! Drift watch (`[health] recheck`, `[release] verify`, `on_drift`): the daemon runs the deployed
//! commit's checks again and compares the current release with the commit; a check that starts
//! failing after the deploy, and a hand-edited, added or removed file in the release, are drift
//! within one recheck period, in `troops status`, the status document, the metrics and a
//! notification; it clears when the host is as deployed again; with `redeploy` the daemon runs the
//! deployed commit again as a corrective run (`drift`), and the node is healthy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::{wait_until, Env};

/// Well over one recheck period (1 s) and a run.
const LIMIT: Duration = Duration::from_secs(30);

/// A node with releases, deployed once: a plan whose check fails while `flag` exists, rechecked
/// every second (`on_drift` as given), its notify command writing what it hears to `notified/`,
/// its metrics to `troops.prom`. Returns the env, the flag and the current release.
fn deployed(on_drift: &str) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    let notified = env.path("notified");
    std::fs::create_dir_all(&notified).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\ninterval = \"1h\"\n[metrics]\ntextfile = {:?}\n\
         [notify]\ncommand = 'cat > {1}/.tmp-$$ && mv {1}/.tmp-$$ {1}/$TROOPS_EVENT-$TROOPS_STATUS.json'\n",
        env.path("troops.prom"),
        notified.display()
    ));
    env.init();
    let flag = env.path("broken");
    let plan = format!(
        "[health]\nrecheck = \"1s\"\non_drift = \"{on_drift}\"\n[release]\nverify = true\n\
         [[step]]\nname = \"build\"\nrun = \"true\"\n\
         [[check]]\nname = \"alive\"\nrun = \"test ! -f {}\"\ninterval = \"100ms\"\nretries = 1\n",
        flag.display()
    );
    let work = env.deploy_repo("work");
    work.commit(&env, &[("troops.toml", &plan), ("site/index.html", "hello\n")], "site");
    work.publish(&env);
    env.ok(&["deploy"]);
    let current = std::fs::read_link(env.state.join("current")).unwrap();
    (env, flag, current)
}

fn status(env: &Env) -> serde_json::Value {
    env.status_json()
}

/// Waits until `troops status --json` says `state`; returns the status.
fn wait_for_state(env: &Env, daemon: &Daemon, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("state {state}"), LIMIT, || {
        last = status(env);
        last["state"] == state
    });
    assert!(daemon.log().contains("daemon started"), "{}", daemon.log());
    last
}

fn drift(status: &serde_json::Value) -> Vec<String> {
    status["fleet"]["drift"]
        .as_array()
        .map_or(Vec::new(), |d| d.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
}

fn metric(env: &Env, line: &str) -> bool {
    std::fs::read_to_string(env.path("troops.prom")).unwrap_or_default().lines().any(|l| l == line)
}

#[test]
fn a_check_that_starts_failing_and_a_hand_edited_release_are_drift_within_a_recheck() {
    let (env, flag, current) = deployed("report");
    let daemon = Daemon::start(&env);
    assert_eq!(status(&env)["state"], "healthy");

    // A check that starts failing long after the deploy.
    std::fs::write(&flag, "").unwrap();
    let now = wait_for_state(&env, &daemon, "drifted");
    let found = drift(&now);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("check `alive` failed: `test ! -f "), "{found:?}");
    assert!(env.ok(&["status"]).contains("drift     the recheck at "), "{}", env.ok(&["status"]));
    wait_until("the textfile to say drifted", LIMIT, || metric(&env, "troops_drifted 1"));
    let told = env.path("notified/drifted-drifted.json");
    wait_until("the notify command to hear of the drift", LIMIT, || told.exists());
    let told: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&told).unwrap()).unwrap();
    assert_eq!((told["host"].as_str(), told["run"].as_u64()), (Some("web-1"), Some(1)), "{told}");
    assert_eq!(env.run_ids(), [1], "report only: nothing runs");

    // Fixed by hand: the next recheck finds nothing, and the node is healthy again.
    std::fs::remove_file(&flag).unwrap();
    wait_for_state(&env, &daemon, "healthy");
    wait_until("the textfile to say not drifted", LIMIT, || metric(&env, "troops_drifted 0"));

    // A file of the release edited, one added, one removed: each named.
    std::fs::write(current.join("site/index.html"), "defaced\n").unwrap();
    std::fs::write(current.join("notes.txt"), "x").unwrap();
    std::fs::remove_file(current.join("troops.toml")).unwrap();
    let now = wait_for_state(&env, &daemon, "drifted");
    assert_eq!(drift(&now), ["added: notes.txt", "changed: site/index.html", "removed: troops.toml"]);
    assert_eq!(env.run_ids(), [1], "report only: nothing runs");
}

#[test]
fn with_redeploy_the_node_runs_its_deployed_commit_again_as_a_corrective_run() {
    let (env, _flag, current) = deployed("redeploy");
    let deployed = env.deployed().unwrap();
    let daemon = Daemon::start(&env);
    std::fs::write(current.join("site/index.html"), "defaced\n").unwrap();
    wait_until("a corrective run", LIMIT, || env.run_ids().len() == 2);
    wait_for_state(&env, &daemon, "healthy");
    let run = env.run_record(2);
    assert_eq!(
        (run["trigger"].as_str(), run["status"].as_str(), run["commit"].as_str()),
        (Some("drift"), Some("succeeded"), Some(deployed.as_str())),
        "{run}"
    );
    // A new release, as deployed; the defaced one is left as it was, and no longer current.
    let now_current = std::fs::read_link(env.state.join("current")).unwrap();
    assert_ne!(now_current, current);
    assert_eq!(std::fs::read_to_string(now_current.join("site/index.html")).unwrap(), "hello\n");
    assert!(Path::new(&current).exists());
    // Counted apart from the deploys of new commits.
    wait_until("the corrective run counted by its trigger", LIMIT, || {
        metric(&env, "troops_runs_total{result=\"succeeded\",trigger=\"drift\"} 1")
    });
    assert!(metric(&env, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"} 1"));
    assert!(daemon.log().contains("redeploying the deployed commit after drift"), "{}", daemon.log());
}
