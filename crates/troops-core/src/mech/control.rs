//! The control socket's wire protocol (`<state>/troops.sock`), shared by the daemon that serves
//! it and the CLI and hook that call it: the client sends one JSON request line; the daemon
//! answers with JSON lines of output and ends with one `done` line. No daemon listening means
//! "do it in-process": `call` returns `Ok(None)` then.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::ask::Ask;
use crate::model::error::Exit;
use crate::model::error::{Context, Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Run what the ask calls for.
    Run(Ask),
    /// One pull cycle now: fetch every remote, fast-forward, then run what is due (`Ask::Tick`).
    Pull,
    /// How the daemon is: one `Output` holding a [`DaemonStatus`] as JSON, then `Done`.
    Status,
}

/// What a running daemon says of itself, for `troops status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at: String,
    /// When the next pull cycle is due.
    pub next_pull_at: Option<String>,
    /// When the failed tip is tried again, if one failed.
    pub retry_at: Option<String>,
    /// Why `[metrics] listen` is not served now (the daemon keeps trying to bind it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// A chunk of the run's output, as produced.
    Output(String),
    /// The end: what the client should exit with, and an error message if it failed before or
    /// outside a run.
    Done(Done),
}

/// How a request the daemon served ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub exit: Exit,
    pub error: Option<String>,
}

/// What `troops status` learns of the daemon at a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// None listens: each trigger runs the plan itself.
    Absent,
    Serving(DaemonStatus),
    /// It would not say, or we may not ask (a peer outside `admin_group`): why.
    Refused(String),
    /// Something holds the socket but does not answer in time, or answers nonsense: what is
    /// sent there is not served.
    NotServing(String),
}

/// How long `troops status` waits for the daemon's answer, which comes at once from a healthy one.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the daemon at `socket` how it is, waiting at most `STATUS_TIMEOUT`.
pub fn daemon_status(socket: &Path) -> Daemon {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = socket.to_owned();
    // A wedged daemon may not even accept the connection: the whole exchange runs on a thread
    // that is left behind when it takes too long.
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let daemon = match call(&path, &Request::Status, &mut out) {
            Ok(None) => Daemon::Absent,
            Ok(Some(Done { exit: Exit::Success, error: None })) => match serde_json::from_slice(&out) {
                Ok(status) => Daemon::Serving(status),
                Err(e) => Daemon::NotServing(format!(
                    "the daemon at {} answered {:?}: {e}",
                    path.display(),
                    String::from_utf8_lossy(&out)
                )),
            },
            Ok(Some(Done { error, .. })) => {
                Daemon::Refused(error.unwrap_or_else(|| "it gave no reason".into()))
            }
            Err(Error::Io { context, source }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Daemon::Refused(format!("{context}: {source}"))
            }
            Err(e) => Daemon::NotServing(e.to_string()),
        };
        let _ = tx.send(daemon);
    });
    rx.recv_timeout(STATUS_TIMEOUT).unwrap_or_else(|_| {
        Daemon::NotServing(format!(
            "the daemon at {} did not answer within {}s",
            socket.display(),
            STATUS_TIMEOUT.as_secs()
        ))
    })
}

/// Sends `request` to the daemon at `socket`, copying its output to `out`; returns how it ended,
/// or `None` when no daemon listens there.
pub fn call(socket: &Path, request: &Request, out: &mut dyn Write) -> Result<Option<Done>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::path("connecting to the daemon at", socket, e)),
    };
    let context = || format!("talking to the daemon at {}", socket.display());
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).ctx(context)?;
    for line in BufReader::new(stream).lines() {
        let line = line.ctx(context)?;
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Output(text)) => {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Ok(Reply::Done(done)) => return Ok(Some(done)),
            Err(e) => return Err(Error::Env(format!("{}: bad reply {line:?}: {e}", context()))),
        }
    }
    Err(Error::Env(format!("{}: the daemon hung up before the end", context())))
}
