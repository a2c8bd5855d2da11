//! `troops init`: make or refresh the node, then say what it is: its name, where to push, each
//! remote and how it is fetched (warning of a path with no repository), who may use it, and its
//! public key.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::mech::fetch;
use troops_core::node::init::{init, Options};

use crate::cli::{Global, InitArgs};

pub fn run(global: &Global, args: InitArgs) -> Result<ExitCode> {
    let options = Options {
        branch: args.branch,
        remotes: args.remotes,
        roles: args.roles,
        hostname: args.hostname,
        hook: hook_binary(),
    };
    let (node, public_key) = init(&global.state_dir, &global.config, &options)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "node ready at {} (branch {}, config {})",
        node.state_dir.display(),
        node.config.branch,
        node.config.path.display()
    )?;
    let named = match node.config.hostname {
        Some(_) => format!("named in {}", node.config.path.display()),
        None => "this machine's name; troops init --hostname NAME sets another".to_owned(),
    };
    writeln!(out, "host      {} ({named})", node.config.hostname())?;
    writeln!(out, "push to   {}", node.repo_path().display())?;
    let repo = node.repo()?;
    let remotes = repo.git.remotes()?;
    for name in remotes.iter().flatten() {
        let remote = repo.git.find_remote(name)?;
        let url = String::from_utf8_lossy(remote.url_bytes()).into_owned();
        writeln!(out, "remote    {name} {url} ({})", fetch::how(&url))?;
        if let Some(missing) = fetch::no_repository(&url) {
            writeln!(out, "warning   remote {name}: {missing} (yet); its fetches fail until there is one")?;
        }
    }
    if remotes.is_empty() {
        writeln!(out, "remote    none: pushes only (add one with troops init --remote NAME=URL)")?;
    }
    let (who, warning) = troops_core::node::access::sharing(&node);
    writeln!(out, "who       {who}")?;
    if let Some(warning) = warning {
        writeln!(out, "warning   {warning}")?;
    }
    writeln!(
        out,
        "this node's SSH key (for SSH remotes, give it read access to the deploy repo; for secrets, \
         the deploy repo keeps it as keys/{}.pub):",
        node.config.hostname()
    )?;
    writeln!(out, "{public_key}")?;
    Ok(ExitCode::SUCCESS)
}

/// `troops-hook` beside this binary (as installed, and as cargo builds them), else from PATH.
fn hook_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .map(|exe| exe.with_file_name("troops-hook"))
        .filter(|hook| hook.is_file())
        .unwrap_or_else(|| "troops-hook".into())
}
