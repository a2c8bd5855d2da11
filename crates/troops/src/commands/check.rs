//! `troops check PLAN`: validate a plan file where it lies, with no node around.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::plan::Plan;
use troops_core::Error;

pub fn run(path: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!("{}: no such plan file", path.display())),
        _ => Error::path("reading plan", path, e),
    })?;
    let text = troops_core::error::utf8(path, bytes)?;
    let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let plan = Plan::parse(path, &text, Some(root))?;
    let roles: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
    println!(
        "{}: ok: {} steps, roles: {}",
        path.display(),
        plan.steps.len(),
        if roles.is_empty() { "none".into() } else { roles.join(", ") }
    );
    Ok(ExitCode::SUCCESS)
}
