//! `troops init`: make or refresh the node and print its public key.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::init::{init, Options};

use crate::cli::{Global, InitArgs};

pub fn run(global: &Global, args: InitArgs) -> Result<ExitCode> {
    let options =
        Options { branch: args.branch, remotes: args.remotes, roles: args.roles, hook: hook_binary() };
    let (node, public_key) = init(&global.state_dir, &global.config, &options)?;
    writeln!(
        std::io::stdout(),
        "node ready at {} (branch {}, config {})",
        node.state_dir.display(),
        node.config.branch,
        node.config.path.display()
    )?;
    writeln!(std::io::stdout(), "push to:  {}", node.repo_path().display())?;
    writeln!(
        std::io::stdout(),
        "this node fetches over SSH with the key below; add it where the remotes are hosted:"
    )?;
    writeln!(std::io::stdout(), "{public_key}")?;
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
