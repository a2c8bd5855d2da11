//! A node: its state dir (the SPEC's layout, spelled out once here: every path troops keeps state
//! at is a method of [`Node`]) and its config.

use std::path::PathBuf;

use crate::model::config::Config;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/troops";

#[derive(Clone)]
pub struct Node {
    pub state_dir: PathBuf,
    pub config: Config,
}

impl Node {
    pub fn repo_path(&self) -> PathBuf {
        self.state_dir.join("repo/main.git")
    }

    /// `<state>/ledger.json` (see `ledger`).
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.json")
    }

    /// Whether this process's user owns the state dir (made it, with `troops init`), so writes
    /// and goes by the ledger. Members of the admin group only read the state dir.
    pub fn is_owner(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.state_dir).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.state_dir.join("runs")
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
