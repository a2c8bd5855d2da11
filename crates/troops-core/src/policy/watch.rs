//! When a host's `[[watch]]`es call for a run: the set of (host, export, value) it watches among
//! its non-stale peers, against the set the run that deployed its commit saw at its start. A
//! difference (a host appears, leaves or goes stale, a value changes) is due once the set has
//! stayed as it is for the watches' settle time, so that ten hosts joining make one run. Pure:
//! the node reads the peers and keeps the sets (`node::fleet`); `schedule` decides whether the run
//! may go (`Ask::Fleet`).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::fleet::Peer;
use crate::model::plan::watch::Watch;
use crate::model::shown::escape;

/// One watched value: a peer's export.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watched {
    pub host: String,
    pub export: String,
    pub value: String,
}

/// The watched values as this node last found them, and since when they are so (by its clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub values: BTreeSet<Watched>,
    pub since: SystemTime,
}

/// What the watches call for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The values are as the deployed run saw them.
    AsSeen,
    /// They differ, and have not stayed so for the settle time yet.
    Settling { until: SystemTime, changes: Vec<String> },
    /// They differ, and have stayed so: run the deployed commit again.
    Due { changes: Vec<String> },
}

/// The watches of `watches` that apply to a host with `roles`.
pub fn applying<'a>(watches: &'a [Watch], roles: &BTreeSet<String>) -> Vec<&'a Watch> {
    watches.iter().filter(|w| w.roles.as_ref().is_none_or(|r| r.iter().any(|r| roles.contains(r)))).collect()
}

/// The longest settle of `watches`: the one the node waits.
pub fn settle(watches: &[&Watch]) -> Duration {
    watches.iter().map(|w| w.settle).max().unwrap_or_default()
}

/// What `watches` see among `peers`: each non-stale peer's watched export, if it has it.
pub fn watched(watches: &[&Watch], peers: &[Peer]) -> BTreeSet<Watched> {
    let mut values = BTreeSet::new();
    for watch in watches {
        for peer in peers.iter().filter(|p| !p.stale && p.roles.contains(&watch.role)) {
            if let Some(value) = peer.exports.get(&watch.export) {
                values.insert(Watched {
                    host: peer.host.clone(),
                    export: watch.export.clone(),
                    value: value.clone(),
                });
            }
        }
    }
    values
}

/// How `now` differs from `seen`, one sentence a (host, export): "app-3 addr appeared (\"...\")".
pub fn changes(seen: &BTreeSet<Watched>, now: &BTreeSet<Watched>) -> Vec<String> {
    let key = |w: &Watched| (w.host.clone(), w.export.clone());
    let keys: BTreeSet<(String, String)> = seen.iter().chain(now).map(key).collect();
    let find = |set: &BTreeSet<Watched>, k: &(String, String)| {
        set.iter().find(|w| key(w) == *k).map(|w| shown(&w.value))
    };
    keys.iter()
        .filter_map(|k| {
            let (host, export) = (escape(&k.0), escape(&k.1));
            match (find(seen, k), find(now, k)) {
                (None, Some(new)) => Some(format!("{host} {export} appeared ({new})")),
                (Some(_), None) => Some(format!(
                    "{host} {export} is gone (the host left, went stale or stopped exporting it)"
                )),
                (Some(old), Some(new)) if old != new => {
                    Some(format!("{host} {export} changed ({old} -> {new})"))
                }
                _ => None,
            }
        })
        .collect()
}

/// A value for a sentence: escaped, and cut after 60 characters.
fn shown(value: &str) -> String {
    let value = value.trim_end_matches('\n');
    let cut: String = value.chars().take(60).collect();
    let more = if cut.len() < value.len() { "..." } else { "" };
    format!("\"{}\"{more}", escape(&cut))
}

