//! Whether a host that needs a reboot may begin one now: one pure function of what the node
//! knows (why it needs one, the run it stands on, its pause, the fleet's freeze, the deployed
//! plan's windows, how its last reboot went) and the clock. A reboot never begins while a run is
//! under way or failed, while the node is paused or the fleet frozen, outside the windows, nor
//! again soon after one that did not end well.

use std::time::{Duration, SystemTime};

use git2::Oid;

use crate::model::records::RunStatus;
use crate::policy::schedule::Held;

/// What deciding needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Why the host needs a reboot; `None`: it does not.
    pub needed: Option<String>,
    pub deployed: Option<Oid>,
    pub newest: Option<Newest>,
    pub paused: Option<Held>,
    pub frozen: Option<Held>,
    /// The deployed plan's windows are closed now.
    pub window: Option<Held>,
    /// The last reboot ended without success then, and how.
    pub last_failed: Option<(SystemTime, String)>,
}

/// The newest run, as it stands (one whose troops died is no longer under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newest {
    pub id: u64,
    pub commit: Oid,
    pub status: RunStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do: no reboot is needed.
    No,
    /// One is needed, and something holds it.
    Held(Held),
    /// Begin now.
    Begin,
}

/// After a reboot that did not end well, how long until the next may begin.
pub const AFTER_FAILURE: Duration = Duration::from_secs(15 * 60);

pub fn decide(facts: &Facts, now: SystemTime) -> Verdict {
    if facts.needed.is_none() {
        return Verdict::No;
    }
    let held = |why: String, until: Option<SystemTime>| Verdict::Held(Held { why, until });
    let standing = facts
        .newest
        .as_ref()
        .filter(|r| r.status == RunStatus::Succeeded && Some(r.commit) == facts.deployed);
    match (&facts.newest, standing) {
        (None, _) => return held("no run succeeded here yet".into(), None),
        (Some(newest), None) if newest.status.unfinished() => {
            return held(format!("run {} is under way", newest.id), None)
        }
        (Some(newest), None) => {
            return held(
                format!(
                    "run {} {}; a host reboots only standing on a run that succeeded",
                    newest.id, newest.status
                ),
                None,
            )
        }
        (Some(_), Some(_)) => {}
    }
    if let Some(paused) = &facts.paused {
        return held(format!("the node is {}", paused.why), paused.until);
    }
    if let Some(hold) = facts.frozen.as_ref().or(facts.window.as_ref()) {
        return Verdict::Held(hold.clone());
    }
    if let Some((at, how)) = &facts.last_failed {
        let again = *at + AFTER_FAILURE;
        if now < again {
            return held(
                format!(
                    "the last reboot, ended at {}, did not go well ({how}); the next may begin at {}",
                    crate::model::time::Timestamp::from(*at),
                    crate::model::time::Timestamp::from(again)
                ),
                Some(again),
            );
        }
    }
    Verdict::Begin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64, commit: Oid, status: RunStatus) -> Newest {
        Newest { id, commit, status }
    }

    #[test]
    fn a_reboot_begins_only_on_a_good_run_with_nothing_holding_it() {
        let (a, b) = (Oid::from_bytes(&[1; 20]).unwrap(), Oid::from_bytes(&[2; 20]).unwrap());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hold = |why: &str| Some(Held { why: why.into(), until: None });
        let good = Facts {
            needed: Some("/run/reboot-required exists".into()),
            deployed: Some(a),
            newest: Some(run(3, a, RunStatus::Succeeded)),
            ..Facts::default()
        };
        let why = |f: &Facts| match decide(f, now) {
            Verdict::Held(h) => h.why,
            other => format!("{other:?}"),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Facts, &str)> = vec![
            ("needed, standing on a good run", good.clone(), "Begin"),
            ("not needed", Facts { needed: None, ..good.clone() }, "No"),
            ("not needed, even when paused", Facts { needed: None, paused: hold("paused by a"), ..good.clone() }, "No"),
            ("no run yet", Facts { newest: None, deployed: None, ..good.clone() }, "no run succeeded here yet"),
            ("a run under way", Facts { newest: Some(run(4, b, RunStatus::Running)), ..good.clone() }, "run 4 is under way"),
            ("a run checking", Facts { newest: Some(run(4, b, RunStatus::Checking)), ..good.clone() }, "run 4 is under way"),
            ("the newest run failed", Facts { newest: Some(run(4, b, RunStatus::Failed)), ..good.clone() }, "run 4 failed; a host reboots only standing on a run that succeeded"),
            ("a good run of another commit than the deployed", Facts { deployed: Some(b), ..good.clone() }, "run 3 succeeded; a host reboots only"),
            ("paused", Facts { paused: hold("paused by alice"), ..good.clone() }, "the node is paused by alice"),
            ("frozen", Facts { frozen: hold("the fleet is frozen by bob"), ..good.clone() }, "the fleet is frozen by bob"),
            ("outside its windows", Facts { window: hold("outside its deploy windows (mon 02:00-04:00 UTC)"), ..good.clone() }, "outside its deploy windows"),
            ("paused says first", Facts { paused: hold("paused by alice"), frozen: hold("frozen"), ..good.clone() }, "the node is paused"),
            ("soon after a reboot that failed", Facts { last_failed: Some((now - Duration::from_secs(60), "a pre_reboot step failed".into())), ..good.clone() }, "did not go well (a pre_reboot step failed); the next may begin at"),
            ("long after a reboot that failed", Facts { last_failed: Some((now - AFTER_FAILURE, "x".into())), ..good.clone() }, "Begin"),
        ];
        for (case, facts, want) in cases {
            assert!(why(&facts).contains(want), "{case}: {}", why(&facts));
        }
    }
}
