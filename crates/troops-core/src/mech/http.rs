//! troops' one HTTP client: a GET over `http://` or `https://`, for health checks and the cheap
//! probe of a mirror's `info/refs`, and a POST of JSON, for a FleetLock server (`fleetlock`), which
//! follows no redirect. A deadline on the whole exchange (name lookup, connecting, the
//! TLS handshake, the answer), a cap on the body read, no connection kept between GETs, no proxy
//! (the probe is only ever a shortcut, and a check is of this host's own services). Redirects are
//! followed at most [`MAX_REDIRECTS`] times and never to another scheme: an `https://` check or
//! mirror that sends troops to `http://` is refused, not quietly read in the clear.
//!
//! Why these parts: `ureq` is a small, blocking, well-kept client (the daemon calls this from
//! its blocking threads; no runtime of its own, no pool to keep), which frames bodies (length,
//! chunks, close) and reads HTTP/1.0 and 1.1 where troops used to hand-parse them. TLS is rustls
//! (memory-safe, no OpenSSL: troops dropped libssl for its 3 MiB of resident pages) with ring as
//! its crypto: a compact, audited, widely used provider (aws-lc-rs, rustls' default, is several
//! times its size; a RustCrypto provider is not yet one to trust with TLS). rustls 0.23.48 marks
//! ring deprecated for want of post-quantum key exchange, which guards secrets recorded today
//! against decryption decades on: a health answer and a list of refs are not such secrets.
//! The CAs trusted are the system's store as git's fetches trust it (`/etc/ssl/certs`, or
//! `SSL_CERT_FILE`), read by rustls-native-certs the first time an `https://` URL is used, and
//! kept; a daemon that never sees one never pays for them. A check can name its own CA file
//! instead, or (loudly) skip verification. Each GET makes its own agent (its deadline is the
//! GET's), so each is a full TLS handshake: no session is resumed from one probe to the next.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::model::url::{Scheme, Url, Verify};

/// The most redirects one GET follows.
pub const MAX_REDIRECTS: usize = 5;
/// The most of a response head read.
const MAX_HEAD: usize = 64 * 1024;

/// What a GET brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, values as sent, in the order they came.
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
    /// The server's certificate is not one to believe: unknown issuer, name mismatch, expired.
    #[error("the certificate of {host} is not trusted: {reason}")]
    Certificate { host: String, reason: String },
    #[error("the TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("{0}")]
    Redirect(String),
    #[error("{0}")]
    Io(String),
    #[error("the response is not HTTP: {0}")]
    Malformed(String),
}

/// GETs `url` with `headers` added, within `timeout` for everything (redirects included), reading
/// at most `max_body` bytes of the body; an `https://` server's certificate must be signed as
/// `verify` says (relative CA file paths are the caller's to resolve).
pub fn get(
    url: &str,
    verify: &Verify,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut url = Url::parse(url).map_err(HttpError::Url)?;
    let roots = match url.scheme {
        Scheme::Https => Some(roots(verify)?),
        Scheme::Http => None,
    };
    for _ in 0..=MAX_REDIRECTS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        let response = once(&url, roots.clone(), verify, headers, None, left, max_body)
            .map_err(|e| explain(e, &url, verify, timeout))?;
        if !matches!(response.status, 301 | 302 | 303 | 307 | 308) {
            return Ok(response);
        }
        let status = response.status;
        let location = response
            .header("location")
            .ok_or_else(|| HttpError::Redirect(format!("{url} answered {status} with no Location")))?;
        let next = url.join(location).map_err(|e| {
            HttpError::Redirect(format!("{url} answered {status} to a Location troops cannot follow: {e}"))
        })?;
        if next.scheme != url.scheme {
            return Err(HttpError::Redirect(format!(
                "{url} answered {status} to {next}: redirects are followed within {}:// only, never to another scheme",
                url.scheme.as_str()
            )));
        }
        url = next;
    }
    Err(HttpError::Redirect(format!("more than {MAX_REDIRECTS} redirects (the last to {url})")))
}

/// POSTs the JSON `body` to `url` with `headers` added, within `timeout`, reading at most
/// `max_body` bytes of the answer; a redirect is an answer like any other (not followed: a POST
/// that was meant for one server goes to no other).
pub fn post_json(
    url: &str,
    verify: &Verify,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    let url = Url::parse(url).map_err(HttpError::Url)?;
    let roots = match url.scheme {
        Scheme::Https => Some(roots(verify)?),
        Scheme::Http => None,
    };
    once(&url, roots, verify, headers, Some(body), timeout, max_body)
        .map_err(|e| explain(e, &url, verify, timeout))
}

