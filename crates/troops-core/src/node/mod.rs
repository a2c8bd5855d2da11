//! The top floor: a node's work in the order it happens, built from the floors below: a run in
//! phases (`run`), a pull cycle, a push's checks (`receive`), the rollout's facts, publishing the
//! node's status, rechecks of what is deployed (`drift`), `troops init`, and the one dispatch
//! every trigger goes through.

pub mod access;
pub mod dispatch;
pub mod drift;
pub mod facts;
pub mod fleet;
pub mod init;
pub mod orders;
pub mod pull;
pub mod reboot;
pub mod receive;
pub mod rollout;
pub mod run;
pub mod slots;
pub mod state;
pub mod wait;

#[cfg(test)]
mod accepted;

use std::collections::BTreeSet;
use std::path::Path;

use crate::model::error::Result;
use crate::model::node::Node;
use crate::model::plan::{Plan, FILE_NAME};

impl Node {
    /// This node's roles: the config's, plus those the plan at `rev` (default: the branch tip)
    /// gives it.
    pub fn roles(&self, rev: Option<&str>) -> Result<BTreeSet<String>> {
        let repo = self.repo()?;
        let commit = match rev {
            Some(rev) => Some(repo.resolve(rev)?),
            None => repo.tip()?,
        };
        let text = match commit {
            Some(commit) => repo.plan_text(commit)?,
            None => None,
        };
        let plan = text.map(|text| Plan::parse(Path::new(FILE_NAME), &text, None)).transpose()?;
        Ok(crate::model::roles::resolve(&self.config.hostname(), &self.config.roles, plan.as_ref()))
    }
}
