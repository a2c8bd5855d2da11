//! The plan (`troops.toml` at the root of the deploy repo): parsed strictly into `RawPlan`, then
//! validated once into a `Plan` whose steps are known to be runnable. Every error carries the plan
//! file, line and column; a plan error stops a run before any step starts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::error::{from_toml, line_col, Error, Result};
use crate::model::limits;

pub mod disruption;
mod health;
pub mod hosts;
pub mod reboot;
pub mod rollout;
mod version;
pub mod watch;
pub mod window;

pub const FILE_NAME: &str = "troops.toml";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Plan {
    pub roles: Vec<Role>,
    pub steps: Vec<Step>,
    pub secrets: Vec<Secret>,
    /// The `[[check]]`s, run after the steps (see `check`).
    pub checks: Vec<Check>,
    pub health: Health,
    /// `None`: one `work/` checkout, no releases.
    pub release: Option<Release>,
    /// The oldest troops this plan is for, as written ("0.2"); an older troops refuses the plan.
    pub min_troops: Option<String>,
    /// `[hosts]`: a host's git URL for `troops push` (see `troops_operator::push`); to nodes, only one more way the
    /// plan names a host (`waves::Known`).
    pub hosts: BTreeMap<String, String>,
    /// `[rollout]`: the waves a pulled commit goes through (see `policy::waves`).
    pub rollout: Option<rollout::Rollout>,
    /// `[[window]]`: when automatic runs of a new commit may start (see `policy::windows`); none:
    /// at any time.
    pub windows: Vec<window::Window>,
    /// `[[watch]]`: the peers' exports a host runs its deployed commit again for when they change
    /// (see `policy::watch`).
    pub watches: Vec<watch::Watch>,
    /// `[disruption]`: how many hosts may run their `disruptive` steps at once (`node::slots`).
    pub disruption: Option<disruption::Disruption>,
    /// `[reboot]` and its `pre_reboot` steps: when and how the host reboots (`node::reboot`).
    pub reboot: Option<reboot::Reboot>,
}

/// A `[[check]]`: a probe of the host's health after the steps; every check must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    /// `None`: the check runs on every host.
    pub roles: Option<Vec<String>>,
    /// `paths`: the check probes only when a file they match changed (`policy::paths`); empty:
    /// on every run.
    pub paths: Vec<glob::Pattern>,
    pub probe: Probe,
    /// What the body (http) or the output (run) must be. `None`: 2xx / exit 0 is enough.
    pub expect: Option<Expect>,
    /// How long after the steps the first probe waits.
    pub start_period: Duration,
    /// From one probe's start to the next's.
    pub interval: Duration,
    /// The longest one probe may take.
    pub timeout: Duration,
    /// Consecutive failed probes that fail the check (at least 1).
    pub retries: u32,
}

/// What a check's body (http) or output (run) must be, besides a 2xx or an exit 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `expect`: holds this text somewhere ("broken" holds "ok").
    Contains(String),
    /// `expect_exact`: is this text and nothing else, whitespace at either end aside.
    Exact(String),
}

impl Expect {
    /// Whether `text` (a body, an output) is what this expects.
    pub fn holds(&self, text: &str) -> bool {
        match self {
            Expect::Contains(want) => text.contains(want.as_str()),
            Expect::Exact(want) => text.trim() == want.trim(),
        }
    }

    /// Why a `what` ("body", "output") that does not hold this fails, in words that follow "exited
    /// 0" or "answered 200": `without "ok" in its body`, `but its body is not exactly "ok"`.
    pub fn missed(&self, what: &str) -> String {
        match self {
            Expect::Contains(want) => format!("without {want:?} in its {what}"),
            Expect::Exact(want) => format!("but its {what} is not exactly {want:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// GET this `http://` or `https://` URL; 2xx passes.
    Http(HttpProbe),
    /// Connect to this `host:port`.
    Tcp(String),
    /// A shell command, run with `/bin/sh -c` in the checkout, like a step; exit 0 passes.
    Run(String),
    /// A systemd unit that must be active.
    Unit(String),
}

/// An `http` check's URL, and whose certificate an `https://` one must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub url: String,
    /// `ca` or `insecure_skip_verify`; `System` when neither (and for every `http://` URL).
    pub verify: crate::model::url::Verify,
}

/// `[health]`: how long checks must keep passing, what a failed run leads to, and how the
/// deployed commit is watched for drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// After every check passed once, how long they must keep passing; zero: no soak.
    pub soak: Duration,
    pub on_failure: OnFailure,
    /// How often the daemon runs the deployed commit's checks again (`node::drift`); zero: never.
    pub recheck: Duration,
    pub on_drift: OnDrift,
}

/// What drift leads to (`[health] on_drift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrift {
    /// The node says so (status, fleet, metrics, notification); the default.
    Report,
    /// It also runs the deployed commit again, as a run of its own (`TROOPS_TRIGGER=drift`).
    Redeploy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The failed commit is retried with backoff (the behaviour of troops 0.1); the default.
    Retry,
    /// The failed commit is quarantined and the last good commit runs again.
    Rollback,
}

/// `[release]`: each run checks out into its own release directory, and `current` is switched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Successful releases kept (at least 1; current and the previous good are never pruned).
    pub keep: u32,
    /// Failed releases kept, apart from the successful ones.
    pub keep_failed: u32,
    /// An absolute path for the `current` symlink; `None`: `current` in the state dir.
    pub link: Option<PathBuf>,
    /// A recheck also compares the current release's files with the commit's tree.
    pub verify: bool,
}

/// When a step runs, with `[release]`: before the switch of `current` or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The default.
    Build,
    Activate,
    /// Before a reboot (`[reboot]`), never in a run: such steps are `Reboot::pre_reboot`, not
    /// `Plan::steps`.
    PreReboot,
}

