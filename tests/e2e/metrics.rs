//! Metrics and notifications: the textfile node_exporter reads after successes, failures and
//! fetch errors, from the CLI, the hook and the daemon; counters that outlive the daemon and run
//! pruning; `GET /metrics` on the daemon's listener; and a notify command that hears failures and
//! recoveries, not plain successes, and whose failure or hang changes no run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::daemon::Daemon;
use crate::support::gpg::Gpg;
use crate::support::{
    combined, publish_to_a, pull_deploys, push_is_refused, text, wait_until, DeployRepo, Env,
};

const OK_PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello\"\n";
const FAILING_PLAN: &str = "[[step]]\nname = \"broken\"\nrun = \"exit 1\"\n";

/// A node with remote `a` (a bare repo in the test dir) and `extra` config lines.
fn node(extra: &str) -> (Env, DeployRepo) {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\n{extra}"));
    let work = env.init_following_a();
    (env, work)
}

/// The value of the sample `series` (name and labels exactly as written) in exposition `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A node following `a` whose metrics go to the textfile `node-exporter/troops.prom` (see `textfile`).
fn node_with_textfile() -> (Env, DeployRepo) {
    let (env, work) = node("");
    let prom = env.path("node-exporter/troops.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\n[metrics]\ntextfile = {:?}\n",
        prom.display().to_string()
    ));
    (env, work)
}

fn textfile(env: &Env) -> String {
    std::fs::read_to_string(env.path("node-exporter/troops.prom")).unwrap_or_default()
}

/// Runs `promtool ARGS` (the Debian package `prometheus`; tests/run.sh installs it) in `dir`,
/// with `stdin`, and asserts it is content.
fn promtool(args: &[&str], dir: &Path, stdin: &str) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool {args:?}:\n{}\n{stdin}", combined(&out));
}

/// `promtool check metrics` finds nothing wrong with the exposition `text`.
fn promtool_accepts(text: &str) {
    promtool(&["check", "metrics"], Path::new("/"), text);
}

/// Every sample line is `name{labels} value`: no timestamps (node_exporter refuses them).
fn assert_no_timestamps(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let after_series = match line.rsplit_once('}') {
            Some((_, rest)) => rest,
            None => line.split_once(' ').map_or("", |(_, rest)| rest),
        };
        assert_eq!(after_series.split_whitespace().count(), 1, "not just a value: {line}");
    }
}

