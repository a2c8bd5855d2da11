//! Health checks end to end: a plan's `[[check]]`s probe a real HTTP server on 127.0.0.1 (or a
//! TCP port, a command, a systemd unit) after the steps, through `troops deploy` and a push; the
//! run succeeds only when every check passed, and records `checks[]`. Also `min_troops` and the
//! new keys' errors as `troops check` and a pushed run report them.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::daemon::Daemon;
use crate::support::http::{HttpServer, Reply};
use crate::support::tls::TestCa;
use crate::support::{combined, text, wait_until, DeployRepo, Env, BUDGET};

/// A node with a deploy repo whose first commit (a plan with one step, no checks) is deployed.
fn node() -> (Env, DeployRepo, String) {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    let good = repo.publish_plan(&env, "[[step]]\nname = \"build\"\nrun = \"echo built\"\n");
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    (env, repo, good)
}

/// A plan with one step and `checks` after it.
fn plan(checks: &str) -> String {
    format!("[[step]]\nname = \"build\"\nrun = \"echo built\"\n{checks}")
}

/// `troops deploy` of a new commit of `plan`: its output, and the new commit.
fn deploy(env: &Env, repo: &DeployRepo, plan: &str) -> (Output, String) {
    let commit = repo.publish_plan(env, plan);
    (env.run(&["deploy"]), commit)
}

/// A push of a new commit of `plan` to the node (hooks run in-process): what the pusher saw.
fn push(env: &Env, repo: &DeployRepo, plan: &str) -> (String, String) {
    let commit = repo.commit(env, &[("troops.toml", plan)], "plan");
    let out = repo.push(env, &env.repo().display().to_string(), &["main"]);
    (text(&out.stderr), commit)
}

fn latest(env: &Env) -> (u64, Value) {
    let id = *env.run_ids().last().expect("a run");
    (id, env.run_record(id))
}

