//! `troops roles` and `troops has-role`: this node's roles, for people and for scripts.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::model::node::Node;

pub fn list(node: &Node) -> Result<ExitCode> {
    for role in roles(node)? {
        writeln!(std::io::stdout(), "{role}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn has(node: &Node, role: &str) -> Result<ExitCode> {
    Ok(troops_core::Exit::ok_if(roles(node)?.contains(role)).into())
}

/// In a step, the roles by the plan of the commit it runs for (`TROOPS_COMMIT`), which
/// `troops deploy --commit` can make older than the tip; elsewhere, by the tip's plan.
fn roles(node: &Node) -> Result<BTreeSet<String>> {
    let commit = std::env::var("TROOPS_COMMIT").ok().filter(|c| !c.is_empty());
    Ok(node.roles(commit.as_deref())?)
}
