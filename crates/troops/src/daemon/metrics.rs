//! `[metrics] listen`: the daemon's `GET /metrics`, for Prometheus to scrape. A small HTTP/1.1
//! responder on the daemon's loop: one request per connection, its head bounded in size and time,
//! and the metrics read on a blocking thread, so that no client can stall the loop or grow the
//! daemon. Open connections are bounded too, and a new one past the bound closes the oldest: a
//! scraper's connection is always the newest, so clients that connect and say nothing never keep
//! a scrape waiting. Anything but `GET /metrics` gets 404 (or 405). The responder serves one
//! [`Route`]; `troops fleet serve` answers its page with it too, bounded alike.
//!
//! A port that cannot be bound (another process holds it: one that could answer scrapes with
//! numbers of its own) does not stop the daemon, since deploys matter more than metrics, but it
//! is not quiet either: the daemon logs it, says it in `troops status` and systemd's STATUS, and
//! tries to bind again, every 30 s at most, until it can.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use troops_core::model::config::Config;
use troops_core::model::node::Node;

use super::events::{Event, Events};

/// The largest request head read; the request line of a scrape is far shorter.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; one more closes the oldest.
const MAX_CONNECTIONS: usize = 32;
/// The first wait before binding again after a failure; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Binds `addr` and serves it from a task of the daemon's loop; when it cannot be bound, returns
/// why (so the daemon says it before it tells systemd it is ready), tells the loop again whenever
/// the reason changes or the port is bound at last, and keeps trying from a task, serving once it
/// can.
pub async fn start(
    addr: SocketAddr,
    state_dir: PathBuf,
    config: watch::Receiver<Arc<Config>>,
    events: Events,
) -> Option<String> {
    let first = TcpListener::bind(addr).await;
    let problem = first.as_ref().err().map(|error| complain(addr, error));
    tokio::spawn(bind_and_serve(addr, first, problem.clone(), state_dir, config, events));
    problem
}

/// Tries to bind `addr` until it can (after `attempt`, whose failure the loop heard as `said`),
/// telling the loop whenever the reason changes and once it is bound; then serves it.
async fn bind_and_serve(
    addr: SocketAddr,
    mut attempt: std::io::Result<TcpListener>,
    mut said: Option<String>,
    state_dir: PathBuf,
    config: watch::Receiver<Arc<Config>>,
    events: Events,
) {
    let mut wait = RETRY_FIRST;
    let listener = loop {
        match attempt {
            Ok(listener) => break listener,
            Err(error) => {
                let problem = problem(addr, &error);
                if said.as_ref() != Some(&problem) {
                    let _ = events.send(Event::MetricsServed(Some(complain(addr, &error))));
                    said = Some(problem);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
                attempt = TcpListener::bind(addr).await;
            }
        }
    };
    if said.is_some() {
        let _ = events.send(Event::MetricsServed(None));
    }
    tracing::info!(%addr, "serving /metrics");
    serve(listener, metrics(state_dir, config)).await
}

/// `GET /metrics`: the node's metrics, read with the config as it is now.
fn metrics(state_dir: PathBuf, config: watch::Receiver<Arc<Config>>) -> Route {
    Route {
        path: "/metrics",
        content_type: troops_core::mech::metrics::CONTENT_TYPE,
        body: Arc::new(move || {
            let node = Node { state_dir: state_dir.clone(), config: (**config.borrow()).clone() };
            troops_core::node::state::metrics(&node).map_err(|error| error.to_string())
        }),
    }
}

/// The one path a listener answers, and its body, made afresh on a blocking thread for each GET
/// (an `Err` is answered 500, with its words).
#[derive(Clone)]
pub(crate) struct Route {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

/// Logs that `addr` cannot be bound, and says why for `troops status` and systemd.
fn complain(addr: SocketAddr, error: &std::io::Error) -> String {
    tracing::error!(%addr, %error, "/metrics NOT SERVED; the daemon goes on, and tries to bind again");
    problem(addr, error)
}

/// Why `addr` cannot be bound, in a sentence for `troops status` and systemd.
fn problem(addr: SocketAddr, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{addr} is taken by another process, which may answer scrapes there with numbers of its own ({error}); trying again"
        ),
        _ => format!("cannot listen on {addr} ({error}); trying again"),
    }
}

