//! The control socket `<state>/troops.sock`: mode 0660, group `admin_group`, and a peer
//! credential check on every connection (root, the daemon's own user, or a member of the group),
//! so that filesystem permissions are not the only gate. Each connection is one request whose
//! output streams back as it is produced. No client can wedge it: a request line must come within
//! `REQUEST_TIMEOUT`, a write that stalls for `WRITE_STALL` drops the client, output waits for a
//! slow client in a bounded buffer (see `listener`), and running out of descriptors backs off.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials, UnixCredentials};
use nix::unistd::{Gid, Group, Uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use troops_core::mech::control::{Done, Reply, Request};
use troops_core::mech::runs::Runs;
use troops_core::model::ask::Ask;
use troops_core::model::config::Config;
use troops_core::model::node::Node;
use troops_core::Exit;

use super::events::{Event, Events};
use super::listener::{self, Piece};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write to a client may stall before the client is dropped (the run goes on).
const WRITE_STALL: Duration = Duration::from_secs(15);
/// The pause after a failed accept (out of descriptors, say), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

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
    events: Events,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    node: Node,
) {
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot accept control connections; retrying");
                }
                failing = true;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        failing = false;
        let node = Node { state_dir: node.state_dir.clone(), config: (**config.borrow()).clone() };
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, node, events).await {
                tracing::warn!(error = %e, "control connection dropped");
            }
        });
    }
}

/// One connection: its request, checked against who sent it, goes to the loop with a listener;
/// what the listener hears streams back.
async fn handle(mut stream: UnixStream, node: Node, events: Events) -> anyhow::Result<()> {
    let credentials = getsockopt(&stream, PeerCredentials);
    let group = node.config.admin_group.clone();
    // Group lookups go through NSS, which may block: off the loop.
    let allowed = tokio::task::spawn_blocking(move || allowed(credentials, &group)).await?;
    let (read, mut write) = stream.split();
    // Read the request first even from a peer we refuse, so it sees the answer, not a broken pipe.
    let mut request = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, BufReader::new(read.take(MAX_REQUEST)).read_line(&mut request))
        .await
        .map_err(|_| anyhow::anyhow!("no request line within {}s", REQUEST_TIMEOUT.as_secs()))??;
    if let Err(why) = allowed {
        tracing::warn!(reason = %why, "control connection refused");
        let done = Done { exit: Exit::Environment, error: Some(format!("permission denied: {why}")) };
        return send(&mut write, &Reply::Done(done)).await;
    }
    let request: Request = match serde_json::from_str(&request) {
        Ok(request) => request,
        Err(e) => {
            let done = Done { exit: Exit::Input, error: Some(format!("bad request: {e}")) };
            return send(&mut write, &Reply::Done(done)).await;
        }
    };
    if request == Request::Status {
        // Asked often by scripts and monitoring: answered at once, and not logged.
        let (reply, status) = tokio::sync::oneshot::channel();
        events.send(Event::Status(reply)).map_err(|_| anyhow::anyhow!("the daemon's loop is gone"))?;
        let status = serde_json::to_string(&status.await?).expect("status serializes");
        send(&mut write, &Reply::Output(status)).await?;
        return send(&mut write, &Reply::Done(Done { exit: Exit::Success, error: None })).await;
    }
    tracing::info!(request = ?request, "control request");
    // A push joins the run of the tip it pushed, if that runs.
    let tip = match request {
        Request::Run(Ask::Push) => {
            let node = node.clone();
            tokio::task::spawn_blocking(move || super::jobs::tip(&node)).await?
        }
        _ => None,
    };
    let (listener, mut inbox) = listener::channel();
    events
        .send(Event::Request { request, listener, tip })
        .map_err(|_| anyhow::anyhow!("the daemon's loop is gone"))?;
    // A client that hangs up or stalls stops listening; the run goes on.
    while let Some(piece) = inbox.next().await {
        let reply = match piece {
            Piece::Output(text) => Reply::Output(text),
            Piece::Skipped(gap) => Reply::Output(gap.render(&whole_log(&node.runs()))),
            Piece::Done(done) => return send(&mut write, &Reply::Done(done)).await,
        };
        send(&mut write, &reply).await?;
    }
    Ok(())
}

/// Writes one reply line, giving up on a client that does not read it within `WRITE_STALL`.
async fn send(write: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_STALL, write.write_all(line(reply).as_bytes()))
        .await
        .map_err(|_| anyhow::anyhow!("the client read nothing for {}s", WRITE_STALL.as_secs()))??;
    Ok(())
}

/// The command that shows the output a slow client missed: that of the latest run, since output
/// flows only while a run is under way or just ended.
fn whole_log(runs: &Runs) -> String {
    match runs.ids().ok().and_then(|ids| ids.last().copied()) {
        Some(id) => format!("troops log {id}"),
        None => "troops log".into(),
    }
}

/// Requests are one short JSON line.
const MAX_REQUEST: u64 = 64 * 1024;

fn line(reply: &Reply) -> String {
    let mut line = serde_json::to_string(reply).expect("replies serialize");
    line.push('\n');
    line
}

/// Root, the daemon's own user, and members of `group` may talk to the daemon.
fn allowed(credentials: nix::Result<UnixCredentials>, group: &str) -> Result<(), String> {
    let cred = credentials.map_err(|e| format!("cannot read peer credentials: {e}"))?;
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
