//! The node config (`/etc/troops/troops.toml`): parsed strictly into raw data, then validated once
//! into a `Config` that cannot be wrong. A missing file means defaults; every error names the file,
//! the line and the key.

pub mod metrics;
pub mod notify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::error::{from_toml, line_col, Error, Result};
use crate::model::limits::{self, Limit};

pub const DEFAULT_PATH: &str = "/etc/troops/troops.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (it may not exist: then everything is a default).
    pub path: PathBuf,
    pub branch: String,
    pub interval: Duration,
    pub jitter: Duration,
    pub fetch_timeout: Duration,
    /// How long after a real fetch an `http(s)://` remote's probe may say "unchanged" and skip the
    /// next fetches (`probe`); zero: no probes.
    pub probe_trust: Duration,
    /// `None`: this machine's fully qualified name, looked up only when needed.
    pub hostname: Option<String>,
    pub roles: Vec<String>,
    pub keep_runs: usize,
    pub admin_group: String,
    pub retry: Retry,
    pub verify: Verify,
    pub metrics: metrics::Settings,
    pub notify: notify::Settings,
    /// The remote of the node repo the node publishes its status to (`refs/troops/status/<host>`)
    /// and reads the fleet's from; `None`: it publishes none.
    pub status_remote: Option<String>,
    /// How often the status is published when nothing changes.
    pub status_heartbeat: Duration,
    /// Where runs decrypt secrets (on tmpfs or ramfs, or they refuse); `None`: as root
    /// `/run/troops/secrets`, as another user `/dev/shm/troops-<uid>` (`secrets::node_dir`).
    pub secrets_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verify {
    pub require_signed: bool,
    pub keyring: PathBuf,
    /// SSH keys trusted for commits signed with `gpg.format=ssh`, in git's allowed-signers format.
    pub allowed_signers: Option<PathBuf>,
    pub scope: Scope,
    /// Which keys the file set; what it leaves out comes from the policy the node recorded
    /// (`node::load_config`), so a lost or truncated file never turns verification off.
    pub given: Given,
}

/// The `[verify]` keys a config file sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Given {
    pub require_signed: bool,
    pub keyring: bool,
    pub allowed_signers: bool,
    pub scope: bool,
}

pub const DEFAULT_KEYRING: &str = "/etc/troops/trusted.pgp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The new tip must be signed.
    Tip,
    /// Every commit an update adds must be signed.
    All,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    branch: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    fetch_timeout: Option<Spanned<String>>,
    probe_trust: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    roles: Option<Vec<Spanned<String>>>,
    keep_runs: Option<Spanned<i64>>,
    admin_group: Option<Spanned<String>>,
    status_remote: Option<Spanned<String>>,
    status_heartbeat: Option<Spanned<String>>,
    secrets_dir: Option<Spanned<String>>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    metrics: metrics::RawSettings,
    #[serde(default)]
    notify: notify::RawSettings,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    require_signed: Option<bool>,
    keyring: Option<Spanned<String>>,
    allowed_signers: Option<Spanned<String>>,
    scope: Option<Scope>,
}

/// The text of the config file at `path`, `None` if there is none. Bytes that are not UTF-8 are
/// bad input, like bad TOML.
pub fn read(path: &Path) -> Result<Option<String>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::path("reading config", path, e)),
    };
    String::from_utf8(bytes).map(Some).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let (line, column) = line_col(std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default(), valid);
        let message = format!("the config is not UTF-8 text (byte 0x{:02x})", e.as_bytes()[valid]);
        Error::Config { path: path.to_owned(), line, column, message }
    })
}

impl Retry {
    /// How long to wait before retrying a tip that failed `failures` times in a row: `initial`,
    /// doubled for each further failure, at most `max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

impl Config {
    /// Loads `path`; a file that does not exist yields the defaults. A file that is not UTF-8 is
    /// bad input, named with the line of its first bad byte.
    pub fn load(path: &Path) -> Result<Config> {
        Config::parse(path, &read(path)?.unwrap_or_default())
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let err = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            Error::Config { path: path.to_owned(), line, column, message }
        };
        let raw: RawConfig = from_toml(text, err)?;

