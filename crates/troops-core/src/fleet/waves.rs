//! Rollout waves (the plan's `[rollout]`): which wave a host is in, and the gate that lets a pulled
//! commit run in wave k only once wave k-1 reports it healthy for `soak`. Pure: the caller reads
//! the fleet's status refs and the clock, so every case is a row in a table test.

use std::time::{Duration, SystemTime};

use git2::Oid;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::status::StatusDoc;

/// The validated `[rollout]` of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub waves: Vec<Wave>,
    /// How long the previous wave must have been healthy on a commit.
    pub soak: Duration,
    /// The share (0, 1] of the previous wave's reporting nodes that must be healthy on it.
    pub quorum: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub name: String,
    pub members: Members,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Exactly these hostnames.
    Hosts(Vec<String>),
    /// Hosts whose hash falls below this cumulative percent (and in no earlier wave).
    Percent(u32),
}

/// Where a host stands in a rollout: its wave's index (0: the first) and name, and how many waves
/// there are, for sentences like "wave 2 of 3 (early)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub index: usize,
    pub name: String,
    pub of: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wave {} of {} ({})", self.index + 1, self.of, self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    waves: Spanned<Vec<Spanned<RawWave>>>,
    soak: Option<Spanned<String>>,
    quorum: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Spanned<String>,
    hosts: Option<Vec<Spanned<String>>>,
    percent: Option<Spanned<i64>>,
}

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
        if let Some(problem) = crate::roles::role_name_problem(&name) {
            return Err((wave.name.span(), format!("rollout wave name {name:?} {problem}")));
        }
        if waves.iter().any(|w| w.name == name) {
            return Err((wave.name.span(), format!("duplicate rollout wave `{name}`")));
        }
        let members = match (wave.hosts, wave.percent) {
            (Some(hosts), None) => {
                let mut names = Vec::new();
                for host in hosts {
                    if let Some(problem) = crate::roles::name_problem(host.get_ref()) {
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
        waves.push(Wave { name, members });
    }
    let soak = match raw.soak {
        None => DEFAULT_SOAK,
        Some(soak) => match humantime::parse_duration(soak.get_ref()) {
            Ok(d) if d <= crate::config::MAX_PERIOD => d,
            Ok(_) => {
                return Err((
                    soak.span(),
                    format!("`rollout.soak` {:?} is too long; at most 1year", soak.get_ref()),
                ))
            }
            Err(e) => return Err((soak.span(), format!("`rollout.soak` {:?}: {e}", soak.get_ref()))),
        },
    };
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
    Ok(Rollout { waves, soak, quorum })
}

/// `hostname`'s share of the hash space: sha256 of the name, its first 8 bytes as a number in [0, 1).
pub fn position(hostname: &str) -> f64 {
    let digest = Sha256::digest(hostname.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    n as f64 / 2f64.powi(64)
}

/// The wave of `hostname`: the wave that names it, else the first percent wave whose cumulative
/// percent covers its [`position`], else the last wave (so that every host is in one).
pub fn wave_of(hostname: &str, rollout: &Rollout) -> Place {
    let named = rollout
        .waves
        .iter()
        .position(|w| matches!(&w.members, Members::Hosts(h) if h.iter().any(|h| h == hostname)));
    let u = position(hostname);
    let index = named
        .or_else(|| {
            rollout
                .waves
                .iter()
                .position(|w| matches!(w.members, Members::Percent(p) if u < f64::from(p) / 100.0))
        })
        .unwrap_or(rollout.waves.len() - 1);
    Place { index, name: rollout.waves[index].name.clone(), of: rollout.waves.len() }
}

/// What the gate says about running a pulled commit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// The previous wave has not been healthy on it long enough, or not at quorum yet; `until`:
    /// when it will have been, if enough of it is healthy already.
    Wait {
        why: String,
        until: Option<SystemTime>,
    },
    /// A node reported the commit failed or rolled back: it does not run here until a newer one.
    Held {
        why: String,
    },
}

/// Whether a node in `me` may run `candidate` now, by the `fleet`'s status docs (this node's own
/// among them or not). `descends(a, b)`: a is b or a descendant of it.
pub fn gate(
    candidate: Oid,
    me: &Place,
    fleet: &[StatusDoc],
    now: SystemTime,
    rollout: &Rollout,
    descends: impl Fn(Oid, Oid) -> bool,
) -> Gate {
    if me.index == 0 {
        return Gate::Go;
    }
    let short = crate::deploy::short(&candidate.to_string()).to_owned();
    if let Some(bad) =
        fleet.iter().find(|d| d.state.reports_failure() && d.failed_commit() == Some(candidate))
    {
        let wave = wave_of(&bad.host, rollout);
        return Gate::Held {
            why: format!(
                "{me}: {short} {} on {} ({}); held until a newer commit",
                bad.state.as_verb(),
                bad.host,
                wave.name
            ),
        };
    }
    // The nearest earlier wave that has reporting nodes (a percent wave may be empty in a small
    // fleet). A node whose news is stale (three heartbeats missed) does not report: a dead node
    // must not stop the rollout for good.
    let mut previous = me.index;
    let mut members: Vec<&StatusDoc> = Vec::new();
    while members.is_empty() && previous > 0 {
        previous -= 1;
        members =
            fleet.iter().filter(|d| wave_of(&d.host, rollout).index == previous && !d.stale(now)).collect();
    }
    if members.is_empty() {
        return Gate::Go;
    }
    let needed = ((rollout.quorum * members.len() as f64).ceil() as usize).clamp(1, members.len());
    // When each healthy member became healthy on the candidate (or a descendant), oldest first.
    let mut since: Vec<SystemTime> = members
        .iter()
        .filter(|d| d.state == super::status::State::Healthy)
        .filter(|d| d.deployed_oid().is_some_and(|c| descends(c, candidate)))
        .filter_map(|d| d.since_time())
        .collect();
    since.sort();
    let soaked = since.iter().filter(|s| now.duration_since(**s).is_ok_and(|d| d >= rollout.soak)).count();
    if soaked >= needed {
        return Gate::Go;
    }
    let name = &rollout.waves[previous].name;
    let healthy = match since.first() {
        None => "none healthy yet".to_owned(),
        Some(first) => format!("{} healthy since {}", since.len(), clock(*first)),
    };
    Gate::Wait {
        why: format!(
            "{me}: waiting for {needed} of {} {name} nodes healthy on {short} for {}; {healthy}",
            members.len(),
            humantime::format_duration(rollout.soak)
        ),
        until: since.get(needed - 1).map(|s| *s + rollout.soak),
    }
}

/// A time of day in UTC, `12:01:07`, for sentences a person reads.
pub fn clock(at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    stamp.get(11..19).unwrap_or(&stamp).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::status::{RunSummary, State};
    use crate::runs::RunStatus;

    fn rollout(soak: u64, quorum: f64) -> Rollout {
        Rollout {
            waves: vec![
                Wave { name: "canary".into(), members: Members::Hosts(vec!["c1".into()]) },
                Wave {
                    name: "early".into(),
                    members: Members::Hosts(vec!["e1".into(), "e2".into(), "e3".into(), "e4".into()]),
                },
                Wave { name: "rest".into(), members: Members::Percent(100) },
            ],
            soak: Duration::from_secs(soak),
            quorum,
        }
    }

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A status doc of `host` in `state` on commit `on` since second `since`.
    fn doc(host: &str, state: State, on: u8, since: u64) -> StatusDoc {
        let stamp = humantime::format_rfc3339_millis(at(since)).to_string();
        let failed = matches!(state, State::Failed | State::RolledBack);
        StatusDoc {
            schema: 1,
            host: host.into(),
            version: "0".into(),
            roles: vec![],
            wave: None,
            tip: Some(oid(on).to_string()),
            deployed: (!failed).then(|| oid(on).to_string()),
            state,
            since: Some(stamp.clone()),
            run: Some(RunSummary {
                id: 1,
                commit: oid(on).to_string(),
                trigger: crate::runs::Trigger::Pull,
                status: if failed { RunStatus::Failed } else { RunStatus::Succeeded },
                started_at: stamp.clone(),
                finished_at: Some(stamp.clone()),
                error: failed.then(|| "step `x` failed (exit 1)".into()),
            }),
            hold: None,
            quarantined: vec![],
            checks: vec![],
            heartbeat_seconds: 3600,
            updated_at: stamp,
        }
    }

    /// `doc` with a heartbeat of 1 s: three seconds after its update it is stale.
    fn stale(mut doc: StatusDoc) -> StatusDoc {
        doc.heartbeat_seconds = 1;
        doc
    }

    /// Commit 2 descends from 1; nothing else descends from anything but itself.
    fn descends(a: Oid, b: Oid) -> bool {
        a == b || (a == oid(2) && b == oid(1))
    }

    fn kind(gate: &Gate) -> &'static str {
        match gate {
            Gate::Go => "go",
            Gate::Wait { .. } => "wait",
            Gate::Held { .. } => "held",
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn the_gate_as_a_table() {
        use State::*;
        let early = |r: &Rollout| wave_of("e1", r);
        let rest = |r: &Rollout| wave_of("zz-9", r);
        #[rustfmt::skip]
        let cases: Vec<(&str, Rollout, Place, Vec<StatusDoc>, u64, &str)> = vec![
            ("wave 0 always goes, even past a failure", rollout(10, 1.0), wave_of("c1", &rollout(10, 1.0)), vec![doc("e1", Failed, 1, 0)], 0, "go"),
            ("canary healthy and soaked", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Healthy, 1, 0)], 10, "go"),
            ("canary healthy, not soaked", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Healthy, 1, 0)], 9, "wait"),
            ("canary healthy on a descendant counts", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Healthy, 2, 0)], 10, "go"),
            ("canary healthy on an older commit does not", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Healthy, 9, 0)], 10, "wait"),
            ("canary still deploying", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Deploying, 1, 0)], 99, "wait"),
            ("canary failed: held", rollout(10, 1.0), early(&rollout(10, 1.0)), vec![doc("c1", Failed, 1, 0)], 99, "held"),
            ("canary rolled back: held", rollout(10, 1.0), rest(&rollout(10, 1.0)), vec![doc("c1", RolledBack, 1, 0)], 99, "held"),
            ("a failure of another commit holds nothing", rollout(0, 1.0), early(&rollout(0, 1.0)), vec![doc("c1", Healthy, 1, 0), doc("e2", Failed, 9, 0)], 0, "go"),
            ("3 of 4 at quorum 0.75", rollout(5, 0.75), rest(&rollout(5, 0.75)), vec![doc("e1", Healthy, 1, 0), doc("e2", Healthy, 1, 0), doc("e3", Healthy, 1, 0), doc("e4", Held, 9, 0)], 5, "go"),
            ("3 of 4 at quorum 1.0", rollout(5, 1.0), rest(&rollout(5, 1.0)), vec![doc("e1", Healthy, 1, 0), doc("e2", Healthy, 1, 0), doc("e3", Healthy, 1, 0), doc("e4", Held, 9, 0)], 5, "wait"),
            ("an empty previous wave defers to the one before", rollout(5, 1.0), rest(&rollout(5, 1.0)), vec![doc("c1", Healthy, 1, 0)], 5, "go"),
            ("nobody reports at all", rollout(5, 1.0), rest(&rollout(5, 1.0)), vec![], 0, "go"),
            ("a node deploying holds its wave", rollout(5, 1.0), rest(&rollout(5, 1.0)), vec![doc("e1", Healthy, 1, 0), doc("e2", Deploying, 1, 0)], 5, "wait"),
            ("unless it is stale: dead nodes do not report", rollout(5, 1.0), rest(&rollout(5, 1.0)), vec![doc("e1", Healthy, 1, 0), stale(doc("e2", Deploying, 1, 0))], 5, "go"),
        ];
        for (case, rollout, me, fleet, now, want) in cases {
            let got = gate(oid(1), &me, &fleet, at(now), &rollout, descends);
            assert_eq!(kind(&got), want, "{case}: {got:?}");
        }
    }

    #[test]
    fn the_wait_says_what_it_waits_for_and_until_when() {
        let r = rollout(600, 0.75);
        let fleet = [
            doc("e1", State::Healthy, 1, 60),
            doc("e2", State::Deploying, 1, 0),
            doc("e3", State::Held, 1, 0),
            doc("e4", State::Healthy, 1, 0),
        ];
        let Gate::Wait { why, until } = gate(oid(1), &wave_of("zz-9", &r), &fleet, at(100), &r, descends)
        else {
            panic!()
        };
        let since = clock(at(0));
        assert_eq!(
            why,
            format!("wave 3 of 3 (rest): waiting for 3 of 4 early nodes healthy on {} for 10m; 2 healthy since {since}", &oid(1).to_string()[..12])
        );
        assert_eq!(until, None, "only 2 are healthy; no time is known");
        let Gate::Held { why } =
            gate(oid(1), &wave_of("e1", &r), &[doc("c1", State::Failed, 1, 0)], at(0), &r, descends)
        else {
            panic!()
        };
        assert!(why.starts_with("wave 2 of 3 (early): 010101010101 failed on c1 (canary)"), "{why}");
        let Gate::Wait { until, .. } =
            gate(oid(1), &wave_of("e1", &r), &[doc("c1", State::Healthy, 1, 30)], at(40), &r, descends)
        else {
            panic!()
        };
        assert_eq!(until, Some(at(630)));
    }

    #[test]
    fn waves_are_explicit_hosts_first_then_a_stable_hash() {
        let r = Rollout {
            waves: vec![
                Wave { name: "canary".into(), members: Members::Hosts(vec!["web-1".into()]) },
                Wave { name: "half".into(), members: Members::Percent(50) },
                Wave { name: "rest".into(), members: Members::Percent(100) },
            ],
            soak: Duration::ZERO,
            quorum: 1.0,
        };
        assert_eq!(wave_of("web-1", &r).index, 0);
        let hosts: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
        let half = hosts.iter().filter(|h| wave_of(h, &r).index == 1).count();
        assert!((400..600).contains(&half), "{half} of 1000 in the 50% wave");
        assert!(hosts.iter().all(|h| wave_of(h, &r).index > 0));
        assert!(hosts.iter().all(|h| wave_of(h, &r) == wave_of(h, &r)));
        for h in &hosts {
            let expected = if position(h) < 0.5 { 1 } else { 2 };
            assert_eq!(wave_of(h, &r).index, expected, "{h}");
        }
        // Hosts named nowhere and beyond every percent go to the last wave.
        let named = Rollout {
            waves: vec![
                Wave { name: "a".into(), members: Members::Hosts(vec!["x".into()]) },
                Wave { name: "b".into(), members: Members::Percent(1) },
            ],
            ..r
        };
        assert!(hosts.iter().all(|h| wave_of(h, &named).index == 1));
    }

    fn plan_error(text: &str) -> String {
        crate::plan::Plan::parse(std::path::Path::new("troops.toml"), text, None).unwrap_err().to_string()
    }

    #[test]
    fn the_plan_reads_rollout_and_names_file_line_and_column_of_each_mistake() {
        let text = "[rollout]\nwaves = [ { name = \"canary\", hosts = [\"web-1\"] }, { name = \"early\", percent = 10 }, { name = \"rest\", percent = 100 } ]\nsoak = \"2s\"\nquorum = 0.5\n";
        let plan = crate::plan::Plan::parse(std::path::Path::new("troops.toml"), text, None).unwrap();
        let rollout = plan.rollout.unwrap();
        assert_eq!(rollout.waves.len(), 3);
        assert_eq!((rollout.soak, rollout.quorum), (Duration::from_secs(2), 0.5));
        assert_eq!(rollout.waves[1].members, Members::Percent(10));
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
        ];
        for (text, want) in cases {
            let got = plan_error(text);
            assert!(got.starts_with(want), "{text:?}:\n got {got}\nwant {want}");
        }
    }
}
