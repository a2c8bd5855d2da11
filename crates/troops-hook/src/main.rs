//! `troops-hook`: the node repo's `pre-receive` and `post-receive`, installed by `troops init`.
//! It reads git's `<old> <new> <ref>` lines, lets troops-core decide (`receive`) and run
//! (`dispatch`: through the daemon, or here), and maps the outcome to an exit code. Everything it
//! says, and what core reports (`report`), goes to stderr, unbuffered, which git relays to the
//! pusher as `remote:` lines as they come, and never waits long for a pusher who stopped reading
//! (`pusher`). Small and
//! synchronous on purpose: it runs on every push, often as the pushing user, with nothing of
//! troops in its environment but what `troops init` recorded in the repo's config.

mod pusher;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use anyhow::Result;
use troops_core::mech::control;
use troops_core::model::ask::Ask;
use troops_core::model::node::Node;
use troops_core::node::dispatch::dispatch;
use troops_core::node::receive::{self, Update, Verdict};
use troops_core::{Error, Exit};

use crate::pusher::Pusher;

fn main() -> ExitCode {
    troops_core::mech::supervise::enter_if_asked(); // a step's supervisor is this binary, re-executed
    troops_core::mech::report::to(pusher());
    // SAFETY: set once, before any other libgit2 call, while the process has one thread.
    // Git runs the hooks only of a repository it trusts (its `safe.directory` check); libgit2,
    // which may read another system config than git, must not refuse the same repository when a
    // member of admin_group pushes to the root-owned repo.
    let _ = unsafe { git2::opts::set_verify_owner_validation(false) };
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "pre-receive" => pre_receive(),
        "post-receive" => post_receive(),
        _ => {
            say("usage: troops-hook pre-receive|post-receive (git runs it from the hooks `troops init` writes)");
            return Exit::Input.into();
        }
    };
    result.unwrap_or_else(|error| {
        match mode.as_str() {
            "pre-receive" => {
                say(&format!("troops: refusing the push, since troops cannot check it: {error}"))
            }
            _ => say(&format!("troops: the push was accepted, but deploying it failed: {error}")),
        }
        error.downcast_ref::<Error>().map_or(Exit::Environment, Error::exit).into()
    })
}

/// Accepts the push (exit 0) or refuses all of it (exit 1), saying why for each refused ref.
fn pre_receive() -> Result<ExitCode> {
    let updates = updates()?;
    let git_dir = git_dir()?;
    let node = node(&git_dir)?;
    let quarantine = env_path("GIT_QUARANTINE_PATH");
    let repo = receive::open_pushed(&node, &git_dir, quarantine.as_deref())?;
    let mut refused = false;
    for update in &updates {
        if update.refname == receive::PREVIEW_REF {
            preview(&node, &repo, update);
            refused = true;
            continue;
        }
        match receive::check(&repo.git, &node.config, &node.seen_path(), update)? {
            Verdict::Accept => {}
            Verdict::Refuse(reason) => {
                say(&reason);
                refused = true;
            }
            Verdict::Unverified { refusal, message } => {
                say(&message);
                // For `troops status`; a pusher who may not write the state dir still sees why.
                let source = format!("push to {}", update.refname);
                let _ = troops_core::mech::verify::record_refusal(&node.refused_path(), &source, &refusal);
                troops_core::mech::metrics::count_refusal(&node, refusal.verification.kind());
                troops_core::node::state::write_textfile(&node);
                refused = true;
            }
        }
    }
    Ok(Exit::ok_if(!refused).into())
}

/// Shows the pusher the preview of the commit pushed to `refs/troops/preview`, each line marked
/// (`troops push --preview` gathers them), then refuses the ref: nothing moves.
fn preview(node: &Node, repo: &troops_core::mech::repo::NodeRepo, update: &Update) {
    if let Some(commit) = update.new {
        match troops_core::node::run::preview::preview(node, repo, commit, false, outlive_the_pusher()) {
            Ok(preview) => {
                preview.to_string().lines().for_each(|line| say(&format!("{}{line}", receive::PREVIEW_MARK)))
            }
            Err(e) => say(&format!("{}no preview of {commit}: {e}", receive::PREVIEW_MARK)),
        }
    }
    say(&format!("troops: refusing {}: a preview only; nothing moved", receive::PREVIEW_REF));
}