        let secs = Duration::from_secs;
        let duration = |value: Option<Spanned<String>>, key: &str, limit: Limit, default: Duration| {
            limit.key(&format!("`{key}`"), value, default).map_err(|(span, m)| err(span, m))
        };
        let word = |value: Option<Spanned<String>>, key: &str, default: &str| match value {
            None => Ok(default.to_owned()),
            Some(v) => match crate::model::names::name_problem(v.get_ref()) {
                Some(problem) => Err(err(v.span(), format!("`{key}`: {:?} {problem}", v.get_ref()))),
                None => Ok(v.into_inner()),
            },
        };

        let branch = word(raw.branch.clone(), "branch", "main")?;
        if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Err(err(
                raw.branch.expect("default is valid").span(),
                format!("`branch`: {branch:?} is not a valid branch name"),
            ));
        }
        let interval = duration(raw.interval, "interval", limits::INTERVAL, secs(60))?;
        let keep_runs = match raw.keep_runs {
            None => 100,
            Some(v) if *v.get_ref() >= 1 => *v.get_ref() as usize,
            Some(v) => return Err(err(v.span(), "`keep_runs` must be at least 1".into())),
        };
        let mut roles = Vec::new();
        for role in raw.roles.unwrap_or_default() {
            if let Some(problem) = crate::model::names::role_name_problem(role.get_ref()) {
                return Err(err(role.span(), format!("`roles`: {:?} {problem}", role.get_ref())));
            }
            roles.push(role.into_inner());
        }
        let retry = Retry {
            initial: duration(raw.retry.initial.clone(), "retry.initial", limits::RETRY, secs(30))?,
            max: duration(raw.retry.max.clone(), "retry.max", limits::RETRY, secs(1800))?,
        };
        if retry.initial > retry.max {
            let span = raw.retry.initial.or(raw.retry.max).map_or(0..0, |v| v.span());
            return Err(err(span, "`retry.initial` must be at most `retry.max`".into()));
        }
        let metrics = metrics::Settings::parse(raw.metrics, err)?;
        let notify = notify::Settings::parse(raw.notify, err)?;
        let status_heartbeat =
            duration(raw.status_heartbeat, "status_heartbeat", limits::STATUS_HEARTBEAT, secs(3600))?;
        // Files read or made where these say, whatever the working directory of whoever runs (the
        // daemon's is `/`, a hook's the node repo, a step's its checkout).
        let absolute = |value: Option<Spanned<String>>, key: &str| match value {
            Some(v) if !Path::new(v.get_ref()).is_absolute() => {
                Err(err(v.span(), format!("`{key}`: {:?} must be an absolute path", v.get_ref())))
            }
            v => Ok(v.map(|v| PathBuf::from(v.into_inner()))),
        };
        let secrets_dir = absolute(raw.secrets_dir, "secrets_dir")?;
        let keyring = absolute(raw.verify.keyring, "verify.keyring")?;
        let allowed_signers = absolute(raw.verify.allowed_signers, "verify.allowed_signers")?;
        Ok(Config {
            secrets_dir,
            status_remote: raw.status_remote.map(|r| word(Some(r), "status_remote", "")).transpose()?,
            status_heartbeat,
            path: path.to_owned(),
            branch,
            interval,
            jitter: duration(raw.jitter, "jitter", limits::JITTER, secs(10))?,
            fetch_timeout: duration(raw.fetch_timeout, "fetch_timeout", limits::FETCH_TIMEOUT, secs(120))?,
            probe_trust: duration(raw.probe_trust, "probe_trust", limits::PROBE_TRUST, secs(1800))?,
            hostname: raw.hostname.map(|h| word(Some(h), "hostname", "")).transpose()?,
            roles,
            keep_runs,
            admin_group: word(raw.admin_group, "admin_group", "troops")?,
            retry,
            verify: Verify {
                given: Given {
                    require_signed: raw.verify.require_signed.is_some(),
                    keyring: keyring.is_some(),
                    allowed_signers: allowed_signers.is_some(),
                    scope: raw.verify.scope.is_some(),
                },
                require_signed: raw.verify.require_signed.unwrap_or(false),
                keyring: keyring.unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING)),
                allowed_signers,
                scope: raw.verify.scope.unwrap_or(Scope::Tip),
            },
            metrics,
            notify,
        })
    }

    /// The name this node goes by: the configured one, else the machine's fully qualified name.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(crate::model::host::fqdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/troops/troops.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.branch, "main");
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.jitter, Duration::from_secs(10));
        assert_eq!(c.fetch_timeout, Duration::from_secs(120));
        assert_eq!(c.probe_trust, Duration::from_secs(1800));
        assert_eq!(c.keep_runs, 100);
        assert_eq!(c.admin_group, "troops");
        assert_eq!(c.retry, Retry { initial: Duration::from_secs(30), max: Duration::from_secs(1800) });
        assert!(!c.verify.require_signed);
        assert_eq!(c.verify.scope, Scope::Tip);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            "branch = \"prod\"\ninterval = \"5m\"\nhostname = \"web-1\"\nroles = [\"web\", \"db\"]\n\
             [retry]\ninitial = \"1s\"\nmax = \"2s\"\n[verify]\nrequire_signed = true\nscope = \"all\"\n",
        )
        .unwrap();
        assert_eq!((c.branch.as_str(), c.hostname.as_deref()), ("prod", Some("web-1")));
        assert_eq!(c.roles, ["web", "db"]);
        assert_eq!(c.verify.scope, Scope::All);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("branch = \"main\"\nintervall = \"5s\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:2:1: "), "{e}");
        assert!(e.contains("intervall"), "{e}");
    }

    #[test]
    fn bad_duration_names_line_and_key() {
        let e = parse("\n\n[retry]\ninitial = \"soon\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:4:11: `retry.initial`"), "{e}");
    }

    #[test]
    fn values_of_the_wrong_type_name_their_key() {
        let e = parse("interval = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:1:12: `interval`: invalid type"), "{e}");
        let e = parse("branch = \"main\"\n\n[verify]\nrequire_signed = \"yes\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:4:18: `verify.require_signed`: invalid type"), "{e}");
        let e = parse("roles = [\n  \"web\",\n  7,\n]\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:3:3: `roles`: invalid type"), "{e}");
    }

    #[test]
    fn every_toml_example_of_the_readme_is_a_node_config_or_a_plan_troops_accepts() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let blocks: Vec<&str> =
            readme.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert!(blocks.len() >= 9, "{} blocks", blocks.len());
        for block in blocks {
            let plan = crate::model::plan::Plan::parse(Path::new("troops.toml"), block, None);
            if let (Err(as_plan), Err(as_config)) = (plan, parse(block)) {
                panic!("neither a plan ({as_plan}) nor a node config ({as_config}):\n{block}");
            }
        }
    }

    #[test]
    fn paths_a_node_reads_are_absolute_whoever_runs_where() {
        for (key, table) in
            [("keyring", "[verify]\n"), ("allowed_signers", "[verify]\n"), ("secrets_dir", "")]
        {
            let e = parse(&format!("{table}{key} = \"keys/trusted\"\n")).unwrap_err().to_string();
            let named = if table.is_empty() { key.to_owned() } else { format!("verify.{key}") };
            assert!(e.contains(&format!("`{named}`: \"keys/trusted\" must be an absolute path")), "{e}");
        }
        let c =
            parse("[verify]\nkeyring = \"/etc/troops/k.pgp\"\nallowed_signers = \"/etc/troops/signers\"\n")
                .unwrap();
        assert_eq!(c.verify.keyring, Path::new("/etc/troops/k.pgp"));
        assert_eq!(c.verify.allowed_signers.as_deref(), Some(Path::new("/etc/troops/signers")));
        assert!(c.verify.given.keyring && c.verify.given.allowed_signers);
    }

    #[test]
    fn secrets_dir_is_an_absolute_path() {
        assert_eq!(parse("").unwrap().secrets_dir, None);
        let c = parse("secrets_dir = \"/mnt/ram/troops\"\n").unwrap();
        assert_eq!(c.secrets_dir.as_deref(), Some(Path::new("/mnt/ram/troops")));
        let e = parse("\nsecrets_dir = \"run/secrets\"\n").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "/etc/troops/troops.toml:2:15: `secrets_dir`: \"run/secrets\" must be an absolute path"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_branch_and_keep_runs_are_refused() {
        assert!(parse("branch = \"a..b\"").unwrap_err().to_string().contains("`branch`"));
        assert!(parse("keep_runs = 0").unwrap_err().to_string().contains("`keep_runs`"));
        assert!(parse("[verify]\nscope = \"some\"").unwrap_err().to_string().contains(":2:"));
    }

    #[test]
    fn durations_are_bounded_and_the_error_says_the_bound() {
        assert_eq!(parse("interval = \"1year\"\njitter = \"1year\"").unwrap().interval, limits::YEAR);
        let e = parse("\ninterval = \"1000000000years\"").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "/etc/troops/troops.toml:2:12: `interval` \"1000000000years\" is too long; at most 1year"
            ),
            "{e}"
        );
        let e = parse("fetch_timeout = \"25h\"").unwrap_err().to_string();
        assert!(e.contains("`fetch_timeout` \"25h\" is too long; at most 1day"), "{e}");
        let e = parse("fetch_timeout = \"0s\"").unwrap_err().to_string();
        assert!(e.contains(":1:17: `fetch_timeout` \"0s\" must be more than zero"), "{e}");
        assert!(parse("probe_trust = \"2years\"").unwrap_err().to_string().contains("`probe_trust`"));
        assert_eq!(parse("probe_trust = \"0s\"").unwrap().probe_trust, Duration::ZERO);
        let e = parse("[retry]\nmax = \"2years\"").unwrap_err().to_string();
        assert!(e.contains("`retry.max`"), "{e}");
        let e = parse("[retry]\nmax = \"0s\"").unwrap_err().to_string();
        assert!(e.contains(":2:7: `retry.max` \"0s\" must be more than zero"), "{e}");
        let e = parse("[retry]\ninitial = \"1h\"\nmax = \"1m\"").unwrap_err().to_string();
        assert!(e.contains(":2:11: `retry.initial` must be at most `retry.max`"), "{e}");
        assert_eq!(parse("keep_runs = 9223372036854775807").unwrap().keep_runs, i64::MAX as usize);
    }

    #[test]
    fn names_with_control_characters_are_refused_with_line_and_column() {
        let e = parse("branch = \"main\"\nhostname = \"web\\n1\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/troops/troops.toml:2:12: `hostname`: \"web\\n1\" has a control character (\\u{a})"
        );
        assert!(parse("hostname = \"\"").unwrap_err().to_string().contains("is empty"));
        assert!(parse("roles = [\"a\\u001b[2J\"]").unwrap_err().to_string().contains(":1:10: `roles`"));
        assert!(parse("admin_group = \"wheel\\t\"").unwrap_err().to_string().contains("`admin_group`"));
    }

    #[test]
    fn status_remote_and_heartbeat() {
        let c = parse("").unwrap();
        assert_eq!((c.status_remote, c.status_heartbeat), (None, Duration::from_secs(3600)));
        let c = parse("status_remote = \"origin\"\nstatus_heartbeat = \"5m\"").unwrap();
        assert_eq!(
            (c.status_remote.as_deref(), c.status_heartbeat),
            (Some("origin"), Duration::from_secs(300))
        );
        let e = parse("status_heartbeat = \"0s\"").unwrap_err().to_string();
        assert!(e.contains(":1:20: `status_heartbeat` \"0s\" must be more than zero"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let retry = Retry { initial: Duration::from_secs(30), max: Duration::from_secs(100) };
        let waits: Vec<u64> = [1, 2, 3, 4, u32::MAX].iter().map(|&n| retry.backoff(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 100, 100, 100]);
    }
}
