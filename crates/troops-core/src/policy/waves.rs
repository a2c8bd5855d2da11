//! Rollout waves (the plan's `[rollout]`): which wave a host is in, and the gate that lets a pulled
//! commit run in wave k only once wave k-1 reports it healthy for `soak`. Pure: the caller reads
//! the fleet's status refs and the clock, so every case is a row in a table test.

use std::collections::BTreeSet;
use std::time::SystemTime;

use git2::Oid;
use sha2::{Digest, Sha256};

use crate::model::plan::rollout::{Members, Rollout};
use crate::model::shown::escape;
use crate::model::status::{State, StatusDoc};

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
    /// No positive evidence yet that the previous wave is healthy on it for the soak (not healthy
    /// yet, not long enough, not at quorum, or its reports missing, unreadable or stale); `until`:
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

/// The hosts a plan knows: named by a wave, a role's `hosts` or `[hosts]`, or matched by a role's
/// `match`. The named ones are expected to report; only a known host's failure report halts a
/// commit (a status ref for a name the plan never heard of, say a retired host's, cannot).
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub named: BTreeSet<String>,
    pub patterns: Vec<glob::Pattern>,
}

impl Known {
    pub fn of(plan: &crate::model::plan::Plan) -> Known {
        let mut named: BTreeSet<String> = plan.hosts.keys().cloned().collect();
        named.extend(plan.roles.iter().flat_map(|r| r.hosts.iter().cloned()));
        for wave in plan.rollout.iter().flat_map(|r| &r.waves) {
            if let Members::Hosts(hosts) = &wave.members {
                named.extend(hosts.iter().cloned());
            }
        }
        let patterns = plan.roles.iter().flat_map(|r| r.patterns.iter().cloned()).collect();
        Known { named, patterns }
    }

    pub fn knows(&self, host: &str) -> bool {
        self.named.contains(host) || self.patterns.iter().any(|p| p.matches(host))
    }
}

/// One node's status ref, as this node sees it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The host the ref is named for.
    pub host: String,
    /// Its document as believed (`believe`), or why it is not (unsigned, another key's, rewound...).
    pub doc: std::result::Result<StatusDoc, String>,
    /// When this node saw the ref change to what it holds now, by this node's clock (`None`: not
    /// recorded yet as it is now).
    pub changed: Option<SystemTime>,
    /// Since when this node has seen the host healthy on the commit its document says is deployed.
    pub healthy_since: Option<SystemTime>,
}

/// What this node knows of the fleet: every status ref, and why it cannot see them now, if so.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub reports: Vec<Report>,
    /// Why the reports may not be what the status remote holds now ("the status remote status
    /// could not be fetched: ..."): nothing goes on such evidence.
    pub blind: Option<String>,
}

/// What one expected member of the previous wave shows.
enum Shows {
    /// Healthy on the candidate or a descendant, seen so here since then.
    Healthy(SystemTime),
    /// Reporting, fresh, not (yet) healthy on it.
    NotYet,
    /// No evidence: why, in words.
    Missing(String),
}

