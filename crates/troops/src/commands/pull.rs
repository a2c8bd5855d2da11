//! `troops pull`: one cycle, through the daemon when it runs, else in-process (for cron).

use std::process::ExitCode;

use anyhow::Result;
use troops_core::control::Request as ControlRequest;
use troops_core::deploy::Request;
use troops_core::node::Node;

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
    super::in_process(node, |out, stop| troops_core::deploy::deploy(node, &Request::Tick, out, stop))
}
