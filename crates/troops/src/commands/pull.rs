//! `troops pull`: one cycle, through the daemon when it runs, else in-process (for cron).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::control::Request as ControlRequest;
use troops_core::deploy::{self, Outcome, Request};
use troops_core::node::Node;
use troops_core::runs::Trigger;

pub fn run(node: &Node) -> Result<ExitCode> {
    if let Some(code) = super::through_daemon(node, ControlRequest::Pull)? {
        return Ok(code);
    }
    let mut out = std::io::stdout();
    let cycle = troops_core::pull::cycle(node, &mut out)?;
    if cycle.all_failed() {
        eprintln!("troops: no remote could be fetched");
        return Ok(ExitCode::from(3));
    }
    let request = Request { trigger: Trigger::Pull, commit: None, unless_deployed: true };
    let outcome = match node.repo()?.tip()? {
        Some(_) => deploy::deploy(node, &request, &mut out, troops_core::signals::stop_flag())?,
        None => return Ok(ExitCode::SUCCESS),
    };
    troops_core::fleet::publish::in_background(node);
    Ok(super::code(match outcome {
        Outcome::Ran(record) => record.status == troops_core::runs::RunStatus::Succeeded,
        // As through the daemon: a pull that ran nothing says why.
        Outcome::AlreadyDeployed(commit) => {
            writeln!(out, "{}", deploy::already_deployed(node, commit))?;
            true
        }
        Outcome::Held(hold) => {
            writeln!(out, "troops: {}", troops_core::fleet::rollout::held_line(&hold))?;
            true
        }
    }))
}