/// Runs the plan when the deploy branch moved: through the daemon if one listens, else here, as
/// the pusher, the same way the CLI does (`dispatch`). Exit 1 when the run failed (git ignores
/// it; the pusher reads the summary).
fn post_receive() -> Result<ExitCode> {
    let updates = updates()?;
    let node = node(&git_dir()?)?;
    let branch = &node.config.branch;
    if !updates.iter().any(|u| u.deploys(branch)) {
        for update in &updates {
            say(&format!(
                "troops: {} is not refs/heads/{branch}, the branch this node deploys; nothing runs",
                update.refname
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stop = outlive_the_pusher();
    let request = control::Request::Run(Ask::Push);
    Ok(dispatch(&node, &request, &mut pusher(), stop)?.into())
}

/// git's `<old> <new> <ref>` lines on stdin.
fn updates() -> Result<Vec<Update>> {
    let mut updates = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::io("reading the pushed refs from git", e))?;
        if !line.trim().is_empty() {
            updates.push(Update::parse(&line)?);
        }
    }
    Ok(updates)
}

/// The repo git runs the hook for: `GIT_DIR` (often `.`), resolved against the working
/// directory, which git sets to the repo too.
fn git_dir() -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("finding the hook's working directory", e))?;
    let dir = env_path("GIT_DIR").map_or(cwd.clone(), |dir| cwd.join(dir));
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// The node that owns the repo at `git_dir`: the state dir and config `troops init` recorded in
/// the repo's config (a push over SSH brings no troops environment), else `TROOPS_STATE_DIR` and
/// `TROOPS_CONFIG`; the config defaults to `/etc/troops/troops.toml`.
fn node(git_dir: &Path) -> Result<Node> {
    let recorded = troops_core::mech::recorded::recorded_in(git_dir);
    let state_dir = recorded.state_dir.or_else(|| env_path("TROOPS_STATE_DIR")).ok_or_else(|| {
        Error::Env(format!(
            "{} records no troops.stateDir and TROOPS_STATE_DIR is not set; run `troops init`",
            git_dir.display()
        ))
    })?;
    let config = recorded
        .config
        .or_else(|| env_path("TROOPS_CONFIG"))
        .unwrap_or_else(|| troops_core::model::config::DEFAULT_PATH.into());
    Ok(Node::load(state_dir, &config)?)
}

/// The pusher going away (Ctrl-C on a local push, a dropped SSH connection, a closed terminal)
/// must not stop a run that started: SIGINT and SIGHUP are caught and dropped (by a handler, not
/// SIG_IGN, so that steps still start with the default dispositions). SIGTERM, the system
/// stopping, still ends the run (and its current step), `interrupted`. Writes to a pusher who is gone
/// fail with EPIPE (Rust ignores SIGPIPE), and the run's output goes on to its log.
fn outlive_the_pusher() -> &'static AtomicBool {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn drop_signal(_: nix::libc::c_int) {}
    let stop = troops_core::mech::signals::stop_flag();
    let action = SigAction::new(SigHandler::Handler(drop_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler does nothing, which is async-signal-safe.
        let _ = unsafe { sigaction(signal, &action) };
    }
    stop
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The pusher, at the other end of stderr.
fn pusher() -> &'static Pusher<'static> {
    static PUSHER: OnceLock<Pusher<'static>> = OnceLock::new();
    // SAFETY: stderr is open for as long as the process lives; nothing here closes it.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::STDERR_FILENO) };
    PUSHER.get_or_init(|| Pusher::new(stderr, pusher::PATIENCE))
}

/// One line to the pusher; a pusher who is gone is no error.
fn say(line: &str) {
    let _ = writeln!(pusher(), "{line}");
}
