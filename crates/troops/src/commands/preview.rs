//! `troops preview` and `troops deploy --dry-run`: what a run of a commit would do, printed as
//! `node::run::preview` says it; on the node, or with `--host` in a clone of the deploy repo,
//! from the plan alone.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::model::node::Node;
use troops_core::model::plan::{self, Plan};
use troops_core::node::run::preview;
use troops_core::Error;

use crate::cli::{Global, PreviewArgs};

pub fn run(global: &Global, args: PreviewArgs) -> Result<ExitCode> {
    match &args.host {
        Some(host) => in_clone(host, args.rev.as_deref()),
        None => on_node(&super::node(global)?, args.rev.as_deref(), args.all_steps),
    }
}

/// The preview of `rev` (default: the tip) on `node`.
pub fn on_node(node: &Node, rev: Option<&str>, all_steps: bool) -> Result<ExitCode> {
    let repo = node.repo()?;
    let commit = match rev {
        Some(rev) => repo.resolve(rev)?,
        None => {
            repo.tip()?.ok_or_else(|| Error::Input(format!("branch {} has no commits yet", repo.branch)))?
        }
    };
    let preview = preview::preview(node, &repo, commit, all_steps, troops_core::mech::signals::stop_flag())?;
    write!(std::io::stdout(), "{preview}")?;
    Ok(ExitCode::SUCCESS)
}

/// The plan's answer for `host` at `rev` (default: HEAD) of the clone in the current directory.
fn in_clone(host: &str, rev: Option<&str>) -> Result<ExitCode> {
    if let Some(problem) = troops_core::model::plan::hosts::host_problem(host) {
        return Err(Error::Input(format!("--host {host:?} {problem}")).into());
    }
    let repo = git2::Repository::discover(".").map_err(|e| {
        Error::Input(format!(
            "troops preview --host works in a clone of the deploy repo, and this is none: {}",
            e.message()
        ))
    })?;
    let rev = rev.unwrap_or("HEAD");
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| Error::Input(format!("unknown revision {rev:?}: {}", e.message())))?
        .id();
    let path = Path::new(plan::FILE_NAME);
    let text = troops_core::mech::repo::plan_text(&repo, commit)?.ok_or_else(|| plan::missing(path))?;
    let plan = Plan::parse(path, &text, None)?;
    write!(std::io::stdout(), "{}", preview::of_plan(&plan, host, commit))?;
    Ok(ExitCode::SUCCESS)
}
