//! `troops verify [REV]`: checks one commit's signature against the node's trust policy (OpenPGP
//! keyring, SSH allowed signers), as pull, push and `deploy --commit` would, and says who signed
//! it, in which format, or why it is refused (exit 0 or 1). It checks even when `require_signed`
//! is off, to try a keyring before turning enforcement on.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use troops_core::mech::verify::{self, TrustPolicy, Verification};
use troops_core::model::node::Node;
use troops_core::Error;

use crate::cli::VerifyArgs;

pub fn run(node: &Node, args: VerifyArgs) -> Result<ExitCode> {
    let repo = node.repo()?;
    let commit = match &args.rev {
        Some(rev) => repo.resolve(rev)?,
        None => repo.tip()?.ok_or_else(|| {
            Error::Input(format!("branch {} has no commits yet; name a revision", repo.branch))
        })?,
    };
    let policy = TrustPolicy::load(&node.config.verify, &node.seen_path())?;
    let verification = verify::verify_commit(&repo.git, &policy, commit)?;
    if verification.is_good() {
        writeln!(std::io::stdout(), "commit {commit} {verification}")?;
        match &verification {
            Verification::GoodSsh { fingerprint, principal } => {
                writeln!(std::io::stdout(), "format ssh, principal {principal}, key {fingerprint}")?
            }
            Verification::Good { fingerprint, .. } => {
                writeln!(std::io::stdout(), "format openpgp, key {fingerprint}")?
            }
            _ => {}
        }
    } else {
        writeln!(std::io::stdout(), "commit {commit} {verification}; refused")?;
    }
    if !node.config.verify.require_signed {
        eprintln!(
            "troops: note: require_signed is off in {}, so this node does not enforce signatures",
            node.config.path.display()
        );
    }
    Ok(troops_core::Exit::ok_if(verification.is_good()).into())
}
