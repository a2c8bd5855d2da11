//! The fleet page in a real browser. A 12-node fleet takes a commit whose check fails on one host
//! of the second wave: the canary and the rest of that wave are healthy, the failed host says why,
//! and the last wave is held. `troops fleet serve` serves the page (and picks up a new status
//! document while it runs), `troops fleet --html` writes it, and headless Chromium loads both: the
//! DOM it built has every host, the held wave marked and the failed host's check error, as text
//! (the error and a forged document carry markup). Screenshots, desktop and phone-sized, are kept
//! under `target/test-artefacts/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fleet::{fleet, fleet_json, forge, last_published, publishing_node, status_doc, trusted_key};
use crate::support::{bin, text, wait_until, Env, BUDGET};

/// In the wave `early` by its hash (the plan names the canary alone): its check fails.
const BROKEN: &str = "node-08";
/// The waves by the plan's hash of each name, as the nodes place themselves.
const EARLY: [&str; 4] = ["node-02", "node-08", "node-09", "node-10"];
const REST: [&str; 7] = ["node-01", "node-03", "node-04", "node-05", "node-06", "node-07", "node-11"];
/// Markup in the failing check's command, which its error quotes.
const CHECK_MARKUP: &str = "<i id=injected>port 8080 refused</i>";

/// Chromium's flags for a test: headless, as root, and talking to nothing but the page.
const CHROMIUM: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// `troops fleet serve`, killed if the test ends before it does.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    /// Starts `command` (a `troops fleet serve` on port 0) and waits until it says where it listens.
    fn start(mut command: Command, log: PathBuf) -> (Serve, SocketAddr) {
        command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let mut serve = Serve { child: command.spawn().unwrap(), log };
        let mut addr = None;
        wait_until("troops fleet serve listening", Duration::from_secs(30), || {
            assert!(serve.child.try_wait().unwrap().is_none(), "troops fleet serve ended:\n{}", serve.log());
            addr = serve
                .log()
                .split("serving the fleet page on http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next()?.parse::<SocketAddr>().ok());
            addr.is_some()
        });
        (serve, addr.unwrap())
    }

    /// Sends `signal`, and waits for it to end on its own, successfully, saying so.
    fn stop(&mut self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let mut status = None;
        wait_until("troops fleet serve ending on a signal", BUDGET, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        assert!(status.unwrap().success(), "{}", self.log());
        let said = format!("{}: the fleet page is no longer served", signal.as_str());
        assert!(self.log().contains(&said), "{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The answer to GET `path` from `addr`, head and body; bounded by the budget.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(BUDGET)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Loads `url` in headless Chromium with a fresh profile, with `args` (a window size, a
/// screenshot), and returns the DOM it built. Its output goes to files, not pipes: the browser's
/// helper processes may hold a pipe open after it ends.
fn chromium(hub: &Env, args: &[&str], url: &str) -> String {
    const LIMIT: Duration = Duration::from_secs(120);
    let profile = tempfile::tempdir_in(hub.tmp.path()).unwrap();
    let (dom, said) = (profile.path().join("dom.html"), profile.path().join("stderr"));
    let mut command = Command::new("chromium");
    hub.hermetic(&mut command);
    command.args(CHROMIUM).arg(format!("--user-data-dir={}", profile.path().join("profile").display()));
    command.args(args).args(["--dump-dom", url]);
    command.stdout(std::fs::File::create(&dom).unwrap()).stderr(std::fs::File::create(&said).unwrap());
    let mut child = command.spawn().expect("starting chromium");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not load {url} within {LIMIT:?}:\n{}",
                std::fs::read_to_string(&said).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "chromium failed on {url}:\n{}", std::fs::read_to_string(&said).unwrap());
    std::fs::read_to_string(&dom).unwrap()
}

/// Each host row of a page's DOM: its host and the state class it is shown with.
fn rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr class=\"")
        .skip(1)
        .filter_map(|row| {
            let (class, rest) = row.split_once('"')?;
            let host = rest.strip_prefix(" data-host=\"")?.split('"').next()?;
            Some((host.to_owned(), class.to_owned()))
        })
        .collect()
}

/// What every load of the page must show, whichever way it was made.
fn shows_the_fleet(dom: &str, hosts: &[String]) {
    assert!(!dom.contains("<script") && !dom.contains("id=\"injected\""), "markup got in:\n{dom}");
    let shown: Vec<String> = rows(dom).into_iter().map(|(host, _)| host).collect();
    let mut expected = hosts.to_vec();
    expected.sort();
    let mut sorted = shown.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "the hosts on the page");
    // By wave: the canary first, the held wave marked and why.
    assert!(dom.contains("<section class=\"wave\"><h2>Wave 1 of 3: canary"), "{dom}");
    assert!(dom.contains("<section class=\"wave held\"><h2>Wave 3 of 3: rest"), "{dom}");
    assert!(dom.contains("<span class=\"chip st-held\">held: 7 of "), "{dom}");
    assert!(dom.contains("<ul class=\"holds\"><li>") && dom.contains("waiting for "), "{dom}");
    assert_eq!(shown.first().map(String::as_str), Some("node-00"), "the canary's wave first");
    // The failed host, with its check's error as text.
    let failure = dom
        .split(&format!("<article class=\"failure\" data-host=\"{BROKEN}\">"))
        .nth(1)
        .unwrap_or_else(|| panic!("no failure of {BROKEN} on the page:\n{dom}"));
    let failure = failure.split("</article>").next().unwrap();
    assert!(failure.contains("<b>check web</b> (failed, 1 probe)"), "{failure}");
    assert!(failure.contains("&lt;i id=injected&gt;port 8080 refused&lt;/i&gt;"), "{failure}");
}