/// A `[[secret]]`: an age file in the repo, decrypted on the nodes it is for (see `secrets`).
#[derive(Debug, Clone)]
pub struct Secret {
    /// Also its file name in `TROOPS_SECRETS`.
    pub name: String,
    /// The age file, relative to the repo root.
    pub file: PathBuf,
    /// The nodes that get it: those with any of `roles`, and those named in `hosts`.
    pub roles: Vec<String>,
    pub hosts: Vec<String>,
    /// Mode of the decrypted file (default 0400).
    pub mode: u32,
    /// Owner of the decrypted file, `user` or `user:group`; `None`: the run's user.
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub hosts: Vec<String>,
    pub patterns: Vec<glob::Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// `None`: the step runs on every host.
    pub roles: Option<Vec<String>>,
    /// `paths`: the step runs only when a file they match changed (`policy::paths`); empty: on
    /// every run.
    pub paths: Vec<glob::Pattern>,
    pub action: Action,
    /// `preview`: a command that shows what the step would change, run by previews only
    /// (`node::run::preview`).
    pub preview: Option<String>,
    pub timeout: Duration,
    /// When the step ends, times out or is stopped, how long what it started has between SIGTERM
    /// and SIGKILL.
    pub kill_grace: Duration,
    pub env: BTreeMap<String, String>,
    pub phase: Phase,
    /// `disruptive = true`: the step takes the host out of service, so it runs only while the
    /// node holds a disruption slot (`node::slots`).
    pub disruptive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A shell command, run with `/bin/sh -c`.
    Run(String),
    /// A file in the checkout, relative to its root, executed directly.
    Script(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    #[serde(default)]
    secret: Vec<Spanned<RawSecret>>,
    /// Read leniently before the rest too (`version::check`), so that a newer plan is refused by it.
    min_troops: Option<Spanned<String>>,
    #[serde(default)]
    check: Vec<Spanned<health::RawCheck>>,
    health: Option<health::RawHealth>,
    release: Option<RawRelease>,
    #[serde(default)]
    hosts: BTreeMap<Spanned<String>, Spanned<String>>,
    rollout: Option<rollout::RawRollout>,
    #[serde(default)]
    window: Vec<Spanned<window::RawWindow>>,
    #[serde(default)]
    watch: Vec<Spanned<watch::RawWatch>>,
    disruption: Option<Spanned<disruption::RawDisruption>>,
    reboot: Option<Spanned<reboot::RawReboot>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    keep: Option<Spanned<i64>>,
    keep_failed: Option<Spanned<i64>>,
    link: Option<Spanned<String>>,
    verify: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    name: Spanned<String>,
    file: Spanned<String>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default, rename = "match")]
    patterns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    run: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    kill_grace: Option<Spanned<String>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    phase: Option<Spanned<String>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    preview: Option<Spanned<String>>,
    disruptive: Option<Spanned<bool>>,
}

impl Plan {
    /// Reads and validates the plan at `root/troops.toml`; scripts must stay inside `root`.
    pub fn load(root: &Path) -> Result<Plan> {
        let path = root.join(FILE_NAME);
        Plan::parse(&path, &read(&path)?, Some(root))
    }

    /// Validates plan `text`; `path` names it in errors and `root` is the checkout it belongs to
    /// (without one, scripts are checked only as paths, not on disk).
    pub fn parse(path: &Path, text: &str, root: Option<&Path>) -> Result<Plan> {
        let err = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            Error::Plan { path: path.to_owned(), line, column, message }
        };
        version::check(text).map_err(|(s, m)| err(s, m))?;
        let raw: RawPlan = from_toml(text, err).map_err(version::hint_newer)?;
        let release = raw.release.map(release).transpose().map_err(|(s, m)| err(s, m))?;

        let mut roles = Vec::new();
        // In file order, not by name: `troops push` takes hosts (and its canaries) in this order.
        let mut raw_roles: Vec<_> = raw.roles.into_iter().collect();
        raw_roles.sort_by_key(|(name, _)| name.span().start);
        for (name, role) in raw_roles {
            if let Some(problem) = crate::model::names::role_name_problem(name.get_ref()) {
                return Err(err(name.span(), format!("role name {:?} {problem}", name.get_ref())));
            }
            let name = name.into_inner();
            let span = role.span();
            let role = role.into_inner();
            let hosts = role
                .hosts
                .into_iter()
                .map(|h| match crate::model::names::name_problem(h.get_ref()) {
                    Some(problem) => {
                        Err(err(h.span(), format!("role `{name}`: host {:?} {problem}", h.get_ref())))
                    }
                    None => Ok(h.into_inner()),
                })
                .collect::<Result<Vec<_>>>()?;
            if hosts.is_empty() && role.patterns.is_empty() {
                return Err(err(span, format!("role `{name}` has neither `hosts` nor `match`")));
            }
            let patterns = role
                .patterns
                .into_iter()
                .map(|p| {
                    glob::Pattern::new(p.get_ref()).map_err(|e| {
                        err(p.span(), format!("role `{name}`: bad pattern {:?}: {}", p.get_ref(), e.msg))
                    })
                })
                .collect::<Result<_>>()?;
            roles.push(Role { name, hosts, patterns });
        }

