//! `troops deploy` and `troops rollback`: a person's runs, through the daemon when it runs, else
//! in-process (or, with `--dry-run`, what would run).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::control::Request as ControlRequest;
use troops_core::deploy::{self, Request};
use troops_core::runs::Trigger;

use crate::cli::{DeployArgs, Global};

pub fn run(global: &Global, args: DeployArgs) -> Result<ExitCode> {
    let node = super::node(global)?;
    if args.dry_run {
        let dry = deploy::dry_run(&node, args.commit.as_deref())?;
        let roles: Vec<&str> = dry.roles.iter().map(String::as_str).collect();
        writeln!(
            std::io::stdout(),
            "commit {} on {} [{}]",
            dry.commit,
            node.config.hostname(),
            roles.join(",")
        )?;
        if let Some(wave) = troops_core::fleet::rollout::place(&node, &node.repo()?, dry.commit) {
            writeln!(
                std::io::stdout(),
                "{wave}: a pulled commit waits for the earlier waves; this deploy would not"
            )?;
        }
        for (name, runs, why) in dry.steps {
            writeln!(std::io::stdout(), "{} {name}: {why}", if runs { "run " } else { "skip" })?;
        }
        for (name, runs, why) in dry.checks {
            writeln!(std::io::stdout(), "{} check {name}: {why}", if runs { "run " } else { "skip" })?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let remote = ControlRequest::Deploy { trigger: Trigger::Manual, commit: args.commit.clone() };
    if let Some(code) = super::through_daemon(&node, remote)? {
        return Ok(code);
    }
    super::in_process(&node, |out, stop| deploy::deploy(&node, &Request::Person(args.commit), out, stop))
}

/// `troops rollback`: through the daemon when it runs, else in-process.
pub fn rollback(node: &troops_core::node::Node, to: Option<String>) -> Result<ExitCode> {
    if let Some(code) = super::through_daemon(node, ControlRequest::Rollback { to: to.clone() })? {
        return Ok(code);
    }
    super::in_process(node, |out, stop| deploy::rollback(node, to.as_deref(), out, stop))
}
