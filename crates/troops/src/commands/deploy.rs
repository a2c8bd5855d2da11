//! `troops deploy`: run the plan now, through the daemon when it runs, else in-process (or show
//! what would run, with `--dry-run`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::control::Request as ControlRequest;
use troops_core::deploy::{self, Outcome, Request};
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
        return Ok(ExitCode::SUCCESS);
    }
    let remote = ControlRequest::Deploy {
        trigger: Trigger::Manual,
        commit: args.commit.clone(),
        unless_deployed: false,
    };
    if let Some(code) = super::through_daemon(&node, remote)? {
        return Ok(code);
    }
    let request = Request { trigger: Trigger::Manual, commit: args.commit, unless_deployed: false };
    let outcome = deploy::deploy(&node, &request, &mut std::io::stdout(), troops_core::signals::stop_flag())?;
    troops_core::fleet::publish::in_background(&node);
    Ok(super::code(matches!(outcome, Outcome::Ran(_)) && outcome.succeeded()))
}
