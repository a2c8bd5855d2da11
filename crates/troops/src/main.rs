//! `troops`: parses the command line, runs the command, and maps its outcome to the SPEC's exit
//! codes in one place.

mod commands;
mod daemon;

use std::process::ExitCode;

use clap::Parser;
// The CLI definition lives in the library half of this package, for packaging/gen (see lib.rs).
use troops::cli;

fn main() -> ExitCode {
    troops_core::mech::supervise::enter_if_asked(); // a step's supervisor is this binary, re-executed
    let cli = cli::Cli::parse();
    // What core reports beside a command's own output (a notify command that could not start,
    // metrics that could not be written) is said on stderr; the daemon logs it instead.
    if !matches!(cli.command, cli::Command::Daemon) {
        troops_core::mech::report::to(std::io::stderr());
    }
    match commands::run(cli) {
        Ok(code) => code,
        // A reader that stopped reading (`troops log | head`) wanted no more: not an error.
        Err(error) if broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("troops: {error}");
            exit_code(&error).into()
        }
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The error's own exit code; anything not known to be the user's input is the environment's.
fn exit_code(error: &anyhow::Error) -> troops_core::Exit {
    error
        .downcast_ref::<troops_core::Error>()
        .map_or(troops_core::Exit::Environment, troops_core::Error::exit)
}
