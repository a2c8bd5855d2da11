//! A cheap look at an `http://` remote before fetching it, so that a no-change poll costs its
//! mirror one conditional GET of a static file instead of a fetch. The file is the repo's
//! `info/refs` (what `git update-server-info` writes for "dumb" HTTP, which any web server, object
//! store or CDN serves and answers with 304 when it has not changed). When it lists the branch at
//! the tip this node already has, the fetch is skipped.
//!
//! The probe can only ever skip a fetch, never move the branch: an answer that lists another tip,
//! or none, or no answer at all means a real fetch, and the fetch decides. An "unchanged" is
//! trusted for `probe_trust` after the last real fetch, no longer, so a probe target that stays
//! stale (a CDN caching `info/refs`, a mirror that never runs `update-server-info`) delays a node
//! by at most that, never stalls it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::Oid;
use serde::{Deserialize, Serialize};

/// The most of `info/refs` that is read: a branch listed past it counts as not listed (a fetch).
const MAX_REFS: usize = 1024 * 1024;

/// What the last probe of one remote answered, and when it was last really fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeState {
    /// The URL probed: a remote whose URL changed starts afresh.
    pub url: String,
    /// The validators of the last 200, sent back as `If-None-Match` / `If-Modified-Since`.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The branch tip that last 200 listed (what a 304 means).
    pub listed: Option<String>,
    /// When the remote was last fetched for real, in seconds since the epoch.
    pub fetched_at: u64,
}

/// Where probe states are kept and how long an "unchanged" is trusted (zero: never probe).
#[derive(Debug, Clone)]
pub struct Probing {
    pub path: PathBuf,
    pub trust: Duration,
}

impl Probing {
    /// Probing for the node whose state dir is `state_dir` (`<state>/probes.json`).
    pub fn new(state_dir: &Path, trust: Duration) -> Probing {
        Probing { path: state_dir.join("probes.json"), trust }
    }

    /// The saved states by remote name; a missing or unreadable file is no state (fetch).
    pub fn load(&self) -> BTreeMap<String, ProbeState> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save(&self, states: &BTreeMap<String, ProbeState>) -> crate::Result<()> {
        let json = serde_json::to_vec_pretty(states).expect("probe states serialize");
        crate::atomic::write(&self.path, &json)
    }
}

/// The remotes a probe can look at: plain `http://` ones (troops' HTTP client speaks no TLS).
pub fn applies(url: &str) -> bool {
    url.starts_with("http://")
}

/// Whether `url`'s `branch` is still at `have` (the tip fetched from it last time), by a
/// conditional GET of `<url>/info/refs` within `timeout`. True only when the answer says so and
/// the last real fetch was less than `trust` ago; `state` keeps what the answer said.
pub fn unchanged(
    state: &mut ProbeState,
    url: &str,
    branch: &str,
    have: Option<Oid>,
    trust: Duration,
    timeout: Duration,
) -> bool {
    if state.url != url {
        *state = ProbeState { url: url.to_owned(), ..ProbeState::default() };
    }
    let Some(have) = have else { return false };
    if now().saturating_sub(state.fetched_at) >= trust.as_secs() {
        return false;
    }
    let mut headers = Vec::new();
    if let Some(etag) = &state.etag {
        headers.push(("If-None-Match", etag.as_str()));
    }
    if let Some(since) = &state.last_modified {
        headers.push(("If-Modified-Since", since.as_str()));
    }
    let target = format!("{}/info/refs", url.trim_end_matches('/'));
    let Ok(response) = crate::http::get(&target, &headers, timeout, MAX_REFS) else { return false };
    match response.status {
        304 => {}
        200 => {
            state.etag = response.header("etag").map(str::to_owned);
            state.last_modified = response.header("last-modified").map(str::to_owned);
            state.listed = listed_tip(&response.body, branch).map(|tip| tip.to_string());
        }
        _ => return false,
    }
    state.listed.as_deref() == Some(have.to_string().as_str())
}

/// Notes a real fetch of the remote just now.
pub fn fetched(state: &mut ProbeState) {
    state.fetched_at = now();
}

/// The tip `info/refs` lists for `branch` (lines of `<sha>\t<ref>`).
fn listed_tip(refs: &[u8], branch: &str) -> Option<Oid> {
    let wanted = format!("refs/heads/{branch}");
    String::from_utf8_lossy(refs)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(_, name)| *name == wanted)
        .and_then(|(sha, _)| Oid::from_str(sha).ok())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    /// A server answering each request with the next of `replies`; returns its URL and the
    /// request heads it saw.
    fn serve(replies: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/deploy.git", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for reply in replies {
                let (mut conn, _) = listener.accept().unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        (url, seen)
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }

    fn fresh(url: &str) -> ProbeState {
        ProbeState { url: url.to_owned(), fetched_at: now(), ..ProbeState::default() }
    }

    const TRUST: Duration = Duration::from_secs(600);
    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn the_same_tip_or_a_304_skips_and_sends_the_validator_back() {
        let refs = format!("{B}\trefs/heads/other\n{A}\trefs/heads/main\n");
        let (url, seen) = serve(vec![ok(&refs), "HTTP/1.1 304 Not Modified\r\n\r\n".into()]);
        let mut state = fresh(&url);
        let have = Some(Oid::from_str(A).unwrap());
        assert!(unchanged(&mut state, &url, "main", have, TRUST, WAIT));
        assert!(unchanged(&mut state, &url, "main", have, TRUST, WAIT));
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("GET /deploy.git/info/refs HTTP/1.1"), "{}", seen[0]);
        assert!(seen[1].contains("If-None-Match: \"v1\""), "{}", seen[1]);
    }

    #[test]
    fn another_tip_no_branch_an_error_or_silence_mean_a_fetch() {
        let have = Some(Oid::from_str(A).unwrap());
        for reply in [ok(&format!("{B}\trefs/heads/main\n")), ok(&format!("{A}\trefs/heads/mainline\n"))] {
            let (url, _) = serve(vec![reply.clone()]);
            assert!(!unchanged(&mut fresh(&url), &url, "main", have, TRUST, WAIT), "{reply}");
        }
        let (url, _) = serve(vec!["HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()]);
        assert!(!unchanged(&mut fresh(&url), &url, "main", have, TRUST, WAIT));
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/deploy.git", dead.local_addr().unwrap());
        assert!(!unchanged(&mut fresh(&url), &url, "main", have, TRUST, Duration::from_millis(200)));
        // Nothing fetched yet: nothing to compare with.
        let (url, seen) = serve(vec![ok(&format!("{A}\trefs/heads/main\n"))]);
        assert!(!unchanged(&mut fresh(&url), &url, "main", None, TRUST, WAIT));
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_304_is_trusted_only_for_the_trust_period_and_for_the_same_url() {
        let (url, seen) = serve(vec![]);
        let have = Some(Oid::from_str(A).unwrap());
        let mut old = ProbeState {
            url: url.clone(),
            etag: Some("\"v1\"".into()),
            listed: Some(A.into()),
            fetched_at: now() - TRUST.as_secs(),
            ..ProbeState::default()
        };
        assert!(!unchanged(&mut old, &url, "main", have, TRUST, WAIT));
        let mut moved = ProbeState { fetched_at: now(), ..old.clone() };
        assert!(!unchanged(&mut moved, "http://127.0.0.1:1/elsewhere.git", "main", have, TRUST, WAIT));
        assert_eq!((moved.listed, moved.fetched_at), (None, 0));
        assert!(seen.lock().unwrap().is_empty());
    }
}
