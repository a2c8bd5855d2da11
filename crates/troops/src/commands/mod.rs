//! One module per subcommand; `run` dispatches. Commands return the exit code of a normal outcome
//! (0, or 1 for "a run failed" / "no"); errors carry their own code.

mod check;
mod deploy;
mod fleet;
mod init;
mod log;
mod notify;
mod pull;
mod push;
mod roles;
mod secrets;
mod status;
mod verify;

use std::process::ExitCode;

use anyhow::Result;
use troops_core::deploy::Outcome;
use troops_core::node::Node;

use crate::cli::{Cli, Command, Global};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Init(args) => init::run(&global, args),
        Command::Deploy(args) => deploy::run(&global, args),
        Command::Pull => pull::run(&node(&global)?),
        Command::Rollback(args) => deploy::rollback(&node(&global)?, args.to),
        Command::Daemon => crate::daemon::run(node(&global)?),
        Command::Status(args) => status::run(&node(&global)?, args.json),
        Command::Runs(args) => log::runs(&node(&global)?, args.json),
        Command::Log(args) => log::log(&node(&global)?, args),
        Command::Roles => roles::list(&node(&global)?),
        Command::HasRole(args) => roles::has(&node(&global)?, &args.role),
        Command::Check(args) => check::run(&args.plan),
        Command::Verify(args) => verify::run(&node(&global)?, args),
        Command::Push(args) => push::run(args),
        Command::Fleet(args) => fleet::run(&global, args),
        Command::Secrets(command) => secrets::run(command),
        Command::Notify(args) => notify::run(&node(&global)?, args.run),
    }
}

fn node(global: &Global) -> Result<Node> {
    Ok(Node::load(global.state_dir.clone(), &global.config)?)
}

/// Asks a running daemon to do `request`, streaming its output; `None` when no daemon runs.
fn through_daemon(node: &Node, request: troops_core::control::Request) -> Result<Option<ExitCode>> {
    let Some((exit, error)) =
        troops_core::control::call(&node.socket_path(), &request, &mut std::io::stdout())?
    else {
        return Ok(None);
    };
    if let Some(error) = error {
        eprintln!("troops: {error}");
    }
    Ok(Some(ExitCode::from(exit as u8)))
}

/// Runs `run` here, in this process (no daemon listens), says why when nothing ran, and starts
/// publishing the node's status to the fleet without waiting for it.
fn in_process(
    node: &Node,
    run: impl FnOnce(&mut dyn std::io::Write, &std::sync::atomic::AtomicBool) -> troops_core::Result<Outcome>,
) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout();
    let outcome = run(&mut out, troops_core::signals::stop_flag())?;
    troops_core::fleet::publish::in_background(node);
    if let Some(message) = outcome.nothing_ran() {
        writeln!(out, "{message}")?;
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

fn code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
