//! The plan's `[disruption]`: how many hosts may be in their disruptive steps at once (a number, or
//! a share of the hosts the plan names), per role or for the whole fleet, and how long a slot's
//! lease lasts; or the FleetLock server that says so instead. Read and checked with the rest of
//! the plan. How slots are taken is `node::slots`'.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::limits;
use crate::model::plan::{role_list, Problem, Role};

/// The one group of a plan whose `[disruption]` names no `roles`.
pub const FLEET: &str = "fleet";
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);

/// The validated `[disruption]` of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disruption {
    /// The groups whose hosts share slots, each with how many it has. Without `roles`, one group,
    /// `fleet`; with them, one per role in the order written.
    pub groups: Vec<Group>,
    /// Whether the groups are roles (`roles = [..]`) rather than the one `fleet`.
    pub by_role: bool,
    /// `max` as written ("2", "25%"), for messages.
    pub max: String,
    /// A slot's lease: its holder renews it before it ends; anyone may take it after.
    pub ttl: Duration,
    /// From one look at the slots to the next, while waiting for one.
    pub poll: Duration,
    /// `fleetlock`: the base URL of a FleetLock server that gives the slots instead of the status
    /// remote (its groups' sizes are its own; no lease).
    pub fleetlock: Option<String>,
}

/// A set of hosts that share `slots` slots: `refs/troops/slots/<name>/<n>`, n in 0..slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub slots: u32,
}

