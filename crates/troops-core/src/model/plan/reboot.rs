//! The plan's `[reboot]`: how a host says it needs a reboot (a file, by default
//! `/run/reboot-required`, or a command), how it reboots (a command, by default `systemctl
//! reboot`) and how long it may take to go down; its `phase = "pre_reboot"` steps run before.
//! Read and checked with the rest of the plan. When a reboot may start is `policy::reboot`'s, how
//! it goes is `node::reboot`'s.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::limits;
use crate::model::plan::{Problem, Step};

pub const DEFAULT_FILE: &str = "/run/reboot-required";
pub const DEFAULT_COMMAND: &str = "systemctl reboot";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The validated `[reboot]` of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reboot {
    /// The host needs a reboot while this file exists (`file`; the default without `check`).
    pub file: Option<PathBuf>,
    /// ... or when this command exits 0 (`check`; 1: not needed; anything else: cannot tell).
    pub check: Option<String>,
    /// What reboots the host (`command`), run with `/bin/sh -c`.
    pub command: String,
    /// How long the host has to go down once `command` returned; after it, the reboot did not come.
    pub timeout: Duration,
    /// The steps with `phase = "pre_reboot"`, in plan order: run before `command`, never in a run.
    pub pre_reboot: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReboot {
    file: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// Validates a parsed `[reboot]`, given the plan's `pre_reboot` steps and whether it has a
/// `[disruption]` (a reboot holds a slot of it).
pub fn validate(raw: Spanned<RawReboot>, pre_reboot: Vec<Step>, disruption: bool) -> Result<Reboot, Problem> {
    let owner = "reboot";
    let table = raw.span();
    let raw = raw.into_inner();
    if !disruption {
        return Err((
            table,
            format!(
                "{owner}: a reboot takes the host out of service, so it holds a disruption slot, and the plan \
                 has no `[disruption]` saying how many hosts may be disrupted at once (e.g. `max = 1`)"
            ),
        ));
    }
    let file = match raw.file {
        Some(f) if !f.get_ref().starts_with('/') => {
            return Err((f.span(), format!("{owner}: `file` {:?} is not an absolute path", f.get_ref())))
        }
        Some(f) => Some(PathBuf::from(f.into_inner())),
        None if raw.check.is_none() => Some(PathBuf::from(DEFAULT_FILE)),
        None => None,
    };
    let command = |key: &str, value: Option<Spanned<String>>| match value {
        Some(v) if v.get_ref().trim().is_empty() => {
            Err((v.span(), format!("{owner}: `{key}` is empty; leave it out for the default")))
        }
        v => Ok(v.map(Spanned::into_inner)),
    };
    let check = command("check", raw.check)?;
    let run = command("command", raw.command)?.unwrap_or_else(|| DEFAULT_COMMAND.to_owned());
    let timeout = limits::REBOOT_TIMEOUT.key(&format!("{owner}: `timeout`"), raw.timeout, DEFAULT_TIMEOUT)?;
    Ok(Reboot { file, check, command: run, timeout, pre_reboot })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::Plan;

    fn parse(text: &str) -> Result<Plan, String> {
        Plan::parse(std::path::Path::new("troops.toml"), text, None).map_err(|e| e.to_string())
    }

    const SLOTS: &str = "[disruption]\nmax = 1\n";

    #[test]
    fn defaults_a_check_instead_of_the_file_and_pre_reboot_steps_apart() {
        let plan = parse(&format!(
            "{SLOTS}[reboot]\n\n[[step]]\nname = \"a\"\nrun = \"x\"\n\
             [[step]]\nname = \"drain\"\nrun = \"y\"\nphase = \"pre_reboot\"\n"
        ))
        .unwrap();
        let reboot = plan.reboot.unwrap();
        assert_eq!(reboot.file.as_deref(), Some(std::path::Path::new(DEFAULT_FILE)));
        assert_eq!(
            (reboot.check, reboot.command.as_str(), reboot.timeout),
            (None, DEFAULT_COMMAND, DEFAULT_TIMEOUT)
        );
        // A pre_reboot step is the reboot's, never a run's.
        assert_eq!(plan.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(reboot.pre_reboot.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["drain"]);
        let plan = parse(&format!(
            "{SLOTS}[reboot]\ncheck = \"needs-reboot\"\ncommand = \"/sbin/reboot\"\ntimeout = \"90s\"\n"
        ))
        .unwrap();
        let reboot = plan.reboot.unwrap();
        assert_eq!((reboot.file, reboot.check.as_deref()), (None, Some("needs-reboot")));
        assert_eq!((reboot.command.as_str(), reboot.timeout), ("/sbin/reboot", Duration::from_secs(90)));
        let both =
            parse(&format!("{SLOTS}[reboot]\nfile = \"/run/x\"\ncheck = \"c\"\n")).unwrap().reboot.unwrap();
        assert_eq!((both.file.unwrap().to_str(), both.check.as_deref()), (Some("/run/x"), Some("c")));
    }

    #[test]
    fn every_mistake_is_placed() {
        let pre = "[[step]]\nname = \"drain\"\nrun = \"y\"\nphase = \"pre_reboot\"\n";
        #[rustfmt::skip]
        let cases: Vec<(String, &str)> = vec![
            ("[reboot]\n".into(), ":1:1: reboot: a reboot takes the host out of service, so it holds a disruption slot, and the plan has no `[disruption]`"),
            (pre.into(), ":4:9: step `drain`: `phase = \"pre_reboot\"` needs a `[reboot]`"),
            (format!("{SLOTS}[reboot]\n{pre}paths = [\"a\"]\n"), ":8:9: step `drain`: a pre_reboot step runs before every reboot; `paths` cannot choose"),
            (format!("{SLOTS}[reboot]\nfile = \"run/x\"\n"), ":4:8: reboot: `file` \"run/x\" is not an absolute path"),
            (format!("{SLOTS}[reboot]\ncommand = \" \"\n"), ":4:11: reboot: `command` is empty"),
            (format!("{SLOTS}[reboot]\ncheck = \"\"\n"), ":4:9: reboot: `check` is empty"),
            (format!("{SLOTS}[reboot]\ntimeout = \"0s\"\n"), ":4:11: reboot: `timeout` \"0s\" must be more than zero"),
            (format!("{SLOTS}[reboot]\ntimeout = \"2days\"\n"), ":4:11: reboot: `timeout` \"2days\" is too long"),
            (format!("{SLOTS}[reboot]\nwhen = \"now\"\n"), ":4:1: unknown field `when`"),
            ("[[step]]\nname = \"a\"\nrun = \"y\"\nphase = \"later\"\n".into(), ":4:9: step `a`: `phase` \"later\" is not \"build\", \"activate\" or \"pre_reboot\""),
        ];
        for (text, want) in cases {
            let e = parse(&text).map(|_| ()).unwrap_err();
            assert!(e.starts_with("troops.toml:") && e.contains(want), "{text:?}: {e}");
        }
    }
}