/// The `checks[]` of a record as (name, status, probes).
fn checks(record: &Value) -> Vec<(String, String, u64)> {
    record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
                c["probes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn check_of(name: &str, status: &str, probes: u64) -> (String, String, u64) {
    (name.into(), status.into(), probes)
}

#[test]
fn a_passing_http_check_lets_the_run_succeed_and_is_recorded() {
    let (env, repo, _) = node();
    let server = HttpServer::answering(200, "ok");
    let checks_text = format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\nexpect = \"ok\"\n\
         [[check]]\nname = \"db\"\nroles = [\"db\"]\ntcp = \"127.0.0.1:1\"\n",
        server.url("/health")
    );
    let commit = repo.publish_plan(&env, &plan(&checks_text));
    let dry = env.ok(&["deploy", "--dry-run"]);
    assert!(
        dry.ends_with("run  build: every host\nrun  check web: every host\nskip check db: needs role db\n"),
        "{dry}"
    );
    assert_eq!(server.requests(), 0, "--dry-run probed");
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let (id, record) = latest(&env);
    assert_eq!(record["status"], "succeeded");
    // The db check is for another role: not probed, not recorded.
    assert_eq!(checks(&record), [check_of("web", "passed", 1)]);
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    assert!(env.run_log(id).contains("==> check web passed (probe 1, "), "{}", env.run_log(id));

    // The same through a push: the pusher sees the check pass.
    let (stderr, commit) = push(&env, &repo, &plan(&format!("{checks_text}# again\n")));
    assert!(stderr.contains("remote: ==> check web passed (probe 1, "), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    assert_eq!(server.requests(), 2);
}

#[test]
fn an_https_check_passes_with_its_ca_and_a_bad_certificate_fails_it_saying_why() {
    let (env, repo, good) = node();
    let ca = TestCa::new();
    let server = HttpServer::start_tls(&ca.server("127.0.0.1"), |_| Reply::new(200, "ok"));
    let url = server.url("/health");
    let check = |keys: &str| {
        plan(&format!("[[check]]\nname = \"web\"\nhttp = \"{url}\"\nexpect = \"ok\"\nretries = 1\n{keys}"))
    };
    let (out, commit) = deploy(&env, &repo, &check(&format!("ca = \"{}\"\n", ca.path().display())));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let (_, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("web", "passed", 1)]);

    // The system's CAs do not know the test's CA: unknown issuer.
    let (out, _) = deploy(&env, &repo, &check(""));
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (_, record) = latest(&env);
    let error = record["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!(
            "check `web` failed: GET {url} failed: the certificate of 127.0.0.1 is not trusted: unknown issuer: it is not signed by a CA of this host's store (a private CA? name it with `ca`)"
        )
    );
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));

    // Signed by the CA named, but for another name; then expired.
    let ca_key = format!("ca = \"{}\"\n", ca.path().display());
    for (cert, why) in
        [(ca.server("mirror.example"), "name mismatch: "), (ca.expired_server("127.0.0.1"), "expired: ")]
    {
        let bad = HttpServer::start_tls(&cert, |_| Reply::new(200, "ok"));
        let plan_text = plan(&format!(
            "[[check]]\nname = \"web\"\nhttp = \"{}\"\nretries = 1\n{ca_key}",
            bad.url("/health")
        ));
        let (out, _) = deploy(&env, &repo, &plan_text);
        assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
        let (id, record) = latest(&env);
        let error = record["error"].as_str().unwrap();
        let said = format!("failed: the certificate of 127.0.0.1 is not trusted: {why}");
        assert!(error.contains(&said), "{error}");
        assert!(env.run_log(id).contains(&said), "{}", env.run_log(id));
        assert_eq!(bad.requests(), 0, "a request went to a server whose certificate was refused");
    }

    // Told not to verify, it passes, and says so in the run's output every time.
    let (out, commit) = deploy(&env, &repo, &check("insecure_skip_verify = true\n"));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let (id, _) = latest(&env);
    let warning =
        format!("==> check web: WARNING: insecure_skip_verify: the certificate of {url} is not checked");
    assert!(env.run_log(id).contains(&warning), "{}", env.run_log(id));
    assert_ne!(commit, good);
}

#[test]
fn a_failing_check_fails_the_run_naming_it_and_the_deployed_commit_stays() {
    let (env, repo, good) = node();
    let server = HttpServer::answering(503, "warming up");
    let checks_text = format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 2\n",
        server.url("/health")
    );
    let (out, _) = deploy(&env, &repo, &plan(&checks_text));
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (id, record) = latest(&env);
    let why = format!("GET {} answered 503: \"warming up\"", server.url("/health"));
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"], format!("check `web` failed: 2 probes in a row: {why}"));
    assert_eq!(checks(&record), [check_of("web", "failed", 2)]);
    assert_eq!(record["steps"][0]["status"], "succeeded");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "a failed check deployed its commit");
    let log = env.run_log(id);
    for line in [
        format!("==> check web: probe 1 failed: {why}"),
        format!("==> check web: probe 2 failed: {why}"),
        format!("==> check web failed: 2 probes in a row: {why}"),
        format!("troops: run {id} failed: check `web` failed"),
    ] {
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }

    // Through a push, with a second check the failing one ends before it starts.
    let both =
        format!("{checks_text}[[check]]\nname = \"later\"\ntcp = \"127.0.0.1:1\"\nstart_period = \"1h\"\n");
    let (stderr, _) = push(&env, &repo, &plan(&both));
    assert!(stderr.contains("failed: check `web` failed: 2 probes in a row"), "{stderr}");
    let (_, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("web", "failed", 2), check_of("later", "not_run", 0)]);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
}

