//! What `troops init` recorded in the node repo's git config, for the processes that come
//! without a troops environment (a hook started by a push over SSH): the state dir and config
//! path, and the `[verify]` policy, which a lost or emptied config file must not weaken. Loading
//! a node goes through here: flags, then environment, then the recorded paths, then defaults.

use std::path::{Path, PathBuf};

use crate::model::config::{Config, Scope, Verify, DEFAULT_KEYRING};
use crate::model::error::{Error, Result};
use crate::model::node::Node;

impl Node {
    pub fn load(state_dir: PathBuf, config_path: &Path) -> Result<Node> {
        let config = load_config(&state_dir, config_path)?;
        Ok(Node { state_dir, config })
    }
}

/// What `troops init` recorded in a repo's git config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// `troops.stateDir`.
    pub state_dir: Option<PathBuf>,
    /// `troops.config`.
    pub config: Option<PathBuf>,
}

/// What `troops init` recorded in the git config of the repo at `git_dir`.
pub fn recorded_in(git_dir: &Path) -> Recorded {
    let Ok(config) = git2::Config::open(&git_dir.join("config")) else { return Recorded::default() };
    let get = |key: &str| config.get_string(key).ok().map(PathBuf::from);
    Recorded { state_dir: get("troops.stateDir"), config: get("troops.config") }
}

/// Where the node repo records its `[verify]` policy: next to `troops.stateDir`, in a config
/// file only root may write (see `init::share_with_group`).
const REQUIRE_SIGNED: &str = "troops.requireSigned";
const KEYRING: &str = "troops.keyring";
const ALLOWED_SIGNERS: &str = "troops.allowedSigners";
const SCOPE: &str = "troops.verifyScope";

/// The node config at `path`, for the node at `state_dir`, with its signature policy made to
/// fail closed: a config file that is missing, empty or lacks `require_signed` takes the policy the
/// node recorded (keyring, allowed signers and scope too, unless the file sets them), so losing the file never
/// turns verification off; only an explicit `require_signed = false` does. Root loading a file that
/// sets `require_signed` records its policy for next time.
pub fn load_config(state_dir: &Path, path: &Path) -> Result<Config> {
    let mut config = Config::load(path)?;
    let repo = Node::repo_path_in(state_dir);
    let verify = &mut config.verify;
    if verify.given.require_signed {
        if nix::unistd::geteuid().is_root() && repo.is_dir() {
            record_policy(&repo, verify)?;
        }
    } else if let Some(recorded) = recorded_policy(&repo) {
        if recorded.require_signed {
            verify.require_signed = true;
            if !verify.given.keyring {
                verify.keyring = recorded.keyring;
            }
            if !verify.given.allowed_signers {
                verify.allowed_signers = recorded.allowed_signers;
            }
            if !verify.given.scope {
                verify.scope = recorded.scope;
            }
        }
    }
    Ok(config)
}

/// The policy recorded in the repo at `git_dir`, if any. A value that cannot be read requires
/// signatures (with the default keyring, the tip scope) rather than none.
fn recorded_policy(git_dir: &Path) -> Option<Verify> {
    let config = git2::Config::open(&git_dir.join("config")).ok()?;
    let entry = config.get_entry(REQUIRE_SIGNED).ok()?;
    let require_signed = entry.value().is_none_or(|v| !matches!(v, "false" | "no" | "off" | "0"));
    let keyring = config.get_path(KEYRING).unwrap_or_else(|_| DEFAULT_KEYRING.into());
    let allowed_signers = config.get_path(ALLOWED_SIGNERS).ok();
    let scope = match config.get_string(SCOPE).ok().as_deref() {
        Some("all") => Scope::All,
        _ => Scope::Tip,
    };
    Some(Verify { require_signed, keyring, allowed_signers, scope, given: Default::default() })
}

/// Records `verify` in the repo at `git_dir`, writing only what changed, and keeps the repo's
/// config file root's alone (0644) as `troops init` left it.
pub fn record_policy(git_dir: &Path, verify: &Verify) -> Result<()> {
    let path = git_dir.join("config");
    let context = || format!("recording the [verify] policy in {}", path.display());
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let keyring = absolute(&verify.keyring);
    let allowed_signers = verify.allowed_signers.as_deref().map(absolute);
    if recorded_policy(git_dir).is_some_and(|r| {
        (r.require_signed, &r.keyring, &r.allowed_signers, r.scope)
            == (verify.require_signed, &keyring, &allowed_signers, verify.scope)
    }) {
        return Ok(());
    }
    let mut config = git2::Config::open(&path).map_err(|e| Error::git(context(), e))?;
    let scope = match verify.scope {
        Scope::Tip => "tip",
        Scope::All => "all",
    };
    config
        .set_bool(REQUIRE_SIGNED, verify.require_signed)
        .and_then(|()| config.set_str(KEYRING, &keyring.to_string_lossy()))
        .and_then(|()| config.set_str(SCOPE, scope))
        .and_then(|()| match &allowed_signers {
            Some(path) => config.set_str(ALLOWED_SIGNERS, &path.to_string_lossy()),
            None => config.remove(ALLOWED_SIGNERS).or_else(|e| match e.code() {
                git2::ErrorCode::NotFound => Ok(()),
                _ => Err(e),
            }),
        })
        .map_err(|e| Error::git(context(), e))?;
    crate::mech::repo::lock_down_repo_config(git_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_require_signed_takes_the_recorded_policy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo/main.git");
        git2::Repository::init_bare(&repo).unwrap();
        let config = dir.path().join("troops.toml");
        let keyring = dir.path().join("keys.pgp");
        let signers = dir.path().join("allowed_signers");
        let signed = format!(
            "[verify]\nrequire_signed = true\nkeyring = {keyring:?}\nallowed_signers = {signers:?}\nscope = \"all\"\n"
        );
        let off = "[verify]\nrequire_signed = false\n";
        let load = |text: Option<&str>| {
            match text {
                Some(text) => std::fs::write(&config, text).unwrap(),
                None => std::fs::remove_file(&config).unwrap(),
            }
            load_config(dir.path(), &config).unwrap().verify
        };
        // Nothing recorded yet: an empty file is the default, off.
        assert!(!load(Some("")).require_signed);
        record_policy(&repo, &load(Some(&signed))).unwrap();
        for (case, text) in
            [("missing", None), ("empty", Some("")), ("other keys", Some("branch = \"main\"\n"))]
        {
            let verify = load(text);
            assert!(verify.require_signed, "{case}");
            assert_eq!((verify.keyring.as_path(), verify.scope), (keyring.as_path(), Scope::All), "{case}");
            assert_eq!(verify.allowed_signers.as_deref(), Some(signers.as_path()), "{case}");
        }
        // The file's own keyring and scope still win; only an explicit false turns it off.
        let verify = load(Some("[verify]\nscope = \"tip\"\n"));
        assert!(verify.require_signed && verify.scope == Scope::Tip);
        assert!(!load(Some(off)).require_signed);
        record_policy(&repo, &load(Some(off))).unwrap();
        assert!(!load(Some("")).require_signed);
    }
}
