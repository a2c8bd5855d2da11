//! The plan's `[disruption]`: how many hosts may be in their disruptive steps at once (a number, or
//! a share of the hosts the plan names), per role or for the whole fleet, and how long a slot's
//! lease lasts, read and checked with the rest of the plan. How slots are taken is `node::slots`'.

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
    max: Spanned<RawMax>,
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
pub fn validate(raw: RawDisruption, roles: &[Role], hosts: &[&String]) -> Result<Disruption, Problem> {
    let owner = "disruption";
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
    let span = raw.max.span();
    let (max, slots): (String, Vec<u32>) = match raw.max.into_inner() {
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
    Ok(Disruption { groups, by_role: listed.is_some(), max, ttl, poll })
}
