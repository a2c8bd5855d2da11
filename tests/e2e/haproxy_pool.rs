//! `examples/haproxy-pool` on one machine, as the GDL 100 layout runs it: app nodes export the
//! address their app answers on, a balancer node watches those exports and renders, checks and
//! reloads a real haproxy (this test's child, on a free loopback port). Four nodes with daemons
//! share one mirror and one status repo. Two app nodes are served; a third that joins is served
//! within one poll and the settle time (one `fleet` run, which says what changed); one that stops
//! is dropped once its news is stale, and a forged node that does not exist is never served. The reaction time is printed (BENCHMARKS.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::{require_tool, text, wait_until, Env};

/// The poll interval and the status heartbeat of every node (stale after three heartbeats); the
/// settle time is the example's own (2s).
const INTERVAL: &str = "1s";
const HEARTBEAT: &str = "2s";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/haproxy-pool")
}

/// A child process this test owns, killed and reaped when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One node of the pool: its own state dir, config and HOME; its daemon once started.
struct Node {
    name: String,
    env: Env,
    daemon: Option<Daemon>,
    app: Option<Owned>,
}

impl Node {
    fn new(name: &str, mirror: &Path, status: &Path) -> Node {
        let env = Env::new();
        env.write_config(&format!(
            "hostname = \"{name}\"\ninterval = \"{INTERVAL}\"\njitter = \"100ms\"\nstatus_remote = \"status\"\n\
             status_heartbeat = \"{HEARTBEAT}\"\n[retry]\ninitial = \"1s\"\nmax = \"2s\"\n"
        ));
        env.ok(&["init", "--remote", &format!("origin={}", mirror.display())]);
        env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
        Node { name: name.to_owned(), env, daemon: None, app: None }
    }

    fn pool_dir(&self) -> PathBuf {
        self.env.state.join("haproxy-pool")
    }

