//! The environment of every child troops starts, built here from nothing: whatever started troops
//! (a pusher's shell, a person's terminal, cron, systemd) passes none of its variables on (`GIT_*`,
//! `SSH_*`, `NOTIFY_SOCKET`, a PATH of its own), so a child does the same whoever triggered it.
//! Every child gets [`base`]: one fixed PATH (with the running troops' directory in front), LANG,
//! and HOME, USER and LOGNAME of the user troops runs as. Each kind adds its own, and nothing else:
//! - steps and `run` checks: the run's `TROOPS_*` (`node::run::prepare`) and the step's `env`;
//! - the notify command: the run it tells of (`TROOPS_RUN_ID`, `TROOPS_EVENT`, ...);
//! - `systemctl` and `ssh-keygen`: nothing;
//! - root's `git` (and the `ssh` it runs): what `git::root_git` and its callers set (`GIT_SSH_COMMAND`
//!   with the node's key, no prompts), and the proxy settings, the one thing it takes from troops'
//!   own environment ([`network`]); git over SSH needs nothing of the caller's (no agent: the
//!   node's key is in the state dir);
//! - a detached troops (`background`): [`network`], as it publishes;
//! - the supervisor of a run's steps: the run's environment, by which its leftovers are found.
//!
//! One kind inherits everything, on purpose: [`as_caller`], `git` run for a person in their clone
//! of the deploy repo (`troops fleet` there), which is theirs and needs their SSH agent and config.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::OnceLock;

/// The PATH of every child, before the running troops' directory.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How this host reaches the network through a proxy, as git (libcurl) reads it, set where troops
/// is started (a unit's `Environment=`): a child that fetches or pushes over HTTP(S) needs it, and
/// nothing else gets it (never a step). Curl reads `http_proxy` only in lower case.
const PROXY: &[&str] =
    &["http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"];

/// The whole environment every child starts from: `PATH`, `LANG=C.UTF-8`, and `HOME`, `USER` and
/// `LOGNAME` of the user troops runs as (from the user database, not from troops' environment).
pub fn base() -> Vec<(&'static str, String)> {
    static BASE: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut env = vec![("PATH", path()), ("LANG", "C.UTF-8".to_owned())];
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
            env.push(("HOME", user.dir.display().to_string()));
            env.push(("USER", user.name.clone()));
            env.push(("LOGNAME", user.name));
        }
        env
    })
    .clone()
}

/// [`base`] and the proxy settings troops itself was started with: for a child that reaches the
/// network (root's `git`, a detached troops).
pub fn network() -> Vec<(&'static str, String)> {
    with_proxy(|name| std::env::var(name).ok())
}

/// [`base`] and the proxy settings that `lookup` finds.
fn with_proxy(lookup: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    let mut env = base();
    env.extend(PROXY.iter().filter_map(|&name| Some((name, lookup(name)?))));
    env
}

/// `program` with exactly the environment `vars`, nothing inherited.
pub fn command<K, V>(program: impl AsRef<OsStr>, vars: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.env_clear().envs(vars);
    command
}

/// `program` with the whole environment of the person who runs troops: only for what runs on their
/// behalf in their own clone (their SSH agent, keys and git config), never on a node.
pub fn as_caller(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}

/// [`PATH`], with the directory of the running troops in front when it is not in it, so that a
/// step's `troops has-role` and a detached troops are this troops.
fn path() -> String {
    let exe_dir = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.display().to_string()));
    match exe_dir {
        Some(dir) if !PATH.split(':').any(|d| d == dir) => format!("{dir}:{PATH}"),
        _ => PATH.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_only_what_it_is_given() {
        let mut vars = base();
        vars.push(("TROOPS_HOST", "web-1".to_owned()));
        let out = command("/usr/bin/env", vars).output().unwrap();
        let seen = String::from_utf8(out.stdout).unwrap();
        let mut names: Vec<&str> = seen.lines().filter_map(|l| Some(l.split_once('=')?.0)).collect();
        names.sort_unstable();
        assert_eq!(names, ["HOME", "LANG", "LOGNAME", "PATH", "TROOPS_HOST", "USER"], "{seen}");
        let path = seen.lines().find_map(|l| l.strip_prefix("PATH=")).unwrap();
        let exe_dir = std::env::current_exe().unwrap().parent().unwrap().display().to_string();
        assert_eq!(path, format!("{exe_dir}:{PATH}"), "this troops' directory first");
    }

    #[test]
    fn a_child_that_reaches_the_network_gets_the_proxy_and_nothing_else() {
        let given = |name: &str| match name {
            "https_proxy" => Some("http://proxy:3128".to_owned()),
            "SSH_AUTH_SOCK" | "GIT_DIR" => Some("leaked".to_owned()),
            _ => None,
        };
        let env = with_proxy(given);
        assert_eq!(env[..env.len() - 1], base()[..]);
        assert_eq!(env.last(), Some(&("https_proxy", "http://proxy:3128".to_owned())));
    }
}
