//! One module per subcommand; `run` dispatches. Commands return the exit code of a normal outcome
//! (0, or 1 for "a run failed" / "no"); errors carry their own code.

mod check;
mod deploy;
mod fleet;
mod init;
mod log;
mod notify;
mod orders;
mod pause;
mod preview;
mod push;
mod roles;
mod secrets;
mod status;
mod verify;
mod wait;

use std::process::ExitCode;

use anyhow::Result;
use troops_core::mech::control::Request;
use troops_core::model::ask::Ask;
use troops_core::model::node::Node;

use crate::cli::{Cli, Command, Global};

pub fn run(cli: Cli) -> Result<ExitCode> {
    // What is done in a clone of the deploy repo, not on a node, is no business of admin_group.
    let on_node = !matches!(
        cli.command,
        Command::Check(_)
            | Command::Push(_)
            | Command::Secrets(_)
            | Command::Fleet(_)
            | Command::Freeze(_)
            | Command::Unfreeze(_)
            | Command::Approve(_)
            | Command::Preview(crate::cli::PreviewArgs { host: Some(_), .. })
    );
    let global = cli.global.clone();
    command(cli).map_err(|error| match on_node.then(|| refused(&global, &error)).flatten() {
        Some(why) => troops_core::Error::Env(format!("{error}: {why}")).into(),
        None => error,
    })
}

fn command(cli: Cli) -> Result<ExitCode> {
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
        Command::Preview(args) => preview::run(&global, args),
        Command::Pause(args) => pause::pause(&node(&global)?, args),
        Command::Resume => pause::resume(&node(&global)?),
        Command::Freeze(args) => orders::freeze(args),
        Command::Unfreeze(args) => orders::unfreeze(args),
        Command::Approve(args) => orders::approve(args),
        Command::Secrets(command) => secrets::run(command),
        Command::Notify(args) => notify::run(&node(&global)?, args.run),
    }
}

/// The node of `global`, which this process may use (`access::check` says who may, otherwise).
fn node(global: &Global) -> Result<Node> {
    let node = Node::load(global.state_dir.clone(), &global.config)?;
    troops_core::node::access::check(&node)?;
    Ok(node)
}

/// Why the node's permission model refused what ended in `error`, if the system refused it:
/// a member doing what is root's, a login without the group yet.
fn refused(global: &Global, error: &anyhow::Error) -> Option<String> {
    let denied = error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if !denied {
        return None;
    }
    troops_core::node::access::denied(&Node::load(global.state_dir.clone(), &global.config).ok()?)
}

/// Does `request` through the daemon when it runs, else here (`dispatch`), output to stdout.
fn dispatch(node: &Node, request: Request) -> Result<ExitCode> {
    let stop = troops_core::mech::signals::stop_flag();
    Ok(troops_core::node::dispatch::dispatch(node, &request, &mut std::io::stdout(), stop)?.into())
}
