//! A test HTTP server on 127.0.0.1 for health checks: it answers request `n` (counted from 1) with
//! whatever the test's function says, so a test can make a service healthy, failing, late or
//! turning bad, and count the probes it got. It stops when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

pub struct HttpServer {
    pub port: u16,
    requests: Arc<AtomicU32>,
    stopped: Arc<AtomicBool>,
}

impl HttpServer {
    /// Serves `answer(n)`, a status and a body, to request `n`.
    pub fn start(answer: impl Fn(u32) -> (u16, String) + Send + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU32::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (count, stop) = (requests.clone(), stopped.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let (status, body) = answer(count.fetch_add(1, Ordering::SeqCst) + 1);
                let reply = format!(
                    "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        HttpServer { port, requests, stopped }
    }

    /// Always `status` with `body`.
    pub fn answering(status: u16, body: &str) -> HttpServer {
        let body = body.to_owned();
        HttpServer::start(move |_| (status, body.clone()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many requests it has answered (or is answering).
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop to see it
    }
}
