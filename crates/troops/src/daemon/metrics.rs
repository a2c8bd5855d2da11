//! `[metrics] listen`: the daemon's `GET /metrics`, for Prometheus to scrape. A small HTTP/1.1
//! responder on the daemon's loop: one request per connection, its head bounded in size and time,
//! a bounded number of connections at once, and the metrics read on a blocking thread, so that no
//! client can stall the loop or grow the daemon. Anything but `GET /metrics` gets 404 (or 405).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use troops_core::config::Config;
use troops_core::node::Node;

/// The largest request head read; the request line of a scrape is far shorter.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;

/// Binds `addr` and serves it from a task of the daemon's loop. A port that cannot be bound is
/// logged and the daemon goes on without the listener: deploys matter more than metrics.
pub async fn start(addr: SocketAddr, state_dir: PathBuf, config: watch::Receiver<Arc<Config>>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot listen for metrics; going on without /metrics");
            return;
        }
    };
    tracing::info!(%addr, "serving /metrics");
    tokio::spawn(serve(listener, state_dir, config));
}

async fn serve(listener: TcpListener, state_dir: PathBuf, config: watch::Receiver<Arc<Config>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait a little rather than spin.
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = Node { state_dir: state_dir.clone(), config: (**config.borrow()).clone() };
        tokio::spawn(async move {
            if tokio::time::timeout(TIMEOUT, answer(stream, node)).await.is_err() {
                tracing::debug!("metrics listener: a client was too slow; dropped");
            }
            drop(slot);
        });
    }
}

/// Reads one request head and answers it; the connection closes after.
async fn answer(mut stream: TcpStream, node: Node) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"").await;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = std::str::from_utf8(line).unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found; try /metrics\n").await;
    }
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET\n").await;
    }
    let rendered = tokio::task::spawn_blocking(move || {
        troops_core::metrics::snapshot(&node).map(|s| troops_core::metrics::render(&s))
    })
    .await;
    match rendered {
        Ok(Ok(text)) => {
            respond(&mut stream, "200 OK", troops_core::metrics::CONTENT_TYPE, text.as_bytes()).await
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "metrics could not be read");
            let body = format!("{error}\n");
            respond(&mut stream, "500 Internal Server Error", "text/plain", body.as_bytes()).await
        }
        Err(error) => {
            tracing::error!(%error, "reading the metrics panicked");
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