/// Answers `route` on `listener`'s connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, route: Route) {
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait a little rather than spin.
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        if open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
                tracing::debug!("metrics listener: {MAX_CONNECTIONS} connections open; closed the oldest");
            }
        }
        let route = route.clone();
        let task = tokio::spawn(async move {
            if tokio::time::timeout(TIMEOUT, answer(stream, route)).await.is_err() {
                tracing::debug!("metrics listener: a client was too slow; dropped");
            }
        });
        open.push_back(task.abort_handle());
    }
}

/// What a client's first bytes asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// The request line's method and path (without the query); empty when it has none.
    Request { method: String, path: String },
    /// A head longer than [`MAX_HEAD`].
    TooLarge,
    /// The client closed, or failed, before its head ended.
    Gone,
}

/// Reads a request head from `stream`, at most [`MAX_HEAD`] bytes and one read more.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Asked {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Asked::Gone,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return Asked::TooLarge;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = std::str::from_utf8(line).unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    Asked::Request { method: method.to_owned(), path: path.to_owned() }
}

/// Reads one request head and answers it; the connection closes after.
async fn answer(mut stream: TcpStream, route: Route) {
    let (method, path) = match read_head(&mut stream).await {
        Asked::Request { method, path } => (method, path),
        Asked::TooLarge => {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"").await
        }
        Asked::Gone => return,
    };
    if path != route.path {
        let body = format!("not found; try {}\n", route.path);
        return respond(&mut stream, "404 Not Found", "text/plain", body.as_bytes()).await;
    }
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET\n").await;
    }
    let body = route.body.clone();
    let rendered = tokio::task::spawn_blocking(move || body()).await;
    match rendered {
        Ok(Ok(text)) => respond(&mut stream, "200 OK", route.content_type, text.as_bytes()).await,
        Ok(Err(error)) => {
            tracing::warn!(path = route.path, %error, "could not be read");
            let body = format!("{error}\n");
            respond(&mut stream, "500 Internal Server Error", "text/plain", body.as_bytes()).await
        }
        Err(error) => {
            tracing::error!(path = route.path, %error, "reading it panicked");
            respond(&mut stream, "500 Internal Server Error", "text/plain", b"").await
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `read_head` makes of `bytes` sent at once, and how many of them it read.
    fn asked(bytes: &[u8]) -> (Asked, usize) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rest = bytes;
        let asked = runtime.block_on(read_head(&mut rest));
        (asked, bytes.len() - rest.len())
    }

    #[test]
    fn a_scrape_is_read_and_anything_else_is_told_apart() {
        let request = |method: &str, path: &str| Asked::Request { method: method.into(), path: path.into() };
        assert_eq!(asked(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").0, request("GET", "/metrics"));
        assert_eq!(asked(b"POST /metrics\n\n").0, request("POST", "/metrics"));
        assert_eq!(asked(b"\r\n\r\n").0, request("", ""));
        assert_eq!(asked(b"GET /metrics HTTP/1.1\r\n").0, Asked::Gone);
        assert_eq!(asked(&[b'x'; MAX_HEAD + 1]).0, Asked::TooLarge);
    }

    proptest! {
        /// Whatever a client sends, reading its head never panics, reads at most one buffer past
        /// `MAX_HEAD`, and a request it finds has a method and a path without whitespace.
        #[test]
        fn any_bytes_are_read_within_the_bound_and_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            repeat in 0usize..12,
        ) {
            let sent = bytes.repeat(repeat.max(1));
            let (asked, read) = asked(&sent);
            prop_assert!(read <= MAX_HEAD + 1024, "read {read} bytes");
            match asked {
                Asked::Request { method, path } => {
                    prop_assert!(!method.contains(char::is_whitespace) && !path.contains(char::is_whitespace));
                    prop_assert!(!path.contains('?'));
                }
                Asked::TooLarge => prop_assert!(read > MAX_HEAD),
                Asked::Gone => prop_assert_eq!(read, sent.len()),
            }
        }

        /// A scrape with any headers after its request line is a scrape.
        #[test]
        fn a_get_of_metrics_with_any_headers_is_a_scrape(headers in "([A-Za-z-]{1,20}: [ -~]{0,40}\r\n){0,20}") {
            let sent = format!("GET /metrics HTTP/1.1\r\n{headers}\r\n");
            let expected = Asked::Request { method: "GET".into(), path: "/metrics".into() };
            prop_assert_eq!(asked(sent.as_bytes()).0, expected);
        }
    }
}
