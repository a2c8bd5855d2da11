//! The control socket `<state>/troops.sock`: mode 0660, group `admin_group`, and a peer
//! credential check on every connection (root, the daemon's own user, or a member of the group),
//! so that filesystem permissions are not the only gate. Each connection is one request whose
//! output streams back as it is produced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use troops_core::config::Config;
use troops_core::control::{DaemonStatus, Reply, Request};

use super::worker::{Handle, Job, Work};

/// Binds the socket (replacing a stale one) with the SPEC's mode and group.
pub fn bind(path: &Path, group: &str) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("another daemon already listens on {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("binding the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    give_to_group(path, group);
    Ok(listener)
}

/// Gives the socket to `group`, when it exists. Only root may give it to a group it is not in;
/// otherwise it stays the daemon's, and the peer check still admits the group's members.
pub fn give_to_group(path: &Path, group: &str) {
    if let Ok(Some(group)) = Group::from_name(group) {
        let _ = nix::unistd::chown(path, None, Some(group.gid));
    }
}

pub async fn serve(
    listener: UnixListener,
    worker: Handle,
    config: Arc<Mutex<Config>>,
    repo: PathBuf,
    status: Arc<Mutex<DaemonStatus>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (group, branch) = {
            let config = config.lock().unwrap();
            (config.admin_group.clone(), format!("refs/heads/{}", config.branch))
        };
        let (worker, repo, status) = (worker.clone(), repo.clone(), status.clone());
        tokio::spawn(async move {
            let tip = move || git2::Repository::open_bare(&repo).ok()?.refname_to_id(&branch).ok();
            if let Err(e) = handle(stream, &group, worker, tip, &status).await {
                tracing::warn!(error = %e, "control connection failed");
            }
        });
    }
}

async fn handle(
    mut stream: UnixStream,
    group: &str,
    worker: Handle,
    tip: impl FnOnce() -> Option<git2::Oid>,
    status: &Mutex<DaemonStatus>,
) -> anyhow::Result<()> {
    let allowed = allowed(&stream, group);
    let (read, mut write) = stream.split();
    // Read the request first even from a peer we refuse, so it sees the answer, not a broken pipe.
    let mut request = String::new();
    BufReader::new(read.take(MAX_REQUEST)).read_line(&mut request).await?;
    if let Err(why) = allowed {
        tracing::warn!(reason = %why, "control connection refused");
        let reply = Reply::Done { exit: 3, error: Some(format!("permission denied: {why}")) };
        write.write_all(line(&reply).as_bytes()).await?;
        return Ok(());
    }
    let request: Request = match serde_json::from_str(&request) {
        Ok(request) => request,
        Err(e) => {
            let reply = Reply::Done { exit: 2, error: Some(format!("bad request: {e}")) };
            write.write_all(line(&reply).as_bytes()).await?;
            return Ok(());
        }
    };
    let work = match &request {
        // Asked often by scripts and monitoring: answered here, and not logged.
        Request::Status => {
            let status = serde_json::to_string(&*status.lock().unwrap()).expect("status serializes");
            for reply in [Reply::Output(status), Reply::Done { exit: 0, error: None }] {
                write.write_all(line(&reply).as_bytes()).await?;
            }
            return Ok(());
        }
        Request::Pull => Work::Pull,
        Request::Deploy { commit: Some(rev), .. } => Work::Commit(rev.clone()),
        Request::Deploy { trigger, .. } => Work::Tip(*trigger),
    };
    tracing::info!(request = ?request, "control request");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    worker.submit(Job { work, reply: Some(tx) }, tip);
    while let Some(reply) = rx.recv().await {
        let done = matches!(reply, Reply::Done { .. });
        // A client that hung up stops listening; the run goes on.
        if write.write_all(line(&reply).as_bytes()).await.is_err() || done {
            break;
        }
    }
    Ok(())
}

/// Requests are one short JSON line.
const MAX_REQUEST: u64 = 64 * 1024;

fn line(reply: &Reply) -> String {
    let mut line = serde_json::to_string(reply).expect("replies serialize");
    line.push('\n');
    line
}

/// Root, the daemon's own user, and members of `group` may talk to the daemon.
fn allowed(stream: &UnixStream, group: &str) -> Result<(), String> {
    let cred =
        getsockopt(stream, PeerCredentials).map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let uid = Uid::from_raw(cred.uid());
    if uid.is_root() || uid == Uid::effective() {
        return Ok(());
    }
    let gid = Group::from_name(group).ok().flatten().map(|g| g.gid);
    let member =
        gid.is_some_and(|gid| Gid::from_raw(cred.gid()) == gid || process_groups(cred.pid()).contains(&gid));
    if member {
        Ok(())
    } else {
        Err(format!("uid {} (pid {}) is neither root nor in group {group}", cred.uid(), cred.pid()))
    }
}

/// The supplementary groups of a live process.
fn process_groups(pid: i32) -> Vec<Gid> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).map(Gid::from_raw).collect())
        .unwrap_or_default()
}
