//! `troops pause` and `troops resume`: a person's say in when automatic runs happen on this node
//! (`mech::pause`, obeyed by `schedule`).

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use troops_core::mech::pause::{self, Pause};
use troops_core::model::node::Node;
use troops_core::model::shown::escape;
use troops_core::model::time::Timestamp;
use troops_core::Error;

use crate::cli::PauseArgs;

pub fn pause(node: &Node, args: PauseArgs) -> Result<ExitCode> {
    node.repo()?; // a wrong --state-dir is an error, not a pause of nothing
    let now = SystemTime::now();
    let until = args.until.as_deref().map(|text| until(text, now)).transpose()?;
    let pause =
        Pause { by: who(), reason: args.reason.map(reason).transpose()?, since: Timestamp::from(now), until };
    pause::pause(node, &pause)?;
    troops_core::node::state::write_textfile(node);
    writeln!(
        std::io::stdout(),
        "troops: {}; nothing automatic runs a commit until then (a person's push or deploy still does)",
        escape(&pause.sentence())
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn resume(node: &Node) -> Result<ExitCode> {
    node.repo()?;
    let resumed = pause::resume(node)?;
    troops_core::node::state::write_textfile(node);
    let said = match resumed {
        Some(was) => format!(
            "resumed (was {}); the daemon's next cycle runs what is due, or troops pull now",
            escape(&was.sentence())
        ),
        None => "not paused; nothing to resume".to_owned(),
    };
    writeln!(std::io::stdout(), "troops: {said}")?;
    Ok(ExitCode::SUCCESS)
}

/// `--until`: a time, or a duration from `now`; one that has passed is bad input.
pub(crate) fn until(text: &str, now: SystemTime) -> Result<Timestamp> {
    let at = match text.parse::<Timestamp>() {
        Ok(at) => at.time(),
        Err(_) => {
            now + troops_core::model::limits::TIMEOUT_FLAG.parse(text).map_err(|e| {
                Error::Input(format!("--until {text:?} is neither a time nor a duration: {e}"))
            })?
        }
    };
    if at <= now {
        return Err(Error::Input(format!("--until {text:?} has passed already")).into());
    }
    Ok(Timestamp::from(at))
}

/// `--reason`: one line of at most 1024 bytes, as every reader shows it.
pub(crate) fn reason(text: String) -> Result<String> {
    if text.len() > 1024 || text.chars().any(char::is_control) {
        return Err(Error::Input("--reason must be one line of at most 1024 bytes".into()).into());
    }
    Ok(text)
}

/// Who pauses: the person behind sudo, else the user troops runs as.
fn who() -> String {
    let me = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    let me = me.unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    match std::env::var("SUDO_USER") {
        Ok(person) if !person.is_empty() && person != me => format!("{person} (as {me})"),
        _ => me,
    }
}