/// What the watches call for `now`, given what the deployed run saw (`seen`), what this node
/// found before (`observed`) and what it finds now (`current`); and what it observes from now on.
pub fn verdict(
    seen: &BTreeSet<Watched>,
    observed: Option<&Observed>,
    current: BTreeSet<Watched>,
    now: SystemTime,
    settle: Duration,
) -> (Verdict, Observed) {
    let since = match observed {
        Some(o) if o.values == current => o.since,
        _ => now,
    };
    let verdict = if current == *seen {
        Verdict::AsSeen
    } else {
        let changes = changes(seen, &current);
        let until = since + settle;
        if now >= until {
            Verdict::Due { changes }
        } else {
            Verdict::Settling { until, changes }
        }
    };
    (verdict, Observed { values: current, since })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::status::State;

    fn peer(host: &str, role: &str, addr: Option<&str>, stale: bool) -> Peer {
        Peer {
            host: host.into(),
            roles: vec![role.into()],
            wave: None,
            state: State::Healthy,
            deployed: None,
            exports: addr.map(|a| [("addr".to_owned(), a.to_owned())].into()).unwrap_or_default(),
            age: Some(1),
            stale,
        }
    }

    fn watch(roles: Option<&str>) -> Watch {
        Watch {
            role: "app".into(),
            export: "addr".into(),
            roles: roles.map(|r| vec![r.to_owned()]),
            settle: Duration::from_secs(5),
        }
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeSet<Watched> {
        pairs
            .iter()
            .map(|(h, v)| Watched { host: (*h).into(), export: "addr".into(), value: (*v).into() })
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn what_is_watched() {
        let w = watch(None);
        let peers = vec![
            peer("app-1", "app", Some("a1"), false),
            peer("app-2", "app", Some("a2"), true),
            peer("app-3", "app", None, false),
            peer("db-1", "db", Some("d1"), false),
        ];
        assert_eq!(watched(&[&w], &peers), set(&[("app-1", "a1")]), "fresh app hosts that export it only");
        let (lb, any) = (watch(Some("lb")), watch(None));
        let watches = vec![lb.clone(), any];
        let roles = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(applying(&watches, &roles(&["web"])).len(), 1);
        assert_eq!(applying(&watches, &roles(&["lb", "web"])).len(), 2);
        assert_eq!(settle(&applying(&watches, &roles(&["lb"]))), Duration::from_secs(5));
        assert_eq!(settle(&[]), Duration::ZERO);
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn verdicts_as_a_table() {
        let two = set(&[("app-1", "a1"), ("app-2", "a2")]);
        let three = set(&[("app-1", "a1"), ("app-2", "a2"), ("app-3", "a3")]);
        let one = set(&[("app-1", "a1")]);
        let obs =
            |values: &BTreeSet<Watched>, since: u64| Observed { values: values.clone(), since: at(since) };
        let five = Duration::from_secs(5);
        #[rustfmt::skip]
        let table: Vec<(&str, &BTreeSet<Watched>, Option<Observed>, &BTreeSet<Watched>, u64, &str, u64)> = vec![
            ("as the deployed run saw it", &two, Some(obs(&two, 0)), &two, 100, "as seen", 0),
            ("a host appears: settling", &two, Some(obs(&two, 0)), &three, 100, "settling until 105", 100),
            ("still so, not long enough", &two, Some(obs(&three, 100)), &three, 104, "settling until 105", 100),
            ("still so, settled: due", &two, Some(obs(&three, 100)), &three, 105, "due", 100),
            ("another change starts the settle over", &two, Some(obs(&three, 100)), &one, 104, "settling until 109", 104),
            ("back as seen before settling: nothing", &two, Some(obs(&three, 100)), &two, 104, "as seen", 104),
            ("nothing observed before", &two, None, &three, 50, "settling until 55", 50),
        ];
        for (name, seen, observed, current, now, want, since) in table {
            let (got, next) = verdict(seen, observed.as_ref(), current.clone(), at(now), five);
            let got = match got {
                Verdict::AsSeen => "as seen".to_owned(),
                Verdict::Settling { until, .. } => {
                    format!("settling until {}", until.duration_since(at(0)).unwrap().as_secs())
                }
                Verdict::Due { .. } => "due".to_owned(),
            };
            assert_eq!((got.as_str(), next.since), (want, at(since)), "{name}");
            assert_eq!(&next.values, current, "{name}");
        }
    }

    #[test]
    fn changes_say_what_moved() {
        let seen = set(&[("app-1", "a1"), ("app-2", "a2")]);
        let now = set(&[("app-1", "a1x\n"), ("app-3", "a3\u{1b}[31m")]);
        assert_eq!(
            changes(&seen, &now),
            vec![
                "app-1 addr changed (\"a1\" -> \"a1x\")".to_owned(),
                "app-2 addr is gone (the host left, went stale or stopped exporting it)".to_owned(),
                "app-3 addr appeared (\"a3\\u{1b}[31m\")".to_owned(),
            ]
        );
    }
}