/// One GET of `url` (or, with a `body`, a POST of JSON), no redirect followed.
fn once(
    url: &Url,
    roots: Option<RootCerts>,
    verify: &Verify,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, ureq::Error> {
    // rustls 0.23.48 deprecates ring for its want of post-quantum key exchange: what travels here
    // (a health answer, a list of refs) is no secret to keep for decades, and ring is the
    // smallest well-kept provider (see the module's head).
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // X25519 first: ring's list puts P-384 first, whose key exchange costs an OpenSSL server
    // (nginx) some 2 ms of CPU a handshake, more than all the rest of a 304 over TLS (0.9 ms).
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    let mut tls = TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(provider))
        .disable_verification(*verify == Verify::Off);
    if let Some(roots) = roots {
        tls = tls.root_certs(roots);
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .max_response_header_size(MAX_HEAD)
            .proxy(None)
            .user_agent("troops")
            .tls_config(tls.build())
            .build(),
    );
    let response = match body {
        None => {
            let mut request = agent.get(url.to_string());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.call()?
        }
        Some(body) => {
            let mut request = agent.post(url.to_string()).header("content-type", "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send(body)?
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = Vec::new();
    response.into_body().into_reader().take(max_body as u64).read_to_end(&mut body)?;
    Ok(Response { status, headers, body })
}

/// The CAs an `https://` GET trusts, as `verify` says: the system's, read once and kept; a CA
/// file's, read at every GET (a step may have just written it); none.
fn roots(verify: &Verify) -> Result<RootCerts, HttpError> {
    static SYSTEM: Mutex<Option<RootCerts>> = Mutex::new(None);
    match verify {
        Verify::Off => Ok(RootCerts::Specific(Arc::new(Vec::new()))),
        Verify::CaFile(path) => ca_file(path),
        Verify::System => {
            let mut system = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(roots) = &*system {
                return Ok(roots.clone());
            }
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found.errors.first().map_or("none found".to_owned(), |e| e.to_string());
                return Err(HttpError::Tls {
                    host: "this host".into(),
                    reason: format!(
                        "no CA certificates in the system store (/etc/ssl/certs, or SSL_CERT_FILE): {why}"
                    ),
                });
            }
            let certs = found.certs.iter().map(|der| Certificate::from_der(der).to_owned());
            Ok(system.insert(RootCerts::from(certs)).clone())
        }
    }
}

fn ca_file(path: &Path) -> Result<RootCerts, HttpError> {
    let fail = |reason: String| HttpError::CaFile { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) = item.map_err(|e| fail(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(fail("it holds no PEM certificate".into()));
    }
    Ok(RootCerts::from(certs))
}

/// What went wrong with a GET of `url`, in words.
fn explain(error: ureq::Error, url: &Url, verify: &Verify, timeout: Duration) -> HttpError {
    let host = url.host.clone();
    let tls = match &error {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    if let Some(e) = tls {
        return match e {
            rustls::Error::InvalidCertificate(cert) => {
                HttpError::Certificate { host, reason: certificate(cert, verify) }
            }
            _ => HttpError::Tls { host, reason: e.to_string() },
        };
    }
    use std::io::ErrorKind;
    match error {
        ureq::Error::Timeout(_) => HttpError::Timeout(timeout),
        ureq::Error::HostNotFound => {
            HttpError::Connect { addr: host, reason: "the name has no address".into() }
        }
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            ) =>
        {
            HttpError::Connect { addr: format!("{}:{}", url.host, url.port), reason: e.to_string() }
        }
        ureq::Error::Io(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            HttpError::Timeout(timeout)
        }
        ureq::Error::Io(e) if e.kind() == ErrorKind::UnexpectedEof => {
            HttpError::Malformed("the connection closed before the response ended".into())
        }
        ureq::Error::Io(e) => HttpError::Io(e.to_string()),
        ureq::Error::Protocol(e) => HttpError::Malformed(e.to_string()),
        ureq::Error::LargeResponseHeader(..) => {
            HttpError::Malformed(format!("the response head is longer than {} KiB", MAX_HEAD / 1024))
        }
        ureq::Error::Http(e) => HttpError::Url(format!("a header troops cannot send: {e}")),
        ureq::Error::BadUri(e) => HttpError::Url(e),
        e => HttpError::Io(e.to_string()),
    }
}

/// Why a certificate is not believed, in words that say what to look at first.
fn certificate(error: &rustls::CertificateError, verify: &Verify) -> String {
    use rustls::CertificateError as E;
    match error {
        E::UnknownIssuer => match verify {
            Verify::CaFile(path) => format!("unknown issuer: it is not signed by the CA in {}", path.display()),
            _ => "unknown issuer: it is not signed by a CA of this host's store (a private CA? name it with `ca`)"
                .into(),
        },
        E::NotValidForName | E::NotValidForNameContext { .. } => format!("name mismatch: {error}"),
        E::Expired | E::ExpiredContext { .. } => format!("expired: {error}"),
        E::NotValidYet | E::NotValidYetContext { .. } => format!("not valid yet: {error}"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troops_testkit::http::{HttpServer, Reply};
    use troops_testkit::tls::TestCa;

    const WAIT: Duration = Duration::from_secs(5);

    /// A server answering its one request with `reply` as it is.
    fn serve_once(reply: &'static [u8]) -> HttpServer {
        HttpServer::script(vec![Reply::raw(reply)])
    }

    fn plain(url: &str, max_body: usize) -> Result<Response, HttpError> {
        get(url, &Verify::System, &[], WAIT, max_body)
    }

    #[test]
    fn a_response_by_length_chunks_or_close_is_read_whole() {
        let r =
            plain(&serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").url("/health"), 1024)
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let r = plain(
            &serve_once(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            )
            .url("/health"),
            1024,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = plain(&serve_once(b"HTTP/1.0 503 Busy\r\nETag: \"v1\"\r\n\r\nnot yet").url("/health"), 3)
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
            assert_eq!(
                get(&server.url("/"), &Verify::System, &[], timeout, 1000),
                Err(HttpError::Timeout(timeout))
            );
        }
        let url = silent.url("/");
        drop(silent);
        assert!(matches!(plain(&url, 10), Err(HttpError::Connect { .. })), "{:?}", plain(&url, 10));
        let garbage = plain(&serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").url("/"), 10);
        assert!(matches!(garbage, Err(HttpError::Malformed(_))), "{garbage:?}");
        assert!(get("http://127.0.0.1:1/", &Verify::System, &[("X", "a\r\nb")], WAIT, 1).is_err());
    }

    #[test]
    fn redirects_are_followed_five_times_within_one_scheme() {
        let hops = HttpServer::start(|r| match r.target.trim_start_matches('/').parse::<u32>() {
            Ok(n) if n < 9 => Reply::new(302, "").header("Location", &format!("/{}", n + 1)),
            _ => Reply::new(200, "arrived"),
        });
        let r = plain(&hops.url("/4"), 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"arrived"[..]));
        let e = plain(&hops.url("/1"), 100).unwrap_err();
        assert!(e.to_string().starts_with("more than 5 redirects"), "{e}");

        let ca = TestCa::new();
        let tls = HttpServer::start_tls(&ca.server("127.0.0.1"), |_| {
            Reply::new(301, "").header("Location", "http://127.0.0.1:1/health")
        });
        let e = get(&tls.url("/health"), &Verify::CaFile(ca.path()), &[], WAIT, 100).unwrap_err();
        assert!(
            e.to_string().ends_with("to http://127.0.0.1:1/health: redirects are followed within https:// only, never to another scheme"),
            "{e}"
        );
        let e =
            plain(&serve_once(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n").url("/"), 10).unwrap_err();
        assert!(e.to_string().ends_with("answered 302 with no Location"), "{e}");
    }

    #[test]
    fn https_is_read_when_the_certificate_is_signed_and_refused_with_the_reason_when_not() {
        let ca = TestCa::new();
        let good = HttpServer::start_tls(&ca.server("127.0.0.1"), |_| Reply::new(200, "ok over tls"));
        let r = get(&good.url("/health"), &Verify::CaFile(ca.path()), &[], WAIT, 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok over tls"[..]));
        assert!(good.url("/").starts_with("https://127.0.0.1:"));

        // Not signed by a CA the GET trusts (the system's store knows no test CA).
        let e = get(&good.url("/health"), &Verify::System, &[], WAIT, 100).unwrap_err();
        assert!(
            e.to_string().starts_with("the certificate of 127.0.0.1 is not trusted: unknown issuer"),
            "{e}"
        );
        let other = TestCa::new();
        let e = get(&good.url("/health"), &Verify::CaFile(other.path()), &[], WAIT, 100).unwrap_err();
        assert!(e.to_string().contains("unknown issuer: it is not signed by the CA in "), "{e}");
        // Signed, but for another name; signed, but expired.
        let wrong = HttpServer::start_tls(&ca.server("mirror.example"), |_| Reply::new(200, "ok"));
        let e = get(&wrong.url("/"), &Verify::CaFile(ca.path()), &[], WAIT, 100).unwrap_err();
        assert!(e.to_string().contains("is not trusted: name mismatch: "), "{e}");
        let expired = HttpServer::start_tls(&ca.expired_server("127.0.0.1"), |_| Reply::new(200, "ok"));
        let e = get(&expired.url("/"), &Verify::CaFile(ca.path()), &[], WAIT, 100).unwrap_err();
        assert!(e.to_string().contains("is not trusted: expired: "), "{e}");
        // Told not to look, it reads them all.
        for server in [&good, &wrong, &expired] {
            assert_eq!(get(&server.url("/"), &Verify::Off, &[], WAIT, 100).unwrap().status, 200);
        }
        // A CA file that is not there, or holds no certificate.
        let e =
            get(&good.url("/"), &Verify::CaFile("/nonexistent/ca.pem".into()), &[], WAIT, 100).unwrap_err();
        assert!(e.to_string().starts_with("cannot read the CA file /nonexistent/ca.pem: "), "{e}");
        // TLS spoken to a plain server (one that answers at once, as a plain HTTP server does
        // to what it cannot read), and plain HTTP to a TLS one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let e = get(&url, &Verify::Off, &[], WAIT, 100).unwrap_err();
        assert!(e.to_string().starts_with("the TLS handshake with 127.0.0.1 failed: "), "{e}");
        assert!(plain(&good.url("/").replace("https:", "http:"), 100).is_err());
    }
}