#[test]
fn a_check_passes_after_start_period_when_the_service_comes_up_late() {
    let (env, repo, _) = node();
    // Healthy only a second from now: a probe before that fails the check at once (retries = 1).
    let up_at = Instant::now() + Duration::from_secs(1);
    let late =
        HttpServer::start(
            move |_| if Instant::now() >= up_at { Reply::new(200, "up") } else { Reply::new(503, "") },
        );
    let check = |start_period: &str| {
        format!(
            "[[check]]\nname = \"web\"\nhttp = \"{}\"\nretries = 1\nstart_period = \"{start_period}\"\n",
            late.url("/")
        )
    };
    let (out, commit) = deploy(&env, &repo, &plan(&check("1500ms")));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let (id, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("web", "passed", 1)]);
    assert!(
        env.run_log(id).contains("==> check web: first probe in 1s 500ms (start_period)"),
        "{}",
        env.run_log(id)
    );

    // Without the start period, a service that comes up late fails the check.
    let up_later = Instant::now() + Duration::from_secs(3600);
    let later = HttpServer::start(move |_| {
        if Instant::now() >= up_later {
            Reply::new(200, "up")
        } else {
            Reply::new(503, "")
        }
    });
    let plan_text = plan(&format!("[[check]]\nname = \"web\"\nhttp = \"{}\"\nretries = 1\n", later.url("/")));
    let (out, _) = deploy(&env, &repo, &plan_text);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert_eq!(later.requests(), 1);
}

#[test]
fn retries_fail_a_check_after_that_many_bad_probes_and_not_before() {
    let (env, repo, good) = node();
    let flaky = HttpServer::start(|r| if r.n <= 3 { Reply::new(500, "no") } else { Reply::new(200, "yes") });
    let check = |retries: u32| {
        format!(
            "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = {retries}\n",
            flaky.url("/")
        )
    };
    // Three bad probes in a row with retries = 3: failed, after exactly three.
    let (out, _) = deploy(&env, &repo, &plan(&check(3)));
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert_eq!(flaky.requests(), 3);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    // From there the server answers well: with retries = 4 a fourth bad probe would have been
    // allowed, and the first probe passes.
    let again = HttpServer::start(|r| if r.n <= 3 { Reply::new(500, "no") } else { Reply::new(200, "yes") });
    let text = plan(&format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 4\n",
        again.url("/")
    ));
    let (out, commit) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let (_, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("web", "passed", 4)]);
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

#[test]
fn a_soak_where_the_server_turns_bad_halfway_fails_and_a_steady_one_passes() {
    let (env, repo, good) = node();
    let turning =
        HttpServer::start(|r| if r.n <= 5 { Reply::new(200, "ok") } else { Reply::new(500, "crashed") });
    let text = plan(&format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 2\n[health]\nsoak = \"1h\"\n",
        turning.url("/")
    ));
    let (out, _) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (id, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("web", "failed", 7)]);
    assert!(record["error"].as_str().unwrap().contains("answered 500: \"crashed\""), "{record}");
    let log = env.run_log(id);
    assert!(log.contains("==> soak 1h: every check passed once; they must keep passing"), "{log}");
    assert_eq!(log.matches("passed (probe").count(), 1, "a line per event, not per probe:\n{log}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));

    let steady = HttpServer::answering(200, "ok");
    let text = plan(&format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\n[health]\nsoak = \"500ms\"\n",
        steady.url("/")
    ));
    let started = Instant::now();
    let (out, commit) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(started.elapsed() >= Duration::from_millis(500));
    let (id, record) = latest(&env);
    assert_eq!(record["checks"][0]["status"], "passed");
    assert!(steady.requests() > 2, "the soak probed on: {}", steady.requests());
    assert!(env.run_log(id).contains("==> soak 500ms: all checks passing"));
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

