//! `troops check PLAN`: validate a plan file where it lies, with no node around.

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
    writeln!(
        std::io::stdout(),
        "{}: ok: {} steps, roles: {}",
        path.display(),
        plan.steps.len(),
        if roles.is_empty() { "none".into() } else { roles.join(", ") }
    )?;
    Ok(ExitCode::SUCCESS)
}
