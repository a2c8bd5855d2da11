//! `troops roles` and `troops has-role`: this node's roles, for people and for scripts.

use std::process::ExitCode;

use anyhow::Result;
use troops_core::node::Node;

pub fn list(node: &Node) -> Result<ExitCode> {
    for role in node.roles()? {
        println!("{role}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn has(node: &Node, role: &str) -> Result<ExitCode> {
    Ok(super::code(node.roles()?.contains(role)))
}