#[test]
fn tcp_and_run_probes() {
    let (env, repo, _) = node();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A run probe runs in the checkout with the steps' environment.
    let text = plan(&format!(
        "[[check]]\nname = \"port\"\ntcp = \"{}\"\n\
         [[check]]\nname = \"script\"\nrun = \"test -f troops.toml && echo at $TROOPS_COMMIT\"\nexpect = \"at \"\n",
        listener.local_addr().unwrap()
    ));
    let (out, commit) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let (id, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("port", "passed", 1), check_of("script", "passed", 1)]);
    assert!(!env.run_log(id).contains(&format!("at {commit}")), "a passing probe's output is not shown");

    // A closed port, and a command that fails: its output is shown.
    let closed = crate::support::sshd::closed_port();
    let text = plan(&format!("[[check]]\nname = \"port\"\ntcp = \"127.0.0.1:{closed}\"\nretries = 1\n"));
    let (out, _) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (_, record) = latest(&env);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("check `port` failed: cannot connect to 127.0.0.1:{closed}")),
        "{record}"
    );
    let text =
        plan("[[check]]\nname = \"script\"\nrun = \"echo database unreachable; exit 2\"\nretries = 1\n");
    let (out, _) = deploy(&env, &repo, &text);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (id, record) = latest(&env);
    assert_eq!(record["error"], "check `script` failed: `echo database unreachable; exit 2` exited 2");
    // The probe's line first, then its output: never read as the output of the step before.
    let log = env.run_log(id);
    assert!(
        log.contains(
            "==> check script: probe 1 failed: `echo database unreachable; exit 2` exited 2\n\
             database unreachable\n==> check script failed: "
        ),
        "{log}"
    );
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()), "the failed runs deployed nothing");
}

#[test]
fn expect_is_a_substring_and_expect_exact_the_whole_answer() {
    let (env, repo, _) = node();
    // "broken" holds "ok": the old `expect` passes it, as it always did; `expect_exact` does not.
    let server = HttpServer::answering(200, "broken");
    let web = |key: &str| {
        plan(&format!(
            "[[check]]\nname = \"web\"\nhttp = \"{}\"\n{key} = \"ok\"\nretries = 1\n",
            server.url("/")
        ))
    };
    let (out, substring) = deploy(&env, &repo, &web("expect"));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(substring.as_str()));
    let (out, _) = deploy(&env, &repo, &web("expect_exact"));
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    let (_, record) = latest(&env);
    assert_eq!(
        record["error"],
        format!(
            "check `web` failed: GET {} answered 200 but its body is not exactly \"ok\": \"broken\"",
            server.url("/")
        )
    );
    assert_eq!(env.deployed().as_deref(), Some(substring.as_str()));

    // A run probe's whole output, its trailing newline aside.
    let cli = |command: &str| {
        plan(&format!("[[check]]\nname = \"cli\"\nrun = \"{command}\"\nexpect_exact = \"ok\"\nretries = 1\n"))
    };
    let (out, exact) = deploy(&env, &repo, &cli("echo ok"));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(exact.as_str()));
    let (out, _) = deploy(&env, &repo, &cli("echo not ok"));
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert!(text(&out.stdout).contains("`echo not ok` exited 0 but its output is not exactly \"ok\""));
    assert_eq!(env.deployed().as_deref(), Some(exact.as_str()));
}

/// A plan whose one check never passes and never fails (a server that is never ready, and many
/// retries): the run stays `checking` until something ends it.
fn endless_checks(env: &Env, repo: &DeployRepo, server: &HttpServer) -> String {
    let text = plan(&format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 100000\n",
        server.url("/")
    ));
    repo.commit(env, &[("troops.toml", &text)], "endless")
}

/// Waits until run `id` is `checking` and its record shows a probe (saved as the checks go).
fn wait_checking(env: &Env, id: u64) {
    wait_until("the run to be checking, with a probe recorded", Duration::from_secs(30), || {
        env.run_ids().contains(&id)
            && env.run_record(id)["status"] == "checking"
            && env.run_record(id)["checks"][0]["probes"].as_u64() >= Some(1)
    });
}

