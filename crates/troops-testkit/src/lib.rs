//! What troops' tests share, so that every test builds on the same real parts: a node in a temp
//! dir (`Env`), deploy repos to commit to and push from, a `troops daemon` child, a real sshd and
//! gpg, one fake HTTP server (plain or TLS, with certificates made in the test), waiting on conditions with a deadline (never sleeping as
//! synchronisation), one time budget for what must not wait for a long timeout, and the rule that a
//! test that cannot run here fails unless the run allows skips (`skip`).
//!
//! The end-to-end tests (tests/e2e) use all of it, as `crate::support`; troops-core's unit tests
//! use the HTTP server and the budget.

pub mod daemon;
pub mod gpg;
pub mod http;
mod skip;
pub mod sshd;
pub mod tls;

pub use skip::{require, require_root, require_tool};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long something may take that must not wait for a timeout, a hung peer or a long interval:
/// far under what such a wait costs (the tests that use it make that at least 30 s: a check's
/// soak, a step's sleep, the default 60 s interval, or forever), and far over what a loaded 2-core
/// machine needs (a few seconds). Where the product itself waits a timeout `T` first, the bound is
/// `T` plus this. The one bound on how long something took that the tests assert (a `wait_until`
/// limit is how long a test waits before it gives up); otherwise they assert the order of events,
/// or a lower bound (what the product must at least wait), which no load breaks.
pub const BUDGET: Duration = Duration::from_secs(10);

/// A built binary of this workspace, next to the test executable's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}

/// A shell snippet that waits until `file` exists, and fails if it never does: a step's gate, which
/// the test opens by creating the file. Bounded (60 s), so a step a failed test left behind ends by
/// itself. The path goes in unquoted, so the snippet fits in any kind of TOML string: test paths
/// are temp dirs, with neither spaces nor quotes.
pub fn block_until(file: &Path) -> String {
    let f = file.display();
    format!("i=0; while [ ! -e {f} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; [ -e {f} ]")
}

/// Waits until `condition` holds, polling every 10 ms, and panics after `limit` naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` to its end and returns its output; kills it and panics naming `what` if it has
/// not ended within `limit`.
pub fn output_within(what: &str, command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (sender, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match ended.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{what} did not end within {limit:?}");
        }
    }
}

/// Waits for a client of `listener` (a hung remote: it takes connections and never says a word)
/// to connect, and returns the connection: kept, it keeps the client waiting.
pub fn accept_within(listener: &TcpListener, what: &str, limit: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    wait_until(what, limit, || {
        conn = listener.accept().ok().map(|(conn, _)| conn);
        conn.is_some()
    });
    conn.unwrap()
}

/// Whether the client of `conn` still holds it open (what it sent is read and dropped): a client
/// that gave up has closed it.
pub fn still_open(conn: &mut TcpStream) -> bool {
    use std::io::Read;
    conn.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// One node and everything around it, in one temp dir.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub config: PathBuf,
    pub home: PathBuf,
}

impl Env {
    /// A node named `web-1` (not yet initialised).
    // A fixture makes a temp dir: `new` says so, where a Default would not.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new().prefix("troops-e2e-").tempdir().expect("temp dir");
        let root = tmp.path().to_owned();
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let env = Env { state: root.join("state"), config: root.join("troops.toml"), home, tmp };
        env.write_config("hostname = \"web-1\"\n");
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn repo(&self) -> PathBuf {
        self.state.join("repo/main.git")
    }

    /// The environment every process of the test gets: hermetic git, this node, the built
    /// binaries first on PATH.
    pub fn hermetic(&self, command: &mut Command) {
        let bin_dir = bin("troops").parent().unwrap().to_owned();
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", bin_dir.display());
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .env("TROOPS_STATE_DIR", &self.state)
            .env("TROOPS_CONFIG", &self.config)
            .stdin(Stdio::null());
    }

