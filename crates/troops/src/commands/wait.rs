//! `troops wait [COMMIT] [--timeout D]`: waits until the run of COMMIT has ended and exits as it
//! did (0 deployed, 1 failed, rolled back or quarantined), or 3 once the timeout is up. It looks
//! at the node's records again every [`LOOK_AGAIN`] (`troops_core::node::wait::progress`); what it waits
//! for goes to stderr as it changes, the run's summary to stdout at the end.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use git2::Oid;
use troops_core::model::node::Node;
use troops_core::node::wait::{progress, Progress};
use troops_core::Error;

use crate::cli::WaitArgs;

/// How often the records are read again: a run's end is seen within this.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

pub fn run(node: &Node, args: WaitArgs) -> Result<ExitCode> {
    let deadline = Instant::now() + args.timeout;
    let commit = commit(node, args.commit.as_deref())?;
    let mut told = String::new();
    loop {
        match progress(node, commit)? {
            Progress::Ended { exit, lines } => {
                let mut stdout = std::io::stdout().lock();
                for line in lines {
                    writeln!(stdout, "{line}")?;
                }
                return Ok(exit.into());
            }
            Progress::Pending(why) if Instant::now() >= deadline => {
                return Err(Error::Env(format!(
                    "timed out after {} waiting: {why}",
                    humantime::format_duration(args.timeout)
                ))
                .into());
            }
            Progress::Pending(why) => {
                if why != told {
                    eprintln!("troops: waiting: {why}");
                    told = why;
                }
                std::thread::sleep(LOOK_AGAIN.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }
}

/// The commit `rev` names in the node repo; a full commit id the repo does not have yet is taken
/// as it is (a pull or push may bring it); no `rev`: the branch tip.
fn commit(node: &Node, rev: Option<&str>) -> Result<Oid> {
    let repo = node.repo()?;
    let Some(rev) = rev else {
        return Ok(repo.tip()?.ok_or_else(|| {
            Error::Input(format!("branch {} has no commits yet; name the commit to wait for", repo.branch))
        })?);
    };
    match (repo.resolve(rev), troops_core::model::records::commit_id::parse(rev)) {
        (Ok(commit), _) => Ok(commit),
        (Err(_), Some(id)) if repo.git.find_object(id, None).is_err() => Ok(id),
        (Err(e), _) => Err(e.into()),
    }
}