#[test]
fn a_daemon_asked_to_stop_ends_the_checks_at_once() {
    let (env, repo, good) = node();
    let mut daemon = Daemon::start(&env);
    let server = HttpServer::answering(503, "not yet");
    endless_checks(&env, &repo, &server);
    let mut pusher = repo
        .push_command(&env, &env.repo().display().to_string(), &["main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_checking(&env, 2);
    // The checks would go on for hours (100000 retries): the daemon ends them and exits.
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(BUDGET);
    pusher.wait().unwrap();
    let record = env.run_record(2);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["error"], "troops was asked to stop during the health checks");
    assert_eq!(record["checks"][0]["status"], "failed", "probed and never passed: {record}");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
}

#[test]
fn a_run_whose_troops_died_while_checking_counts_its_checks_as_failed() {
    let (env, repo, good) = node();
    let server = HttpServer::answering(503, "not yet");
    endless_checks(&env, &repo, &server);
    repo.publish(&env);
    let mut troops = env.troops(&["deploy"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_checking(&env, 2);
    kill(Pid::from_raw(troops.id() as i32), Signal::SIGKILL).unwrap();
    troops.wait().unwrap();
    assert_eq!(env.run_record(2)["status"], "checking", "the record on disk says what was under way");

    // The next run finds it: its checks count as failed (SPEC), not as an interrupted run.
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    let (out, fixed) = deploy(&env, &repo, &plan("# fixed\n"));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let record = env.run_record(2);
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["checks"][0]["status"], "failed", "{record}");
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()));
}

