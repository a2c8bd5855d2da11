//! `troops deploy`: a person's run, through the daemon when it runs, else in-process (or, with
//! `--dry-run`, what would run).

use std::process::ExitCode;

use anyhow::Result;
use troops_core::mech::control::Request;
use troops_core::model::ask::Ask;

use crate::cli::{DeployArgs, Global};

pub fn run(global: &Global, args: DeployArgs) -> Result<ExitCode> {
    let node = super::node(global)?;
    if args.dry_run {
        return super::preview::on_node(&node, args.commit.as_deref(), args.all_steps);
    }
    super::dispatch(&node, Request::Run(Ask::Deploy { rev: args.commit, all_steps: args.all_steps }))
}
