//! The plan's `[rollout]`: its waves (named hosts, or cumulative percents of the fleet), the soak
//! and the quorum, read and checked with the rest of the plan. Which wave a host is in, and
//! whether a wave may go, are `policy::waves`'.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The validated `[rollout]` of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub waves: Vec<Wave>,
    /// How long the previous wave must have been healthy on a commit.
    pub soak: Duration,
    /// The share (0, 1] of the previous wave's reporting nodes that must be healthy on it.
    pub quorum: f64,
    /// Once `quorum` of any wave's believed reports say a commit failed or was rolled back, every
    /// node that runs it quarantines it and rolls back (`policy::waves::fleet_failure`).
    pub fleet_rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub name: String,
    pub members: Members,
    /// How many distinct trusted signers must approve a commit for this wave before it runs here
    /// by itself (`approve = true`: one; `approvals = N`); 0: none.
    pub approvals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Exactly these hostnames.
    Hosts(Vec<String>),
    /// Hosts whose hash falls below this cumulative percent (and in no earlier wave).
    Percent(u32),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    waves: Spanned<Vec<Spanned<RawWave>>>,
    soak: Option<Spanned<String>>,
    quorum: Option<Spanned<f64>>,
    fleet_rollback: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Spanned<String>,
    hosts: Option<Vec<Spanned<String>>>,
    percent: Option<Spanned<i64>>,
    approve: Option<Spanned<bool>>,
    approvals: Option<Spanned<i64>>,
}

/// The most approvals a wave may ask for: more signers than any team has.
const MAX_APPROVALS: i64 = 100;

pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);

