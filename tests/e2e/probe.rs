//! Issue 17: the probe before a fetch. Three daemons follow one static "dumb" HTTP mirror (files
//! only, as `git update-server-info` leaves them) through three doors: one answers the probe
//! truthfully, one is a stale cache of `info/refs` (an old copy, 304 to its ETag) while the repo
//! moved, one fails every probe. All three must deploy each commit: a probe only ever skips a
//! fetch, and its "unchanged" is trusted for `probe_trust`, no longer. A door caught lagging is
//! not believed again until it shows a change as it happens.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::http::{HttpServer, Reply, Request, Served};
use crate::support::tls::{ServerCert, TestCa};
use crate::support::{text, wait_until, DeployRepo, Env};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

fn is_probe(served: &Served) -> bool {
    served.request.target.ends_with("/info/refs")
}

fn is_fetch(served: &Served) -> bool {
    served.request.target.contains("?service=git-upload-pack")
}

/// A static file server for the bare repo `root` at `/<door>/mirror.git/...`, with strong ETags
/// and 304s. Door `stale` serves a copy of `info/refs` made when it started (and by `catch_up`);
/// door `down` answers 503 to it, door `stall` never answers it.
struct Mirror {
    root: PathBuf,
    copy: Arc<Mutex<Vec<u8>>>,
    server: HttpServer,
}

impl Mirror {
    /// Serves `root` over HTTP, or over HTTPS with `tls`.
    fn start(root: PathBuf, tls: Option<&ServerCert>) -> Mirror {
        let copy = Arc::new(Mutex::new(Vec::new()));
        let (files, copied) = (root.clone(), copy.clone());
        let answering = move |request: &Request| answer(request, &files, &copied.lock().unwrap());
        let server = match tls {
            Some(cert) => HttpServer::start_tls(cert, answering),
            None => HttpServer::start(answering),
        };
        let mirror = Mirror { root, copy, server };
        mirror.catch_up();
        mirror
    }

    /// The stale door's copy of `info/refs` becomes the mirror's current one.
    fn catch_up(&self) {
        *self.copy.lock().unwrap() =
            std::fs::read(self.root.join("info/refs")).expect("the mirror has info/refs");
    }

    fn url(&self, door: &str) -> String {
        self.server.url(&format!("/{door}/mirror.git"))
    }

    /// The requests at `door`, with what it answered.
    fn served(&self, door: &str) -> Vec<Served> {
        let prefix = format!("/{door}/");
        self.server.served().into_iter().filter(|s| s.request.target.starts_with(&prefix)).collect()
    }
}

fn answer(request: &Request, root: &Path, copy: &[u8]) -> Reply {
    let not_found = Reply::new(404, "");
    let path = request.target.split('?').next().unwrap_or_default();
    let Some((door, rest)) = path.trim_start_matches('/').split_once("/mirror.git/") else {
        return not_found;
    };
    let is_probe = !request.target.contains('?') && rest == "info/refs";
    let body = match (door, is_probe) {
        _ if rest.split('/').any(|part| part == "..") => return not_found,
        ("down", true) => return Reply::new(503, ""),
        ("stale", true) => copy.to_vec(),
        ("stall", true) => return Reply::silent(),
        _ => match std::fs::read(root.join(rest)) {
            Ok(body) => body,
            Err(_) => return not_found,
        },
    };
    let etag = etag(&body);
    if request.header("If-None-Match") == Some(etag.as_str()) {
        return Reply::new(304, "").header("ETag", &etag);
    }
    Reply::new(200, body).header("ETag", &etag)
}

fn etag(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:x}-{}\"", hasher.finish(), body.len())
}

/// Pushes the work repo's main to the mirror and refreshes its `info/refs`, as a post-update hook
/// (or `receive.updateServerInfo`) would.
fn publish(env: &Env, work: &DeployRepo, mirror: &Path) {
    let out = work.push(env, &mirror.display().to_string(), &["main"]);
    assert!(out.status.success(), "push to the mirror failed: {}", text(&out.stderr));
    env.git(mirror, &["update-server-info"]);
}

/// A bare mirror with the plan committed and published, and its server.
struct Serving {
    mirror: PathBuf,
    work: DeployRepo,
    first: String,
    server: Mirror,
}

fn serve(env: &Env) -> Serving {
    serve_over(env, None)
}

