//! A node: its state dir (the SPEC's layout, spelled out once here) and its config. Also where a
//! process finds both: flags, then environment, then the repo's git config (for hooks started by
//! a push over SSH, without the pusher's environment), then the defaults.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::Result;
use crate::repo::NodeRepo;
use crate::runs::Runs;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/troops";

pub struct Node {
    pub state_dir: PathBuf,
    pub config: Config,
}

impl Node {
    pub fn load(state_dir: PathBuf, config_path: &Path) -> Result<Node> {
        Ok(Node { state_dir, config: Config::load(config_path)? })
    }

    pub fn repo_path(&self) -> PathBuf {
        self.state_dir.join("repo/main.git")
    }

    pub fn repo(&self) -> Result<NodeRepo> {
        NodeRepo::open(&self.repo_path(), &self.config.branch)
    }

    pub fn runs(&self) -> Runs {
        Runs::new(self.state_dir.join("runs"))
    }

    pub fn work_dir(&self) -> PathBuf {
        self.state_dir.join("work")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("troops.sock")
    }

    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
}

/// What `troops init` recorded in a repo's git config: `(troops.stateDir, troops.config)`.
pub fn recorded_in(git_dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let Ok(config) = git2::Config::open(&git_dir.join("config")) else { return (None, None) };
    let get = |key: &str| config.get_string(key).ok().map(PathBuf::from);
    (get("troops.stateDir"), get("troops.config"))
}

impl Node {
    /// This node's roles: the config's, plus those the plan at `rev` (default: the branch tip)
    /// gives it.
    pub fn roles(&self, rev: Option<&str>) -> Result<std::collections::BTreeSet<String>> {
        let repo = self.repo()?;
        let commit = match rev {
            Some(rev) => Some(repo.resolve(rev)?),
            None => repo.tip()?,
        };
        let text = match commit {
            Some(commit) => repo.plan_text(commit)?,
            None => None,
        };
        let plan = text
            .map(|text| crate::plan::Plan::parse(Path::new(crate::plan::FILE_NAME), &text, None))
            .transpose()?;
        Ok(crate::roles::resolve(&self.config.hostname(), &self.config.roles, plan.as_ref()))
    }
}
