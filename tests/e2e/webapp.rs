//! The example deploy repo `examples/webapp/`, as an operator would use it: its plan builds the
//! site into a release, switches `current`, activates it and checks `/health` of the running
//! server; a commit that breaks the health page is rolled back to the last good release without
//! building again, and the server answers from it again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{text, DeployRepo, Env};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/webapp")
}

/// The example's server, reading through the node's `current` link, on a port of its choosing.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(env: &Env) -> Server {
        let mut child = Command::new("python3")
            .arg(example().join("server.py"))
            .args(["--port", "0", "--root"])
            .arg(env.state.join("current"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect(&line);
        Server { child, port }
    }

    /// GET `path`: the status and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example, copied into a deploy repo, checking this test's server with a short soak.
fn deploy_repo(env: &Env, port: u16) -> DeployRepo {
    let work = env.deploy_repo("webapp");
    for entry in ["troops.toml", "build.sh", "activate.sh", "server.py", "webapp.service", "site"] {
        let status =
            Command::new("cp").arg("-a").arg(example().join(entry)).arg(&work.path).status().unwrap();
        assert!(status.success());
    }
    let plan = std::fs::read_to_string(work.path.join("troops.toml")).unwrap();
    let plan = plan
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("soak = \"5s\"", "soak = \"1s\"");
    std::fs::write(work.path.join("troops.toml"), plan).unwrap();
    work
}

fn push(env: &Env, work: &DeployRepo) -> String {
    let out = work.push(env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stderr)
}

#[test]
fn the_webapp_example_deploys_as_releases_and_rolls_back_a_broken_health_page() {
    if !crate::support::require_tool("python3", "the example's server") {
        return;
    }
    let env = Env::new();
    env.init();
    let server = Server::start(&env);
    let work = deploy_repo(&env, server.port);
    let good = work.commit(&env, &[], "the webapp");
    let said = push(&env, &work);
    assert!(said.contains("run 1 succeeded"), "{said}");
    assert_eq!(server.get("/health"), (200, format!("ok {good}\n")));
    let record = env.run_record(1);
    assert_eq!(record["checks"][0]["status"], "passed", "{record}");

    std::fs::remove_file(work.path.join("site/health")).unwrap();
    let bad = work.commit(&env, &[], "no health page");
    let said = push(&env, &work);
    assert!(said.contains("check `health` failed"), "{said}");
    assert!(said.contains(&format!("rolled back to {}", &good[..12])), "{said}");
    assert_eq!(server.get("/health"), (200, format!("ok {good}\n")), "the good release serves again");
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()));
    let rollback = env.run_record(3);
    let steps: Vec<&str> =
        rollback["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["activate"], "a rollback does not build again: {rollback}");
    assert_eq!(env.status_json()["quarantined"][0]["commit"], bad.as_str());
}
