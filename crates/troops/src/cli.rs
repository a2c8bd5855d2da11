//! The command line: one clap `Args` struct per subcommand; doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "troops",
    version,
    about = "A deployment agent: each host follows a git branch by fast-forward and runs the plan for its roles."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// The node's state dir.
    #[arg(long, global = true, env = "TROOPS_STATE_DIR", default_value = troops_core::model::node::DEFAULT_STATE_DIR, value_parser = absolute)]
    pub state_dir: PathBuf,
    /// The node config file (a missing file means defaults).
    #[arg(long, global = true, env = "TROOPS_CONFIG", default_value = troops_core::model::config::DEFAULT_PATH, value_parser = absolute)]
    pub config: PathBuf,
}

/// `path` made absolute against the working directory, as given: a step runs in its checkout,
/// a hook in the node repo and the daemon in `/`, and each must find the same state dir and config
/// (and `troops init` records them for the hooks).
fn absolute(path: &str) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{path:?}: {e}"))
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The commit to go back to (default: the newest other commit that succeeded here).
    #[arg(long, value_name = "REV")]
    pub to: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the node (state dir, repo, hooks, SSH key); safe to run again.
    Init(InitArgs),
    /// Run the plan now for the branch tip (or REV), even if it is deployed.
    Deploy(DeployArgs),
    /// One cycle: fetch every remote, fast-forward if allowed, run if the tip is not deployed.
    Pull,
    /// Quarantine the deployed commit and run the one deployed before it (or REV) again.
    Rollback(RollbackArgs),
    /// The agent, in the foreground (systemd runs it).
    Daemon,
    /// Host, roles, branch tip, deployed commit, running and last run.
    Status(JsonArgs),
    /// The run history, newest last.
    Runs(JsonArgs),
    /// Wait until the run of COMMIT (default: the branch tip) has ended; exit 0 if it deployed,
    /// 1 if it failed, was rolled back or is quarantined, 3 on timeout.
    ///
    /// For CI, since `git push` exits 0 whatever its run did: `ssh NODE troops wait SHA`. It
    /// prints the run's summary line. A commit the node does not have yet (a full id) is waited
    /// for; one that never ran by itself because a newer push on top of it ran instead stands or
    /// falls with that newer tip.
    Wait(WaitArgs),
    /// One run's output (default: the latest).
    Log(LogArgs),
    /// This node's roles, one per line.
    Roles,
    /// Exit 0 if this node has ROLE, 1 if not (for scripts).
    HasRole(HasRoleArgs),
    /// Validate a plan and its scripts as a node would, without a node (for the deploy repo's CI).
    ///
    /// In a clone of the deploy repo (PLAN at the root of a git work tree) it checks what git would
    /// commit, the index, not the work tree: a script that is not added, or lacks its executable
    /// bit there, fails; paths where the work tree differs are named on stderr. Elsewhere, the
    /// files where they lie.
    Check(CheckArgs),
    /// Who signed REV, or why this node refuses it ([verify] keyring, allowed_signers); exit 0 if good, 1 if not.
    Verify(VerifyArgs),
    /// Pause the node: nothing automatic runs a commit (pulls, retries, corrective runs) until
    /// `troops resume` or --until; fetching goes on, and a person's push or deploy still runs.
    Pause(PauseArgs),
    /// End the node's pause; the daemon's next cycle runs what is due.
    Resume,
    /// Freeze the fleet (in a clone of the deploy repo): no node runs a new commit by itself until --until.
    ///
    /// Makes a freeze signed with your git signing key (`git commit-tree -S`: user.signingkey,
    /// gpg.format) and pushes it to `refs/troops/freeze` on the remotes (default: all of the
    /// clone's). Nodes fetch it with every pull and believe it only when a key of their [verify]
    /// keyring or allowed_signers signed it and it is newer than the freeze or lift they believe.
    /// A person's push or deploy, and rollbacks, still run.
    Freeze(FreezeArgs),
    /// Lift the fleet's freeze (in a clone of the deploy repo), signed and pushed as `troops freeze`.
    Unfreeze(UnfreezeArgs),
    /// Approve REV for a wave (in a clone of the deploy repo), for waves with `approve` or `approvals`.
    ///
    /// Signed with your git signing key and pushed to
    /// `refs/troops/approve/<commit>/<wave>/<your key>` on the remotes (default: all of the
    /// clone's); a node of that wave runs the commit by itself once enough distinct keys its
    /// [verify] trusts approved it.
    Approve(ApproveArgs),
    /// Push a branch to the plan's hosts (in a clone of the deploy repo), canaries first; a table of how each went.
    ///
    /// The hosts are those the plan of the pushed branch lists in its roles' `hosts` (globs in
    /// `match` cannot be listed; name such hosts with --host). Each is pushed to at its URL in the
    /// plan's `[hosts]` table, else at HOST:/var/lib/troops/repo/main.git over ssh. Exit 0 when
    /// every host deployed or was up to date, 1 when any failed, was refused, unreachable, timed
    /// out or not pushed, 2 for bad input.
    Push(PushArgs),
    /// The fleet at a glance, from the status refs the nodes publish (on a node, or in a clone of the deploy repo).
    Fleet(FleetArgs),
    /// What a run of REV (default: the branch tip) would do on this node, running nothing for real.
    ///
    /// Per step and check: runs or skipped, and why (roles, and what changed under its `paths`
    /// since the deployed commit); the wave and what would hold the commit; and what each running
    /// step's `preview` command prints, run in a private checkout without secrets, only for a
    /// commit the node's [verify] policy accepts. Nothing is recorded. With --host, in a clone of
    /// the deploy repo: the answer of the plan alone for that host, running no command.
    Preview(PreviewArgs),
    /// Manage the plan's secrets, in a clone of the deploy repo (the current directory).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Run the notify command for run RUN now, if the run is worth one, and wait for it (a run
    /// in-process starts this detached, so that its caller does not wait).
    #[command(hide = true)]
    Notify(NotifyArgs),
}

