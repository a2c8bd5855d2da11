//! A small HTTP/1.1 GET over plain TCP, for health checks and cheap probes of static files: one
//! request per connection, a deadline on the whole exchange, a cap on what is read. No TLS: the
//! endpoints it is for are a node's own services on loopback and mirrors behind plain HTTP.

use crate::model::url::Url;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a GET brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, values trimmed, in the order they came.
    pub headers: Vec<(String, String)>,
    /// At most the `max_body` bytes asked for.
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a GET did not get a response, in words that finish "GET URL failed: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Url(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("the response is not HTTP: {0}")]
    Malformed(String),
    /// The response's first line, which is not an HTTP status line: the server's bytes, kept
    /// as they came so that a caller can mask them before it quotes them.
    #[error("the response is not HTTP: status line {0:?}")]
    StatusLine(String),
}

/// GETs `url` with `headers` added, within `timeout` for everything (connecting, sending,
/// reading), reading at most `max_body` bytes of the body.
pub fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    let url = Url::parse(url).map_err(HttpError::Url)?;
    let deadline = Instant::now() + timeout;
    let mut stream = connect(&url, deadline, timeout)?;
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\nUser-Agent: troops\r\n",
        url.path, url.port
    );
    for (name, value) in headers {
        if [name, value].iter().any(|s| s.contains(['\r', '\n'])) {
            return Err(HttpError::Url(format!("header {name:?} holds a line break")));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| io_error(e, timeout))?;

    // The head is small; the body is read up to the cap, through the declared framing.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Err(HttpError::Malformed("the response head is longer than 64 KiB".into()));
        }
        if read_some(&mut stream, &mut buf, deadline, timeout)? == 0 {
            return Err(HttpError::Malformed("the connection closed before the response head ended".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::StatusLine(status_line.to_owned()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = Response { status, headers, body: buf[head_end + 4..].to_vec() };
    let length = response.header("content-length").and_then(|l| l.parse::<usize>().ok());
    let chunked = response.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let want = if no_body { 0 } else { length.unwrap_or(usize::MAX).min(max_body) };
    let mut raw = std::mem::take(&mut response.body);
    loop {
        let done = if chunked { dechunk(&raw, max_body).is_some() } else { raw.len() >= want };
        if done || raw.len() > max_body.saturating_mul(2).saturating_add(64 * 1024) {
            break;
        }
        if read_some(&mut stream, &mut raw, deadline, timeout)? == 0 {
            break;
        }
    }
    response.body = if chunked {
        dechunk(&raw, max_body).unwrap_or_else(|| dechunk_partial(&raw, max_body))
    } else {
        raw.truncate(want.min(raw.len()));
        raw
    };
    Ok(response)
}

fn connect(url: &Url, deadline: Instant, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addr_text = format!("{}:{}", url.host, url.port);
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect { addr: addr_text.clone(), reason: e.to_string() })?
        .collect();
    let mut last = String::from("the name has no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(HttpError::Timeout(timeout)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(HttpError::Connect { addr: addr_text, reason: last })
}

/// Reads what is there into `buf`, waiting no later than `deadline`; 0 at the end of the stream.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Timeout(timeout));
    }
    stream.set_read_timeout(Some(left)).map_err(|e| io_error(e, timeout))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).map_err(|e| io_error(e, timeout))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn io_error(e: std::io::Error, timeout: Duration) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout(timeout),
        _ => HttpError::Io(e.to_string()),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The body of a whole chunked message (up to `max` bytes of it), `None` until the last chunk came.
fn dechunk(raw: &[u8], max: usize) -> Option<Vec<u8>> {
    let (body, complete) = chunks(raw, max);
    complete.then_some(body)
}

fn dechunk_partial(raw: &[u8], max: usize) -> Vec<u8> {
    chunks(raw, max).0
}

/// Walks the chunks in `raw`: what they hold (capped at `max`), and whether the last one came.
fn chunks(raw: &[u8], max: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&raw[at..], b"\r\n") else { return (body, false) };
        let size_text = String::from_utf8_lossy(&raw[at..at + line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else { return (body, false) };
        let start = at + line_end + 2;
        if size == 0 {
            return (body, true);
        }
        let end = start.saturating_add(size).min(raw.len());
        body.extend_from_slice(&raw[start..end]);
        body.truncate(max);
        if end < start + size || body.len() >= max {
            let full = body.len() >= max;
            return (body, full);
        }
        at = end + 2;
        if at > raw.len() {
            return (body, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troops_testkit::http::{HttpServer, Reply};

    /// A server answering its one request with `reply` as it is.
    fn serve_once(reply: &'static [u8]) -> HttpServer {
        HttpServer::script(vec![Reply::raw(reply)])
    }

    #[test]
    fn a_response_by_length_chunks_or_close_is_read_whole() {
        let r = get(
            &serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").url("/health"),
            &[],
            Duration::from_secs(5),
            1024,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let r = get(
            &serve_once(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            )
            .url("/health"),
            &[],
            Duration::from_secs(5),
            1024,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = get(
            &serve_once(b"HTTP/1.0 503 Busy\r\nETag: \"v1\"\r\n\r\nnot yet").url("/health"),
            &[],
            Duration::from_secs(5),
            3,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("ETag")), (503, &b"not"[..], Some("\"v1\"")));
    }

    #[test]
    fn silence_connection_refused_and_garbage_are_errors() {
        let timeout = Duration::from_millis(200);
        // One that never answers; one that answers a byte every 20 ms, which no single read waits
        // 200 ms for: the deadline is on the whole exchange, so neither is read whole.
        let silent = HttpServer::start(|_| Reply::silent());
        let slow = HttpServer::start(|_| Reply::new(200, "x".repeat(100)).slowly(Duration::from_millis(20)));
        for server in [&silent, &slow] {
            assert_eq!(get(&server.url("/"), &[], timeout, 1000), Err(HttpError::Timeout(timeout)));
        }
        let url = silent.url("/");
        drop(silent);
        assert!(matches!(get(&url, &[], Duration::from_secs(2), 10), Err(HttpError::Connect { .. })));
        assert!(matches!(
            get(&serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").url("/"), &[], Duration::from_secs(2), 10),
            Err(HttpError::StatusLine(line)) if line == "SSH-2.0-OpenSSH"
        ));
        assert!(get("http://127.0.0.1:1/", &[("X", "a\r\nb")], Duration::from_secs(1), 1).is_err());
    }
}
