//! Which roles this node has, and therefore which steps of a plan it runs: the node config's
//! roles plus every plan role whose `hosts` or `match` names the host.

use std::collections::BTreeSet;

use crate::model::plan::{Check, Plan, Step};

/// The roles of `host`: `configured` plus the plan roles that name it, sorted and unique.
pub fn resolve(host: &str, configured: &[String], plan: Option<&Plan>) -> BTreeSet<String> {
    let mut roles: BTreeSet<String> = configured.iter().cloned().collect();
    for role in plan.map_or(&[][..], |p| &p.roles) {
        if role.hosts.iter().any(|h| h == host) || role.patterns.iter().any(|p| p.matches(host)) {
            roles.insert(role.name.clone());
        }
    }
    roles
}

/// Whether a step or check is a node's, and why; in words (`Display`) for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// It names no roles: it is every host's.
    EveryHost,
    /// One of the node's roles is one it names.
    Role(String),
    /// None of the roles it names is the node's.
    Needs(Vec<String>),
}

impl Selection {
    /// The node runs the step (or probes the check).
    pub fn runs(&self) -> bool {
        !matches!(self, Selection::Needs(_))
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::EveryHost => f.write_str("every host"),
            Selection::Role(role) => write!(f, "role {role}"),
            Selection::Needs(roles) => write!(f, "needs role {}", roles.join(" or ")),
        }
    }
}

/// Whether a step runs on a node with `roles`, and why.
pub fn selects(step: &Step, roles: &BTreeSet<String>) -> Selection {
    wanted_by(step.roles.as_deref(), roles)
}

/// Whether a check probes on a node with `roles`, and why, like [`selects`] for steps.
pub fn selects_check(check: &Check, roles: &BTreeSet<String>) -> Selection {
    wanted_by(check.roles.as_deref(), roles)
}

/// Whether a node with `roles` is one of those `wanted` (`None`: every host), and why.
fn wanted_by(wanted: Option<&[String]>, roles: &BTreeSet<String>) -> Selection {
    match wanted {
        None => Selection::EveryHost,
        Some(wanted) => match wanted.iter().find(|r| roles.contains(*r)) {
            Some(role) => Selection::Role(role.clone()),
            None => Selection::Needs(wanted.to_vec()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan() -> Plan {
        let text = "[roles.web]\nhosts = [\"box\"]\n[roles.db]\nmatch = [\"db-*\"]\n\
                    [[step]]\nname = \"all\"\nrun = \"x\"\n[[step]]\nname = \"db\"\nrun = \"x\"\nroles = [\"db\", \"cache\"]\n\
                    [[check]]\nname = \"up\"\ntcp = \"127.0.0.1:1\"\n[[check]]\nname = \"web\"\nhttp = \"http://127.0.0.1/\"\nroles = [\"web\"]\n";
        Plan::parse(Path::new("troops.toml"), text, None).unwrap()
    }

    #[test]
    fn config_roles_add_to_plan_roles() {
        let plan = plan();
        let names = |r: BTreeSet<String>| r.into_iter().collect::<Vec<_>>();
        assert_eq!(names(resolve("box", &[], Some(&plan))), ["web"]);
        assert_eq!(names(resolve("db-1", &["x".into()], Some(&plan))), ["db", "x"]);
        assert!(resolve("db", &[], Some(&plan)).is_empty());
    }

    #[test]
    fn steps_are_selected_by_any_of_their_roles() {
        let plan = plan();
        let roles = resolve("box", &["cache".into()], Some(&plan));
        assert_eq!(selects(&plan.steps[0], &roles), Selection::EveryHost);
        assert_eq!(selects(&plan.steps[1], &roles), Selection::Role("cache".into()));
        let needs = selects(&plan.steps[1], &BTreeSet::new());
        assert!(!needs.runs());
        assert_eq!(needs.to_string(), "needs role db or cache");
    }

    #[test]
    fn checks_are_selected_like_steps() {
        let plan = plan();
        assert_eq!(selects_check(&plan.checks[0], &BTreeSet::new()).to_string(), "every host");
        let web = selects_check(&plan.checks[1], &resolve("box", &[], Some(&plan)));
        assert!(web.runs());
        assert_eq!(web.to_string(), "role web");
        assert!(!selects_check(&plan.checks[1], &resolve("db-1", &[], Some(&plan))).runs());
    }
}