#[derive(Args)]
pub struct NotifyArgs {
    /// The run id.
    pub run: u64,
}

/// Secrets are age files encrypted to the keys of the nodes they are for (`keys/<hostname>.pub`)
/// and of the admins (`keys/admins/*.pub`).
#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Encrypt FILE ("-": stdin) as secret NAME to its recipients, writing the secret's file.
    Encrypt(EncryptArgs),
    /// Change secret NAME with $EDITOR; its plaintext is only in a private temp dir meanwhile.
    Edit(EditArgs),
    /// Re-encrypt every secret to its current recipients: all files or none.
    Rekey(IdentityArgs),
    /// Exit 1 naming file and host when a secret's recipients differ from what the plan and keys/ require.
    Check,
}

#[derive(Args)]
pub struct EncryptArgs {
    /// The secret's name in the plan.
    pub name: String,
    /// The plaintext; "-" reads stdin.
    pub file: PathBuf,
    /// Encrypt although keys/admins/ holds no key: only the secret's hosts can decrypt it, so
    /// nobody can edit or rekey it, and it is lost with their keys.
    #[arg(long)]
    pub allow_no_admin: bool,
}

#[derive(Args)]
pub struct EditArgs {
    /// The secret's name in the plan.
    pub name: String,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Args)]
pub struct IdentityArgs {
    /// The admin's SSH private key (unencrypted) that decrypts the secrets; default ~/.ssh/id_ed25519.
    #[arg(long, env = "TROOPS_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    /// The branch to follow (written to the node config).
    #[arg(long)]
    pub branch: Option<String>,
    /// A remote to fetch from, as NAME=URL; repeat for several. A remote the node has already,
    /// with another URL, is refused (change it with `git remote set-url`); a relative path is made
    /// absolute.
    #[arg(long = "remote", value_name = "NAME=URL", value_parser = parse_remote)]
    pub remotes: Vec<(String, String)>,
    /// A role this node has besides those the plan gives it (written to the node config).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// This node's name (in the plan's roles, its status ref, keys/NAME.pub), written to the node
    /// config if it names none; default: this machine's fully qualified name.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The commit to run (any git revision); default: the branch tip.
    #[arg(long, value_name = "REV")]
    pub commit: Option<String>,
    /// Show what the run would do and why, as `troops preview` does; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run every step of this host's, also those whose `paths` saw no change.
    #[arg(long)]
    pub all_steps: bool,
}

#[derive(Args)]
pub struct PushArgs {
    /// Push nowhere: show what each host would do with the branch (`troops preview` there, through
    /// a push to refs/troops/preview that the host refuses), as Markdown for a pull request.
    #[arg(long)]
    pub preview: bool,
    /// Push to the hosts that ROLE lists by name; repeat for several (default: every role's).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Push to HOST; repeat for several. Named hosts go first, in the order given.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// How many hosts to push to at once.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub parallel: u64,
    /// Push to the first N hosts first, one at a time, and stop at the first that fails.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: usize,
    /// The branch to push, to the same branch on every host (default: HEAD's).
    #[arg(long, value_name = "B")]
    pub branch: Option<String>,
    /// Kill a host's push (git and its ssh) that has not ended after this long.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = troops_core::model::limits::timeout_arg)]
    pub timeout: std::time::Duration,
}