#[test]
fn a_unit_check_is_skipped_where_systemd_is_not_running() {
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    if !crate::support::require(!systemd, "systemd runs on this host, so a unit check is probed, not skipped")
    {
        return;
    }
    let (env, repo, _) = node();
    let (out, commit) = deploy(&env, &repo, &plan("[[check]]\nname = \"nginx\"\nunit = \"nginx.service\"\n"));
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let (id, record) = latest(&env);
    assert_eq!(checks(&record), [check_of("nginx", "skipped", 1)]);
    assert!(record["checks"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("systemd is not running on this host"));
    assert!(
        env.run_log(id).contains("==> check nginx skipped: systemd is not running"),
        "{}",
        env.run_log(id)
    );
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
}

#[test]
fn a_plan_for_a_newer_troops_is_refused_by_check_by_a_push_and_by_a_run() {
    // It also uses a key this troops does not know: the refusal names the versions, not the key.
    let newer = "min_troops = \"99.0\"\n[[step]]\nname = \"a\"\nrun = \"true\"\nwave = 3\n";
    let sentence =
        "troops.toml:1:14: this plan needs troops 99.0 or later (min_troops); this is troops 0.2.0";
    let env = Env::new();
    let file = env.path("troops.toml-dir").join("troops.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, newer).unwrap();
    let out = env.run(&["check", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert_eq!(text(&out.stderr).trim(), format!("troops: {}/{sentence}", file.parent().unwrap().display()));

    env.init();
    let repo = env.deploy_repo("deploy");
    let (stderr, commit) = push(&env, &repo, newer);
    let refusal = format!("remote: troops: refusing refs/heads/main at {}: {sentence}", &commit[..12]);
    assert!(stderr.contains(&refusal), "{stderr}");
    assert!(!stderr.contains("unknown field"), "{stderr}");
    assert_eq!((env.node_ref("refs/heads/main"), env.run_ids()), (None, vec![]));
    // On the branch by another way (a pull, a fetch by hand), its run fails with the same words.
    repo.publish(&env);
    assert_eq!(env.run(&["deploy"]).status.code(), Some(1));
    assert_eq!(env.deployed(), None);
    let (_, record) = latest(&env);
    assert_eq!((record["status"].as_str(), record["error"].as_str()), (Some("failed"), Some(sentence)));
}

#[test]
fn troops_check_places_every_new_keys_bad_value() {
    let env = Env::new();
    let dir = env.path("plans");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[[check]]\nname = \"w\"\nhttp = \"ftp://x/\"\n", "3:8: check `w`: `http`"),
        (
            "[[check]]\nname = \"w\"\nhttp = \"http://x/\"\nca = \"/ca.pem\"\n",
            "4:6: check `w`: `ca` and `insecure_skip_verify` are for https:// URLs",
        ),
        ("[[check]]\nname = \"w\"\ntcp = \"x\"\n", "3:7: check `w`: `tcp`"),
        ("[[check]]\nname = \"w\"\nunit = \"-x\"\n", "3:8: check `w`: `unit`"),
        ("[[check]]\nname = \"w\"\nrun = \"x\"\nretries = 0\n", "4:11: check `w`: `retries`"),
        ("[[check]]\nname = \"w\"\nrun = \"x\"\ninterval = \"fast\"\n", "4:12: check `w`: `interval`"),
        (
            "[[check]]\nname = \"w\"\nrun = \"x\"\ninterval = \"1ns\"\n",
            "4:12: check `w`: `interval` \"1ns\" is too short; at least 100ms",
        ),
        ("[health]\nsoak = \"10ms\"\n", "2:8: health: `soak` \"10ms\" is too short"),
        ("[[check]]\nname = \"w\"\nrun = \"x\"\nstart_period = \"-1s\"\n", "4:16: check `w`: `start_period`"),
        (
            "[[check]]\nname = \"w\"\nrun = \"x\"\ntimeout = \"0s\"\n",
            "4:11: check `w`: `timeout` \"0s\" is too short; at least 100ms",
        ),
        ("[[check]]\nname = \"w\"\ntcp = \"x:1\"\nexpect = \"ok\"\n", "4:10: check `w`: `expect`"),
        (
            "[[check]]\nname = \"w\"\ntcp = \"x:1\"\nexpect_exact = \"ok\"\n",
            "4:16: check `w`: `expect_exact`",
        ),
        (
            "[[check]]\nname = \"w\"\nrun = \"x\"\nexpect = \"ok\"\nexpect_exact = \"ok\"\n",
            "5:16: check `w` has both `expect` and `expect_exact`; keep one",
        ),
        ("[[check]]\nname = \"w\"\nrun = \"x\"\nroles = []\n", "4:9: check `w`: `roles` is empty"),
        ("[health]\nsoak = \"a while\"\n", "2:8: health: `soak`"),
        ("[health]\non_failure = \"ignore\"\n", "2:14: health: `on_failure`"),
        ("[release]\nkeep = 0\n", "2:8: release: `keep`"),
        ("[release]\nkeep_failed = -2\n", "2:15: release: `keep_failed`"),
        ("[release]\nlink = \"rel/current\"\n", "2:8: release: `link`"),
        (
            "[[step]]\nname = \"s\"\nrun = \"x\"\nphase = \"activate\"\n",
            "4:9: step `s`: `phase = \"activate\"` needs a `[release]`",
        ),
        ("[[step]]\nname = \"s\"\nrun = \"x\"\nphase = \"later\"\n", "4:9: step `s`: `phase`"),
        ("min_troops = \"latest\"\n", "1:14: `min_troops`"),
    ];
    for (i, (plan, want)) in cases.iter().enumerate() {
        let file = dir.join(format!("{i}.toml"));
        std::fs::write(&file, plan).unwrap();
        let out = env.run(&["check", &file.display().to_string()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{plan:?}: {}", combined(&out));
        assert!(stderr.starts_with(&format!("troops: {}:{want}", file.display())), "{plan:?}: {stderr}");
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, "min_troops = \"0.2\"\n[[check]]\nname = \"w\"\nrun = \"true\"\n[release]\n[[step]]\nname = \"s\"\nrun = \"x\"\nphase = \"activate\"\n").unwrap();
    let out = env.ok(&["check", &good.display().to_string()]);
    assert!(out.contains("ok: 1 steps, roles: none, checks: w, with releases"), "{out}");
}
