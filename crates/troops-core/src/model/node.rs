//! A node: its state dir (the SPEC's layout, spelled out once here: every path troops keeps state
//! at is a method of [`Node`]) and its config.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::config::Config;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/troops";

#[derive(Clone)]
pub struct Node {
    pub state_dir: PathBuf,
    pub config: Config,
}

impl Node {
    /// `<state>/repo/main.git`, the node repo.
    pub fn repo_path(&self) -> PathBuf {
        Node::repo_path_in(&self.state_dir)
    }

    /// The node repo of the node at `state_dir`, before its config is read (`troops init`, and
    /// reading the config, which falls back to the policy recorded in the repo).
    pub fn repo_path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("repo/main.git")
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

    /// `<state>/fetch.lock`: one fetch into the node repo at a time (`pull`).
    pub fn fetch_lock_path(&self) -> PathBuf {
        self.state_dir.join("fetch.lock")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("troops.sock")
    }

    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }

    /// The node's own key, for fetching and for its secrets: `<state>/ssh/id_ed25519`.
    pub fn ssh_key_path(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }

    /// `<state>/remotes.json`: how each remote's last fetch went.
    pub fn remotes_path(&self) -> PathBuf {
        self.state_dir.join("remotes.json")
    }

    /// `<state>/probes.json`: what each remote's last conditional GET saw (`probe`).
    pub fn probes_path(&self) -> PathBuf {
        self.state_dir.join("probes.json")
    }

    /// `<state>/seen.json`: when each commit was first accepted (`verify::seen`).
    pub fn seen_path(&self) -> PathBuf {
        self.state_dir.join("seen.json")
    }

    /// `<state>/refused.json`: the last commit refused for its signature, and why.
    pub fn refused_path(&self) -> PathBuf {
        self.state_dir.join("refused.json")
    }

    /// `<state>/status.git`: the fleet's status documents, this node's and its peers'.
    pub fn status_repo_path(&self) -> PathBuf {
        self.state_dir.join("status.git")
    }

    /// `<state>/sightings.json`: when this node saw its peers' status refs change.
    pub fn sightings_path(&self) -> PathBuf {
        self.state_dir.join("sightings.json")
    }

    /// `<state>/believed.json`: the newest status document believed of each host (`believe`).
    pub fn believed_path(&self) -> PathBuf {
        self.state_dir.join("believed.json")
    }

    /// `<state>/slots.json`: the disruption slots this node saw, and what its run does about one.
    pub fn slots_path(&self) -> PathBuf {
        self.state_dir.join("slots.json")
    }

    /// The reboot under way or the last one (`mech::reboot`).
    pub fn reboot_path(&self) -> PathBuf {
        self.state_dir.join("reboot.json")
    }

    /// `<state>/rollout.json`: the hold the rollout gate last decided, if it held.
    pub fn rollout_path(&self) -> PathBuf {
        self.state_dir.join("rollout.json")
    }

    /// `<state>/metrics/`: the counters and their lock.
    pub fn metrics_dir(&self) -> PathBuf {
        self.state_dir.join("metrics")
    }

    /// `<state>/releases/`: one directory per release.
    pub fn releases_dir(&self) -> PathBuf {
        self.state_dir.join("releases")
    }

    /// `<state>/releases.json`: what each release is and what each switch replaced.
    pub fn releases_index_path(&self) -> PathBuf {
        self.state_dir.join("releases.json")
    }

    /// Where the link to the current release is: the plan's `link`, else `<state>/current`.
    pub fn current_link(&self, link: Option<&Path>) -> PathBuf {
        link.map_or_else(|| self.state_dir.join("current"), Path::to_owned)
    }

    /// The directory under which this node's runs keep their secrets, on tmpfs: `<base>/<node>`,
    /// the base being the config's `secrets_dir`, else as root `/run/troops/secrets`, else
    /// `/dev/shm/troops-<uid>`, and `<node>` the start of the SHA-256 of the state dir's path
    /// (several nodes, as in tests, never share one).
    pub fn secrets_dir(&self) -> PathBuf {
        let uid = nix::unistd::geteuid();
        let base = match &self.config.secrets_dir {
            Some(dir) => dir.clone(),
            None if uid.is_root() => PathBuf::from("/run/troops/secrets"),
            None => PathBuf::from(format!("/dev/shm/troops-{uid}")),
        };
        let digest = Sha256::digest(self.state_dir.as_os_str().as_encoded_bytes());
        base.join(digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}