/// Whether a node in `me` may run `candidate` now, by the `evidence` of the fleet's status refs
/// (this node's own among them or not) and the hosts the plan at `candidate` `known`s. It goes
/// only on positive evidence: `quorum` of the previous wave's expected members (the hosts the
/// plan names in it, and the hosts whose status refs place them there) healthy on the commit or a
/// descendant for `soak`, by this node's clock. A previous wave that has no expected member is no
/// wave: the one before it counts. `descends(a, b)`: a is b or a descendant of it.
pub fn gate(
    candidate: Oid,
    me: &Place,
    evidence: &Evidence,
    known: &Known,
    now: SystemTime,
    rollout: &Rollout,
    descends: impl Fn(Oid, Oid) -> bool,
) -> Gate {
    if me.index == 0 {
        return Gate::Go;
    }
    let short = crate::model::names::short(candidate);
    let failed = evidence.reports.iter().filter(|r| known.knows(&r.host)).find_map(|r| {
        let doc = r.doc.as_ref().ok()?;
        (doc.state.reports_failure() && doc.failed_commit() == Some(candidate)).then_some((r, doc))
    });
    if let Some((bad, doc)) = failed {
        return Gate::Held {
            why: format!(
                "{me}: {short} {} on {} ({}); held until a newer commit",
                doc.state.as_verb(),
                escape(&bad.host),
                wave_of(&bad.host, rollout).name
            ),
        };
    }
    if let Some(blind) = &evidence.blind {
        return Gate::Wait { why: format!("{me}: {blind}"), until: None };
    }
    let members = |wave: usize| -> BTreeSet<&str> {
        let named = known.named.iter().map(String::as_str);
        let reporting = evidence.reports.iter().map(|r| r.host.as_str());
        named.chain(reporting).filter(|h| wave_of(h, rollout).index == wave).collect()
    };
    let Some((previous, members)) = (0..me.index).rev().map(|w| (w, members(w))).find(|(_, m)| !m.is_empty())
    else {
        let earlier: Vec<&str> = rollout.waves[..me.index].iter().map(|w| w.name.as_str()).collect();
        return Gate::Wait {
            why: format!(
                "{me}: no host of the earlier waves ({}) is named in the plan or has published its status; one must go first",
                earlier.join(", ")
            ),
            until: None,
        };
    };
    let shows = |host: &str| -> Shows {
        let Some(report) = evidence.reports.iter().find(|r| r.host == host) else {
            return Shows::Missing(format!("{}: no status document", escape(host)));
        };
        let doc = match &report.doc {
            Ok(doc) => doc,
            Err(e) => return Shows::Missing(format!("{}'s document is not believed: {e}", escape(host))),
        };
        let Some(changed) = report.changed else {
            return Shows::Missing(format!("{}: its status is not recorded here yet", escape(host)));
        };
        let limit = doc.heartbeat().saturating_mul(3);
        if now.duration_since(changed).is_ok_and(|quiet| quiet > limit) {
            return Shows::Missing(format!(
                "{} is stale: its status has not changed here since {} (3 heartbeats of {})",
                escape(host),
                clock(changed),
                humantime::format_duration(doc.heartbeat())
            ));
        }
        if let Some(diverged) = &doc.diverged {
            return Shows::Missing(format!(
                "{} cannot take {short}: its branch and its remotes {} have forked (since {}); a person must decide",
                escape(host),
                escape(&diverged.remotes.join(", ")),
                escape(&diverged.since)
            ));
        }
        let on_it = doc.state == State::Healthy && doc.deployed_oid().is_some_and(|c| descends(c, candidate));
        match report.healthy_since.filter(|_| on_it) {
            Some(since) => Shows::Healthy(since),
            None => Shows::NotYet,
        }
    };
    let shown: Vec<(&str, Shows)> = members.iter().map(|h| (*h, shows(h))).collect();
    let needed = ((rollout.quorum * shown.len() as f64).ceil() as usize).clamp(1, shown.len());
    // When each healthy member was first seen healthy on the candidate, oldest first.
    let mut since: Vec<SystemTime> =
        shown.iter().filter_map(|(_, s)| if let Shows::Healthy(t) = s { Some(*t) } else { None }).collect();
    since.sort();
    let soaked = since.iter().filter(|s| now.duration_since(**s).is_ok_and(|d| d >= rollout.soak)).count();
    if soaked >= needed {
        return Gate::Go;
    }
    let name = &rollout.waves[previous].name;
    let mut why = format!(
        "{me}: waiting for {needed} of {} {name} nodes healthy on {short} for {}; ",
        shown.len(),
        humantime::format_duration(rollout.soak)
    );
    match since.first() {
        None => why += "none healthy yet",
        Some(first) => why += &format!("{} healthy since {}", since.len(), clock(*first)),
    }
    let missing: Vec<&str> = shown
        .iter()
        .filter_map(|(_, s)| if let Shows::Missing(m) = s { Some(m.as_str()) } else { None })
        .collect();
    for problem in missing.iter().take(3) {
        why += &format!("; {problem}");
    }
    if missing.len() > 3 {
        why += &format!("; {} more without evidence", missing.len() - 3);
    }
    Gate::Wait { why, until: since.get(needed - 1).map(|s| *s + rollout.soak) }
}

