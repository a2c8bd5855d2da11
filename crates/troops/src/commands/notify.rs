//! `troops notify RUN` (hidden): the notify command of a run that ran in-process, which started
//! this detached so that its caller did not wait (see `troops_core::mech::notify`).

use std::process::ExitCode;

use anyhow::Result;
use troops_core::model::node::Node;

pub fn run(node: &Node, run: u64) -> Result<ExitCode> {
    troops_core::mech::notify::now(node, run)?;
    Ok(ExitCode::SUCCESS)
}