/// Validates a parsed `[rollout]`; an error is the span to blame and the message, for the plan
/// parser to place in the file.
pub fn validate(raw: RawRollout) -> Result<Rollout, (std::ops::Range<usize>, String)> {
    if raw.waves.get_ref().is_empty() {
        return Err((raw.waves.span(), "`rollout.waves` is empty; give at least one wave".into()));
    }
    let mut waves: Vec<Wave> = Vec::new();
    let mut last_percent = 0;
    for wave in raw.waves.into_inner() {
        let span = wave.span();
        let wave = wave.into_inner();
        let name = wave.name.get_ref().clone();
        if let Some(problem) = crate::model::names::role_name_problem(&name) {
            return Err((wave.name.span(), format!("rollout wave name {name:?} {problem}")));
        }
        if waves.iter().any(|w| w.name == name) {
            return Err((wave.name.span(), format!("duplicate rollout wave `{name}`")));
        }
        let members = match (wave.hosts, wave.percent) {
            (Some(hosts), None) => {
                let mut names = Vec::new();
                for host in hosts {
                    if let Some(problem) = crate::model::names::name_problem(host.get_ref()) {
                        return Err((
                            host.span(),
                            format!("rollout wave `{name}`: host {:?} {problem}", host.get_ref()),
                        ));
                    }
                    if let Some(other) = waves
                        .iter()
                        .find(|w| matches!(&w.members, Members::Hosts(h) if h.contains(host.get_ref())))
                    {
                        return Err((
                            host.span(),
                            format!(
                                "rollout wave `{name}`: host {:?} is in wave `{}` already",
                                host.get_ref(),
                                other.name
                            ),
                        ));
                    }
                    names.push(host.into_inner());
                }
                Members::Hosts(names)
            }
            (None, Some(percent)) => {
                let p = *percent.get_ref();
                if !(1..=100).contains(&p) || p <= last_percent {
                    return Err((
                        percent.span(),
                        format!("rollout wave `{name}`: `percent` {p} must be from 1 to 100 and more than the earlier waves' ({last_percent}); it is cumulative"),
                    ));
                }
                last_percent = p;
                Members::Percent(p as u32)
            }
            (Some(_), Some(percent)) => {
                return Err((
                    percent.span(),
                    format!("rollout wave `{name}` has both `hosts` and `percent`; keep one"),
                ))
            }
            (None, None) => return Err((span, format!("rollout wave `{name}` needs `hosts` or `percent`"))),
        };
        let approvals = match (wave.approve, wave.approvals) {
            (None, None) => 0,
            (Some(approve), None) => u32::from(*approve.get_ref()),
            (None, Some(n)) if (1..=MAX_APPROVALS).contains(n.get_ref()) => *n.get_ref() as u32,
            (None, Some(n)) => {
                return Err((
                    n.span(),
                    format!(
                        "rollout wave `{name}`: `approvals` {} must be from 1 to {MAX_APPROVALS}",
                        n.get_ref()
                    ),
                ))
            }
            (Some(_), Some(n)) => {
                return Err((
                    n.span(),
                    format!("rollout wave `{name}` has both `approve` and `approvals`; keep one"),
                ))
            }
        };
        waves.push(Wave { name, members, approvals });
    }
    let soak = crate::model::limits::ROLLOUT_SOAK.key("`rollout.soak`", raw.soak, DEFAULT_SOAK)?;
    let quorum = match raw.quorum {
        None => 1.0,
        Some(q) if *q.get_ref() > 0.0 && *q.get_ref() <= 1.0 => *q.get_ref(),
        Some(q) => {
            return Err((
                q.span(),
                format!("`rollout.quorum` {} must be more than 0 and at most 1", q.get_ref()),
            ))
        }
    };
    Ok(Rollout { waves, soak, quorum, fleet_rollback: raw.fleet_rollback.unwrap_or(false) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_error(text: &str) -> String {
        crate::model::plan::Plan::parse(std::path::Path::new("troops.toml"), text, None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_plan_reads_rollout_and_names_file_line_and_column_of_each_mistake() {
        let text = "[rollout]\nwaves = [ { name = \"canary\", hosts = [\"web-1\"] }, { name = \"early\", percent = 10 }, { name = \"rest\", percent = 100 } ]\nsoak = \"2s\"\nquorum = 0.5\nfleet_rollback = true\n";
        let plan = crate::model::plan::Plan::parse(std::path::Path::new("troops.toml"), text, None).unwrap();
        let rollout = plan.rollout.unwrap();
        assert!(rollout.fleet_rollback);
        assert_eq!(rollout.waves.len(), 3);
        assert_eq!((rollout.soak, rollout.quorum), (Duration::from_secs(2), 0.5));
        assert_eq!(rollout.waves[1].members, Members::Percent(10));
        assert_eq!(rollout.waves.iter().map(|w| w.approvals).collect::<Vec<_>>(), [0, 0, 0]);
        let approving = "[rollout]\nwaves = [{ name = \"a\", hosts = [\"x\"], approve = true }, { name = \"b\", percent = 100, approvals = 2 }]\n";
        let plan =
            crate::model::plan::Plan::parse(std::path::Path::new("troops.toml"), approving, None).unwrap();
        assert_eq!(plan.rollout.unwrap().waves.iter().map(|w| w.approvals).collect::<Vec<_>>(), [1, 2]);
        #[rustfmt::skip]
        let cases = [
            ("[rollout]\nwaves = []\n", "troops.toml:2:9: `rollout.waves` is empty"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 50 }, { name = \"b\", percent = 20 }]\n", "troops.toml:2:64: rollout wave `b`: `percent` 20 must be from 1 to 100 and more than the earlier waves' (50)"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 101 }]\n", "troops.toml:2:34: rollout wave `a`: `percent` 101"),
            ("[rollout]\nwaves = [{ name = \"a\", hosts = [\"x\"], percent = 5 }]\n", "troops.toml:2:49: rollout wave `a` has both `hosts` and `percent`"),
            ("[rollout]\nwaves = [{ name = \"a\" }]\n", "troops.toml:2:10: rollout wave `a` needs `hosts` or `percent`"),
            ("[rollout]\nwaves = [{ name = \"a\", hosts = [\"x\"] }, { name = \"a\", percent = 5 }]\n", "troops.toml:2:50: duplicate rollout wave `a`"),
            ("[rollout]\nwaves = [{ name = \"a\", hosts = [\"x\"] }, { name = \"b\", hosts = [\"x\"] }]\n", "troops.toml:2:64: rollout wave `b`: host \"x\" is in wave `a` already"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5 }]\nsoak = \"soon\"\n", "troops.toml:3:8: `rollout.soak` \"soon\""),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5 }]\nquorum = 1.5\n", "troops.toml:3:10: `rollout.quorum` 1.5 must be more than 0 and at most 1"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5 }]\nsoaks = \"1s\"\n", "troops.toml:3:1: unknown field `soaks`"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5, approvals = 0 }]\n", "troops.toml:2:49: rollout wave `a`: `approvals` 0 must be from 1 to 100"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5, approve = true, approvals = 2 }]\n", "troops.toml:2:65: rollout wave `a` has both `approve` and `approvals`"),
            ("[rollout]\nwaves = [{ name = \"a\", percent = 5 }]\nfleet_rollback = \"yes\"\n", "troops.toml:3:18: `rollout.fleet_rollback`: invalid type: string \"yes\", expected a boolean"),
        ];
        for (text, want) in cases {
            let got = plan_error(text);
            assert!(got.starts_with(want), "{text:?}:\n got {got}\nwant {want}");
        }
    }
}