#[derive(Args)]
pub struct PauseArgs {
    /// Why, for status, the fleet and whoever reads them.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// When the pause ends by itself: a time (2026-12-24T18:00:00Z) or a duration from now (2h).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Args)]
pub struct FreezeArgs {
    /// When the freeze ends by itself: a time (2026-12-27T08:00:00Z) or a duration from now (3d).
    #[arg(long, value_name = "TIME")]
    pub until: String,
    /// Why, for every node's status and the fleet.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Push to this remote of the clone (repeatable); default: all of them.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Vec<String>,
}

#[derive(Args)]
pub struct UnfreezeArgs {
    /// Why, for the record.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Push to this remote of the clone (repeatable); default: all of them.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Vec<String>,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The commit to approve (any git revision of the clone).
    pub rev: String,
    /// The wave of the plan at REV that may run it.
    #[arg(long, value_name = "NAME")]
    pub wave: String,
    /// Push to this remote of the clone (repeatable); default: all of them.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Vec<String>,
}

#[derive(Args)]
pub struct PreviewArgs {
    /// The commit to preview (any git revision); default: the branch tip (HEAD in a clone).
    pub rev: Option<String>,
    /// As `troops deploy --all-steps` would run: every step, whatever changed.
    #[arg(long)]
    pub all_steps: bool,
    /// In a clone of the deploy repo: preview for this host, from the plan alone.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Args)]
pub struct JsonArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: Option<FleetCommand>,
    /// The remote to fetch the status refs from; default: the node's `status_remote`, or `origin` in a clone.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Print JSON for scripts: each node's status document plus `behind`, `age_seconds`, `stale`.
    #[arg(long)]
    pub json: bool,
    /// Write the fleet as one self-contained HTML page to FILE (replaced whole), instead of the table.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "publish"], value_parser = absolute)]
    pub html: Option<PathBuf>,
    /// Publish this node's status to its `status_remote` now, and exit (an in-process run starts
    /// this in the background; the daemon publishes on its own).
    #[arg(long, conflicts_with = "json")]
    pub publish: bool,
    /// Exit 1 when a node reports a failure (failed, rolled back, or a rollout halted by one) or
    /// its report is stale: a gate for CI. Nodes still deploying, soaking or held do not fail it.
    #[arg(long, conflicts_with = "publish")]
    pub strict: bool,
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Serve the fleet page over HTTP (GET /), fetching the status refs anew every --refresh.
    Serve(ServeArgs),
    /// What each node exports (`$TROOPS_EXPORTS` of its last run that succeeded), per host.
    Exports(ExportsArgs),
}

#[derive(Args)]
pub struct ExportsArgs {
    /// Only this export.
    pub name: Option<String>,
    /// Only the hosts with this role (as their status says).
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// The remote to fetch the status refs from; default: the node's `status_remote`, or `origin` in a clone.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Print JSON for scripts: one object per (host, export), values as written.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The address and port to listen on, e.g. 127.0.0.1:9470 (port 0: any free one, printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The remote to fetch the status refs from; default: the node's `status_remote`, or `origin` in a clone.
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,
    /// How often to fetch the status refs anew; the page reloads itself as often (every 5s at most).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = troops_core::model::limits::refresh_arg)]
    pub refresh: std::time::Duration,
}

#[derive(Args)]
pub struct WaitArgs {
    /// The commit (any git revision of the node repo, or a full commit id it has yet to get);
    /// default: the branch tip.
    pub commit: Option<String>,
    /// Give up (exit 3) after this long.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = troops_core::model::limits::timeout_arg)]
    pub timeout: std::time::Duration,
}

#[derive(Args)]
pub struct LogArgs {
    /// The run id; default: the latest run.
    pub id: Option<u64>,
    /// Keep printing output until the run ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Args)]
pub struct HasRoleArgs {
    pub role: String,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The plan file.
    #[arg(default_value = troops_core::model::plan::FILE_NAME)]
    pub plan: PathBuf,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The commit (any git revision of the node repo); default: the branch tip.
    pub rev: Option<String>,
}

fn parse_remote(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => Ok((name.to_owned(), url.to_owned())),
        _ => Err(format!("{s:?} is not NAME=URL")),
    }
}
