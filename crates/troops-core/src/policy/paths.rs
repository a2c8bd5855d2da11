//! Steps by path: whether a step or check that names `paths` runs, from what its commit changed
//! since the node's last successful deploy. One pure function of the definition and the changes,
//! so that a run, `--dry-run` and `troops preview` give the same answer.

use std::collections::BTreeSet;
use std::path::Path;

use git2::Oid;

use crate::model::names::short;
use crate::model::plan::{Action, Check, Plan, Step};

/// What a run knows of what its commit changed.
#[derive(Debug, Clone)]
pub enum Changes {
    /// Everything counts as changed, and why: the node's first deploy, a baseline this node does
    /// not have, a person who asked for every step.
    All(String),
    /// Since `baseline` (the last successful deploy; for a rollback, the commit it undoes):
    /// the files that differ, and the plan as it was then.
    Since { baseline: Oid, files: BTreeSet<String>, plan: Box<Plan> },
}

impl Changes {
    /// Nothing of the baseline can be compared: `why`.
    pub fn all(why: impl Into<String>) -> Changes {
        Changes::All(why.into())
    }
}

/// The most changed files a step's reason names; the rest are counted.
const SHOWN: usize = 3;

/// Whether a step or check runs for the changes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByPath {
    /// It names no `paths`: it runs every time.
    Always,
    /// Everything counts as changed (why).
    All(String),
    /// Its definition is new since the baseline, or differs from the baseline's.
    Redefined(Oid),
    /// These changed files are under its paths (its script counts as one).
    Changed(Vec<String>),
    /// Nothing under its paths (as written) changed since the baseline: skipped.
    Unchanged { paths: Vec<String>, baseline: Oid },
}

impl ByPath {
    pub fn runs(&self) -> bool {
        !matches!(self, ByPath::Unchanged { .. })
    }
}

/// In words, for the run's output, its record and previews: "no change under nginx/** since
/// abc1234", "changed: nginx/site.conf and 2 more".
impl std::fmt::Display for ByPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ByPath::Always => f.write_str("runs every time (no `paths`)"),
            ByPath::All(why) => f.write_str(why),
            ByPath::Redefined(baseline) => write!(f, "its definition changed since {}", short(*baseline)),
            ByPath::Changed(files) => {
                write!(f, "changed: {}", files.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))?;
                match files.len().saturating_sub(SHOWN) {
                    0 => Ok(()),
                    more => write!(f, " and {more} more"),
                }
            }
            ByPath::Unchanged { paths, baseline } => {
                write!(f, "no change under {} since {}", paths.join(", "), short(*baseline))
            }
        }
    }
}

/// Whether `step` runs for `changes`.
pub fn step(step: &Step, changes: &Changes) -> ByPath {
    let script = match &step.action {
        Action::Script(script) => Some(script.as_path()),
        Action::Run(_) => None,
    };
    by_path(&step.paths, script, changes, |plan| plan.steps.contains(step))
}

/// Whether `check` probes for `changes`.
pub fn check(check: &Check, changes: &Changes) -> ByPath {
    by_path(&check.paths, None, changes, |plan| plan.checks.contains(check))
}

fn by_path(
    paths: &[glob::Pattern],
    script: Option<&Path>,
    changes: &Changes,
    defined_alike_in: impl Fn(&Plan) -> bool,
) -> ByPath {
    if paths.is_empty() {
        return ByPath::Always;
    }
    let (baseline, files, plan) = match changes {
        Changes::All(why) => return ByPath::All(why.clone()),
        Changes::Since { baseline, files, plan } => (*baseline, files, plan),
    };
    if !defined_alike_in(plan) {
        return ByPath::Redefined(baseline);
    }
    let matched: Vec<String> = files
        .iter()
        .filter(|file| script == Some(Path::new(file)) || paths.iter().any(|glob| under(glob, file)))
        .cloned()
        .collect();
    if matched.is_empty() {
        ByPath::Unchanged { paths: paths.iter().map(|p| p.as_str().to_owned()).collect(), baseline }
    } else {
        ByPath::Changed(matched)
    }
}