    pub fn troops(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("troops"));
        self.hermetic(&mut command);
        command.args(args);
        command
    }

    /// Runs troops and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.troops(args).output().expect("running troops")
    }

    /// Runs troops, asserts exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "troops {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn init(&self) -> String {
        self.ok(&["init"])
    }

    /// A new bare repo `name` in the test dir, on branch `main`.
    pub fn bare(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        self.git(self.tmp.path(), &["init", "-q", "--bare", "-b", "main", &path.display().to_string()]);
        path
    }

    /// Initialises the node (its config as written) following remote `a`, a new bare repo
    /// `a.git` in the test dir, and returns the deploy repo `work` to commit to.
    pub fn init_following_a(&self) -> DeployRepo {
        let a = self.bare("a.git");
        self.ok(&["init", &format!("--remote=a={}", a.display())]);
        self.deploy_repo("work")
    }

    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        self.git_with(dir, args, &[])
    }

    /// `git` in `dir`, hermetic but for `vars`; panics with its output if it fails.
    pub fn git_with(&self, dir: &Path, args: &[&str], vars: &[(&str, &Path)]) -> String {
        let mut command = Command::new("git");
        self.hermetic(&mut command);
        let out =
            command.current_dir(dir).args(args).envs(vars.iter().copied()).output().expect("running git");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed:\n{}{}",
            dir.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    /// A ref of the node repo, or None.
    pub fn node_ref(&self, name: &str) -> Option<String> {
        let mut command = Command::new("git");
        self.hermetic(&mut command);
        let out = command
            .arg("--git-dir")
            .arg(self.repo())
            .args(["rev-parse", "--verify", "-q", name])
            .output()
            .unwrap();
        out.status.success().then(|| text(&out.stdout).trim().to_owned())
    }

    /// `troops status --json`, which must succeed.
    pub fn status_json(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    pub fn deployed(&self) -> Option<String> {
        self.node_ref("refs/troops/deployed")
    }

    /// A new deploy repo (a normal git work tree) named `name`.
    pub fn deploy_repo(&self, name: &str) -> DeployRepo {
        let path = self.path(name);
        std::fs::create_dir_all(&path).unwrap();
        self.git(&path, &["init", "-q", "-b", "main"]);
        DeployRepo { path }
    }

    /// A clone of the node repo named `name`: a second client that starts from the node's tip.
    pub fn clone_node(&self, name: &str) -> DeployRepo {
        let path = self.path(name);
        self.git(
            self.tmp.path(),
            &["clone", "-q", &self.repo().display().to_string(), &path.display().to_string()],
        );
        DeployRepo { path }
    }

    pub fn run_record(&self, id: u64) -> Value {
        let path = self.state.join(format!("runs/{id}/run.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap()
    }

    /// Run `id`'s output so far: empty until the run opens its log, just after its record.
    pub fn run_log(&self, id: u64) -> String {
        let path = self.state.join(format!("runs/{id}/output.log"));
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    /// Ids of the runs that have a record (a run's folder exists a moment before its record).
    pub fn run_ids(&self) -> Vec<u64> {
        let recorded = |e: std::fs::DirEntry| {
            e.path().join("run.json").exists().then(|| e.file_name().to_str()?.parse().ok()).flatten()
        };
        let mut ids: Vec<u64> = std::fs::read_dir(self.state.join("runs"))
            .map(|d| d.filter_map(|e| recorded(e.ok()?)).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

pub struct DeployRepo {
    pub path: PathBuf,
}

impl DeployRepo {
    /// Writes `files` (path, content; a content starting with "#!" is made executable), commits
    /// everything, and returns the new commit id.
    pub fn commit(&self, env: &Env, files: &[(&str, &str)], message: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        for (name, content) in files {
            let path = self.path.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            if content.starts_with("#!") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        env.git(&self.path, &["add", "-A"]);
        env.git(&self.path, &["commit", "-q", "--allow-empty", "-m", message]);
        env.git(&self.path, &["rev-parse", "HEAD"])
    }

    /// Puts `node`'s public key (`<state>/ssh/id_ed25519.pub`, made by `troops init`) at
    /// `keys/<host>.pub`, for the next commit to take in: what the fleet believes `host`'s signed
    /// status by.
    pub fn add_node_key(&self, node: &Env, host: &str) {
        let key = std::fs::read_to_string(node.state.join("ssh/id_ed25519.pub")).unwrap();
        std::fs::create_dir_all(self.path.join("keys")).unwrap();
        std::fs::write(self.path.join(format!("keys/{host}.pub")), key).unwrap();
    }

    /// Moves the node's branch to this repo's `main` without running the node's hooks (a fetch
    /// into the node repo, not a push): for tests of `troops deploy`.
    pub fn publish(&self, env: &Env) -> String {
        let repo = env.repo().display().to_string();
        env.git(
            &self.path,
            &["--git-dir", &repo, "fetch", "-q", &self.path.display().to_string(), "main:main"],
        );
        env.git(&self.path, &["rev-parse", "HEAD"])
    }

    /// Commits a plan (`troops.toml`) and publishes it to the node (no hooks); returns the commit.
    pub fn publish_plan(&self, env: &Env, plan: &str) -> String {
        self.commit(env, &[("troops.toml", plan)], "plan");
        self.publish(env)
    }

    /// `git push URL ARGS...`, whatever its outcome.
    pub fn push(&self, env: &Env, url: &str, args: &[&str]) -> Output {
        self.push_command(env, url, args).output().unwrap()
    }

    /// The `git push URL ARGS...` command, not yet started (to add `GIT_SSH_COMMAND`, or to
    /// read its output as it comes).
    pub fn push_command(&self, env: &Env, url: &str, args: &[&str]) -> Command {
        let mut command = Command::new("git");
        env.hermetic(&mut command);
        command.current_dir(&self.path).arg("push").arg(url).args(args);
        command
    }
}

/// Points `reference` of the bare repo `status` (a status remote) at a new commit whose
/// `status.json` is `doc`, as anyone who may write there can: signed by real git
/// (`gpg.format=ssh`) with the private key file `key` when one is given, unsigned otherwise.
/// Returns the commit.
pub fn put_status(env: &Env, status: &Path, reference: &str, doc: &[u8], key: Option<&Path>) -> String {
    let git = status.display().to_string();
    let mut command = Command::new("git");
    env.hermetic(&mut command);
    let mut child = command
        .args(["--git-dir", &git, "hash-object", "-w", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(doc).unwrap();
    let blob = text(&child.wait_with_output().unwrap().stdout).trim().to_owned();
    let mut command = Command::new("git");
    env.hermetic(&mut command);
    let mut child = command
        .args(["--git-dir", &git, "mktree"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "100644 blob {blob}\tstatus.json").unwrap();
    let tree = text(&child.wait_with_output().unwrap().stdout).trim().to_owned();
    let commit = match key {
        Some(key) => {
            let signing = format!("user.signingKey={}", key.display());
            let args =
                ["--git-dir", &git, "-c", "gpg.format=ssh", "-c", &signing, "commit-tree", "-S", &tree];
            env.git(env.tmp.path(), &[&args[..], &["-m", "status"]].concat())
        }
        None => env.git(env.tmp.path(), &["--git-dir", &git, "commit-tree", &tree, "-m", "status"]),
    };
    env.git(env.tmp.path(), &["--git-dir", &git, "update-ref", reference, &commit]);
    commit
}

/// Force-pushes the work repo's HEAD to the bare repo `a.git` in the test dir, the remote `a`
/// of nodes whose tests replace one case's commit by the next there.
pub fn publish_to_a(env: &Env, work: &DeployRepo) {
    let out = work.push(env, &env.path("a.git").display().to_string(), &["--force", "HEAD:main"]);
    assert!(out.status.success(), "push to a failed: {}", text(&out.stderr));
}

/// `troops pull`, which must succeed and deploy `commit`.
pub fn pull_deploys(env: &Env, commit: &str) {
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(commit), "{}", combined(&out));
}

/// Nothing moved since `base` was deployed as run 1: what a refusal (`case`) must leave.
pub fn assert_untouched(env: &Env, base: &str, case: &str) {
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(base), "{case}: the branch moved");
    assert_eq!(env.deployed().as_deref(), Some(base), "{case}: the deployed commit moved");
    assert_eq!(env.run_ids(), [1], "{case}: something ran");
}

/// Pushes the work repo's HEAD to the node's branch, which must refuse `commit` in pre-receive
/// naming it; returns what the pusher saw.
pub fn push_is_refused(env: &Env, work: &DeployRepo, commit: &str, case: &str) -> String {
    let out = work.push(env, &env.repo().display().to_string(), &["HEAD:main"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{case}: the push was accepted:\n{stderr}");
    let short = &commit[..12];
    let line = format!("remote: troops: refusing refs/heads/main at {short}: commit {short}");
    assert!(stderr.contains(&line), "{case}: no {line:?} in:\n{stderr}");
    stderr
}

/// `output` gives `reason`, and none of the other `reasons` (each refusal has its own).
pub fn assert_only_reason(output: &str, reason: &str, reasons: &[&str], case: &str) {
    assert!(output.contains(reason), "{case}: {reason:?} not in:\n{output}");
    for other in reasons.iter().filter(|r| **r != reason) {
        assert!(!output.contains(other), "{case}: {other:?} (another case's reason) in:\n{output}");
    }
}

/// A command's stdout then stderr, for failure messages.
pub fn combined(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// A new unencrypted ed25519 key at `path` (and `path.pub`), with `comment`.
pub fn ssh_keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen {}: {}", path.display(), text(&out.stderr));
}

/// The short form of a full commit id, as troops prints it.
pub fn short(commit: &str) -> &str {
    &commit[..12]
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