        let mut names = HashSet::new();
        let mut steps = Vec::new();
        // The first `disruptive = true`, which needs a `[disruption]`.
        let mut first_disruptive = None;
        let mut pre_reboot = Vec::new();
        // The first `phase = "pre_reboot"`, which needs a `[reboot]`.
        let mut first_pre_reboot = None;
        for step in raw.step {
            let span = step.span();
            let step = step.into_inner();
            let name = step.name.get_ref().clone();
            if let Some(problem) = crate::model::names::name_problem(&name) {
                return Err(err(step.name.span(), format!("step name {name:?} {problem}")));
            }
            if !names.insert(name.clone()) {
                return Err(err(step.name.span(), format!("duplicate step name `{name}`")));
            }
            let action = match (step.run, step.script) {
                (Some(run), None) => Action::Run(run.into_inner()),
                (None, Some(script)) => Action::Script(
                    script_path(root, script.get_ref())
                        .map_err(|m| err(script.span(), format!("step `{name}`: {m}")))?,
                ),
                (Some(_), Some(script)) => {
                    return Err(err(
                        script.span(),
                        format!("step `{name}` has both `run` and `script`; keep one"),
                    ))
                }
                (None, None) => return Err(err(span, format!("step `{name}` needs `run` or `script`"))),
            };
            let owner = format!("step `{name}`");
            let timeout = limits::STEP_TIMEOUT
                .key(&format!("{owner}: `timeout`"), step.timeout, DEFAULT_TIMEOUT)
                .map_err(|(s, m)| err(s, m))?;
            let kill_grace = limits::KILL_GRACE
                .key(&format!("{owner}: `kill_grace`"), step.kill_grace, DEFAULT_KILL_GRACE)
                .map_err(|(s, m)| err(s, m))?;
            let phase_span = step.phase.as_ref().map(Spanned::span);
            let phase = phase(&owner, step.phase, release.is_some()).map_err(|(s, m)| err(s, m))?;
            let env = match step.env {
                None => BTreeMap::new(),
                Some(env) => match env
                    .get_ref()
                    .keys()
                    .find(|k| k.is_empty() || k.contains('=') || k.starts_with("TROOPS_"))
                {
                    Some(key) => {
                        return Err(err(env.span(), format!("step `{name}`: `env` may not set {key:?}")))
                    }
                    None => env.into_inner(),
                },
            };
            let roles = role_list(&owner, step.roles).map_err(|(s, m)| err(s, m))?;
            let paths_span = step.paths.as_ref().map(Spanned::span);
            let paths = path_globs(&owner, step.paths).map_err(|(s, m)| err(s, m))?;
            let preview = match step.preview {
                Some(p) if p.get_ref().trim().is_empty() => {
                    return Err(err(p.span(), format!("{owner}: `preview` is empty; leave it out")))
                }
                preview => preview.map(Spanned::into_inner),
            };
            let disruptive = match step.disruptive {
                Some(d) if *d.get_ref() => {
                    first_disruptive.get_or_insert((d.span(), name.clone()));
                    true
                }
                _ => false,
            };
            let step =
                Step { name, roles, paths, action, preview, timeout, kill_grace, env, phase, disruptive };
            match phase {
                Phase::PreReboot => {
                    if let Some(paths) = &paths_span {
                        return Err(err(
                            paths.clone(),
                            format!(
                                "{owner}: a pre_reboot step runs before every reboot; `paths` cannot choose"
                            ),
                        ));
                    }
                    first_pre_reboot.get_or_insert((phase_span.unwrap_or(span), step.name.clone()));
                    pre_reboot.push(step);
                }
                _ => steps.push(step),
            }
        }
        let mut secrets = Vec::new();
        let mut secret_names = HashSet::new();
        for secret in raw.secret {
            let span = secret.span();
            let secret = secret.into_inner();
            let name = secret.name.get_ref().clone();
            if let Some(problem) = secret_name_problem(&name) {
                return Err(err(secret.name.span(), format!("secret name {name:?} {problem}")));
            }
            if !secret_names.insert(name.clone()) {
                return Err(err(secret.name.span(), format!("duplicate secret name `{name}`")));
            }
            let file = repo_path(secret.file.get_ref())
                .map_err(|m| err(secret.file.span(), format!("secret `{name}`: `file` {m}")))?;
            if secret.roles.is_empty() && secret.hosts.is_empty() {
                return Err(err(
                    span,
                    format!("secret `{name}` needs `roles` or `hosts` (who may decrypt it)"),
                ));
            }
            let names = |list: Vec<Spanned<String>>, what: &str| {
                list.into_iter()
                    .map(|n| match crate::model::names::role_name_problem(n.get_ref()) {
                        Some(problem) => {
                            Err(err(n.span(), format!("secret `{name}`: {what} {:?} {problem}", n.get_ref())))
                        }
                        None => Ok(n.into_inner()),
                    })
                    .collect::<Result<Vec<_>>>()
            };
            let roles = names(secret.roles, "role")?;
            let hosts = names(secret.hosts, "host")?;
            let mode = match secret.mode {
                None => 0o400,
                Some(mode) => match u32::from_str_radix(mode.get_ref(), 8) {
                    Ok(m) if m <= 0o777 => m,
                    _ => {
                        return Err(err(
                            mode.span(),
                            format!(
                                "secret `{name}`: `mode` {:?} is not an octal mode like \"0440\"",
                                mode.get_ref()
                            ),
                        ))
                    }
                },
            };
            let owner = match secret.owner {
                Some(owner)
                    if crate::model::names::name_problem(owner.get_ref()).is_some()
                        || owner.get_ref().contains(' ') =>
                {
                    return Err(err(
                        owner.span(),
                        format!(
                            "secret `{name}`: `owner` {:?} is not `user` or `user:group`",
                            owner.get_ref()
                        ),
                    ))
                }
                owner => owner.map(Spanned::into_inner),
            };
            secrets.push(Secret { name, file, roles, hosts, mode, owner });
        }
        let checks = health::checks(raw.check).map_err(|(s, m)| err(s, m))?;
        let health = health::health(raw.health).map_err(|(s, m)| err(s, m))?;
        let min_troops = raw.min_troops.map(Spanned::into_inner);
        let hosts = hosts::parse_hosts(raw.hosts, err)?;
        let rollout = raw.rollout.map(rollout::validate).transpose().map_err(|(s, m)| err(s, m))?;
        let windows = window::validate(raw.window).map_err(|(s, m)| err(s, m))?;
        let watches = watch::validate(raw.watch).map_err(|(s, m)| err(s, m))?;
        let named: Vec<&String> = hosts.keys().collect();
        let disruption = raw
            .disruption
            .map(|d| disruption::validate(d, &roles, &named))
            .transpose()
            .map_err(|(s, m)| err(s, m))?;
        if let (Some((span, name)), None) = (first_disruptive, &disruption) {
            return Err(err(
                span,
                format!(
                    "step `{name}` is disruptive, and the plan has no `[disruption]` saying how many hosts \
                     may be disrupted at once (e.g. `[disruption]` `max = 1`)"
                ),
            ));
        }
        let reboot = match (raw.reboot, first_pre_reboot) {
            (Some(raw), _) => {
                Some(reboot::validate(raw, pre_reboot, disruption.is_some()).map_err(|(s, m)| err(s, m))?)
            }
            (None, Some((span, name))) => {
                return Err(err(
                    span,
                    format!(
                        "step `{name}`: `phase = \"pre_reboot\"` needs a `[reboot]`: pre_reboot steps run \
                         before the reboots it makes, and only then"
                    ),
                ))
            }
            (None, None) => None,
        };
        Ok(Plan {
            roles,
            steps,
            secrets,
            checks,
            health,
            release,
            min_troops,
            hosts,
            rollout,
            windows,
            watches,
            disruption,
            reboot,
        })
    }
}