    /// The example's app for this node, on a port of its choosing; its address is in the addr file
    /// once it printed that it serves.
    fn start_app(&mut self) {
        let mut child = Command::new("python3")
            .arg(example().join("app.py"))
            .args(["--name", &self.name, "--port", "0", "--addr-file"])
            .arg(self.pool_dir().join("app.addr"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("serving on"), "the app said {line:?}");
        self.app = Some(Owned(child));
    }

    fn start_daemon(&mut self) {
        self.daemon = Some(Daemon::start(&self.env));
    }

    fn runs(&self) -> Vec<serde_json::Value> {
        self.env.run_ids().into_iter().map(|id| self.env.run_record(id)).collect()
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET / through the balancer: who answered, if anyone did.
fn get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.0\r\nHost: pool\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let body = reply.split("\r\n\r\n").nth(1)?;
    body.strip_prefix("hello from ").map(|host| host.trim().to_owned())
}

/// Who answers over `tries` requests (round robin: each server in turn).
fn served(port: u16, tries: usize) -> std::collections::BTreeSet<String> {
    (0..tries).filter_map(|_| get(port)).collect()
}

fn set(hosts: &[&str]) -> std::collections::BTreeSet<String> {
    hosts.iter().map(|h| (*h).to_owned()).collect()
}

#[test]
fn the_balancer_serves_the_app_servers_that_exist_now() {
    if !require_tool("haproxy", "the haproxy-pool example reloads a real haproxy")
        || !require_tool("python3", "the haproxy-pool example's app is python3")
    {
        return;
    }
    let hub = Env::new();
    let (mirror, status) = (hub.bare("mirror.git"), hub.bare("status.git"));
    let mut nodes: Vec<Node> =
        ["app-1", "app-2", "app-3", "lb-1"].iter().map(|name| Node::new(name, &mirror, &status)).collect();

    // The deploy repo: the example as it is, and every node's key (`keys/<host>.pub`).
    let work = hub.deploy_repo("pool");
    let mut files: Vec<(String, String)> = Vec::new();
    for name in [
        "troops.toml",
        "app.py",
        "haproxy-pool-app.service",
        "steps/app.sh",
        "steps/balancer.sh",
        "steps/render.py",
    ] {
        files.push((name.to_owned(), std::fs::read_to_string(example().join(name)).unwrap()));
    }
    for node in &nodes {
        let key = std::fs::read_to_string(node.env.state.join("ssh/id_ed25519.pub")).unwrap();
        files.push((format!("keys/{}.pub", node.name), key));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    work.commit(&hub, &files, "the haproxy pool");
    let pushed = work.push(&hub, &mirror.display().to_string(), &["HEAD:main"]);
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));

    // The balancer listens where its node says; haproxy itself is started once there is a config.
    let port = free_port();
    let lb = 3;
    std::fs::create_dir_all(nodes[lb].pool_dir()).unwrap();
    std::fs::write(nodes[lb].pool_dir().join("listen"), format!("127.0.0.1:{port}\n")).unwrap();
    let cfg = nodes[lb].pool_dir().join("haproxy.cfg");
    let listed = |hosts: &[&str]| {
        let cfg = std::fs::read_to_string(&cfg).unwrap_or_default();
        let servers: std::collections::BTreeSet<String> = cfg
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server ")?.split(' ').next().map(str::to_owned))
            .collect();
        servers == set(hosts)
    };

    for i in [0, 1, 3] {
        if i != lb {
            nodes[i].start_app();
        }
        nodes[i].start_daemon();
    }
    wait_until("the balancer's config to list app-1 and app-2", Duration::from_secs(60), || {
        listed(&["app-1", "app-2"])
    });
    let pid = nodes[lb].pool_dir().join("haproxy.pid");
    let _haproxy = Owned(
        Command::new("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(&cfg)
            .arg("-p")
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy"),
    );
    wait_until("haproxy to serve app-1 and app-2", Duration::from_secs(20), || {
        served(port, 4) == set(&["app-1", "app-2"])
    });
    assert!(std::fs::metadata(&pid).is_ok(), "haproxy wrote no pid file");

    // A third app node joins: served within a poll and the settle (plus its own first run and
    // publish), by one run of the balancer's deployed commit for the fleet.
    let lb_runs_before = nodes[lb].runs().len();
    let joined = Instant::now();
    nodes[2].start_app();
    nodes[2].start_daemon();
    wait_until("haproxy to serve app-3", Duration::from_secs(30), || served(port, 6).contains("app-3"));
    let reaction = joined.elapsed();
    let exported = nodes[2]
        .runs()
        .iter()
        .find_map(|r| (r["status"] == "succeeded").then(|| r["finished_at"].as_str().unwrap().to_owned()));
    let exported = humantime::parse_rfc3339(exported.as_deref().expect("app-3's run succeeded")).unwrap();
    let since_export = std::time::SystemTime::now().duration_since(exported).unwrap();
    eprintln!(
        "haproxy-pool: app-3 served {:.1}s after its daemon started, {:.1}s after its run exported \
         its addr (poll {INTERVAL} + settle 2s)",
        reaction.as_secs_f64(),
        since_export.as_secs_f64()
    );
    assert!(served(port, 6) == set(&["app-1", "app-2", "app-3"]), "round robin over the three");
    let runs = nodes[lb].runs();
    let fleet_runs: Vec<&serde_json::Value> =
        runs[lb_runs_before..].iter().filter(|r| r["trigger"] == "fleet").collect();
    assert_eq!(fleet_runs.len(), 1, "one fleet run for one host joining: {runs:#?}");
    let changes = fleet_runs[0]["fleet_changes"].to_string();
    assert!(changes.contains("app-3 addr appeared"), "{changes}");
    let log = nodes[lb].env.run_log(fleet_runs[0]["id"].as_u64().unwrap());
    assert!(log.contains("haproxy reloaded"), "{log}");

    // `troops fleet exports` on the balancer lists the app nodes' addresses.
    let out = nodes[lb].env.ok(&["fleet", "exports", "addr", "--role", "app", "--json"]);
    let exports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let hosts: Vec<&str> = exports.iter().map(|e| e["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["app-1", "app-2", "app-3"], "{out}");
    let status = nodes[lb].env.ok(&["status"]);
    assert!(status.contains("watching  3 watched value(s), as run"), "{status}");

    // Whoever holds the status remote's write key plants a healthy app node that does not exist,
    // exporting an address of its choosing, signed by a key no `keys/<host>.pub` names: the
    // balancer does not believe it, says so, and serves what it served.
    let forger = hub.path("forger");
    crate::support::ssh_keygen(&forger, "forger");
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let forged = serde_json::json!({
        "schema": 1, "host": "app-9", "version": "0.2.0", "roles": ["app"], "wave": null,
        "tip": null, "deployed": null, "state": "healthy", "since": now, "run": null, "hold": null,
        "quarantined": [], "checks": [], "exports": { "addr": "127.0.0.1:1" },
        "heartbeat_seconds": 3600, "updated_at": now
    });
    let forged = forged.to_string();
    crate::support::put_status(
        &hub,
        &hub.path("status.git"),
        "refs/troops/status/app-9",
        forged.as_bytes(),
        Some(&forger),
    );
    wait_until("the balancer to refuse app-9's document", Duration::from_secs(30), || {
        nodes[lb].env.ok(&["fleet"]).contains("refs/troops/status/app-9: not believed (no_key)")
    });
    assert!(listed(&["app-1", "app-2", "app-3"]), "the forged node is not in the balancer's config");
    // (Its document is fresh for three hours: had the balancer believed it, the config below,
    // polls and fleet runs later, would list it.)

    // app-2 stops (its daemon and its app): once its news is stale, the balancer drops it.
    nodes[1].daemon = None;
    nodes[1].app = None;
    let stopped = Instant::now();
    wait_until("the balancer to drop app-2", Duration::from_secs(40), || listed(&["app-1", "app-3"]));
    wait_until("haproxy to serve app-1 and app-3 only", Duration::from_secs(20), || {
        served(port, 4) == set(&["app-1", "app-3"])
    });
    eprintln!(
        "haproxy-pool: app-2 dropped {:.1}s after it stopped (stale after 3 x heartbeat {HEARTBEAT}, then \
         poll {INTERVAL} + settle 2s)",
        stopped.elapsed().as_secs_f64()
    );
    let last = nodes[lb].runs().pop().unwrap();
    assert_eq!(last["trigger"], "fleet", "{last:#}");
    assert!(last["fleet_changes"].to_string().contains("app-2 addr is gone"), "{last:#}");
    assert!(!last["fleet_changes"].to_string().contains("app-9"), "{last:#}");
}
