//! A cheap look at an `http://` or `https://` remote before fetching it, so that a no-change poll costs its
//! mirror one conditional GET of a static file instead of a fetch. The file is the repo's
//! `info/refs` (what `git update-server-info` writes for "dumb" HTTP, which any web server, object
//! store or CDN serves and answers with 304 when it has not changed). When it lists the branch at
//! the tip this node already has, the fetch is skipped.
//!
//! The probe can only ever skip a fetch, never move the branch: an answer that lists another tip,
//! or none, or no answer at all means a real fetch, and the fetch decides. An "unchanged" is
//! believed for at most `probe_trust` after the last real fetch; the fetch that follows checks it.
//! A target caught saying "unchanged" when the branch had moved (a mirror that never runs
//! `update-server-info`, or runs it late; a cache that keeps an old copy) lags, and is not believed
//! again until it shows a change as it happens. So a target that lags delays a node by at most
//! `probe_trust`, once; after that the node fetches at every poll and says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::Oid;
use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::url::Verify;

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
    /// Caught saying "unchanged" when the branch had moved, and not believed since.
    #[serde(default)]
    pub lags: bool,
    /// What that 200 listed of the operators' orders (the freeze, approvals), as a digest, and
    /// what it listed at the last real fetch: an order that changed is fetched at once.
    #[serde(default)]
    pub orders: Option<String>,
    #[serde(default)]
    pub orders_fetched: Option<String>,
}

/// What one look at the probe target found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// It answered, listing the branch at this tip (`None`: not listed).
    Listed(Option<Oid>),
    /// No usable answer (unreachable, an error status, a timeout): nothing to go by.
    Unanswered,
}

/// What a real fetch showed of the probe target, when that is news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Caught lagging: it said the branch was still at `listed`, and a fetch found `found`.
    Lags { listed: Option<Oid>, found: Option<Oid> },
    /// It lagged, and has now shown a change as it happened.
    CaughtUp,
}

impl std::fmt::Display for News {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tip = |t: &Option<Oid>| t.map_or("nothing".to_owned(), crate::model::names::short);
        match self {
            News::Lags { listed, found } => write!(
                f,
                "its info/refs said the branch was still at {}, but a fetch found {}: it lags behind the repo (is `git update-server-info` run when the mirror's refs change? is a cache serving an old copy?), so it is fetched at every poll until info/refs shows a change as it happens",
                tip(listed),
                tip(found)
            ),
            News::CaughtUp => write!(f, "its info/refs showed a change as it happened; its probe is believed again"),
        }
    }
}

/// Where probe states are kept and how long an "unchanged" is trusted (zero: never probe).
#[derive(Debug, Clone)]
pub struct Probing {
    pub path: PathBuf,
    pub trust: Duration,
}

impl Probing {
    /// Probing with the states kept at `path` (`Node::probes_path`).
    pub fn new(path: PathBuf, trust: Duration) -> Probing {
        Probing { path, trust }
    }

    /// The saved states by remote name; a missing or unreadable file is no state (fetch), and
    /// an unreadable one is said in the log.
    pub fn load(&self) -> BTreeMap<String, ProbeState> {
        match state_file::load::<Probes>(&self.path) {
            Ok(probes) => probes.map(|p| p.probes).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "the probe states are ignored: every remote is fetched");
                BTreeMap::new()
            }
        }
    }

    pub fn save(&self, probes: BTreeMap<String, ProbeState>) -> crate::Result<()> {
        state_file::save(&self.path, &Probes { probes })
    }
}

/// `<state>/probes.json`: the probe state of each remote, by name.
#[derive(Serialize, Deserialize)]
struct Probes {
    probes: BTreeMap<String, ProbeState>,
}

impl StateFile for Probes {
    const WHAT: &'static str = "the probe states";
    /// 2: the map in a field of its own, beside the schema (1 was the map itself).
    const SCHEMA: u32 = 2;
    /// Far more than the states of any number of remotes a node has.
    const MAX_BYTES: u64 = 16 << 20;
    const MODE: u32 = 0o640;

    fn upgrade(schema: u64, old: serde_json::Value) -> std::result::Result<Probes, String> {
        state_file::from_bare_map(schema, old, |probes| Probes { probes })
    }
}