/// Why `name` cannot name a secret, if it cannot: it is a file name in `TROOPS_SECRETS` and a
/// word in masked output, so letters, digits, `.`, `_` and `-`, not starting with `.`.
fn secret_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.starts_with('.') {
        return Some("starts with `.`");
    }
    (!name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .then_some("may hold only letters, digits, `.`, `_` and `-`")
}

/// A path inside the repo as written in the plan: relative, without `..`.
fn repo_path(path: &str) -> std::result::Result<PathBuf, String> {
    let relative = Path::new(path);
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if relative.is_absolute() {
        return Err(format!("{path:?} is absolute; it must be a path inside the repo"));
    }
    if relative.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path:?} leaves the repo through `..`"));
    }
    Ok(relative.to_owned())
}

/// Reads the plan file at `path` as text. Whatever a deploy repo can put there that is not a
/// readable plan (nothing, a directory, a symlink, bytes that are not UTF-8) is a plan error, so
/// it fails the run like bad TOML does; only the node's own trouble reading a file is an
/// environment error.
pub fn read(path: &Path) -> Result<String> {
    let kind = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(path)),
        Err(e) => return Err(Error::path("reading plan", path, e)),
    };
    if kind.is_symlink() {
        return Err(not_a_file(path, "a symlink"));
    }
    if !kind.is_file() {
        return Err(not_a_file(path, "a directory or special file"));
    }
    text(path, std::fs::read(path).map_err(|e| Error::path("reading plan", path, e))?)
}

/// The error for a plan that is not there.
pub fn missing(path: &Path) -> Error {
    let message = format!("no such plan file (a deploy repo keeps its plan in {FILE_NAME} at its root)");
    Error::Plan { path: path.to_owned(), line: 1, column: 1, message }
}

/// The error for a plan at `path` that is `what` instead of a regular file.
pub fn not_a_file(path: &Path, what: &str) -> Error {
    let message = format!("the plan is {what}; it must be a regular file");
    Error::Plan { path: path.to_owned(), line: 1, column: 1, message }
}

/// The plan `bytes` read from `path` as text; bytes that are not UTF-8 are a plan error at the
/// first of them.
pub fn text(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default();
        let (line, column) = line_col(before, valid);
        let message = format!("the plan is not UTF-8 text (byte 0x{:02x})", e.as_bytes()[valid]);
        Error::Plan { path: path.to_owned(), line, column, message }
    })
}

/// A misplaced value: its span in the plan and what is wrong, for the caller to place.
type Problem = (std::ops::Range<usize>, String);