/// What decided a fleet rollback of a commit: the wave whose believed reports say, at quorum, that
/// it failed or was rolled back, and those reports' hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFailure {
    pub commit: Oid,
    pub wave: String,
    pub hosts: Vec<String>,
}

impl FleetFailure {
    /// "the fleet reports 1a2b3c4d5e6f failed: 2 of 4 early nodes (e1, e2) at quorum 0.5".
    pub fn sentence(&self, of: usize, quorum: f64) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(|h| escape(h).into_owned()).collect();
        format!(
            "the fleet reports {} failed: {} of {of} {} nodes ({}) at quorum {quorum}",
            crate::model::names::short(self.commit),
            self.hosts.len(),
            self.wave,
            hosts.join(", ")
        )
    }
}

/// With `[rollout] fleet_rollback`: whether `quorum` of some wave's expected members (the hosts
/// the plan names in it, and the hosts whose believed reports place them there) report `commit`
/// failed or rolled back, by `evidence` (the believed documents: a refused one is no report) of
/// hosts the plan `known`s. The first such wave, with the reports that decided it, and how many
/// members it has.
pub fn fleet_failure(
    commit: Oid,
    evidence: &Evidence,
    known: &Known,
    rollout: &Rollout,
) -> Option<(FleetFailure, usize)> {
    if !rollout.fleet_rollback {
        return None;
    }
    let believed: Vec<&StatusDoc> = evidence
        .reports
        .iter()
        .filter(|r| known.knows(&r.host))
        .filter_map(|r| r.doc.as_ref().ok())
        .collect();
    (0..rollout.waves.len()).find_map(|wave| {
        let in_wave = |host: &str| wave_of(host, rollout).index == wave;
        let mut members: BTreeSet<&str> =
            known.named.iter().map(String::as_str).filter(|h| in_wave(h)).collect();
        members.extend(believed.iter().map(|d| d.host.as_str()).filter(|h| in_wave(h)));
        let failed: Vec<String> = believed
            .iter()
            .filter(|d| in_wave(&d.host) && d.state.reports_failure() && d.failed_commit() == Some(commit))
            .map(|d| d.host.clone())
            .collect();
        let needed = ((rollout.quorum * members.len() as f64).ceil() as usize).max(1);
        let name = rollout.waves[wave].name.clone();
        (failed.len() >= needed)
            .then_some((FleetFailure { commit, wave: name, hosts: failed }, members.len()))
    })
}