#[test]
fn the_textfile_after_a_success_a_failure_and_a_fetch_error() {
    let (env, work) = node_with_textfile();
    // A second remote that cannot be fetched.
    env.git(&env.repo(), &["remote", "add", "gone", &env.path("gone.git").display().to_string()]);

    let first = work.commit(&env, &[("troops.toml", OK_PLAN)], "ok");
    publish_to_a(&env, &work);
    pull_deploys(&env, &first);
    let text = textfile(&env);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"pull\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "troops_last_run_success"), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("troops_deployed_info{{commit=\"{first}\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("troops_tip_info{{commit=\"{first}\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, "troops_fetch_total{remote=\"a\",result=\"succeeded\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "troops_fetch_total{remote=\"gone\",result=\"failed\"}"), Some(1.0), "{text}");
    assert!(sample(&text, "troops_last_fetch_success_timestamp_seconds{remote=\"a\"}").is_some(), "{text}");
    assert!(!text.contains("troops_last_fetch_success_timestamp_seconds{remote=\"gone\"}"), "{text}");
    assert_eq!(sample(&text, "troops_run_duration_seconds_count"), Some(1.0), "{text}");
    let succeeded_at = sample(&text, "troops_last_success_timestamp_seconds").expect("a last success");
    assert_no_timestamps(&text);
    promtool_accepts(&text);

    let second = work.commit(&env, &[("troops.toml", FAILING_PLAN)], "broken");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let text = textfile(&env);
    assert_eq!(sample(&text, "troops_runs_total{result=\"failed\",trigger=\"pull\"}"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"pull\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "troops_last_run_success"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "troops_last_success_timestamp_seconds"), Some(succeeded_at), "{text}");
    assert_eq!(sample(&text, &format!("troops_deployed_info{{commit=\"{first}\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &format!("troops_tip_info{{commit=\"{second}\"}}")), Some(1.0), "{text}");
    assert_eq!(sample(&text, "troops_fetch_total{remote=\"gone\",result=\"failed\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "troops_run_duration_seconds_count"), Some(2.0), "{text}");

    // A push, run in-process by the hook (no daemon), counts too; so does `troops deploy`.
    let third = work.commit(&env, &[("troops.toml", OK_PLAN)], "fixed");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(third.as_str()));
    env.ok(&["deploy"]);
    let text = textfile(&env);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"push\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "troops_last_run_success"), Some(1.0), "{text}");
    // Only the textfile and nothing beside it: the temp file was renamed into place.
    let names: Vec<_> =
        std::fs::read_dir(env.path("node-exporter")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["troops.prom"]);
}

#[test]
fn each_run_counts_once_by_its_final_status_a_rolled_back_one_as_rolled_back() {
    let (env, work) = node_with_textfile();
    let runs = |text: &str, result: &str, trigger: &str| {
        sample(text, &format!("troops_runs_total{{result=\"{result}\",trigger=\"{trigger}\"}}"))
    };
    let all_runs = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("troops_runs_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let failing = format!("[health]\non_failure = \"rollback\"\n\n{FAILING_PLAN}");
    // The good commit fails once this flag exists: then going back to it fails too.
    let flag = env.path("rollback-fails");
    let good_plan = format!("[[step]]\nname = \"good\"\nrun = \"test ! -e {}\"\n", flag.display());

    // Nothing deployed to go back to: no rollback follows, and the failure counts at once.
    work.publish_plan(&env, &failing);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    let prom_text = textfile(&env);
    assert_eq!(runs(&prom_text, "failed", "manual"), Some(1.0), "{prom_text}");

    work.publish_plan(&env, &good_plan);
    env.ok(&["deploy"]);

    // Rolled back: run 3 failed, run 4 went back to the good commit; run 3 is `rolled_back`.
    work.publish_plan(&env, &format!("{failing}# again\n"));
    let out = env.run(&["deploy"]);
    assert!(text(&out.stdout).contains("by run 4, which succeeded"), "{}", combined(&out));
    assert_eq!(env.run_record(3)["status"], "rolled_back");
    let prom_text = textfile(&env);
    assert_eq!(runs(&prom_text, "rolled_back", "manual"), Some(1.0), "{prom_text}");
    assert_eq!(
        runs(&prom_text, "failed", "manual"),
        Some(1.0),
        "the rolled-back run counted as failed:\n{prom_text}"
    );
    assert_eq!(runs(&prom_text, "succeeded", "rollback"), Some(1.0), "{prom_text}");
    assert_eq!(all_runs(&prom_text), 4.0, "{prom_text}");

    // The rollback fails too: run 5 stays `failed` and counts so, once; run 6 is a failed rollback.
    std::fs::write(&flag, "").unwrap();
    work.publish_plan(&env, &format!("{failing}# and again\n"));
    let out = env.run(&["deploy"]);
    assert!(text(&out.stdout).contains("by run 6, which failed"), "{}", combined(&out));
    assert_eq!(env.run_record(5)["status"], "failed");
    let prom_text = textfile(&env);
    assert_eq!(runs(&prom_text, "failed", "manual"), Some(2.0), "{prom_text}");
    assert_eq!(runs(&prom_text, "failed", "rollback"), Some(1.0), "{prom_text}");
    assert_eq!(runs(&prom_text, "rolled_back", "manual"), Some(1.0), "{prom_text}");
    assert_eq!(all_runs(&prom_text), 6.0, "every run once: {prom_text}");
    assert_eq!(sample(&prom_text, "troops_run_duration_seconds_count"), Some(6.0), "{prom_text}");
    assert_eq!(sample(&prom_text, "troops_rollbacks_total"), Some(2.0), "{prom_text}");
}

#[test]
fn quarantines_the_branch_has_moved_past_end_with_the_next_deploy() {
    let (env, work) = node_with_textfile();
    let quarantined = || sample(&textfile(&env), "troops_quarantined_commits");
    let bad_lines = || -> Vec<String> {
        env.ok(&["status"]).lines().filter(|l| l.starts_with("bad ")).map(str::to_owned).collect()
    };
    let failing = format!("[health]\non_failure = \"rollback\"\n\n{FAILING_PLAN}");
    let good = work.publish_plan(&env, OK_PLAN);
    env.ok(&["deploy"]);

    // Two bad commits in a row, each rolled back: both stay quarantined (the second is the tip;
    // a rollback lifts nothing).
    let first_bad = work.publish_plan(&env, &failing);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    let second_bad = work.publish_plan(&env, &format!("{failing}# still\n"));
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    assert_eq!(quarantined(), Some(2.0));
    assert_eq!(bad_lines().len(), 2, "{:?}", bad_lines());

    // The fix reaches the branch. Before it runs, a person runs a commit off the branch, and one
    // ahead of it (a child of the tip, not on the branch yet): both fail and are quarantined.
    let fixed = work.publish_plan(&env, &format!("{OK_PLAN}# fixed\n"));
    let branch_at = |rev: &str, name: &str, plan: &str| {
        env.git(&work.path, &["checkout", "-q", "-b", name, rev]);
        let commit = work.commit(&env, &[("troops.toml", plan)], name);
        env.git(&work.path, &["checkout", "-q", "main"]);
        let out = work.push(&env, &env.repo().display().to_string(), &[&format!("{name}:{name}")]);
        assert!(out.status.success(), "{}", combined(&out));
        commit
    };
    let off = branch_at(&good, "off", &format!("{failing}# off the branch\n"));
    let ahead = branch_at("main", "ahead", &format!("{failing}# ahead\n"));
    for commit in [&off, &ahead] {
        assert_eq!(env.run(&["deploy", "--commit", commit]).status.code(), Some(1));
    }
    assert_eq!(quarantined(), Some(4.0));

    // The fix deploys: the two the branch has passed and the one off it are released, saying so;
    // the one ahead of the tip stays (the branch may yet come to it).
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()));
    let said = text(&out.stdout);
    for commit in [&first_bad, &second_bad, &off] {
        let line = format!(
            "troops: {} is no longer quarantined: the branch has moved past it (it was: run ",
            &commit[..12]
        );
        assert!(said.contains(&line), "no {line:?} in:\n{said}");
    }
    assert_eq!(quarantined(), Some(1.0));
    let left = bad_lines();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(&format!("bad       {} quarantined", &ahead[..12])), "{left:?}");
    let kept = env.node_ref(&format!("refs/troops/bad/{ahead}"));
    assert!(kept.is_some(), "the quarantine of a commit ahead of the tip was lifted");
    // Pushed, it is the tip, and still never run by a pull.
    let out = work.push(&env, &env.repo().display().to_string(), &["ahead:main"]);
    assert!(out.status.success(), "{}", combined(&out));
    let status = env.status_json();
    assert_eq!(status["next"]["state"], "idle", "{status}");
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()));
}

#[test]
fn a_textfile_that_cannot_be_written_is_said_on_the_stderr_of_a_cli_run_and_a_push() {
    // Its directory is a file: no user, root neither, can write it.
    let (env, work) = node("");
    let blocked = env.path("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let prom = blocked.join("troops.prom");
    env.write_config(&format!(
        "hostname = \"web-1\"\n[metrics]\ntextfile = {:?}\n",
        prom.display().to_string()
    ));
    let said = format!("troops: metrics not updated: writing {}: ", prom.display());

    work.publish_plan(&env, OK_PLAN);
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "the run's result is the run's: {}", combined(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.lines().any(|l| l.starts_with(&said)), "no {said:?} on stderr:\n{stderr}");

    // A push run in-process by the hook: the pusher sees it.
    work.commit(&env, &[("troops.toml", &format!("{OK_PLAN}# again\n"))], "again");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("remote: {said}")), "the pusher was not told:\n{stderr}");
    assert_eq!(env.run_record(2)["status"], "succeeded");
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A raw HTTP/1.1 request to the daemon's listener: the status line and the body.
fn http(port: u16, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn scrape(port: u16) -> String {
    let (status, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

fn deploy_through(env: &Env, daemon: &Daemon) {
    let out = env.run(&["deploy"]);
    assert!(out.status.success(), "{}\n{}", combined(&out), daemon.log());
}

#[test]
fn a_restarted_daemon_serves_counters_that_outlive_it_and_run_pruning() {
    let port = free_port();
    let (env, work) =
        node(&format!("interval = \"1h\"\nkeep_runs = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    work.publish_plan(&env, OK_PLAN);
    // Counted without a daemon too (and deployed, so the daemon's first cycle runs nothing).
    env.ok(&["deploy"]);
    let mut daemon = Daemon::start(&env);
    wait_until("the metrics listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    deploy_through(&env, &daemon);
    deploy_through(&env, &daemon);
    let text = scrape(port);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "troops_fetch_total{remote=\"a\",result=\"succeeded\"}"), Some(1.0), "{text}");
    promtool_accepts(&text);

    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    let daemon = Daemon::start(&env);
    wait_until("the metrics listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    deploy_through(&env, &daemon);
    assert_eq!(env.run_ids(), [4], "keep_runs = 1 pruned the older runs");
    let text = scrape(port);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"}"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, "troops_run_duration_seconds_count"), Some(4.0), "{text}");
    // Its first cycle fetched again.
    assert_eq!(sample(&text, "troops_fetch_total{remote=\"a\",result=\"succeeded\"}"), Some(2.0), "{text}");

    // Anything else: 404 or 405, a head without an end is cut off, and the listener still serves.
    assert_eq!(http(port, "GET / HTTP/1.1\r\n\r\n").0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(port, "GET /metricsx HTTP/1.0\r\n\r\n").0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(port, "POST /metrics HTTP/1.1\r\n\r\n").0, "HTTP/1.1 405 Method Not Allowed");
    let endless = format!("GET /metrics HTTP/1.1\r\nX: {}", "y".repeat(64 * 1024));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = stream.write_all(endless.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    scrape(port);
    drop(silent);
}

#[test]
fn clients_that_connect_and_say_nothing_never_keep_a_scrape_waiting() {
    let port = free_port();
    let (env, _work) = node(&format!("interval = \"1h\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let _daemon = Daemon::start(&env);
    wait_until("the metrics listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // Many more than the listener keeps open: silent ones, and ones that stop mid-head.
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 0 {
            stream.write_all(b"GET /metr").unwrap();
        }
        idle.push(stream);
    }
    // Answered well within the 10 s a silent client is given, however many there are.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    assert!(read.is_ok() && answer.starts_with("HTTP/1.1 200 OK"), "{read:?}: {answer}");
    assert!(answer.contains("troops_build_info"), "{answer}");
    drop(idle);
}

#[test]
fn a_metrics_port_another_process_holds_is_reported_and_served_once_it_is_free() {
    use std::os::unix::net::UnixDatagram;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let (env, _work) = node(&format!("interval = \"1h\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    // systemd's end of NOTIFY_SOCKET.
    let systemd = UnixDatagram::bind(env.path("notify.sock")).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The first message to systemd that `is` what the test waits for.
    let told = |what: &str, is: &dyn Fn(&str) -> bool| loop {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).unwrap_or_else(|e| panic!("no message to systemd says {what}: {e}"));
        let message = text(&buf[..n]);
        if is(&message) {
            return message;
        }
    };
    let daemon =
        Daemon::start_with(&env, &[("NOTIFY_SOCKET", &env.path("notify.sock").display().to_string())]);

    // The daemon runs on, and says so everywhere: systemd, `troops status`, its log.
    let taken = format!("127.0.0.1:{port} is taken by another process");
    let ready = told("ready", &|m| m.contains("READY=1"));
    assert!(ready.contains(&format!("/metrics NOT SERVED: {taken}")), "{ready}");
    let status = env.ok(&["status"]);
    assert!(status.contains(&format!("metrics   NOT SERVED: {taken}")), "{status}");
    let json = env.status_json();
    assert!(json["daemon"]["metrics_error"].as_str().is_some_and(|e| e.contains(&taken)), "{json}");
    assert!(daemon.log().contains("/metrics NOT SERVED"), "{}", daemon.log());

    // Once the port is free, the daemon has it, and takes the complaint back.
    drop(squatter);
    told("all is well", &|m| m.starts_with("STATUS=") && !m.contains("NOT SERVED"));
    let (status, body) = http(port, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(env.status_json()["daemon"].get("metrics_error").is_none());
    assert!(!env.ok(&["status"]).contains("NOT SERVED"));
}

/// A node whose notify command is `notify` (where `DIR`, a directory for its files, is
/// replaced), with a 2 s timeout.
fn notified_node(notify: &str) -> (Env, DeployRepo, PathBuf) {
    notified_node_with(notify, "2s")
}

fn notified_node_with(notify: &str, timeout: &str) -> (Env, DeployRepo, PathBuf) {
    let env = Env::new();
    let dir = env.path("notified");
    std::fs::create_dir_all(&dir).unwrap();
    let command = notify.replace("DIR", &dir.display().to_string());
    env.write_config(&format!(
        "hostname = \"web-1\"\n[notify]\ncommand = {command:?}\ntimeout = \"{timeout}\"\n"
    ));
    env.init();
    let work = env.deploy_repo("work");
    (env, work, dir)
}

/// Saves what the command gets: `notify-<run>.env`, then `notify-<run>.json`, renamed into place
/// last, so that a reader who sees the JSON sees both whole.
const SAVE: &str = "cat > DIR/.json-$TROOPS_RUN_ID; env > DIR/notify-$TROOPS_RUN_ID.env; \
                    mv DIR/.json-$TROOPS_RUN_ID DIR/notify-$TROOPS_RUN_ID.json";

fn notified(dir: &Path, id: u64) -> Option<serde_json::Value> {
    let json = std::fs::read_to_string(dir.join(format!("notify-{id}.json"))).ok()?;
    Some(serde_json::from_str(&json).unwrap_or_else(|e| panic!("notify {id} got no JSON ({e}):\n{json}")))
}

/// The record run `id`'s notification got, once it has come: a run in-process hands the command
/// to a detached process and does not wait for it.
fn wait_notified(dir: &Path, id: u64) -> serde_json::Value {
    let mut record = None;
    wait_until(&format!("the notification of run {id}"), Duration::from_secs(20), || {
        record = notified(dir, id);
        record.is_some()
    });
    record.unwrap()
}

#[test]
fn a_notify_command_hears_a_failure_and_the_recovery_not_a_plain_success() {
    let (env, work, dir) = notified_node(SAVE);
    work.publish_plan(&env, OK_PLAN);
    env.ok(&["deploy"]);

    let broken = work.publish_plan(&env, FAILING_PLAN);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    let record = wait_notified(&dir, 2);
    // Run 1's notification, had there been one, started before run 2 did.
    assert!(notified(&dir, 1).is_none(), "a plain success was notified");
    assert_eq!((record["id"].as_u64(), record["status"].as_str()), (Some(2), Some("failed")), "{record}");
    assert_eq!(record["commit"].as_str(), Some(broken.as_str()));
    assert_eq!(record["steps"][0]["exit_code"].as_i64(), Some(1), "{record}");
    let vars = std::fs::read_to_string(dir.join("notify-2.env")).unwrap();
    for want in [
        "TROOPS_STATUS=failed",
        "TROOPS_EVENT=failed",
        "TROOPS_HOST=web-1",
        &format!("TROOPS_COMMIT={broken}"),
    ] {
        assert!(vars.lines().any(|l| l == want), "{want} not in\n{vars}");
    }
    assert!(!vars.contains("TROOPS_STATE_DIR") && !vars.contains("GIT_CONFIG"), "{vars}");

    // Through the daemon, which starts and leaves the failed tip to its backoff (no run, nothing
    // to notify), then the push path: the fix is a recovery, the next success is not news.
    let daemon = Daemon::start(&env);
    wait_until("the daemon's start-up decision", Duration::from_secs(20), || {
        daemon.log().contains("nothing runs")
    });
    work.commit(&env, &[("troops.toml", OK_PLAN)], "fixed");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = wait_notified(&dir, 3);
    assert_eq!((record["status"].as_str(), record["trigger"].as_str()), (Some("succeeded"), Some("push")));
    assert!(std::fs::read_to_string(dir.join("notify-3.env")).unwrap().contains("TROOPS_EVENT=recovered"));
    wait_until("the daemon to log the notification", Duration::from_secs(10), || {
        daemon.log().contains("notify command succeeded")
    });
    deploy_through(&env, &daemon);
    // The daemon's notifications go one after another: one of run 4 would have come before 5's.
    work.commit(&env, &[("troops.toml", FAILING_PLAN)], "broken again");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(text(&out.stderr).contains("run 5 failed"), "{}", text(&out.stderr));
    wait_notified(&dir, 5);
    assert!(notified(&dir, 4).is_none(), "a success after a success was notified");
}

#[test]
fn a_rolled_back_failure_is_told_once_and_only_after_the_rollback_ran() {
    // The command notes when it began, in nanoseconds.
    let (env, work, dir) = notified_node(&format!("date +%s%N > DIR/began-$TROOPS_RUN_ID; {SAVE}; sleep 1"));
    let good = work.publish_plan(&env, OK_PLAN);
    env.ok(&["deploy"]);
    let rollback_plan = format!("[health]\non_failure = \"rollback\"\n\n{FAILING_PLAN}");
    work.publish_plan(&env, &rollback_plan);
    let out = env.run(&["deploy"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("rolled back to") && said.contains("by run 3, which succeeded"), "{said}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    let record = wait_notified(&dir, 3);
    assert!(notified(&dir, 2).is_none(), "the failure was told apart from its rollback");
    assert_eq!(
        (record["status"].as_str(), record["rollback_of"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{record}"
    );
    assert!(std::fs::read_to_string(dir.join("notify-3.env")).unwrap().contains("TROOPS_EVENT=rolled_back"));
    // The one notification began once the rollback had finished: none held it up.
    let began: u128 = std::fs::read_to_string(dir.join("began-3")).unwrap().trim().parse().unwrap();
    let finished = humantime::parse_rfc3339(record["finished_at"].as_str().unwrap()).unwrap();
    let finished = finished.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    assert!(finished <= began, "run 3 finished at {finished}, after its notification began at {began}");
}

#[test]
fn a_failing_or_hanging_notify_command_changes_no_run_and_reaches_no_pusher() {
    // Hangs after saying something: ended at its 2 s timeout, after the push ended.
    let (env, work, dir) = notified_node("echo NOTIFY-SAYS; touch DIR/began; sleep 600");
    work.commit(&env, &[("troops.toml", FAILING_PLAN)], "broken");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("remote: troops: run 1 failed"), "{stderr}");
    assert!(!stderr.contains("NOTIFY-SAYS"), "the notify command's output reached the pusher:\n{stderr}");
    assert_eq!(env.run_record(1)["status"], "failed");
    wait_until("the notify command to start", Duration::from_secs(20), || dir.join("began").exists());

    // Fails: the failed run's exit code stays 1 (not the command's 7, nor 3), through the daemon
    // and without, and the daemon logs why.
    let (env, work, _dir) = notified_node("echo NOTIFY-SAYS; exit 7");
    work.publish_plan(&env, FAILING_PLAN);
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert!(!combined(&out).contains("NOTIFY-SAYS"), "{}", combined(&out));
    let daemon = Daemon::start(&env);
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    wait_until("the daemon to log the notify failure", Duration::from_secs(10), || {
        daemon.log().contains("notify command failed")
    });
    let log = daemon.log();
    assert!(log.contains("exit status: 7") && log.contains("NOTIFY-SAYS"), "{log}");
}

#[test]
fn a_push_run_in_process_returns_while_its_notify_command_still_runs() {
    // The command runs until the test lets it end (or its 60 s timeout).
    let (env, work, dir) = notified_node_with(
        "touch DIR/began; while [ ! -e DIR/release ]; do sleep 0.05; done; touch DIR/finished",
        "60s",
    );
    work.commit(&env, &[("troops.toml", FAILING_PLAN)], "broken");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    // The push is back, and the notify command cannot have finished: nothing released it yet.
    assert!(text(&out.stderr).contains("remote: troops: run 1 failed"), "{}", text(&out.stderr));
    assert!(!dir.join("finished").exists(), "the notify command finished before it was released");
    wait_until("the notify command to start", Duration::from_secs(20), || dir.join("began").exists());
    std::fs::write(dir.join("release"), "").unwrap();
    wait_until("the notify command to finish", Duration::from_secs(20), || dir.join("finished").exists());
}

#[test]
fn a_notify_command_is_ended_at_its_timeout_with_what_left_its_session() {
    // A grandchild in a session of its own (out of the command's process group) notes its pid.
    let (env, work, dir) = notified_node(
        "setsid sh -c 'echo $$ > DIR/.pid; mv DIR/.pid DIR/grandchild; exec sleep 600' & sleep 600",
    );
    let daemon = Daemon::start(&env);
    work.publish_plan(&env, FAILING_PLAN);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    wait_until("the notify command to time out", Duration::from_secs(30), || {
        daemon.log().contains("notify command failed")
    });
    let log = daemon.log();
    assert!(log.contains("took longer than 2s; it was ended with everything it started"), "{log}");
    // Gone by the time the failure is logged, not merely signalled.
    let pid = std::fs::read_to_string(dir.join("grandchild")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    assert!(stat.is_err(), "the setsid grandchild {} outlived the timeout: {stat:?}", pid.trim());
}

/// The most memory the process `pid` has held, in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_notify_command_printing_hundreds_of_megabytes_without_a_newline_costs_the_daemon_little() {
    const MIB: u64 = 1024 * 1024;
    let (env, work, _dir) =
        notified_node_with(&format!("echo first words; head -c {} /dev/zero", 300 * MIB), "60s");
    let daemon = Daemon::start(&env);
    let before = peak_kib(daemon.child.id());
    work.publish_plan(&env, FAILING_PLAN);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    wait_until("the notify command to end", Duration::from_secs(60), || {
        daemon.log().contains("notify command succeeded")
    });
    let log = daemon.log();
    assert!(log.contains("first words"), "{log}");
    assert!(log.contains("the rest of its output was not logged"), "{log}");
    let after = peak_kib(daemon.child.id());
    eprintln!("the daemon's peak memory: {before} KiB before the notification, {after} KiB after");
    // Reading the whole "line" would have taken 300 MiB; the daemon reads it in 16 KiB pieces.
    assert!(after < before + 64 * 1024, "the daemon's peak grew from {before} KiB to {after} KiB");
}

#[test]
fn the_example_alert_rules_are_valid_and_fire_when_they_should() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus");
    promtool(&["check", "rules", "troops.rules.yml"], &examples, "");
    // Each alert on the series that must fire it, and not on a healthy node's.
    promtool(&["test", "rules", "troops.rules.test.yml"], &examples, "");
}

#[test]
fn refused_commits_are_counted_by_reason_from_a_push_and_a_pull() {
    let env = Env::new();
    let gpg = Gpg::new();
    let (trusted, stranger) = (gpg.generate("Trusted"), gpg.generate("Stranger"));
    let keyring = env.path("trusted.pgp");
    std::fs::write(&keyring, gpg.export(&[&trusted], true)).unwrap();
    let prom = env.path("node-exporter/troops.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\n[verify]\nrequire_signed = true\nkeyring = {:?}\n[metrics]\ntextfile = {:?}\n",
        keyring.display().to_string(),
        prom.display().to_string()
    ));
    let work = env.init_following_a();
    let base = gpg.commit(&env, &work, &trusted, &[("troops.toml", OK_PLAN)], "base");
    publish_to_a(&env, &work);
    pull_deploys(&env, &base);

    // A pusher's unsigned commit, refused by the hook.
    let unsigned = work.commit(&env, &[("x", "unsigned")], "unsigned");
    push_is_refused(&env, &work, &unsigned, "unsigned push");
    let text = textfile(&env);
    assert_eq!(sample(&text, "troops_verify_refusals_total{reason=\"unsigned\"}"), Some(1.0), "{text}");

    // A stranger's commit on a remote, refused by a pull, which deploys nothing.
    gpg.commit(&env, &work, &stranger, &[("x", "stranger")], "by a stranger");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(base.as_str()), "{}", combined(&out));
    let text = textfile(&env);
    assert_eq!(sample(&text, "troops_verify_refusals_total{reason=\"unknown_key\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "troops_verify_refusals_total{reason=\"unsigned\"}"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"pull\"}"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_members_push_is_counted_and_what_it_may_not_write_fails_nothing() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !crate::support::require_root("giving the node to a group and acting as another user") {
        return;
    }
    use crate::push::{as_member, group_id, GROUP, MEMBER};
    let env = Env::new();
    // The textfile's directory is root's alone, as node_exporter's usually is.
    let prom = env.path("node-exporter/troops.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    std::fs::set_permissions(prom.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\nadmin_group = \"{GROUP}\"\n[metrics]\ntextfile = {:?}\n",
        prom.display().to_string()
    ));
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.init();
    let metrics = std::fs::metadata(env.state.join("metrics")).unwrap();
    assert_eq!((metrics.gid(), metrics.mode() & 0o2070), (group_id(), 0o2070), "metrics/ is not the group's");

    let repo = env.deploy_repo("deploy");
    let safe = env.path("member.gitconfig");
    std::fs::write(
        &safe,
        format!("[safe]\n\tdirectory = {}\n\tdirectory = {}\n", env.repo().display(), repo.path.display()),
    )
    .unwrap();
    let member_push = |n: u64| {
        repo.commit(&env, &[("troops.toml", OK_PLAN), ("n", &n.to_string())], "member");
        let mut command = repo.push_command(&env, &env.repo().display().to_string(), &["main"]);
        command.env("GIT_CONFIG_GLOBAL", &safe);
        let out = as_member(command).output().unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success() && stderr.contains(&format!("run {n} succeeded")), "{stderr}");
        assert_eq!(
            std::fs::metadata(env.state.join(format!("runs/{n}/run.json"))).unwrap().uid().to_string(),
            MEMBER
        );
    };

    // The member's run counts (metrics/ is the group's), though it may not write the textfile.
    member_push(1);
    assert!(!prom.exists(), "the member wrote into root's directory");
    env.ok(&["deploy"]);
    let text = textfile(&env);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"push\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"}"),
        Some(1.0),
        "{text}"
    );

    // A node whose metrics/ the member may not write at all (as one set up before it was shared):
    // the member's run still succeeds, uncounted; root's counters are intact.
    std::fs::set_permissions(env.state.join("metrics"), std::fs::Permissions::from_mode(0o700)).unwrap();
    member_push(3);
    env.ok(&["deploy"]);
    let text = textfile(&env);
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"push\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "troops_runs_total{result=\"succeeded\",trigger=\"manual\"}"),
        Some(2.0),
        "{text}"
    );
}

/// The process group a step leads, from the pid it wrote to `file`; killed when dropped, so a
/// failed test leaves no step behind.
struct StepGroup(PathBuf);

impl StepGroup {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok().filter(|&p| p > 1)
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for StepGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// This node's document as `status.git` holds it (null before the first publish).
fn published(env: &Env) -> serde_json::Value {
    let mut git = Command::new("git");
    env.hermetic(&mut git);
    let remote = env.path("status.git");
    let out =
        git.arg("--git-dir").arg(remote).args(["show", "refs/troops/status/web-1:status.json"]).output();
    serde_json::from_slice(&out.unwrap().stdout).unwrap_or_default()
}

/// The node's state and its last run that is over, as `troops status` (text and `--json`), the
/// status document `doc` and each of `metrics` (exposition texts) say it: one reading of the
/// node, so they agree.
fn all_say(env: &Env, state: &str, last: (u64, &str), doc: &serde_json::Value, metrics: &[(&str, String)]) {
    let status = env.status_json();
    assert_eq!(status["state"], state, "{status}");
    assert_eq!(status["last_run"]["id"], last.0, "{status}");
    assert_eq!(status["last_run"]["status"], last.1, "{status}");
    let human = env.ok(&["status"]);
    assert!(human.contains(&format!("\nstate     {state}")), "{human}");
    let line = human.lines().find(|l| l.starts_with("last run")).unwrap_or_default();
    assert!(line.starts_with(&format!("last run  run {} (", last.0)), "{human}");
    assert!(line.contains(&format!(" {}", last.1.replace('_', " "))), "{human}");

    if !doc.is_null() {
        assert_eq!(doc["state"], state, "{doc}");
        // The document names the newest run, under way or over.
        let newest = if status["running"].is_null() { &status["last_run"] } else { &status["running"] };
        assert_eq!(doc["run"]["id"], newest["id"], "{doc}\n{status}");
        assert_eq!(doc["run"]["status"], newest["status"], "{doc}\n{status}");
    }
    let success = if last.1 == "succeeded" { 1.0 } else { 0.0 };
    for (source, text) in metrics {
        assert!(text.contains(&format!("troops_state{{state=\"{state}\"}} 1\n")), "{source}:\n{text}");
        assert_eq!(sample(text, "troops_last_run_success"), Some(success), "{source}:\n{text}");
    }
}

#[test]
fn status_the_status_document_and_the_metrics_say_the_same_of_a_killed_run_and_its_rerun() {
    let port = free_port();
    let env = Env::new();
    let prom = env.path("node-exporter/troops.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\ninterval = \"1h\"\nstatus_remote = \"status\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\ntextfile = {:?}\n",
        prom.display().to_string()
    ));
    env.init();
    let status = env.path("status.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", &status.display().to_string()]);
    env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
    let work = env.deploy_repo("work");
    work.publish_plan(&env, OK_PLAN);
    env.ok(&["deploy"]);
    // The run published in the background; once it is there nothing else publishes.
    wait_until("run 1's document", Duration::from_secs(10), || published(&env)["run"]["id"] == 1);
    all_say(&env, "healthy", (1, "succeeded"), &published(&env), &[("textfile", textfile(&env))]);

    // Run 2 blocks in its step until `go` exists; its troops is killed there.
    let (go, pid) = (env.path("go"), env.path("step.pid"));
    let step = StepGroup(pid.clone());
    let run = format!(
        "echo $$ > {pid:?}; {go}",
        pid = pid.display().to_string(),
        go = crate::support::block_until(&go)
    );
    work.publish_plan(&env, &format!("[[step]]\nname = \"gate\"\nrun = {:?}\n", run));
    let mut deploy = env.troops(&["deploy"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_until("run 2's step to start", Duration::from_secs(10), || step.pid().is_some());
    let during = textfile(&env);
    assert!(during.contains("troops_state{state=\"deploying\"} 1\n"), "written as the run began:\n{during}");
    deploy.kill().unwrap(); // SIGKILL
    deploy.wait().unwrap();
    step.kill();
    std::fs::remove_file(&pid).unwrap();
    // Nobody is left to finish run 2: it is interrupted, to be run again, whoever reads it.
    env.ok(&["fleet", "--publish"]);
    all_say(&env, "deploying", (2, "interrupted"), &published(&env), &[]);
    let next = &env.status_json()["next"];
    assert_eq!(next["state"], "run", "what runs next is the interrupted commit again: {next}");

    // The daemon runs it again (run 3, blocked in the step in turn): /metrics as it serves and
    // the textfile as run 3 began say it too.
    let daemon = Daemon::start(&env);
    wait_until("run 3's step to start", Duration::from_secs(10), || step.pid().is_some());
    assert_eq!(env.status_json()["running"]["id"], 3, "{}", daemon.log());
    all_say(
        &env,
        "deploying",
        (2, "interrupted"),
        &serde_json::Value::Null,
        &[("textfile", textfile(&env)), ("/metrics", scrape(port))],
    );

    // It ends well; the daemon publishes that.
    std::fs::write(&go, "").unwrap();
    wait_until("run 3's document", Duration::from_secs(10), || {
        let doc = published(&env);
        doc["run"]["id"] == 3 && doc["run"]["status"] == "succeeded"
    });
    all_say(
        &env,
        "healthy",
        (3, "succeeded"),
        &published(&env),
        &[("textfile", textfile(&env)), ("/metrics", scrape(port))],
    );
}