/// The remotes a probe can look at: `http://` and `https://` ones (an `https://` mirror's
/// certificate must be signed by a CA of this host's store, as for git's fetch of it).
pub fn applies(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Looks at `<url>/info/refs` by a conditional GET within `timeout`, for where it lists `branch`;
/// `state` keeps what a 200 said, for the next look's 304.
pub fn look(state: &mut ProbeState, url: &str, branch: &str, timeout: Duration) -> Look {
    if state.url != url {
        *state = ProbeState { url: url.to_owned(), ..ProbeState::default() };
    }
    let mut headers = Vec::new();
    if let Some(etag) = &state.etag {
        headers.push(("If-None-Match", etag.as_str()));
    }
    if let Some(since) = &state.last_modified {
        headers.push(("If-Modified-Since", since.as_str()));
    }
    let target = format!("{}/info/refs", url.trim_end_matches('/'));
    let Ok(response) = crate::mech::http::get(&target, &Verify::System, &headers, timeout, MAX_REFS) else {
        return Look::Unanswered;
    };
    match response.status {
        304 => {}
        200 => {
            let holds = validators_hold(&response);
            state.etag = response.header("etag").filter(|_| holds).map(str::to_owned);
            state.last_modified = response.header("last-modified").filter(|_| holds).map(str::to_owned);
            state.listed = listed_tip(&response.body, branch).map(|tip| tip.to_string());
            state.orders = listed_orders(&response.body);
        }
        _ => return Look::Unanswered,
    }
    Look::Listed(state.listed.as_deref().and_then(|tip| Oid::from_str(tip).ok()))
}

/// Whether the fetch can be skipped: the look lists the tip this node has (`have`), the target is
/// not known to lag, and the last real fetch was less than `trust` ago. A fetch stamped later than
/// now (the clock was set back since) tells nothing of how long ago it was: it is not trusted, so
/// the fetch runs and stamps it anew.
pub fn skips(state: &ProbeState, look: Look, have: Option<Oid>, trust: Duration) -> bool {
    have.is_some()
        && look == Look::Listed(have)
        && !state.lags
        && state.orders == state.orders_fetched
        && now().checked_sub(state.fetched_at).is_some_and(|age| age < trust.as_secs())
}

/// Notes a real fetch just now, after `look`, that found the branch at `found` where this node
/// had `had`; news when that shows the target lagging, or no longer.
pub fn fetched(state: &mut ProbeState, look: Look, had: Option<Oid>, found: Option<Oid>) -> Option<News> {
    state.fetched_at = now();
    state.orders_fetched = state.orders.clone();
    let Look::Listed(listed) = look else { return None };
    if listed == had && found != had && !state.lags {
        state.lags = true;
        return Some(News::Lags { listed, found });
    }
    // Listing the new tip before this node had it: the target changed with the branch.
    if listed == found && found != had && state.lags {
        state.lags = false;
        return Some(News::CaughtUp);
    }
    None
}

/// Whether a 200's validators tell every later change: a `Last-Modified` in the very second the
/// answer was made (its `Date`), or with no `Date` to tell, may miss a change later that second,
/// and so may an ETag made from it (nginx's is mtime and size). RFC 9110, 8.8.2.2.
fn validators_hold(response: &crate::mech::http::Response) -> bool {
    match (response.header("last-modified"), response.header("date")) {
        (None, _) => true,
        (Some(modified), Some(date)) => modified != date,
        (Some(_), None) => false,
    }
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

/// A digest of the operators' order refs `info/refs` lists (`None`: it lists none).
fn listed_orders(refs: &[u8]) -> Option<String> {
    use sha2::Digest;
    let text = String::from_utf8_lossy(refs);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.split_once('\t').is_some_and(|(_, name)| {
                name == crate::model::orders::FREEZE_REF
                    || name.starts_with(crate::model::orders::APPROVE_PREFIX)
            })
        })
        .collect();
    (!lines.is_empty()).then(|| format!("{:x}", sha2::Sha256::digest(lines.join("\n"))))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use troops_testkit::http::{HttpServer, Reply};

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    /// A server answering each request with the next of `replies`, and its URL.
    fn serve(replies: Vec<String>) -> (HttpServer, String) {
        let server = HttpServer::script(replies.into_iter().map(Reply::raw).collect());
        let url = server.url("/deploy.git");
        (server, url)
    }

    /// The request heads `server` saw, in lower case (header names are any case).
    fn heads(server: &HttpServer) -> Vec<String> {
        server.served().into_iter().map(|s| s.request.head.to_ascii_lowercase()).collect()
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }

    fn fresh(url: &str) -> ProbeState {
        ProbeState { url: url.to_owned(), fetched_at: now(), ..ProbeState::default() }
    }

    const TRUST: Duration = Duration::from_secs(600);
    const WAIT: Duration = Duration::from_secs(5);

    fn oid(sha: &str) -> Option<Oid> {
        Some(Oid::from_str(sha).unwrap())
    }

    /// Whether a poll of `url` would skip its fetch, having `have`.
    fn skip(state: &mut ProbeState, url: &str, have: Option<Oid>) -> bool {
        let look = look(state, url, "main", WAIT);
        skips(state, look, have, TRUST)
    }

    #[test]
    fn the_same_tip_or_a_304_skips_and_sends_the_validator_back() {
        let refs = format!("{B}\trefs/heads/other\n{A}\trefs/heads/main\n");
        let (server, url) = serve(vec![ok(&refs), "HTTP/1.1 304 Not Modified\r\n\r\n".into()]);
        let mut state = fresh(&url);
        assert!(skip(&mut state, &url, oid(A)));
        assert!(skip(&mut state, &url, oid(A)));
        let seen = heads(&server);
        assert!(seen[0].starts_with("get /deploy.git/info/refs http/1.1"), "{}", seen[0]);
        assert!(seen[1].contains("if-none-match: \"v1\""), "{}", seen[1]);
    }

    #[test]
    fn a_freeze_or_an_approval_listed_anew_means_a_fetch_though_the_tip_is_the_same() {
        let plain = format!("{A}\trefs/heads/main\n{B}\trefs/troops/status/web-2\n");
        let frozen = format!("{plain}{B}\trefs/troops/freeze\n");
        let approved = format!("{frozen}{B}\trefs/troops/approve/{A}/canary/k\n");
        let (_server, url) = serve(vec![ok(&plain), ok(&frozen), ok(&frozen), ok(&approved), ok(&plain)]);
        let mut state = fresh(&url);
        assert!(skip(&mut state, &url, oid(A)), "no orders then, none now");
        for (after, want_skip) in [("a freeze", false), ("the freeze fetched", true), ("an approval", false)]
        {
            let look = look(&mut state, &url, "main", WAIT);
            assert_eq!(skips(&state, look, oid(A), TRUST), want_skip, "{after}");
            if !want_skip {
                fetched(&mut state, look, oid(A), oid(A));
            }
        }
        assert!(!skip(&mut state, &url, oid(A)), "orders gone is news too");
    }

    #[test]
    fn another_tip_no_branch_an_error_or_silence_mean_a_fetch() {
        for reply in [ok(&format!("{B}\trefs/heads/main\n")), ok(&format!("{A}\trefs/heads/mainline\n"))] {
            let (_server, url) = serve(vec![reply.clone()]);
            assert!(!skip(&mut fresh(&url), &url, oid(A)), "{reply}");
        }
        let (_server, url) = serve(vec!["HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()]);
        let mut state = fresh(&url);
        assert_eq!(look(&mut state, &url, "main", WAIT), Look::Unanswered);
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/deploy.git", dead.local_addr().unwrap());
        assert_eq!(look(&mut fresh(&url), &url, "main", Duration::from_millis(200)), Look::Unanswered);
        assert!(!skips(&fresh(&url), Look::Unanswered, oid(A), TRUST));
        // Nothing fetched yet: nothing to compare with.
        let (_server, url) = serve(vec![ok(&format!("{A}\trefs/heads/main\n"))]);
        assert!(!skip(&mut fresh(&url), &url, None));
    }

    #[test]
    fn a_304_is_trusted_only_for_the_trust_period_and_for_the_same_url() {
        let (server, url) = serve(vec!["HTTP/1.1 304 Not Modified\r\n\r\n".into()]);
        let mut old = ProbeState {
            url: url.clone(),
            etag: Some("\"v1\"".into()),
            listed: Some(A.into()),
            fetched_at: now() - TRUST.as_secs(),
            ..ProbeState::default()
        };
        assert_eq!(look(&mut old, &url, "main", WAIT), Look::Listed(oid(A)));
        assert!(!skips(&old, Look::Listed(oid(A)), oid(A), TRUST));
        assert!(heads(&server)[0].contains("if-none-match"));
        // Stamped in the future (the clock stepped back since): not trusted, however near.
        for ahead in [1, 60, TRUST.as_secs(), 10 * 365 * 86400] {
            let future = ProbeState { fetched_at: now() + ahead, ..old.clone() };
            assert!(!skips(&future, Look::Listed(oid(A)), oid(A), TRUST), "{ahead}s ahead was trusted");
        }
        assert!(skips(&ProbeState { fetched_at: now(), ..old.clone() }, Look::Listed(oid(A)), oid(A), TRUST));
        // The fetch that follows stamps it anew, and it is trusted again.
        let mut future = ProbeState { fetched_at: now() + 3600, ..old.clone() };
        fetched(&mut future, Look::Listed(oid(A)), oid(A), oid(A));
        assert!(skips(&future, Look::Listed(oid(A)), oid(A), TRUST));
        let mut moved = ProbeState { fetched_at: now(), ..old.clone() };
        let elsewhere = "http://127.0.0.1:1/elsewhere.git";
        assert_eq!(look(&mut moved, elsewhere, "main", WAIT), Look::Unanswered);
        assert_eq!((moved.listed, moved.etag, moved.fetched_at), (None, None, 0));
    }

    #[test]
    fn a_target_caught_saying_unchanged_after_a_move_lags_until_it_shows_a_change_as_it_happens() {
        const C: &str = "3333333333333333333333333333333333333333";
        let mut state = fresh("http://mirror/deploy.git");
        // A change it listed before this node had it, or no answer: nothing to learn.
        assert_eq!(fetched(&mut state, Look::Listed(oid(B)), oid(A), oid(B)), None);
        assert_eq!(fetched(&mut state, Look::Unanswered, oid(B), oid(C)), None);
        assert!(!state.lags);
        // It said "still at A" (believed until the trust ran out), and the branch was at B.
        let news = fetched(&mut state, Look::Listed(oid(A)), oid(A), oid(B));
        assert_eq!(news, Some(News::Lags { listed: oid(A), found: oid(B) }));
        assert!(news.unwrap().to_string().contains("still at 111111111111, but a fetch found 222222222222"));
        assert!(state.lags);
        assert_eq!(fetched(&mut state, Look::Listed(oid(B)), oid(B), oid(C)), None, "told once");
        // Lagging, it skips nothing, not even once it lists the tip here (it caught up late).
        assert!(!skips(&state, Look::Listed(oid(C)), oid(C), TRUST));
        assert_eq!(fetched(&mut state, Look::Listed(oid(C)), oid(C), oid(C)), None);
        assert!(state.lags);
        // Listing a new tip before this node has it: it changes with the branch again.
        assert_eq!(fetched(&mut state, Look::Listed(oid(A)), oid(C), oid(A)), Some(News::CaughtUp));
        assert!(skips(&state, Look::Listed(oid(A)), oid(A), TRUST));
    }

    #[test]
    fn validators_made_in_the_second_they_were_served_are_not_sent_back() {
        let date = "Wed, 02 Dec 2026 06:00:00 GMT";
        let earlier = "Wed, 02 Dec 2026 05:59:59 GMT";
        let refs = format!("{A}\trefs/heads/main\n");
        let reply = |modified: &str, date: Option<&str>| {
            let date = date.map_or(String::new(), |d| format!("Date: {d}\r\n"));
            format!(
                "HTTP/1.1 200 OK\r\n{date}Last-Modified: {modified}\r\nETag: \"v1\"\r\nContent-Length: {}\r\n\r\n{refs}",
                refs.len()
            )
        };
        let (server, url) =
            serve(vec![reply(date, Some(date)), reply(date, None), reply(earlier, Some(date)), ok(&refs)]);
        let mut state = fresh(&url);
        for _ in 0..3 {
            assert!(skip(&mut state, &url, oid(A)));
        }
        assert_eq!(state.etag.as_deref(), Some("\"v1\""));
        assert!(skip(&mut state, &url, oid(A)));
        let seen = heads(&server);
        assert!(!seen[1].contains("if-none-match") && !seen[1].contains("if-modified-since"), "{}", seen[1]);
        assert!(!seen[2].contains("if-none-match"), "no Date: cannot tell, {}", seen[2]);
        assert!(
            seen[3].contains("if-none-match: \"v1\"") && seen[3].contains(&earlier.to_ascii_lowercase()),
            "{}",
            seen[3]
        );
    }

    #[test]
    fn probes_json_as_an_older_troops_wrote_it_a_bare_map_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let probing = Probing::new(dir.path().join("probes.json"), TRUST);
        let state = ProbeState {
            url: "http://mirror/deploy.git".into(),
            listed: Some(A.into()),
            fetched_at: 1_700_000_000,
            ..ProbeState::default()
        };
        let old = serde_json::json!({ "origin": state });
        std::fs::write(&probing.path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(probing.load(), BTreeMap::from([("origin".to_owned(), state.clone())]));
        probing.save(probing.load()).unwrap();
        let new: serde_json::Value = serde_json::from_slice(&std::fs::read(&probing.path).unwrap()).unwrap();
        assert_eq!((&new["schema"], &new["probes"]), (&serde_json::json!(2), &old));
        // Garbage is no state: every remote is fetched.
        std::fs::write(&probing.path, "{\"schema\": 2, \"probes\": [").unwrap();
        assert!(probing.load().is_empty());
    }
}
