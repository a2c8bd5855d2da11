//! `troops deploy`: a person's run, through the daemon when it runs, else in-process (or, with
//! `--dry-run`, what would run).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::mech::control::Request;
use troops_core::model::ask::Ask;
use troops_core::node::run;

use crate::cli::{DeployArgs, Global};

pub fn run(global: &Global, args: DeployArgs) -> Result<ExitCode> {
    let node = super::node(global)?;
    if args.dry_run {
        let dry = run::dry_run(&node, args.commit.as_deref(), args.all_steps)?;
        let roles: Vec<&str> = dry.roles.iter().map(String::as_str).collect();
        writeln!(
            std::io::stdout(),
            "commit {} on {} [{}]",
            dry.commit,
            node.config.hostname(),
            roles.join(",")
        )?;
        if let Some(wave) = troops_core::node::rollout::place(&node, &node.repo()?, dry.commit) {
            writeln!(
                std::io::stdout(),
                "{wave}: a pulled commit waits for the earlier waves; this deploy would not"
            )?;
        }
        let verb = |s: &run::Selected| if s.runs() { "run " } else { "skip" };
        for s in &dry.steps {
            writeln!(std::io::stdout(), "{} {}: {}", verb(s), s.name, s.why())?;
        }
        for c in &dry.checks {
            writeln!(std::io::stdout(), "{} check {}: {}", verb(c), c.name, c.why())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    super::dispatch(&node, Request::Run(Ask::Deploy { rev: args.commit, all_steps: args.all_steps }))
}
