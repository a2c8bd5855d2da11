//! A real OpenSSH server on 127.0.0.1, so end-to-end tests can `git push` to a node and let a node
//! `git fetch` from a remote over SSH exactly as in production, without touching the machine's sshd.
//!
//! Everything (host key, client key, authorized_keys, sshd_config, log, pid file) lives in the
//! directory given to [`Sshd::start`]. The login user is whoever runs the tests (root in CI).
//! sshd never passes the client's environment on: the remote git-receive-pack/git-upload-pack is
//! found on sshd's default PATH (Debian: `/usr/local/bin:/usr/bin:...`) plus whatever the login
//! user's `~/.bashrc` adds, and hooks must find their settings in the repo's git config.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const READY_DEADLINE: Duration = Duration::from_secs(10);
const BIND_ATTEMPTS: usize = 5;

pub struct Sshd {
    pub port: u16,
    pub user: String,
    dir: PathBuf,
    child: Child,
}

impl Sshd {
    /// Generates keys and config under `dir` (created if missing) and starts sshd on a free port.
    /// Returns once sshd answers with its SSH banner.
    pub fn start(dir: &Path) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server to run the SSH end-to-end tests"
        );
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = dir.canonicalize().expect("canonicalize sshd dir");
        let user = run(Command::new("id").arg("-un"));
        if run(Command::new("id").arg("-u")) == "0" {
            // sshd running as root insists on its privilege separation directory.
            fs::create_dir_all("/run/sshd").expect("create /run/sshd");
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
        }

        keygen(&dir.join("host_ed25519"));
        keygen(&dir.join("client_ed25519"));
        let client_pub = fs::read_to_string(dir.join("client_ed25519.pub")).expect("read client key");
        fs::write(dir.join("authorized_keys"), client_pub).expect("write authorized_keys");

        for _ in 0..BIND_ATTEMPTS {
            let port = free_port();
            let child = spawn(&dir, port);
            let mut sshd = Sshd { port, user: user.clone(), dir: dir.clone(), child };
            match sshd.wait_ready() {
                Ok(()) => {
                    let line = format!("[127.0.0.1]:{port} {}\n", sshd.host_public_key());
                    fs::write(sshd.known_hosts(), line).expect("write known_hosts");
                    return sshd;
                }
                // Someone took the port between our probe and sshd's bind: try another one.
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("sshd exited during startup; log:\n{log}"),
            }
        }
        panic!("sshd could not bind a free port in {BIND_ATTEMPTS} attempts");
    }

    /// Private key the test client logs in with.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    /// A known_hosts file that trusts this server (and nothing else).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The host key as `ssh-ed25519 AAAA...` (no comment), as it appears in known_hosts.
    pub fn host_public_key(&self) -> String {
        let text = fs::read_to_string(self.dir.join("host_ed25519.pub")).expect("read host key");
        text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// Value for `GIT_SSH_COMMAND`: log in with the client key, trust only this server, never prompt.
    pub fn git_ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
             -o IdentitiesOnly=yes -o BatchMode=yes -p {}",
            sh_quote(&self.client_key()),
            sh_quote(&self.known_hosts()),
            self.port
        )
    }

    /// Lets another key (e.g. the node's own `ssh/id_ed25519.pub`) log in too.
    pub fn authorize(&self, public_key_line: &str) {
        let mut file = OpenOptions::new()
            .append(true)
            .open(self.dir.join("authorized_keys"))
            .expect("open authorized_keys");
        writeln!(file, "{}", public_key_line.trim()).expect("append to authorized_keys");
    }

    /// `ssh://USER@127.0.0.1:PORT/abs/path` for an absolute path on this machine.
    pub fn url(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "ssh url needs an absolute path: {}", path.display());
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, path.display())
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Polls until sshd sends its banner. On early exit returns the log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = self.child.try_wait().expect("poll sshd") {
                return Err(format!("(sshd {status})\n{}", self.log()));
            }
            if banner(&addr).is_some_and(|line| line.starts_with("SSH-2.0-")) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not answer on port {} within {READY_DEADLINE:?}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 where nothing listens, for "remote unreachable" tests.
pub fn closed_port() -> u16 {
    free_port()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn spawn(dir: &Path, port: u16) -> Child {
    let config = dir.join("sshd_config");
    let q = |name: &str| format!("\"{}\"", dir.join(name).display());
    let text = format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         PidFile {pid_file}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitUserRC no\n\
         PermitUserEnvironment no\n\
         AllowTcpForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         LogLevel ERROR\n",
        host_key = q("host_ed25519"),
        authorized_keys = q("authorized_keys"),
        pid_file = q("sshd.pid"),
    );
    fs::write(&config, text).expect("write sshd_config");
    let log_path = dir.join("sshd.log");
    // Fresh log per attempt; anything sshd prints before it opens -E lands here too.
    fs::write(&log_path, "").expect("create sshd.log");
    let log = OpenOptions::new().append(true).open(&log_path).expect("open sshd.log");
    Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .arg("-E")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {SSHD}: {e}"))
}

/// The first line the server sends, if it is up and sends one.
fn banner(addr: &SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    // Sending a banner back keeps sshd from logging the probe as an error.
    stream.write_all(b"SSH-2.0-troops-e2e-probe\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line)
}

fn keygen(path: &Path) {
    // ssh-keygen would ask before overwriting a key left by an earlier start in the same dir.
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let status = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-C", "troops-e2e", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen for {} failed: {status}", path.display());
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output").trim().to_string()
}

/// Single-quotes a path for the shell that git runs GIT_SSH_COMMAND with.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