/// Whether `file` (a repo path) is matched by `glob`, or lies in a directory it matches: `*`
/// stays within one directory, `**` crosses any number, and `nginx` holds `nginx/site.conf`.
fn under(glob: &glob::Pattern, file: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    Path::new(file)
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .any(|p| glob.matches_path_with(p, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        Plan::parse(Path::new("troops.toml"), text, None).unwrap()
    }

    const PLAN: &str = "[[step]]\nname = \"nginx\"\nrun = \"x\"\npaths = [\"nginx/**\"]\n\
                        [[step]]\nname = \"app\"\nscript = \"steps/app.sh\"\npaths = [\"app/*.py\", \"lib\"]\n\
                        [[step]]\nname = \"always\"\nrun = \"y\"\n\
                        [[check]]\nname = \"web\"\ntcp = \"127.0.0.1:80\"\npaths = [\"nginx/**\"]\n";

    fn since(files: &[&str], before: &str) -> Changes {
        Changes::Since {
            baseline: Oid::from_str("1234567890123456789012345678901234567890").unwrap(),
            files: files.iter().map(|f| f.to_string()).collect(),
            plan: Box::new(plan(before)),
        }
    }

    fn runs(changes: &Changes) -> Vec<(String, String)> {
        let plan = plan(PLAN);
        plan.steps
            .iter()
            .map(|s| step(s, changes))
            .chain(plan.checks.iter().map(|c| check(c, changes)))
            .zip(["nginx", "app", "always", "check web"])
            .filter(|(by, _)| by.runs())
            .map(|(by, name)| (name.to_owned(), by.to_string()))
            .collect()
    }

    fn names(changes: &Changes) -> Vec<String> {
        runs(changes).into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn a_step_runs_when_a_file_under_its_paths_changed() {
        let table: &[(&[&str], &[&str])] = &[
            (&[], &["always"]),
            (&["nginx/site.conf"], &["nginx", "always", "check web"]),
            (&["nginx/conf.d/deep/a.conf"], &["nginx", "always", "check web"]),
            (&["nginx"], &["always"]),
            (&["nginxy/a"], &["always"]),
            (&["app/main.py"], &["app", "always"]),
            // `*` stays in its directory; a plain directory holds everything below it.
            (&["app/sub/main.py"], &["always"]),
            (&["lib/x/y.rs"], &["app", "always"]),
            // A script is one of its step's paths.
            (&["steps/app.sh"], &["app", "always"]),
            (&["README.md", "troops.toml"], &["always"]),
        ];
        for (files, want) in table {
            assert_eq!(names(&since(files, PLAN)), *want, "changed {files:?}");
        }
    }

    #[test]
    fn why_a_step_runs_or_is_skipped_is_said() {
        let changes = since(&["nginx/a", "nginx/b"], PLAN);
        let plan = plan(PLAN);
        assert_eq!(step(&plan.steps[0], &changes).to_string(), "changed: nginx/a, nginx/b");
        let many = since(&["nginx/a", "nginx/b", "nginx/c", "nginx/d", "nginx/e"], PLAN);
        assert_eq!(step(&plan.steps[0], &many).to_string(), "changed: nginx/a, nginx/b, nginx/c and 2 more");
        assert_eq!(
            step(&plan.steps[1], &changes).to_string(),
            "no change under app/*.py, lib since 123456789012"
        );
        assert_eq!(step(&plan.steps[2], &changes), ByPath::Always);
        let all = Changes::all("this node's first deploy");
        assert_eq!(names(&all), ["nginx", "app", "always", "check web"]);
        assert_eq!(step(&plan.steps[1], &all).to_string(), "this node's first deploy");
    }

    #[test]
    fn a_step_whose_definition_changed_or_is_new_runs_whatever_changed() {
        // nginx's command differs, app was called "application", the check had other paths.
        let before = PLAN
            .replace("run = \"x\"", "run = \"old\"")
            .replace("name = \"app\"", "name = \"application\"")
            .replace(
                "tcp = \"127.0.0.1:80\"\npaths = [\"nginx/**\"]",
                "tcp = \"127.0.0.1:80\"\npaths = [\"old\"]",
            );
        let runs = runs(&since(&[], &before));
        assert_eq!(
            runs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["nginx", "app", "always", "check web"]
        );
        assert_eq!(runs[0].1, "its definition changed since 123456789012");
        // Another step's change, or the plan's text around it, does not count.
        let reordered = format!("# a comment\n{}", PLAN.replace("run = \"y\"", "run = \"z\""));
        assert_eq!(names(&since(&["troops.toml"], &reordered)), ["always"]);
    }
}
