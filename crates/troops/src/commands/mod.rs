//! One module per subcommand; `run` dispatches. Commands return the exit code of a normal outcome
//! (0, or 1 for "a run failed" / "no"); errors carry their own code.

mod check;
mod deploy;
mod fleet;
mod init;
mod log;
mod notify;
mod push;
mod roles;
mod secrets;
mod status;
mod verify;
mod wait;

use std::process::ExitCode;

use anyhow::Result;
use troops_core::ask::Ask;
use troops_core::control::Request;
use troops_core::node::Node;

use crate::cli::{Cli, Command, Global};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Init(args) => init::run(&global, args),
        Command::Deploy(args) => deploy::run(&global, args),
        Command::Pull => dispatch(&node(&global)?, Request::Pull),
        Command::Rollback(args) => dispatch(&node(&global)?, Request::Run(Ask::Rollback { to: args.to })),
        Command::Daemon => crate::daemon::run(node(&global)?),
        Command::Status(args) => status::run(&node(&global)?, args.json),
        Command::Runs(args) => log::runs(&node(&global)?, args.json),
        Command::Wait(args) => wait::run(&node(&global)?, args),
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

/// Does `request` through the daemon when it runs, else here (`dispatch`), output to stdout.
fn dispatch(node: &Node, request: Request) -> Result<ExitCode> {
    let stop = troops_core::signals::stop_flag();
    Ok(troops_core::dispatch::dispatch(node, &request, &mut std::io::stdout(), stop)?.into())
}