/// A time of day in UTC, `12:01:07`, for sentences a person reads.
pub fn clock(at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    stamp.get(11..19).unwrap_or(&stamp).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::rollout::Wave;
    use crate::model::records::RunStatus;
    use crate::model::status::{RunSummary, State};
    use std::time::Duration;

    /// canary: c1; early: e1 to e4; rest: everyone else.
    fn rollout(soak: u64, quorum: f64) -> Rollout {
        Rollout {
            waves: vec![
                Wave { name: "canary".into(), members: Members::Hosts(vec!["c1".into()]), approvals: 0 },
                Wave {
                    name: "early".into(),
                    members: Members::Hosts(vec!["e1".into(), "e2".into(), "e3".into(), "e4".into()]),
                    approvals: 0,
                },
                Wave { name: "rest".into(), members: Members::Percent(100), approvals: 0 },
            ],
            soak: Duration::from_secs(soak),
            quorum,
            fleet_rollback: true,
        }
    }

    /// canary: c1; early: 40% by hash; rest: everyone else.
    fn by_percent(soak: u64) -> Rollout {
        Rollout {
            waves: vec![
                Wave { name: "canary".into(), members: Members::Hosts(vec!["c1".into()]), approvals: 0 },
                Wave { name: "early".into(), members: Members::Percent(40), approvals: 0 },
                Wave { name: "rest".into(), members: Members::Percent(100), approvals: 0 },
            ],
            soak: Duration::from_secs(soak),
            quorum: 1.0,
            fleet_rollback: false,
        }
    }

    /// first: 1% by hash, with no host named; rest: everyone else.
    fn percent_only(soak: u64) -> Rollout {
        Rollout {
            waves: vec![
                Wave { name: "first".into(), members: Members::Percent(1), approvals: 0 },
                Wave { name: "rest".into(), members: Members::Percent(100), approvals: 0 },
            ],
            soak: Duration::from_secs(soak),
            quorum: 1.0,
            fleet_rollback: false,
        }
    }

    /// A host name whose hash falls in `[lo, hi)`.
    fn host_in(lo: f64, hi: f64) -> String {
        (0..).map(|i| format!("h{i}")).find(|h| (lo..hi).contains(&position(h))).unwrap()
    }

    /// The hosts the waves name, and the roles' `match` globs `patterns`.
    fn known(rollout: &Rollout, patterns: &[&str]) -> Known {
        let mut named = BTreeSet::new();
        for wave in &rollout.waves {
            if let Members::Hosts(hosts) = &wave.members {
                named.extend(hosts.iter().cloned());
            }
        }
        Known { named, patterns: patterns.iter().map(|p| glob::Pattern::new(p).unwrap()).collect() }
    }

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// The status doc of `host` in `state` on commit `on`, dated by its own word long ago: the gate
    /// must not care.
    fn doc(host: &str, state: State, on: u8) -> StatusDoc {
        let stamp = "2001-01-01T00:00:00.000Z".to_owned();
        let failed = matches!(state, State::Failed | State::RolledBack);
        StatusDoc {
            schema: 1,
            host: host.into(),
            version: "0".into(),
            roles: vec![],
            wave: None,
            tip: Some(oid(on).to_string()),
            deployed: (!failed).then(|| oid(on).to_string()),
            drift: Vec::new(),
            paused: None,
            window: None,
            exports: Default::default(),
            frozen: None,
            approval: None,
            slot: None,
            reboot: None,
            state,
            since: Some(stamp.clone()),
            run: Some(RunSummary {
                id: 1,
                commit: oid(on),
                trigger: crate::model::records::Trigger::Pull,
                status: if failed { RunStatus::Failed } else { RunStatus::Succeeded },
                started_at: stamp.parse().unwrap(),
                finished_at: Some(stamp.parse().unwrap()),
                error: failed.then(|| "step `x` failed (exit 1)".into()),
            }),
            hold: None,
            diverged: None,
            quarantined: vec![],
            checks: vec![],
            heartbeat_seconds: 3600,
            updated_at: stamp,
        }
    }

    /// `host`'s report in `state` on commit `on`, seen here since second `seen` (healthy since
    /// then, if healthy).
    fn report(host: &str, state: State, on: u8, seen: u64) -> Report {
        Report {
            host: host.into(),
            doc: Ok(doc(host, state, on)),
            changed: Some(at(seen)),
            healthy_since: (state == State::Healthy).then(|| at(seen)),
        }
    }

    fn unreadable(host: &str, why: &str) -> Report {
        Report { host: host.into(), doc: Err(why.into()), changed: Some(at(0)), healthy_since: None }
    }

    /// `report` with a heartbeat of 1 s: three seconds after it was seen to change it is stale.
    fn stale(mut report: Report) -> Report {
        report.doc.as_mut().unwrap().heartbeat_seconds = 1;
        report
    }

    fn dated(mut report: Report, updated_at: &str) -> Report {
        report.doc.as_mut().unwrap().updated_at = updated_at.into();
        report
    }

    fn unrecorded(mut report: Report) -> Report {
        (report.changed, report.healthy_since) = (None, None);
        report
    }

    fn seen(reports: Vec<Report>) -> Evidence {
        Evidence { reports, blind: None }
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
        let r = rollout;
        let (canary, early, rest) =
            (wave_of("c1", &r(0, 1.0)), wave_of("e1", &r(0, 1.0)), wave_of("zz-9", &r(0, 1.0)));
        let k = |r: &Rollout| known(r, &[]);
        let (in_early, in_rest) = (host_in(0.0, 0.4), host_in(0.4, 1.0));
        let (in_first, after_first) = (host_in(0.0, 0.01), host_in(0.01, 1.0));
        let blind = |reports| Evidence {
            reports,
            blind: Some("the status remote status could not be fetched: connection refused".into()),
        };
        let healthy3 =
            || vec![report("e1", Healthy, 1, 0), report("e2", Healthy, 1, 0), report("e3", Healthy, 1, 0)];
        let healthy4 = |e4: Report| healthy3().into_iter().chain([e4]).collect::<Vec<_>>();
        #[rustfmt::skip]
        let cases: Vec<(&str, Rollout, Place, Known, Evidence, u64, &str, &str)> = vec![
            ("wave 0 always goes, even past a failure", r(10, 1.0), canary.clone(), k(&r(10, 1.0)), seen(vec![report("e1", Failed, 1, 0)]), 0, "go", ""),
            ("canary healthy and soaked", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 1, 0)]), 10, "go", ""),
            ("canary healthy, not soaked", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 1, 0)]), 9, "wait", "for 10s; 1 healthy since"),
            ("healthy since 2001 by its own word, seen 5s ago: the soak is this node's", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 1, 5)]), 10, "wait", "1 healthy since"),
            ("canary healthy on a descendant counts", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 2, 0)]), 10, "go", ""),
            ("canary healthy on an older commit does not", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 9, 0)]), 10, "wait", "none healthy yet"),
            ("canary still deploying", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Deploying, 1, 0)]), 99, "wait", "none healthy yet"),
            ("canary failed: held", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Failed, 1, 0)]), 99, "held", "failed on c1 (canary)"),
            ("canary rolled back: held", r(10, 1.0), rest.clone(), k(&r(10, 1.0)), seen(vec![report("c1", RolledBack, 1, 0)]), 99, "held", "rolled back on c1 (canary)"),
            ("a failure of another commit holds nothing", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![report("c1", Healthy, 1, 0), report("e2", Failed, 9, 0)]), 0, "go", ""),
            ("a stale failure report still halts", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![stale(report("c1", Failed, 1, 0))]), 99, "held", "failed on c1"),
            ("a failure from a host the plan does not know halts nothing", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![report("c1", Healthy, 1, 0), report("stranger", Failed, 1, 0)]), 0, "go", ""),
            ("a failure from a host a role's `match` knows halts", r(0, 1.0), early.clone(), known(&r(0, 1.0), &["web-*"]), seen(vec![report("c1", Healthy, 1, 0), report("web-7", Failed, 1, 0)]), 0, "held", "failed on web-7 (rest)"),
            ("3 of 4 at quorum 0.75", r(5, 0.75), rest.clone(), k(&r(5, 0.75)), seen(healthy4(report("e4", Held, 9, 0))), 5, "go", ""),
            ("3 of 4 at quorum 1.0", r(5, 1.0), rest.clone(), k(&r(5, 1.0)), seen(healthy4(report("e4", Held, 9, 0))), 5, "wait", "waiting for 4 of 4 early nodes"),
            ("nobody reports: the named canary has no document", r(5, 1.0), early.clone(), k(&r(5, 1.0)), seen(vec![]), 99, "wait", "c1: no status document"),
            ("a named host that never reported is expected", r(5, 1.0), rest.clone(), k(&r(5, 1.0)), seen(healthy3()), 5, "wait", "e4: no status document"),
            ("...but quorum may do without it", r(5, 0.75), rest.clone(), k(&r(5, 0.75)), seen(healthy3()), 5, "go", ""),
            ("the canary's document is over the size limit", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![unreadable("c1", "status.json of 01 is 999999 bytes, over the 262144 a status document may have")]), 9, "wait", "c1's document is not believed: status.json of 01 is 999999 bytes"),
            ("the canary's ref holds another host's document", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![unreadable("c1", "it speaks for another host, \"c2\"")]), 9, "wait", "c1's document is not believed: it speaks for another host"),
            ("the canary's document has a newer schema", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![unreadable("c1", "status.json of 01 has schema 2; this troops reads 1")]), 9, "wait", "has schema 2"),
            ("the canary died healthy: its report went stale", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![stale(report("c1", Healthy, 1, 0))]), 20, "wait", "c1 is stale: its status has not changed here since"),
            ("...and a member that went stale is missing, not absent", r(10, 1.0), rest.clone(), k(&r(10, 1.0)), seen(vec![report("c1", Healthy, 1, 0), stale(report("e1", Deploying, 1, 0))]), 20, "wait", "e1 is stale"),
            ("a document dated in the future is not fresh for ever", r(10, 1.0), early.clone(), k(&r(10, 1.0)), seen(vec![dated(stale(report("c1", Healthy, 1, 0)), "2100-01-01T00:00:00.000Z")]), 20, "wait", "c1 is stale"),
            ("a stale member forgiven by quorum", r(5, 0.75), rest.clone(), k(&r(5, 0.75)), seen(healthy4(stale(report("e4", Healthy, 1, 0)))), 5, "go", ""),
            ("a report not yet recorded here", r(0, 1.0), early.clone(), k(&r(0, 1.0)), seen(vec![unrecorded(report("c1", Healthy, 1, 0))]), 9, "wait", "c1: its status is not recorded here yet"),
            ("a status remote that cannot be fetched holds", r(0, 1.0), early.clone(), k(&r(0, 1.0)), blind(vec![report("c1", Healthy, 1, 0)]), 99, "wait", "could not be fetched: connection refused"),
            ("...though a failure it showed before still halts", r(0, 1.0), early.clone(), k(&r(0, 1.0)), blind(vec![report("c1", Failed, 1, 0)]), 99, "held", "failed on c1"),
            ("a host whose report places it in the previous wave is expected", by_percent(0), wave_of(&in_rest, &by_percent(0)), k(&by_percent(0)), seen(vec![report("c1", Healthy, 1, 0), report(&in_early, Deploying, 1, 0)]), 9, "wait", "waiting for 1 of 1 early nodes"),
            ("a percent wave nobody is in defers to the one before", by_percent(0), wave_of(&in_rest, &by_percent(0)), k(&by_percent(0)), seen(vec![report("c1", Healthy, 1, 0)]), 9, "go", ""),
            ("...but not past the first: no earlier host at all holds", percent_only(0), wave_of(&after_first, &percent_only(0)), k(&percent_only(0)), seen(vec![]), 9, "wait", "no host of the earlier waves (first) is named in the plan or has published its status"),
            ("...and an earlier host that reported is waited for", percent_only(5), wave_of(&after_first, &percent_only(5)), k(&percent_only(5)), seen(vec![report(&in_first, Healthy, 1, 0)]), 4, "wait", "waiting for 1 of 1 first nodes"),
            ("...and goes once soaked", percent_only(5), wave_of(&after_first, &percent_only(5)), k(&percent_only(5)), seen(vec![report(&in_first, Healthy, 1, 0)]), 5, "go", ""),
        ];
        for (case, rollout, me, known, evidence, now, want, says) in cases {
            let got = gate(oid(1), &me, &evidence, &known, at(now), &rollout, descends);
            assert_eq!(kind(&got), want, "{case}: {got:?}");
            let why = match &got {
                Gate::Go => "",
                Gate::Wait { why, .. } | Gate::Held { why } => why,
            };
            assert!(why.contains(says), "{case}: {why:?} does not say {says:?}");
        }
    }

    #[test]
    fn the_wait_says_what_it_waits_for_and_until_when() {
        let r = rollout(600, 0.75);
        let fleet = seen(vec![
            report("e1", State::Healthy, 1, 60),
            report("e2", State::Deploying, 1, 0),
            report("e3", State::Held, 1, 0),
            report("e4", State::Healthy, 1, 0),
        ]);
        let k = known(&r, &[]);
        let Gate::Wait { why, until } = gate(oid(1), &wave_of("zz-9", &r), &fleet, &k, at(100), &r, descends)
        else {
            panic!()
        };
        let since = clock(at(0));
        assert_eq!(
            why,
            format!("wave 3 of 3 (rest): waiting for 3 of 4 early nodes healthy on {} for 10m; 2 healthy since {since}", &oid(1).to_string()[..12])
        );
        assert_eq!(until, None, "only 2 are healthy; no time is known");
        let Gate::Held { why } = gate(
            oid(1),
            &wave_of("e1", &r),
            &seen(vec![report("c1", State::Failed, 1, 0)]),
            &k,
            at(0),
            &r,
            descends,
        ) else {
            panic!()
        };
        assert!(why.starts_with("wave 2 of 3 (early): 010101010101 failed on c1 (canary)"), "{why}");
        let Gate::Wait { until, .. } = gate(
            oid(1),
            &wave_of("e1", &r),
            &seen(vec![report("c1", State::Healthy, 1, 30)]),
            &k,
            at(40),
            &r,
            descends,
        ) else {
            panic!()
        };
        assert_eq!(until, Some(at(630)));

        // What is missing is named, three at most; a peer's name is escaped.
        let Gate::Wait { why, .. } =
            gate(oid(1), &wave_of("zz-9", &r), &seen(vec![]), &k, at(0), &r, descends)
        else {
            panic!()
        };
        assert!(why.ends_with("none healthy yet; e1: no status document; e2: no status document; e3: no status document; 1 more without evidence"), "{why}");
        let hostile = "x\u{9b}2J";
        let Gate::Held { why } = gate(
            oid(1),
            &wave_of("e1", &r),
            &seen(vec![report(hostile, State::Failed, 1, 0)]),
            &known(&r, &["x*"]),
            at(0),
            &r,
            descends,
        ) else {
            panic!()
        };
        assert!(why.contains("failed on x\\u{9b}2J (rest)"), "{why}");

        // A canary whose branch forked from its remotes, healthy on its old commit, is named as such.
        let mut forked = report("c1", State::Healthy, 9, 0);
        forked.doc.as_mut().unwrap().diverged = Some(crate::model::status::Diverged {
            remotes: vec!["origin".into()],
            tip: oid(9).to_string(),
            since: "2026-01-01T00:00:00.000Z".into(),
        });
        let Gate::Wait { why, .. } =
            gate(oid(1), &wave_of("e1", &r), &seen(vec![forked]), &k, at(0), &r, descends)
        else {
            panic!()
        };
        assert!(
            why.ends_with("none healthy yet; c1 cannot take 010101010101: its branch and its remotes origin have forked (since 2026-01-01T00:00:00.000Z); a person must decide"),
            "{why}"
        );
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn a_fleet_rollback_as_a_table() {
        use State::*;
        let r = rollout(0, 0.5);
        let k = known(&r, &["web-*"]);
        let unbelieved = |host: &str| Report {
            doc: Err("unsigned: commit is not signed".into()),
            ..report(host, Failed, 1, 0)
        };
        let off = Rollout { fleet_rollback: false, ..rollout(0, 0.5) };
        let one = Rollout { quorum: 1.0, ..rollout(0, 1.0) };
        #[rustfmt::skip]
        let cases: Vec<(&str, &Rollout, Vec<Report>, Option<(&str, Vec<&str>, usize)>)> = vec![
            ("nobody reports", &r, vec![], None),
            ("the canary failed: the whole canary wave", &r, vec![report("c1", Failed, 1, 0)], Some(("canary", vec!["c1"], 1))),
            ("...rolled back counts as failed", &r, vec![report("c1", RolledBack, 1, 0)], Some(("canary", vec!["c1"], 1))),
            ("...but not without fleet_rollback", &off, vec![report("c1", Failed, 1, 0)], None),
            ("a failure of another commit", &r, vec![report("c1", Failed, 9, 0)], None),
            ("healthy on it", &r, vec![report("c1", Healthy, 1, 0)], None),
            ("1 of 4 early nodes is under quorum 0.5", &r, vec![report("e1", Failed, 1, 0)], None),
            ("2 of 4 early nodes is quorum 0.5", &r, vec![report("e1", Failed, 1, 0), report("e3", RolledBack, 1, 0)], Some(("early", vec!["e1", "e3"], 4))),
            ("3 of 4 is not quorum 1.0", &one, vec![report("e1", Failed, 1, 0), report("e2", Failed, 1, 0), report("e3", Failed, 1, 0)], None),
            ("a forged (unbelieved) failure of the canary is none", &r, vec![unbelieved("c1")], None),
            ("...nor forged ones of a wave's quorum", &r, vec![unbelieved("e1"), unbelieved("e2"), unbelieved("e3")], None),
            ("a host the plan does not know reports nothing", &r, vec![report("stranger", Failed, 1, 0)], None),
            ("a host a role's match knows does, in its wave", &r, vec![report("web-7", Failed, 1, 0)], Some(("rest", vec!["web-7"], 1))),
            ("a node held by another's failure is no failure report", &r, vec![report("e1", Held, 1, 0), report("e2", Held, 1, 0)], None),
        ];
        for (case, rollout, reports, want) in cases {
            let got = fleet_failure(oid(1), &seen(reports), &k, rollout);
            let got = got.as_ref().map(|(f, of)| {
                (f.wave.as_str(), f.hosts.iter().map(String::as_str).collect::<Vec<_>>(), *of)
            });
            assert_eq!(got, want, "{case}");
        }
        let (failure, of) = fleet_failure(
            oid(1),
            &seen(vec![report("e1", Failed, 1, 0), report("e3", Failed, 1, 0)]),
            &k,
            &r,
        )
        .unwrap();
        assert_eq!(
            failure.sentence(of, r.quorum),
            "the fleet reports 010101010101 failed: 2 of 4 early nodes (e1, e3) at quorum 0.5"
        );
    }

    #[test]
    fn waves_are_explicit_hosts_first_then_a_stable_hash() {
        let r = Rollout {
            waves: vec![
                Wave { name: "canary".into(), members: Members::Hosts(vec!["web-1".into()]), approvals: 0 },
                Wave { name: "half".into(), members: Members::Percent(50), approvals: 0 },
                Wave { name: "rest".into(), members: Members::Percent(100), approvals: 0 },
            ],
            soak: Duration::ZERO,
            quorum: 1.0,
            fleet_rollback: false,
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
                Wave { name: "a".into(), members: Members::Hosts(vec!["x".into()]), approvals: 0 },
                Wave { name: "b".into(), members: Members::Percent(1), approvals: 0 },
            ],
            ..r
        };
        assert!(hosts.iter().all(|h| wave_of(h, &named).index == 1));
    }
}