#[test]
fn the_fleet_page_shows_waves_holds_and_failures_in_a_real_browser() {
    if !crate::support::require_tool("chromium", "the fleet page in a browser") {
        return;
    }
    let fleet = fleet();
    let check = format!("test \"$TROOPS_HOST\" != {BROKEN} || {{ echo \"{CHECK_MARKUP}\" >&2; exit 3; }}");
    let (commit, _) = fleet.release(&check, "a check that fails on node-08");
    let hub = &fleet.hub;
    let clone = hub.path("clone");
    hub.git(
        hub.tmp.path(),
        &["clone", "-q", &fleet.mirror.display().to_string(), &clone.display().to_string()],
    );
    hub.git(&clone, &["remote", "add", "status", &hub.path("status.git").display().to_string()]);

    // The canary and the early wave go; node-08's check fails; the rest wait for the early wave.
    let published = |host: &str, says: &str| {
        let member = fleet.members.iter().find(|m| m.name == host).unwrap();
        last_published(member).is_some_and(|line| line.contains(says))
    };
    let healthy = format!("deployed={commit}");
    wait_until(
        "the canary and the early wave deployed, node-08 failed, the rest held",
        Duration::from_secs(90),
        || {
            ["node-00", "node-02", "node-09", "node-10"]
                .iter()
                .all(|h| published(h, "state=healthy") && published(h, &healthy))
                && (published(BROKEN, "state=failed") || published(BROKEN, "state=rolled back"))
                && REST.iter().all(|h| published(h, "state=held"))
        },
    );
    wait_until("troops fleet showing every node as it published", Duration::from_secs(30), || {
        let view = fleet_json(hub, &clone);
        view["nodes"].as_array().unwrap().len() == 12
            && view["summary"]
                .as_str()
                .unwrap()
                .contains(&format!("4 healthy on {}, 7 held, 1 ", &commit[..12]))
    });
    let view = fleet_json(hub, &clone);
    for node in view["nodes"].as_array().unwrap() {
        let host = node["host"].as_str().unwrap();
        let wave = if host == "node-00" {
            0
        } else if EARLY.contains(&host) {
            1
        } else {
            2
        };
        assert_eq!(node["wave_index"], wave, "{host}'s wave");
    }

    // Served live: the page as it is, and a new document in it within a refresh or two.
    let mut command = hub.troops(&[
        "--state-dir",
        "/nonexistent",
        "fleet",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--remote",
        "status",
        "--refresh",
        "1s",
    ]);
    command.current_dir(&clone);
    let (mut serve, addr) = Serve::start(command, hub.path("serve.log"));
    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"), "{page}");
    assert!(!page.contains("intruder"), "{page}");
    assert!(get(addr, "/elsewhere").starts_with("HTTP/1.1 404 Not Found"));
    // Whoever can write a status ref can write anything in it: the page shows it as text.
    let mut hostile = status_doc("intruder", "failed", &commit);
    hostile["roles"] = serde_json::json!(["<script>document.title='owned'</script>"]);
    hostile["quarantined"] =
        serde_json::json!([{ "commit": commit, "reason": "<img src=x onerror=alert(1)>" }]);
    // A host whose key the operator's clone has (a new node, say): believed, and shown as text.
    let key = trusted_key(hub, &clone, "intruder");
    forge(hub, &hub.path("status.git"), "refs/troops/status/intruder", &hostile, Some(&key));
    wait_until("the served page showing the new document", Duration::from_secs(30), || {
        get(addr, "/").contains("data-host=\"intruder\"")
    });

    let mut hosts: Vec<String> = fleet.members.iter().map(|m| m.name.clone()).collect();
    hosts.push("intruder".into());
    let artefacts = bin("troops").parent().unwrap().parent().unwrap().join("test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let (wide, phone) = (artefacts.join("fleet-page.png"), artefacts.join("fleet-page-phone.png"));
    for png in [&wide, &phone] {
        let _ = std::fs::remove_file(png);
    }
    let served = chromium(
        hub,
        &["--window-size=1100,1400", &format!("--screenshot={}", wide.display())],
        &format!("http://{addr}/"),
    );
    shows_the_fleet(&served, &hosts);

    // The same page as a file, on a phone-sized screen: the same hosts in the same states.
    let file = hub.path("fleet.html");
    let out = hub
        .troops(&[
            "--state-dir",
            "/nonexistent",
            "fleet",
            "--remote",
            "status",
            "--html",
            &file.display().to_string(),
        ])
        .current_dir(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::support::combined(&out));
    assert!(text(&out.stdout).contains("wrote the fleet page (13 hosts) to "), "{}", text(&out.stdout));
    let written = chromium(
        hub,
        &["--window-size=390,2400", &format!("--screenshot={}", phone.display())],
        &format!("file://{}", file.display()),
    );
    shows_the_fleet(&written, &hosts);
    assert_eq!(rows(&written), rows(&served), "the file and the served page disagree");
    for png in [&wide, &phone] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{} is no screenshot", png.display());
    }

    // SIGTERM ends it, at once and cleanly.
    serve.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn on_a_node_fleet_serve_reads_the_nodes_status_remote_and_ends_on_ctrl_c() {
    let (_hub, _status, node) = publishing_node();
    node.ok(&["fleet", "--publish"]);
    let (mut serve, addr) =
        Serve::start(node.troops(&["fleet", "serve", "--listen", "127.0.0.1:0"]), node.path("serve.log"));
    let page = get(addr, "/");
    assert!(page.contains("<tr class=\"st-idle\" data-host=\"node-00\">"), "{page}");
    assert!(page.contains("<p id=\"summary\" class=\"summary\">1 idle</p>"), "{page}");
    assert!(serve.log().contains("the status refs of remote status, fetched every 10s"), "{}", serve.log());
    serve.stop(nix::sys::signal::Signal::SIGINT);
}
