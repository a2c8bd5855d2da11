//! Root's `git` command, hardened once for every use (fetches, status pushes, housekeeping): no
//! hook, no command and no transport the repo or a member of the admin group could name; and
//! git's complaints in one line.

use std::path::Path;
use std::process::Command;

/// `git --git-dir REPO` as troops runs it, often as root, in a repo members of the admin group
/// push to: whatever a member managed to put in the repo's config or `hooks/` (they are root's,
/// see `init::share_with_group`; this holds even if they were not), git runs no hook and no
/// command the repo names (core.fsmonitor, credential helpers, askpass, ext:: remotes, proxies).
/// The ssh command comes from `GIT_SSH_COMMAND`, which outranks `core.sshCommand`. It writes no
/// commit-graph. Its environment is a networked child's (`env::network`): nothing of whoever
/// started troops (no `GIT_DIR` of a hook, no askpass, no agent).
pub fn root_git(repo_path: &Path) -> Command {
    let mut command = crate::mech::env::command("git", crate::mech::env::network());
    command.arg("--git-dir").arg(repo_path);
    for setting in [
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "core.askPass=",
        "core.gitProxy=",
        "credential.helper=",
        "protocol.ext.allow=never",
        "protocol.file.allow=never",
        // A commit-graph would be group-writable (core.sharedRepository) and believed for parents
        // by every history walk; the repo is refused while one exists (`repo::guard_node_repo`).
        "gc.writeCommitGraph=false",
        "fetch.writeCommitGraph=false",
    ] {
        command.args(["-c", setting]);
    }
    command.env("GIT_COMMON_DIR", repo_path);
    command
}

/// git's complaint in one line, without its boilerplate advice (and without the padding git adds
/// to a remote's lines); `None` when it said nothing else.
pub fn complaint(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim_end_matches("\x1b[K").trim())
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Please make sure you have")
                && !l.starts_with("and the repository exists")
                && *l != "fatal: Could not read from remote repository."
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}
