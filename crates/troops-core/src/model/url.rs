//! An `http://` or `https://` URL as troops reads one: scheme, host, port and path, refused with a
//! reason when it is something else. For the plan's `http` checks, checked when the plan is read,
//! for the GET that probes them, and for the `Location` of a redirect, which a server wrote.

use std::fmt;
use std::path::PathBuf;

/// The two schemes troops' HTTP client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `http[s]://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Without the brackets of an IPv6 address.
    pub host: String,
    pub port: u16,
    /// Starts with `/`, and holds the query if there is one.
    pub path: String,
}

/// Whose signature an `https://` server's certificate must bear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// A CA of this host's store (as git's fetches trust: /etc/ssl/certs, or `SSL_CERT_FILE`).
    System,
    /// The CAs in this PEM file, and no other (a check's `ca`; relative: to the run's checkout).
    CaFile(PathBuf),
    /// None: any certificate is taken (a check's `insecure_skip_verify`, said at every run).
    Off,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no host, or has user info"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]:8080` or `host:8080`; a bare `[::1]` has no port after its `]`.
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse().map_err(|_| format!("{url:?} has a bad port {port:?}"))?;
                (host, port)
            }
            _ => (authority, scheme.default_port()),
        };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) {
            return Err(format!("{url:?} has a bad host {host:?}"));
        }
        if path.chars().any(|c| c.is_ascii_control() || c == ' ' || c == '#' || !c.is_ascii()) {
            return Err(format!(
                "{url:?} has spaces, control characters, a fragment or non-ASCII in its path"
            ));
        }
        Ok(Url { scheme, host: host.to_owned(), port, path })
    }

    /// The URL a redirect's `Location` names, read against this one: absolute, without its
    /// scheme (`//host/path`), absolute-path (`/path`) or relative to this path's directory.
    pub fn join(&self, location: &str) -> Result<Url, String> {
        let location = location.trim();
        if location.contains("://") {
            return Url::parse(location);
        }
        if location.starts_with("//") {
            return Url::parse(&format!("{}:{location}", self.scheme.as_str()));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            format!("{}{location}", &base[..=base.rfind('/').unwrap_or(0)])
        };
        Url::parse(&format!("{}{path}", self.origin()))
    }

    /// `scheme://host[:port]`, the port only when it is not the scheme's own.
    fn origin(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port == self.scheme.default_port() {
            true => format!("{}://{host}", self.scheme.as_str()),
            false => format!("{}://{host}:{}", self.scheme.as_str(), self.port),
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_are_parsed_or_refused_with_the_reason() {
        let url = Url::parse("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("127.0.0.1", 8080, "/health?x=1"));
        let url = Url::parse("http://[::1]:81").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("::1", 81, "/"));
        assert_eq!(Url::parse("http://example.com/").unwrap().port, 80);
        let url = Url::parse("https://example.com?x").unwrap();
        assert_eq!((url.scheme, url.port, url.path.as_str()), (Scheme::Https, 443, "/?x"));
        for bad in [
            "ftp://x/",
            "x:80",
            "http://",
            "http://a:b/",
            "http://u@h/",
            "http://h/a b",
            "https://h/#f",
            "http://h h/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_location_is_read_against_the_url_it_came_from() {
        let base = Url::parse("https://mirror:8443/deploy.git/info/refs?x=1").unwrap();
        let joined = |location: &str| base.join(location).map(|u| u.to_string());
        assert_eq!(joined("/other.git/info/refs"), Ok("https://mirror:8443/other.git/info/refs".into()));
        assert_eq!(joined("refs2"), Ok("https://mirror:8443/deploy.git/info/refs2".into()));
        assert_eq!(joined("//cdn/a"), Ok("https://cdn/a".into()));
        assert_eq!(joined("http://cdn:80/a"), Ok("http://cdn/a".into()));
        assert_eq!(joined("https://[::1]:9/"), Ok("https://[::1]:9/".into()));
        assert!(joined("ftp://x/").is_err());
    }

    proptest! {
        /// A server writes the `Location`: whatever it holds, reading it never panics, and what
        /// is read prints as a URL that reads back the same.
        #[test]
        fn any_location_is_read_or_refused_never_a_panic(location in any::<String>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let base = Url::parse("http://h:1/a/b?q").unwrap();
            for text in [location, String::from_utf8_lossy(&bytes).into_owned()] {
                for url in [Url::parse(&text), base.join(&text)].into_iter().flatten() {
                    prop_assert_eq!(Url::parse(&url.to_string()), Ok(url));
                }
            }
        }

        #[test]
        fn any_url_shaped_text_is_read_or_refused_never_a_panic(text in "(https?://)?(\\[?[a-z0-9:.@\\]]{0,12})(:[0-9a-z]{0,6})?[/?#a-z %]{0,8}") {
            if let Ok(url) = Url::parse(&text) {
                prop_assert!(url.path.starts_with('/'));
                prop_assert_eq!(Url::parse(&url.to_string()), Ok(url));
            }
        }
    }
}