/// The `roles` of `owner` (a step or check): `None` without the key (every host), never empty.
fn role_list(
    owner: &str,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Option<Vec<String>>, Problem> {
    let Some(roles) = roles else { return Ok(None) };
    if roles.get_ref().is_empty() {
        return Err((roles.span(), format!("{owner}: `roles` is empty; leave it out to run on every host")));
    }
    roles
        .into_inner()
        .into_iter()
        .map(|role| match crate::model::names::role_name_problem(role.get_ref()) {
            Some(problem) => Err((role.span(), format!("{owner}: role name {:?} {problem}", role.get_ref()))),
            None => Ok(role.into_inner()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `paths` of `owner` (a step or check): globs of files in the repo, relative, without `..`;
/// without the key, none (it runs every time), and never an empty list.
pub(super) fn path_globs(
    owner: &str,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<glob::Pattern>, Problem> {
    let Some(paths) = paths else { return Ok(Vec::new()) };
    if paths.get_ref().is_empty() {
        return Err((paths.span(), format!("{owner}: `paths` is empty; leave it out to run every time")));
    }
    paths
        .into_inner()
        .into_iter()
        .map(|path| {
            let text = path.get_ref();
            repo_path(text.trim_end_matches('/'))
                .map_err(|m| format!("`paths` {m}"))
                .and_then(|_| {
                    glob::Pattern::new(text.trim_end_matches('/'))
                        .map_err(|e| format!("`paths` {text:?} is not a glob: {}", e.msg))
                })
                .map_err(|m| (path.span(), format!("{owner}: {m}")))
        })
        .collect()
}

/// The `phase` of step `owner`; `activate` only in a plan with `[release]`.
fn phase(owner: &str, phase: Option<Spanned<String>>, releases: bool) -> Result<Phase, Problem> {
    let Some(phase) = phase else { return Ok(Phase::Build) };
    match phase.get_ref().as_str() {
        "build" => Ok(Phase::Build),
        "activate" if releases => Ok(Phase::Activate),
        "pre_reboot" => Ok(Phase::PreReboot),
        "activate" => Err((
            phase.span(),
            format!(
                "{owner}: `phase = \"activate\"` needs a `[release]`: activate steps run after \
                 `current` is switched to the new release, and only releases have one"
            ),
        )),
        other => Err((
            phase.span(),
            format!("{owner}: `phase` {other:?} is not \"build\", \"activate\" or \"pre_reboot\""),
        )),
    }
}

/// `[release]`, with its defaults.
fn release(raw: RawRelease) -> Result<Release, Problem> {
    let count = |value: Option<Spanned<i64>>, key: &str, default: u32, least: i64| match value {
        None => Ok(default),
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if i64::from(n) >= least => Ok(n),
            _ => {
                Err((v.span(), format!("release: `{key}` {} must be a number from {least} up", v.get_ref())))
            }
        },
    };
    let keep = count(raw.keep, "keep", 5, 1)?;
    let keep_failed = count(raw.keep_failed, "keep_failed", 3, 0)?;
    let link = match raw.link {
        None => None,
        Some(link) => {
            let path = Path::new(link.get_ref());
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err((
                    link.span(),
                    format!("release: `link` {:?} must be an absolute path without `..`", link.get_ref()),
                ));
            }
            Some(path.to_owned())
        }
    };
    Ok(Release { keep, keep_failed, link, verify: raw.verify.unwrap_or(false) })
}

/// Checks that `script` names an executable file inside `root`, without `..`, absolute paths or
/// symlinks that lead out; returns it relative to `root`.
fn script_path(root: Option<&Path>, script: &str) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let relative = repo_path(script).map_err(|e| format!("script {e}"))?;
    let Some(root) = root else { return Ok(relative) };
    let root =
        root.canonicalize().map_err(|e| format!("cannot resolve the checkout {}: {e}", root.display()))?;
    let full = root.join(&relative);
    let real = full.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("script {script:?} is not in the repo (is it committed?)"),
        _ => format!("script {script:?}: {e}"),
    })?;
    if !real.starts_with(&root) {
        return Err(format!("script {script:?} leaves the repo through a symlink to {}", real.display()));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("script {script:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("script {script:?} is not a file"));
    }
    // Executed directly: without an executable bit it could only fail, "Permission denied".
    if meta.permissions().mode() & 0o111 == 0 {
        let file = real.strip_prefix(&root).unwrap_or(&relative).display();
        return Err(format!(
            "script {script:?} is not executable (mode {:o}); commit it with its executable bit: \
             git update-index --chmod=+x {file}",
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan> {
        Plan::parse(Path::new("troops.toml"), text, Some(Path::new("/")))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_roles_and_steps() {
        let plan = parse(
            "[roles.web]\nhosts = [\"a\"]\nmatch = [\"web-*\"]\n\n[[step]]\nname = \"one\"\nrun = \"true\"\n\
             roles = [\"web\"]\ntimeout = \"5s\"\nkill_grace = \"300ms\"\nenv = { LEVEL = \"prod\" }\n\n[[step]]\nname = \"two\"\nrun = \"false\"\n",
        )
        .unwrap();
        assert_eq!(plan.roles[0].name, "web");
        assert!(plan.roles[0].patterns[0].matches("web-3"));
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.steps[0].timeout, Duration::from_secs(5));
        assert_eq!(plan.steps[0].env["LEVEL"], "prod");
        assert_eq!(plan.steps[1].roles, None);
        assert_eq!(plan.steps[1].timeout, DEFAULT_TIMEOUT);
        assert_eq!(plan.steps[0].kill_grace, Duration::from_millis(300));
        assert_eq!(plan.steps[1].kill_grace, DEFAULT_KILL_GRACE);
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nbogus = 1\n").starts_with("troops.toml:4:1: "));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\n[[step]]\nname = \"a\"\nrun = \"y\"\n")
            .starts_with("troops.toml:5:8: duplicate step name `a`"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nscript = \"s\"\n")
            .contains(":4:10: step `a` has both"));
        assert!(error("[[step]]\nname = \"a\"\n").contains("needs `run` or `script`"));
        assert!(error("[[step]\n").starts_with("troops.toml:1:"));
        assert!(error("[[step]]\nname = \"a\"\nscript = \"../x\"\n")
            .contains(":3:10: step `a`: script \"../x\" leaves the repo through `..`"));
        assert!(error("[[step]]\nname = \"a\"\nscript = \"/bin/true\"\n").contains("is absolute"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\ntimeout = \"never\"\n").contains(":4:11:"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nkill_grace = \"soon\"\n")
            .contains(":4:14: step `a`: `kill_grace` \"soon\""));
        for (paths, want) in [
            ("[]", ":4:9: step `a`: `paths` is empty; leave it out to run every time"),
            ("[\"/etc/x\"]", ":4:10: step `a`: `paths` \"/etc/x\" is absolute"),
            (
                "[\"ok\", \"a/../../x\"]",
                ":4:16: step `a`: `paths` \"a/../../x\" leaves the repo through `..`",
            ),
            ("[\"a/[\"]", ":4:10: step `a`: `paths` \"a/[\" is not a glob: invalid range pattern"),
        ] {
            let text = format!("[[step]]\nname = \"a\"\nrun = \"x\"\npaths = {paths}\n");
            assert!(error(&text).contains(want), "{paths}: {}", error(&text));
        }
        assert!(error("[[check]]\nname = \"c\"\ntcp = \"h:1\"\npaths = []\n")
            .contains(":4:9: check `c`: `paths` is empty"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nkill_grace = \"0s\"\n")
            .contains("`kill_grace` \"0s\" must be more than zero"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nroles = []\n").contains("`roles` is empty"));
        assert!(error("[roles.web]\nmatch = [\"[\"]\n").contains(":2:10: role `web`: bad pattern"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nenv = { TROOPS_HOST = \"x\" }\n")
            .contains("may not set"));
        assert!(error(
            "[[step]]\nname = \"a\"\nrun = \"x\"\n[[step]]\nname = \"b\"\nrun = \"x\"\ntimeout = 5\n"
        )
        .starts_with("troops.toml:7:11: `step.timeout`: invalid type"));
        assert!(error("[roles.web]\nhosts = \"a\"\n")
            .starts_with("troops.toml:2:9: `roles.web.hosts`: invalid type"));
    }

    #[test]
    fn secrets_are_parsed_and_their_mistakes_placed() {
        let plan = parse(
            "[[secret]]\nname = \"db\"\nfile = \"secrets/db.age\"\nroles = [\"db\"]\n\
             [[secret]]\nname = \"tls.key\"\nfile = \"s/tls.age\"\nhosts = [\"web-1\"]\nmode = \"0440\"\nowner = \"www:ssl\"\n",
        )
        .unwrap();
        assert_eq!(plan.secrets[0].file, Path::new("secrets/db.age"));
        assert_eq!((plan.secrets[0].mode, plan.secrets[0].owner.as_deref()), (0o400, None));
        assert_eq!(plan.secrets[1].hosts, ["web-1"]);
        assert_eq!((plan.secrets[1].mode, plan.secrets[1].owner.as_deref()), (0o440, Some("www:ssl")));
        let secret = |body: &str| error(&format!("[[secret]]\nname = \"db\"\n{body}"));
        assert!(secret("file = \"a\"\n").contains(":1:1: secret `db` needs `roles` or `hosts`"));
        assert!(secret("file = \"../a\"\nroles = [\"db\"]\n")
            .contains(":3:8: secret `db`: `file` \"../a\" leaves"));
        assert!(secret("file = \"/a\"\nroles = [\"db\"]\n").contains("is absolute"));
        assert!(
            secret("file = \"a\"\nroles = [\"db\"]\nmode = \"644x\"\n").contains(":5:8: secret `db`: `mode`")
        );
        assert!(secret("file = \"a\"\nroles = [\"db\"]\nmode = \"1777\"\n").contains("not an octal mode"));
        assert!(secret("file = \"a\"\nroles = [\"db\"]\nbogus = 1\n").contains(":5:1:"));
        assert!(error("[[secret]]\nname = \"../x\"\nfile = \"a\"\nroles = [\"r\"]\n")
            .contains(":2:8: secret name"));
        assert!(error("[[secret]]\nname = \"a\"\nfile = \"a\"\nroles = [\"r\"]\n[[secret]]\nname = \"a\"\nfile = \"b\"\nroles = [\"r\"]\n")
            .contains(":6:8: duplicate secret name `a`"));
    }

    #[test]
    fn names_with_control_characters_and_huge_timeouts_are_refused() {
        assert_eq!(
            error("[[step]]\nname = \"a\\nb\"\nrun = \"x\"\n"),
            "troops.toml:2:8: step name \"a\\nb\" has a control character (\\u{a})"
        );
        assert!(error("[[step]]\nname = \" \"\nrun = \"x\"\n").contains(":2:8: step name \" \" is empty"));
        assert!(error("[roles.\"w\\u0000\"]\nhosts = [\"a\"]\n").starts_with("troops.toml:1:8: role name"));
        assert!(error("[roles.web]\nhosts = [\"a\\rb\"]\n").contains(":2:10: role `web`: host"));
        assert!(error("[roles.\"a,b\"]\nhosts = [\"a\"]\n").contains("has a comma"));
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nroles = [\"\\u007f\"]\n")
            .contains(":4:10: step `a`: role name"));
        let e = error("[[step]]\nname = \"a\"\nrun = \"x\"\ntimeout = \"2years\"\n");
        assert!(e.contains(":4:11: step `a`: `timeout` \"2years\" is too long; at most 1year"), "{e}");
        assert_eq!(
            parse("[[step]]\nname = \"a\"\nrun = \"x\"\ntimeout = \"1year\"\n").unwrap().steps[0].timeout,
            limits::YEAR
        );
    }

    #[test]
    fn checks_health_and_release_are_parsed_with_their_defaults() {
        let plan = parse(
            "min_troops = \"0.2\"\n[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1:8080/health\"\nexpect = \"ok\"\n\
             roles = [\"web\"]\nstart_period = \"5s\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nretries = 5\n\
             [[check]]\nname = \"db\"\ntcp = \"[::1]:5432\"\n[[check]]\nname = \"cli\"\nrun = \"true\"\n\
             [[check]]\nname = \"nginx\"\nunit = \"nginx.service\"\n\
             [health]\nsoak = \"60s\"\non_failure = \"rollback\"\n[release]\nlink = \"/srv/app/current\"\n\
             [[step]]\nname = \"build\"\nrun = \"x\"\n[[step]]\nname = \"migrate\"\nrun = \"x\"\nphase = \"activate\"\n",
        )
        .unwrap();
        assert_eq!(plan.min_troops.as_deref(), Some("0.2"));
        let web = &plan.checks[0];
        let url = "http://127.0.0.1:8080/health".to_owned();
        assert_eq!(web.probe, Probe::Http(HttpProbe { url, verify: crate::model::url::Verify::System }));
        assert_eq!(
            (web.expect.as_ref(), web.roles.as_deref()),
            (Some(&Expect::Contains("ok".into())), Some(&["web".to_owned()][..]))
        );
        assert_eq!(
            (web.start_period, web.interval, web.timeout, web.retries),
            (Duration::from_secs(5), Duration::from_secs(1), Duration::from_millis(500), 5)
        );
        let db = &plan.checks[1];
        assert_eq!(db.probe, Probe::Tcp("[::1]:5432".into()));
        assert_eq!(
            (db.start_period, db.interval, db.timeout, db.retries),
            (Duration::ZERO, Duration::from_secs(2), Duration::from_secs(2), 3)
        );
        assert_eq!(plan.checks[2].probe, Probe::Run("true".into()));
        assert_eq!(plan.checks[3].probe, Probe::Unit("nginx.service".into()));
        assert_eq!(
            plan.health,
            Health {
                soak: Duration::from_secs(60),
                on_failure: OnFailure::Rollback,
                recheck: Duration::ZERO,
                on_drift: OnDrift::Report
            }
        );
        assert_eq!(
            plan.release,
            Some(Release { keep: 5, keep_failed: 3, link: Some("/srv/app/current".into()), verify: false })
        );
        assert_eq!((plan.steps[0].phase, plan.steps[1].phase), (Phase::Build, Phase::Activate));

        let bare = parse("[[step]]\nname = \"a\"\nrun = \"x\"\n").unwrap();
        assert_eq!(
            bare.health,
            Health {
                soak: Duration::ZERO,
                on_failure: OnFailure::Retry,
                recheck: Duration::ZERO,
                on_drift: OnDrift::Report
            }
        );
        let watched = parse("[health]\nrecheck = \"1m\"\non_drift = \"redeploy\"\n").unwrap().health;
        assert_eq!((watched.recheck, watched.on_drift), (Duration::from_secs(60), OnDrift::Redeploy));
        assert!(error("[health]\non_drift = \"fix\"\n").contains(":2:12: health: `on_drift` \"fix\" is not"));
        assert!(error("[health]\nrecheck = \"10ms\"\n").contains(":2:11: health: `recheck` \"10ms\""));
        assert!(bare.checks.is_empty() && bare.release.is_none() && bare.min_troops.is_none());
        let zero =
            parse("[health]\nsoak = \"0s\"\n[[check]]\nname = \"a\"\nrun = \"x\"\nstart_period = \"0s\"\n")
                .unwrap();
        assert_eq!((zero.health.soak, zero.checks[0].start_period), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn an_https_check_trusts_the_system_its_ca_or_nothing() {
        use crate::model::url::Verify;
        let verify = |keys: &str| {
            let plan =
                parse(&format!("[[check]]\nname = \"web\"\nhttp = \"https://web:8443/health\"\n{keys}"))
                    .unwrap();
            match &plan.checks[0].probe {
                Probe::Http(probe) => probe.verify.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(verify(""), Verify::System);
        assert_eq!(verify("ca = \"certs/ca.pem\"\n"), Verify::CaFile("certs/ca.pem".into()));
        assert_eq!(verify("insecure_skip_verify = true\n"), Verify::Off);
        assert_eq!(verify("insecure_skip_verify = false\n"), Verify::System);
    }

    #[test]
    fn every_new_key_places_its_mistakes() {
        let check = |body: &str| error(&format!("[[check]]\nname = \"web\"\n{body}"));
        let cases: &[(&str, &str)] = &[
            ("", ":1:1: check `web` needs one of `http`, `tcp`, `run` or `unit`"),
            (
                "http = \"http://a/\"\ntcp = \"a:1\"\n",
                ":4:7: check `web` has both `http` and `tcp`; keep one",
            ),
            ("http = \"ftp://a/\"\n", ":3:8: check `web`: `http` \"ftp://a/\" is not a URL to probe"),
            (
                "http = \"http://a/\"\nca = \"ca.pem\"\n",
                ":4:6: check `web`: `ca` and `insecure_skip_verify` are for https:// URLs",
            ),
            (
                "http = \"https://a/\"\nca = \"ca.pem\"\ninsecure_skip_verify = true\n",
                ":5:24: check `web` has both `ca` and `insecure_skip_verify`; keep one",
            ),
            ("http = \"https://a/\"\nca = \" \"\n", ":4:6: check `web`: `ca` is empty"),
            (
                "tcp = \"a:1\"\ninsecure_skip_verify = true\n",
                ":4:24: check `web`: `ca` and `insecure_skip_verify` are for `http` checks",
            ),
            ("tcp = \"localhost\"\n", ":3:7: check `web`: `tcp` \"localhost\" is not `host:port`"),
            ("tcp = \"a:99999\"\n", ":3:7: check `web`: `tcp` \"a:99999\" is not `host:port`"),
            ("run = \" \"\n", ":3:7: check `web`: `run` \" \" is empty"),
            ("unit = \"--all\"\n", ":3:8: check `web`: `unit` \"--all\" is not a systemd unit name"),
            ("unit = \"a b\"\n", ":3:8: check `web`: `unit` \"a b\" is not a systemd unit name"),
            ("tcp = \"a:1\"\nexpect = \"ok\"\n", ":4:10: check `web`: `expect` is for `http`"),
            ("unit = \"a\"\nexpect_exact = \"ok\"\n", ":4:16: check `web`: `expect_exact` is for `http`"),
            (
                "run = \"x\"\nexpect = \"ok\"\nexpect_exact = \"ok\"\n",
                ":5:16: check `web` has both `expect` and `expect_exact`; keep one",
            ),
            ("run = \"x\"\nretries = 0\n", ":4:11: check `web`: `retries` 0 must be a number from 1 up"),
            ("run = \"x\"\nretries = -1\n", ":4:11: check `web`: `retries` -1 must be"),
            (
                "run = \"x\"\ninterval = \"0s\"\n",
                ":4:12: check `web`: `interval` \"0s\" is too short; at least 100ms",
            ),
            (
                "run = \"x\"\ninterval = \"1ns\"\n",
                ":4:12: check `web`: `interval` \"1ns\" is too short; at least 100ms",
            ),
            ("run = \"x\"\ntimeout = \"99ms\"\n", ":4:11: check `web`: `timeout` \"99ms\" is too short"),
            (
                "run = \"x\"\nstart_period = \"1us\"\n",
                ":4:16: check `web`: `start_period` \"1us\" is too short; at least 100ms, or 0s for none",
            ),
            ("run = \"x\"\ntimeout = \"soon\"\n", ":4:11: check `web`: `timeout` \"soon\""),
            (
                "run = \"x\"\nstart_period = \"2years\"\n",
                ":4:16: check `web`: `start_period` \"2years\" is too long",
            ),
            ("run = \"x\"\nroles = []\n", ":4:9: check `web`: `roles` is empty"),
            ("run = \"x\"\nroles = [\"a,b\"]\n", ":4:10: check `web`: role name \"a,b\" has a comma"),
            ("run = \"x\"\nhealthy = true\n", ":4:1: unknown field `healthy`"),
        ];
        for (body, want) in cases {
            let e = check(body);
            assert!(e.starts_with("troops.toml:") && e.contains(want), "{body:?}: {e}");
        }
        assert!(error("[[check]]\nname = \"a\"\nrun = \"x\"\n[[check]]\nname = \"a\"\nrun = \"y\"\n")
            .contains(":5:8: duplicate check name `a`"));
        assert!(error("[[check]]\nname = \"a\\u001b\"\nrun = \"x\"\n").contains(":2:8: check name"));
        assert!(error("[health]\nsoak = \"long\"\n").contains(":2:8: health: `soak` \"long\""));
        assert!(error("[health]\nsoak = \"1ms\"\n").contains(":2:8: health: `soak` \"1ms\" is too short"));
        assert!(error("[health]\non_failure = \"panic\"\n")
            .contains(":2:14: health: `on_failure` \"panic\" is not \"retry\" or \"rollback\""));
        assert!(error("[release]\nkeep = 0\n").contains(":2:8: release: `keep` 0 must be a number from 1 up"));
        assert!(error("[release]\nkeep_failed = -1\n").contains(":2:15: release: `keep_failed` -1"));
        assert!(error("[release]\nlink = \"current\"\n")
            .contains(":2:8: release: `link` \"current\" must be an absolute path"));
        assert!(error("[release]\nlink = \"/srv/../etc\"\n").contains("without `..`"));
        let step = "[[step]]\nname = \"a\"\nrun = \"x\"\nphase = ";
        assert!(error(&format!("{step}\"activate\"\n")).contains(
            ":4:9: step `a`: `phase = \"activate\"` needs a `[release]`: activate steps run after `current`"
        ));
        assert!(error(&format!("[release]\n{step}\"deploy\"\n"))
            .contains(":5:9: step `a`: `phase` \"deploy\" is not \"build\", \"activate\" or \"pre_reboot\""));
    }

    #[test]
    fn a_plan_for_a_newer_troops_is_refused_by_min_troops_before_its_keys() {
        let mine = env!("CARGO_PKG_VERSION");
        assert_eq!(
            error("min_troops = \"99.0\"\n[[check]]\nname = \"a\"\nprobe = \"quantum\"\n[fleet]\nwave = 1\n"),
            format!(
                "troops.toml:1:14: this plan needs troops 99.0 or later (min_troops); this is troops {mine}"
            )
        );
        assert!(error("[[step]]\nname = \"a\"\nrun = \"x\"\nmin_troops = \"0.2.1000\"\n")
            .contains("unknown field"));
        assert!(error("min_troops = \"0.2.1000\"\n").contains("needs troops 0.2.1000 or later"));
        assert!(error("min_troops = \"two\"\n")
            .starts_with("troops.toml:1:14: `min_troops` \"two\" is not a version"));
        assert!(error("min_troops = 2\n").starts_with("troops.toml:1:14: `min_troops`: invalid type"));
        assert!(parse("min_troops = \"0.1\"\n").is_ok() && parse("min_troops = \"0.2.0\"\n").is_ok());
        let unknown = error("[fleet]\nwave = 1\n");
        assert!(
            unknown.ends_with("(a key of a newer troops? plans that need one set min_troops)"),
            "{unknown}"
        );
    }

    #[test]
    fn a_script_must_be_an_executable_file_in_the_checkout() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("steps/run.sh", 0o755);
        write("steps/plain.sh", 0o644);
        std::os::unix::fs::symlink("run.sh", dir.path().join("steps/link.sh")).unwrap();
        std::os::unix::fs::symlink("plain.sh", dir.path().join("steps/plain-link.sh")).unwrap();
        let check = |script: &str| {
            let text = format!("[[step]]\nname = \"a\"\nscript = \"{script}\"\n");
            Plan::parse(Path::new("troops.toml"), &text, Some(dir.path()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(check("steps/run.sh"), Ok(()));
        assert_eq!(check("steps/link.sh"), Ok(()));
        assert_eq!(
            check("steps/plain.sh").unwrap_err(),
            "troops.toml:3:10: step `a`: script \"steps/plain.sh\" is not executable (mode 644); \
             commit it with its executable bit: git update-index --chmod=+x steps/plain.sh"
        );
        // Through a symlink, the file to fix is the one it leads to.
        assert!(check("steps/plain-link.sh").unwrap_err().ends_with("--chmod=+x steps/plain.sh"));
        assert_eq!(
            check("steps/gone.sh").unwrap_err(),
            "troops.toml:3:10: step `a`: script \"steps/gone.sh\" is not in the repo (is it committed?)"
        );
        assert!(check("steps").unwrap_err().ends_with("script \"steps\" is not a file"));
    }

    #[test]
    fn a_plan_file_that_is_no_text_file_is_a_plan_error() {
        let dir = std::env::temp_dir().join(format!("troops-plan-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d/troops.toml")).unwrap();
        std::fs::create_dir_all(dir.join("l")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("l/troops.toml")).unwrap();
        std::fs::create_dir_all(dir.join("u")).unwrap();
        std::fs::write(dir.join("u/troops.toml"), b"[[step]]\nname = \"\xff\"\n").unwrap();
        let load = |sub: &str| Plan::load(&dir.join(sub)).unwrap_err();
        assert!(matches!(load("d"), Error::Plan { .. }) && load("d").to_string().contains("is a directory"));
        assert!(load("l").to_string().contains("is a symlink"), "{}", load("l"));
        assert!(
            load("u").to_string().ends_with("troops.toml:2:9: the plan is not UTF-8 text (byte 0xff)"),
            "{}",
            load("u")
        );
        assert!(load("nothing").to_string().contains("no such plan file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn watches_name_a_role_an_export_and_maybe_who_watches_and_a_settle() {
        let plan = parse(
            "[[watch]]\nrole = \"app\"\nexport = \"addr\"\n[[watch]]\nrole = \"db\"\nexport = \"dsn\"\nroles = [\"lb\"]\nsettle = \"1m\"\n",
        )
        .unwrap();
        let w = &plan.watches;
        assert_eq!((w[0].role.as_str(), w[0].export.as_str(), &w[0].roles), ("app", "addr", &None));
        assert_eq!(w[0].settle, watch::DEFAULT_SETTLE);
        assert_eq!((w[1].roles.clone(), w[1].settle), (Some(vec!["lb".to_owned()]), Duration::from_secs(60)));
        assert!(error("[[watch]]\nrole = \"app\"\nexport = \"a/b\"\n")
            .contains(":3:10: watch 1: export name \"a/b\" has '/'"));
        assert!(error("[[watch]]\nrole = \"app\"\nexport = \"a\"\nsettle = \"soon\"\n")
            .contains(":4:10: watch 1: `settle`"));
        assert!(error("[[watch]]\nrole = \"app\"\n").contains("missing field `export`"));
        assert!(
            error("[[watch]]\nrole = \"app\"\nexport = \"a\"\nevery = 1\n").contains("unknown field `every`")
        );
    }
}
