//! The one fake HTTP server of the tests, on 127.0.0.1: health checks to make healthy, failing,
//! late or turning bad, mirrors to serve `info/refs` with ETags and 304s, and targets that never
//! answer or answer a byte at a time; over plain HTTP, or over TLS with a certificate of the test's
//! own (`start_tls`, see `crate::tls`). A test's function picks the reply to each request (numbered
//! from 1); the server records every request it got and what it answered. Each connection is
//! served on a thread of its own, so one held open holds up no other. Dropping the server closes
//! its port (before `drop` returns) and ends the connections it holds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::tls::ServerCert;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request head the server read.
#[derive(Debug, Clone)]
pub struct Request {
    /// Counted from 1, in the order the heads were read.
    pub n: u32,
    pub method: String,
    /// The path with its query, as sent.
    pub target: String,
    /// The whole head as sent, request line first, without the blank line that ends it.
    pub head: String,
    /// The body, as long as its `Content-Length` says (none without one).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// A request and the status the server answered it with: None when it answered nothing (a silent
/// reply, or raw bytes that are no status line).
#[derive(Debug, Clone)]
pub struct Served {
    pub request: Request,
    pub status: Option<u16>,
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub struct Reply {
    what: What,
    /// Between two bytes of the reply, when it is to come slowly.
    pause: Option<Duration>,
}

#[derive(Debug, Clone)]
enum What {
    Response { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    Raw(Vec<u8>),
    Silent,
}

impl Reply {
    /// `status` with `body`, its Content-Length (none for a 204 or 304) and `Connection: close`.
    pub fn new(status: u16, body: impl AsRef<[u8]>) -> Reply {
        let what = What::Response { status, headers: Vec::new(), body: body.as_ref().to_vec() };
        Reply { what, pause: None }
    }

    /// These bytes as they are, well-formed HTTP or not; then the connection closes.
    pub fn raw(bytes: impl AsRef<[u8]>) -> Reply {
        Reply { what: What::Raw(bytes.as_ref().to_vec()), pause: None }
    }

    /// No answer at all: the connection is held open until the client gives up (or the server
    /// is dropped).
    pub fn silent() -> Reply {
        Reply { what: What::Silent, pause: None }
    }

    /// The response with header `name: value` added.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match &mut self.what {
            What::Response { headers, .. } => headers.push((name.to_owned(), value.to_owned())),
            _ => panic!("only a Reply::new has headers to add to"),
        }
        self
    }

    /// The same bytes, one at a time, `pause` apart: a slow writer.
    pub fn slowly(self, pause: Duration) -> Reply {
        Reply { pause: Some(pause), ..self }
    }

    fn status(&self) -> Option<u16> {
        match &self.what {
            What::Response { status, .. } => Some(*status),
            What::Raw(bytes) => {
                let line = String::from_utf8_lossy(bytes.get(..12).unwrap_or_default()).into_owned();
                line.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)?.parse().ok())
            }
            What::Silent => None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.what {
            What::Response { status, headers, body } => {
                let mut head = format!("HTTP/1.1 {status} Test\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                if *status != 204 && *status != 304 {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                head.push_str("Connection: close\r\n\r\n");
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(body);
                bytes
            }
            What::Raw(bytes) => bytes.clone(),
            What::Silent => Vec::new(),
        }
    }
}

type Answer = dyn Fn(&Request) -> Reply + Send + Sync;

/// What the accepting thread and the connections share with the server's handle.
struct Shared {
    answer: Box<Answer>,
    requests: AtomicU32,
    served: Mutex<Vec<Served>>,
    stopped: AtomicBool,
    /// The connections held open (silent replies), by a number of their own, to end on drop.
    held: Mutex<Vec<(u64, TcpStream)>>,
    next_held: AtomicU64,
    /// Serving HTTPS with this.
    tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct HttpServer {
    pub port: u16,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Answers each request with `answer(request)`.
    pub fn start(answer: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> HttpServer {
        HttpServer::listen(None, answer)
    }

    /// Answers each request with `answer(request)`, over TLS with `cert`; `url` says `https://`.
    pub fn start_tls(
        cert: &ServerCert,
        answer: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        HttpServer::listen(Some(cert.server_config()), answer)
    }

    fn listen(
        tls: Option<Arc<rustls::ServerConfig>>,
        answer: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            answer: Box::new(answer),
            requests: AtomicU32::new(0),
            served: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            next_held: AtomicU64::new(0),
            tls,
        });
        let accepting = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(conn, &shared));
                }
            })
        };
        HttpServer { port, shared, accepting: Some(accepting) }
    }

    /// Always `status` with `body`.
    pub fn answering(status: u16, body: &str) -> HttpServer {
        let body = body.to_owned();
        HttpServer::start(move |_| Reply::new(status, &body))
    }

    /// Request `n` gets `replies[n - 1]`; one past the script gets a 500 saying so.
    pub fn script(replies: Vec<Reply>) -> HttpServer {
        HttpServer::start(move |request| {
            let n = request.n as usize;
            replies.get(n - 1).cloned().unwrap_or_else(|| {
                Reply::new(500, format!("request {n}, and the script has {} replies", replies.len()))
            })
        })
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.shared.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// How many requests it has read (answered, being answered, or held unanswered).
    pub fn requests(&self) -> u32 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request it has read so far, with what it answered, in order.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop to see it; once it has returned, the port is closed.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
        for (_, conn) in self.shared.held.lock().unwrap().iter() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(conn) => conn.read(buf),
            Conn::Tls(conn) => conn.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(conn) => conn.write(buf),
            Conn::Tls(conn) => conn.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(conn) => conn.flush(),
            Conn::Tls(conn) => conn.flush(),
        }
    }
}

