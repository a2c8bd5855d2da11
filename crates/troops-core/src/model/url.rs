//! An `http://` URL as troops reads one: host, port and path, refused with a reason when it is
//! something else. For the plan's `http` checks, checked when the plan is read, and for the GET
//! that probes them.

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL (troops speaks plain HTTP only)"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no host, or has user info"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]:8080` or `host:8080`; a bare `[::1]` has no port after its `]`.
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse().map_err(|_| format!("{url:?} has a bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(format!("{url:?} has spaces or control characters"));
        }
        Ok(Url { host: host.to_owned(), port, path: path.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_refused_with_the_reason() {
        let url = Url::parse("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("127.0.0.1", 8080, "/health?x=1"));
        let url = Url::parse("http://[::1]:81").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("::1", 81, "/"));
        assert_eq!(Url::parse("http://example.com/").unwrap().port, 80);
        for bad in ["https://x/", "x:80", "http://", "http://a:b/", "http://u@h/", "http://h/a b"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
