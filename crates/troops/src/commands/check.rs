//! `troops check PLAN`: validate a plan file where it lies (its steps, checks, `[health]`,
//! `[release]` and `min_troops`), with no node around.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::plan::Plan;

pub fn run(path: &Path) -> Result<ExitCode> {
    let text = troops_core::plan::read(path)?;
    let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let plan = Plan::parse(path, &text, Some(root))?;
    let roles: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
    let checks: Vec<&str> = plan.checks.iter().map(|c| c.name.as_str()).collect();
    writeln!(
        std::io::stdout(),
        "{}: ok: {} steps, roles: {}, checks: {}{}",
        path.display(),
        plan.steps.len(),
        if roles.is_empty() { "none".into() } else { roles.join(", ") },
        if checks.is_empty() { "none".into() } else { checks.join(", ") },
        if plan.release.is_some() { ", with releases" } else { "" }
    )?;
    Ok(ExitCode::SUCCESS)
}