impl Conn {
    /// The TCP connection under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(conn) => conn,
            Conn::Tls(conn) => &conn.sock,
        }
    }

    /// Ends what was written: over TLS, with the close_notify that tells the client the
    /// connection's end is the body's (a reply with no length) and not a cut.
    fn finish(&mut self) {
        if let Conn::Tls(conn) = self {
            conn.conn.send_close_notify();
            let _ = conn.flush();
        }
    }
}

/// Reads one request head from `conn` and answers it as the test's function says.
fn serve(conn: TcpStream, shared: &Shared) {
    let mut conn = match &shared.tls {
        None => Conn::Plain(conn),
        Some(config) => match rustls::ServerConnection::new(config.clone()) {
            Ok(tls) => Conn::Tls(Box::new(rustls::StreamOwned::new(tls, conn))),
            Err(_) => return,
        },
    };
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || conn.read(&mut byte).unwrap_or(0) == 0 {
            return; // Not a request: a port check, the wake-up on drop, a client that gave up.
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default());
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let mut request = Request { n, method, target: target.to_owned(), head, body: Vec::new() };
    let length: usize = request.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    request.body.resize(length.min(1 << 20), 0);
    if conn.read_exact(&mut request.body).is_err() {
        return;
    }
    let reply = (shared.answer)(&request);
    shared.served.lock().unwrap().push(Served { request, status: reply.status() });
    match (&reply.what, reply.pause) {
        (What::Silent, _) => hold(conn, shared),
        (_, None) => {
            if conn.write_all(&reply.bytes()).is_ok() {
                conn.finish();
            }
        }
        (_, Some(pause)) => {
            for byte in reply.bytes() {
                if shared.stopped.load(Ordering::SeqCst) || conn.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
            conn.finish();
        }
    }
}

/// Keeps `conn` open, answering nothing, until the client closes it or the server is dropped.
fn hold(mut conn: Conn, shared: &Shared) {
    let id = shared.next_held.fetch_add(1, Ordering::SeqCst);
    if let Ok(clone) = conn.tcp().try_clone() {
        shared.held.lock().unwrap().push((id, clone));
    }
    if !shared.stopped.load(Ordering::SeqCst) {
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
    }
    shared.held.lock().unwrap().retain(|(held, _)| *held != id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Sends `request` to the server, returns all it answered until it closed.
    fn exchange(server: &HttpServer, request: &str) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        conn.set_read_timeout(Some(crate::BUDGET)).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn each_request_gets_its_scripted_reply_and_is_recorded_with_it() {
        let server = HttpServer::script(vec![
            Reply::new(200, "one").header("ETag", "\"v1\""),
            Reply::new(304, ""),
            Reply::raw("HTTP/1.0 503 Busy\r\n\r\nnot yet"),
        ]);
        let get =
            |path: &str| exchange(&server, &format!("GET {path} HTTP/1.1\r\nIf-None-Match: \"v1\"\r\n\r\n"));
        assert_eq!(
            get("/a?x=1"),
            "HTTP/1.1 200 Test\r\nETag: \"v1\"\r\nContent-Length: 3\r\nConnection: close\r\n\r\none"
        );
        assert_eq!(get("/b"), "HTTP/1.1 304 Test\r\nConnection: close\r\n\r\n");
        assert_eq!(get("/c"), "HTTP/1.0 503 Busy\r\n\r\nnot yet");
        assert!(get("/d").ends_with("request 4, and the script has 3 replies"));
        let served = server.served();
        let seen: Vec<_> =
            served.iter().map(|s| (s.request.n, s.request.target.as_str(), s.status)).collect();
        assert_eq!(
            seen,
            [(1, "/a?x=1", Some(200)), (2, "/b", Some(304)), (3, "/c", Some(503)), (4, "/d", Some(500))]
        );
        assert_eq!(served[0].request.method, "GET");
        assert_eq!(served[0].request.header("if-none-match"), Some("\"v1\""));
        assert_eq!(server.requests(), 4);
    }

    #[test]
    fn a_silent_reply_holds_its_connection_without_holding_up_others_until_dropped() {
        let server =
            HttpServer::start(|r| if r.target == "/hang" { Reply::silent() } else { Reply::new(200, "ok") });
        let mut hung = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        hung.write_all(b"GET /hang HTTP/1.1\r\n\r\n").unwrap();
        crate::wait_until("the held request to be read", crate::BUDGET, || server.requests() == 1);
        assert!(exchange(&server, "GET / HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok"));
        assert_eq!(server.served()[0].status, None);
        hung.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let waiting = hung.read(&mut [0u8; 1]).unwrap_err().kind();
        assert!(
            matches!(waiting, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "{waiting:?}"
        );

        let port = server.port;
        drop(server);
        hung.set_read_timeout(Some(crate::BUDGET)).unwrap();
        assert_eq!(hung.read(&mut [0u8; 1]).unwrap(), 0, "the held connection ends with the server");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed when drop returns");
    }

    #[test]
    fn a_slow_reply_comes_a_byte_at_a_time() {
        let pause = Duration::from_millis(20);
        let server = HttpServer::start(move |_| Reply::new(200, "slow").slowly(pause));
        let started = Instant::now();
        let answer = exchange(&server, "GET / HTTP/1.1\r\n\r\n");
        assert!(answer.ends_with("\r\n\r\nslow"), "{answer}");
        // A lower bound only: every byte waited its pause, however fast the machine.
        assert!(started.elapsed() >= pause * answer.len() as u32, "{:?}", started.elapsed());
    }
}