impl Disruption {
    /// The group of a host with `roles`: the fleet's, or the first listed role it has; `None`
    /// when the groups are roles and it has none of them.
    pub fn group(&self, roles: &[String]) -> Option<&Group> {
        match self.by_role {
            false => self.groups.first(),
            true => self.groups.iter().find(|g| roles.contains(&g.name)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisruption {
    max: Option<Spanned<RawMax>>,
    fleetlock: Option<Spanned<String>>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    ttl: Option<Spanned<String>>,
    poll: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMax {
    Count(i64),
    Share(String),
}

/// The most slots a group may have: each is a ref every waiting node reads at each poll.
const MAX_SLOTS: i64 = 1000;

/// Validates a parsed `[disruption]`, given the plan's roles and `[hosts]` (a share is of the
/// hosts they name: the same number on every node that reads the same plan).
pub fn validate(
    raw: Spanned<RawDisruption>,
    roles: &[Role],
    hosts: &[&String],
) -> Result<Disruption, Problem> {
    let owner = "disruption";
    let table = raw.span();
    let raw = raw.into_inner();
    for role in raw.roles.iter().flat_map(|r| r.get_ref()) {
        let name = role.get_ref();
        if !name.is_empty() && !git2::Reference::is_valid_name(&format!("refs/troops/slots/{name}/0")) {
            return Err((
                role.span(),
                format!("{owner}: role {name:?} cannot name a git ref (refs/troops/slots/{name}/...)"),
            ));
        }
    }
    let listed = role_list(owner, raw.roles)?;
    let names: Vec<String> = listed.clone().unwrap_or_else(|| vec![FLEET.to_owned()]);
    // The hosts each group names: a role's `hosts`, or every host the plan names.
    let named = |group: &str| -> usize {
        match &listed {
            None => roles
                .iter()
                .flat_map(|r| r.hosts.iter())
                .chain(hosts.iter().copied())
                .collect::<BTreeSet<_>>()
                .len(),
            Some(_) => roles
                .iter()
                .filter(|r| r.name == group)
                .flat_map(|r| r.hosts.iter())
                .collect::<BTreeSet<_>>()
                .len(),
        }
    };
    if let Some(url) = raw.fleetlock {
        return fleetlock(url, raw.max.is_some(), raw.ttl, raw.poll, names, listed.is_some());
    }
    let Some(max) = raw.max else {
        return Err((
            table,
            format!("{owner}: `max` is missing: how many hosts may be disrupted at once (1, or a share like \"25%\")"),
        ));
    };
    let span = max.span();
    let (max, slots): (String, Vec<u32>) = match max.into_inner() {
        RawMax::Count(n) if (1..=MAX_SLOTS).contains(&n) => {
            (n.to_string(), names.iter().map(|_| n as u32).collect())
        }
        RawMax::Count(n) => {
            return Err((
                span,
                format!("{owner}: `max` {n} must be a number from 1 to {MAX_SLOTS}, or a share like \"25%\""),
            ))
        }
        RawMax::Share(text) => {
            let percent = text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| (1..=100).contains(p));
            let Some(percent) = percent else {
                return Err((
                    span,
                    format!("{owner}: `max` {text:?} is not a number or a share like \"25%\""),
                ));
            };
            let mut slots = Vec::new();
            for name in &names {
                let hosts = named(name);
                if hosts == 0 {
                    let whose = match &listed {
                        None => "the plan names no host (in its roles' `hosts` or `[hosts]`)".to_owned(),
                        Some(_) => format!("role `{name}` names no host in its `hosts`"),
                    };
                    return Err((span, format!("{owner}: `max` {text:?} is a share of the hosts the plan names, and {whose}; give a number")));
                }
                // At least one: a share of a small group still lets it go through, one at a time.
                slots.push(((hosts as u64 * u64::from(percent)) / 100).max(1) as u32);
            }
            (text, slots)
        }
    };
    let ttl = limits::SLOT_TTL.key(&format!("{owner}: `ttl`"), raw.ttl, DEFAULT_TTL)?;
    let poll = limits::SLOT_POLL.key(&format!("{owner}: `poll`"), raw.poll, DEFAULT_POLL)?;
    let groups = names.into_iter().zip(slots).map(|(name, slots)| Group { name, slots }).collect();
    Ok(Disruption { groups, by_role: listed.is_some(), max, ttl, poll, fleetlock: None })
}

/// A `[disruption]` whose slots a FleetLock server at `url` gives: its groups' names must be
/// FleetLock groups (`^[a-zA-Z0-9.-]+$`), and `max` and `ttl` are the server's business.
fn fleetlock(
    url: Spanned<String>,
    max: bool,
    ttl: Option<Spanned<String>>,
    poll: Option<Spanned<String>>,
    names: Vec<String>,
    by_role: bool,
) -> Result<Disruption, Problem> {
    let owner = "disruption";
    if let Err(e) = crate::model::url::Url::parse(url.get_ref()) {
        return Err((
            url.span(),
            format!("{owner}: `fleetlock` {:?} is not an http(s) URL: {e}", url.get_ref()),
        ));
    }
    if max {
        return Err((url.span(), format!("{owner}: with `fleetlock`, how many at once is the FleetLock server's to say; leave `max` out")));
    }
    if let Some(ttl) = ttl {
        return Err((ttl.span(), format!("{owner}: `ttl` is the lease of a slot on the status remote; a FleetLock server keeps its locks until they are given back")));
    }
    if let Some(bad) =
        names.iter().find(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
    {
        return Err((
            url.span(),
            format!("{owner}: role {bad:?} is no FleetLock group (letters, digits, `.` and `-` only)"),
        ));
    }
    let poll = limits::SLOT_POLL.key(&format!("{owner}: `poll`"), poll, DEFAULT_POLL)?;
    Ok(Disruption {
        groups: names.into_iter().map(|name| Group { name, slots: 0 }).collect(),
        by_role,
        max: "as the FleetLock server says".into(),
        ttl: Duration::ZERO,
        poll,
        fleetlock: Some(url.into_inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::Plan;

    fn parse(text: &str) -> Result<Plan, String> {
        Plan::parse(std::path::Path::new("troops.toml"), text, None).map_err(|e| e.to_string())
    }

    const STEP: &str = "[[step]]\nname = \"reboot\"\nrun = \"x\"\ndisruptive = true\n";
    const ROLES: &str = "[roles.web]\nhosts = [\"web-1\", \"web-2\", \"web-3\", \"web-4\", \"web-5\"]\n\
                         [roles.db]\nhosts = [\"db-1\", \"db-2\"]\nmatch = [\"db-*\"]\n";

    type Groups = Vec<(String, u32)>;

    #[test]
    fn slots_per_group_by_number_or_share_of_the_hosts_the_plan_names() {
        let groups = |text: &str| -> Vec<(String, u32)> {
            let plan = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            plan.disruption.unwrap().groups.into_iter().map(|g| (g.name, g.slots)).collect()
        };
        let g = |list: &[(&str, u32)]| list.iter().map(|(n, s)| (n.to_string(), *s)).collect::<Vec<_>>();
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Groups)> = vec![
            ("one for the fleet", format!("{STEP}[disruption]\nmax = 1\n"), g(&[("fleet", 1)])),
            ("two per role", format!("{ROLES}[disruption]\nmax = 2\nroles = [\"db\", \"web\"]\n"), g(&[("db", 2), ("web", 2)])),
            ("a share of the fleet: 7 hosts named", format!("{ROLES}[hosts]\nweb-1 = \"ssh://a/\"\nlb-1 = \"ssh://b/\"\n[disruption]\nmax = \"25%\"\n"), g(&[("fleet", 2)])),
            ("a share of each role, at least one", format!("{ROLES}[disruption]\nmax = \"40%\"\nroles = [\"web\", \"db\"]\n"), g(&[("web", 2), ("db", 1)])),
            ("all of them", format!("{ROLES}[disruption]\nmax = \"100%\"\nroles = [\"web\"]\n"), g(&[("web", 5)])),
        ];
        for (case, text, want) in cases {
            assert_eq!(groups(&text), want, "{case}");
        }
        let plan = parse(&format!("{STEP}[disruption]\nmax = 1\nttl = \"90s\"\npoll = \"1s\"\n")).unwrap();
        let d = plan.disruption.unwrap();
        assert_eq!((d.ttl, d.poll, d.max.as_str()), (Duration::from_secs(90), Duration::from_secs(1), "1"));
        assert!(plan.steps[0].disruptive);
        let d = parse("[disruption]\nmax = 1\n").unwrap().disruption.unwrap();
        assert_eq!((d.ttl, d.poll), (DEFAULT_TTL, DEFAULT_POLL));
        let web: Vec<String> = vec!["web".into()];
        let by_role = parse(&format!("{ROLES}[disruption]\nmax = 1\nroles = [\"db\", \"web\"]\n")).unwrap();
        let by_role = by_role.disruption.unwrap();
        assert_eq!(by_role.group(&web).map(|g| g.name.as_str()), Some("web"));
        assert_eq!(by_role.group(&["db".into(), "web".into()]).map(|g| g.name.as_str()), Some("db"));
        assert_eq!(by_role.group(&["lb".into()]), None);
        let served = parse(&format!(
            "{STEP}[disruption]\nfleetlock = \"https://airlock.example/\"\nroles = [\"db.1\"]\n"
        ))
        .unwrap()
        .disruption
        .unwrap();
        assert_eq!(served.fleetlock.as_deref(), Some("https://airlock.example/"));
        assert_eq!((served.groups[0].name.as_str(), served.poll), ("db.1", DEFAULT_POLL));
    }

    #[test]
    fn every_mistake_is_placed() {
        #[rustfmt::skip]
        let cases: Vec<(String, &str)> = vec![
            (STEP.to_owned(), ":4:14: step `reboot` is disruptive, and the plan has no `[disruption]`"),
            ("[[step]]\nname = \"a\"\nrun = \"x\"\ndisruptive = \"yes\"\n[disruption]\nmax = 1\n".into(), ":4:14: `step.disruptive`: invalid type"),
            ("[disruption]\nmax = 0\n".into(), ":2:7: disruption: `max` 0 must be a number from 1 to 1000"),
            ("[disruption]\nmax = 1001\n".into(), ":2:7: disruption: `max` 1001 must be"),
            ("[disruption]\nmax = -1\n".into(), ":2:7: disruption: `max` -1 must be"),
            ("[disruption]\nmax = \"half\"\n".into(), ":2:7: disruption: `max` \"half\" is not a number or a share like \"25%\""),
            ("[disruption]\nmax = \"0%\"\n".into(), ":2:7: disruption: `max` \"0%\" is not"),
            ("[disruption]\nmax = \"101%\"\n".into(), ":2:7: disruption: `max` \"101%\" is not"),
            ("[disruption]\nmax = \"25%\"\n".into(), ":2:7: disruption: `max` \"25%\" is a share of the hosts the plan names, and the plan names no host"),
            (format!("{ROLES}[disruption]\nmax = \"25%\"\nroles = [\"lb\"]\n"), ":7:7: disruption: `max` \"25%\" is a share of the hosts the plan names, and role `lb` names no host in its `hosts`"),
            ("[disruption]\nmax = 1\nroles = []\n".into(), ":3:9: disruption: `roles` is empty"),
            ("[disruption]\nmax = 1\nroles = [\"a b\"]\n".into(), ":3:10: disruption: role \"a b\" cannot name a git ref"),
            ("[disruption]\nmax = 1\nroles = [\"x..y\"]\n".into(), ":3:10: disruption: role \"x..y\" cannot name a git ref"),
            ("[disruption]\nmax = 1\nttl = \"10ms\"\n".into(), ":3:7: disruption: `ttl` \"10ms\" is too short; at least 1s"),
            ("[disruption]\nmax = 1\nttl = \"2days\"\n".into(), ":3:7: disruption: `ttl` \"2days\" is too long; at most 1day"),
            ("[disruption]\nmax = 1\npoll = \"1ms\"\n".into(), ":3:8: disruption: `poll` \"1ms\" is too short"),
            ("[disruption]\nroles = [\"web\"]\n".into(), ":1:1: disruption: `max` is missing"),
            ("[disruption]\nfleetlock = \"etcd://a\"\n".into(), ":2:13: disruption: `fleetlock` \"etcd://a\" is not an http(s) URL"),
            ("[disruption]\nfleetlock = \"http://a/\"\nmax = 1\n".into(), ":2:13: disruption: with `fleetlock`, how many at once is the FleetLock server's to say"),
            ("[disruption]\nfleetlock = \"http://a/\"\nttl = \"1m\"\n".into(), ":3:7: disruption: `ttl` is the lease of a slot on the status remote"),
            ("[disruption]\nfleetlock = \"http://a/\"\nroles = [\"web_1\"]\n".into(), ":2:13: disruption: role \"web_1\" is no FleetLock group"),
            ("[disruption]\nmax = 1\nlock = \"etcd\"\n".into(), ":3:1: unknown field `lock`"),
        ];
        for (text, want) in cases {
            let e = parse(&text).map(|_| ()).unwrap_err();
            assert!(e.starts_with("troops.toml:") && e.contains(want), "{text:?}: {e}");
        }
    }
}