/// A bare mirror with the plan committed and published, served over HTTPS with `tls` if given.
fn serve_over(env: &Env, tls: Option<&ServerCert>) -> Serving {
    let mirror = env.path("mirror.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &mirror.display().to_string()]);
    let work = env.deploy_repo("work");
    let first = work.commit(env, &[("troops.toml", PLAN)], "plan");
    publish(env, &work, &mirror);
    let server = Mirror::start(mirror.clone(), tls);
    Serving { mirror, work, first, server }
}

#[test]
fn nodes_deploy_through_a_truthful_a_stale_and_a_failing_probe() {
    let env = Env::new();
    let Serving { mirror, work, first, server } = serve(&env);

    let doors = ["fresh", "stale", "down"];
    let nodes: Vec<Env> = doors
        .iter()
        .map(|door| {
            let node = Env::new();
            // A probe's "unchanged" is trusted 4 s: the stale door holds its node back no longer.
            node.write_config(&format!(
                "hostname = \"{door}-1\"\ninterval = \"1s\"\njitter = \"0s\"\nprobe_trust = \"4s\"\n"
            ));
            node.ok(&["init", &format!("--remote=origin={}", server.url(door))]);
            node
        })
        .collect();
    let daemons: Vec<Daemon> = nodes.iter().map(Daemon::start).collect();
    let all_deployed = |commit: &str| nodes.iter().all(|n| n.deployed().as_deref() == Some(commit));
    wait_until("all three nodes to deploy the first commit", Duration::from_secs(20), || {
        all_deployed(&first)
    });

    // With nothing new, the truthful door answers the probes 304, and most polls fetch nothing.
    wait_until("two probes answered 304 at the fresh door", Duration::from_secs(10), || {
        server.served("fresh").iter().filter(|s| is_probe(s) && s.status == Some(304)).count() >= 2
    });
    let fresh = server.served("fresh");
    let (probes, fetches) =
        (fresh.iter().filter(|s| is_probe(s)).count(), fresh.iter().filter(|s| is_fetch(s)).count());
    assert!(fetches < probes, "{fetches} fetches for {probes} probes: {fresh:#?}");
    assert!(server.served("down").iter().all(|s| !is_probe(s) || s.status == Some(503)));
    let remotes = nodes[0].state.join("remotes.json");
    wait_until("the fresh node to record a poll its probe answered", Duration::from_secs(10), || {
        std::fs::read_to_string(&remotes).is_ok_and(|json| json.contains("\"probed\": true"))
    });

    // Pushed just after the stale node's real fetch: its probes are trusted for the next 4 s.
    let stale_fetches = || server.served("stale").iter().filter(|s| is_fetch(s)).count();
    let fetches = stale_fetches();
    wait_until("a real fetch at the stale door", Duration::from_secs(10), || stale_fetches() > fetches);
    let before = server.served("stale").len();
    let second = work.commit(&env, &[("note", "2")], "second");
    publish(&env, &work, &mirror);
    wait_until("all three nodes to deploy the second commit", Duration::from_secs(20), || {
        all_deployed(&second)
    });
    for (node, daemon) in nodes.iter().zip(&daemons) {
        let runs = node.run_ids();
        assert_eq!(runs.len(), 2, "{}: {runs:?}\n{}", node.config.display(), daemon.log());
    }
    // The stale door said "unchanged" after the push (a 304 to the old ETag) and the node fetched
    // all the same once the trust ran out.
    let stale = server.served("stale")[before..].to_vec();
    let fooled = stale.iter().position(|s| is_probe(s) && s.status == Some(304));
    let fetched = stale.iter().rposition(|s| is_fetch(s) && s.status == Some(200));
    assert!(matches!((fooled, fetched), (Some(f), Some(g)) if f < g), "{stale:#?}");
}

#[test]
fn probe_trust_zero_never_probes() {
    let env = Env::new();
    let Serving { first, server, .. } = serve(&env);
    env.write_config("hostname = \"web-1\"\nprobe_trust = \"0s\"\n");
    env.ok(&["init", &format!("--remote=origin={}", server.url("fresh"))]);
    for _ in 0..2 {
        let out = env.run(&["pull"]);
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    }
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    let served = server.served("fresh");
    assert!(served.iter().all(|s| !is_probe(s)), "{served:#?}");
    assert_eq!(served.iter().filter(|s| is_fetch(s)).count(), 2, "{served:#?}");
    assert!(!env.state.join("probes.json").exists());
}

#[test]
fn a_door_caught_lagging_is_not_believed_until_it_shows_a_change_as_it_happens() {
    let env = Env::new();
    let Serving { mirror, work, first, server } = serve(&env);
    let config = |trust: &str| format!("hostname = \"web-1\"\nprobe_trust = \"{trust}\"\n");
    env.write_config(&config("1s"));
    env.ok(&["init", &format!("--remote=origin={}", server.url("stale"))]);
    env.ok(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    let pull = || {
        let out = env.run(&["pull"]);
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout) + &text(&out.stderr)
    };

    // The repo moves and the door keeps saying "unchanged": believed until the trust runs out,
    // then the fetch finds the branch moved and says why.
    let second = work.commit(&env, &[("note", "2")], "second");
    publish(&env, &work, &mirror);
    let mut said = String::new();
    wait_until("the node to deploy the second commit", Duration::from_secs(20), || {
        said += &pull();
        env.deployed().as_deref() == Some(second.as_str())
    });
    assert!(said.contains("remote origin") && said.contains("lags behind the repo"), "{said}");
    assert!(said.contains(&second[..12]), "{said}");

    // It catches up late, as a nightly `update-server-info` would. With a trust of an hour, a
    // believed door would keep the node at the second commit; this one is fetched at once.
    server.catch_up();
    env.write_config(&config("1h"));
    let third = work.commit(&env, &[("note", "3")], "third");
    publish(&env, &work, &mirror);
    let said = pull();
    assert_eq!(env.deployed().as_deref(), Some(third.as_str()), "{said}");

    // Listing a commit before the node has it, it shows a change as it happens: believed again.
    let fourth = work.commit(&env, &[("note", "4")], "fourth");
    publish(&env, &work, &mirror);
    server.catch_up();
    let said = pull();
    assert!(said.contains("believed again"), "{said}");
    assert_eq!(env.deployed().as_deref(), Some(fourth.as_str()));
    work.commit(&env, &[("note", "5")], "fifth");
    publish(&env, &work, &mirror);
    pull();
    assert_eq!(env.deployed().as_deref(), Some(fourth.as_str()), "a believed \"unchanged\" skips the fetch");
    let remotes = std::fs::read_to_string(env.state.join("remotes.json")).unwrap();
    assert!(remotes.contains("\"probed\": true"), "{remotes}");
}

#[test]
fn a_probe_target_that_never_answers_takes_half_the_fetch_timeout_and_the_fetch_still_runs() {
    let env = Env::new();
    let Serving { first, server, .. } = serve(&env);
    env.write_config("hostname = \"web-1\"\nfetch_timeout = \"4s\"\n");
    env.ok(&["init", &format!("--remote=origin={}", server.url("stall"))]);
    let out = env.run(&["pull"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    assert!(server.served("stall").iter().any(is_fetch), "{:#?}", server.served("stall"));
}

#[test]
fn an_https_mirror_is_probed_with_304s_and_a_change_is_still_fetched() {
    let env = Env::new();
    let ca = TestCa::new();
    let Serving { mirror, work, first, server } = serve_over(&env, Some(&ca.server("127.0.0.1")));
    env.write_config("hostname = \"web-1\"\n");
    let url = server.url("fresh");
    assert!(url.starts_with("https://"), "{url}");
    env.ok(&["init", &format!("--remote=origin={url}")]);
    // The node trusts the test's CA as a host trusts a private one: git's fetch by its config
    // (the node repo's here, /etc/gitconfig or the system store on a host), the probe by the
    // system's store, which SSL_CERT_FILE stands for here.
    env.git(&env.repo(), &["config", "http.sslCAInfo", &ca.path().display().to_string()]);
    let pull = || {
        let out = env.troops(&["pull"]).env("SSL_CERT_FILE", ca.path()).output().unwrap();
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    };
    for _ in 0..3 {
        pull();
    }
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    let fresh = server.served("fresh");
    let probes: Vec<Option<u16>> = fresh.iter().filter(|s| is_probe(s)).map(|s| s.status).collect();
    assert_eq!(probes, [Some(200), Some(304), Some(304)], "{fresh:#?}");
    assert_eq!(fresh.iter().filter(|s| is_fetch(s)).count(), 1, "one fetch, then 304s: {fresh:#?}");
    let remotes = std::fs::read_to_string(env.state.join("remotes.json")).unwrap();
    assert!(remotes.contains("\"probed\": true"), "{remotes}");

    // A change: the probe lists the new tip (a 200), and the fetch that follows brings it.
    let second = work.commit(&env, &[("note", "2")], "second");
    publish(&env, &work, &mirror);
    pull();
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));

    // Without the CA, the probe is not answered (its certificate is not believed) and the
    // fetch decides, as for any probe that goes unanswered.
    let out = env.run(&["pull"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{said}");
    let last = server.served("fresh").into_iter().filter(is_probe).count();
    assert_eq!(last, 4, "a probe was answered without the CA: {said}");
}
