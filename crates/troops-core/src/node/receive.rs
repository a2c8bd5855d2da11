//! What the node accepts from a push (pre-receive): the checks on each updated ref.
//!
//! What must stay true: the deploy branch only moves forward (never deleted, never rewound or
//! rewritten), the refs the node keeps for itself (`refs/troops/*`, `refs/remotes/*`) are never
//! written by a push, and every refusal is one sentence naming the ref and the commits, because
//! the pusher sees it as it is. Other branches and tags are accepted and never deployed (git's
//! own `receive.denyDeletes` and `receive.denyNonFastForwards` still guard them). With
//! `require_signed`, [`signatures`] is the one place the commits that would move the deploy branch
//! are vetted (`verify`). A plan that cannot be read ([`plan_error`]) never reaches the branch: a
//! push of it is refused with the plan's file, line and column.

use std::path::Path;

use git2::{Oid, Repository};

use crate::mech::verify::{self, Refusal};
use crate::model::config::{Config, Verify};
use crate::model::error::{Context, Error, Result};
use crate::model::names::short;

/// Namespaces the node writes itself; a push may not touch them.
const NODE_REFS: [&str; 2] = ["refs/troops/", "refs/remotes/"];

/// One line of a receive hook's stdin: a ref moving from `old` to `new`; `None` is git's all-zero
/// id (the ref is created, or deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub old: Option<Oid>,
    pub new: Option<Oid>,
    pub refname: String,
}

impl Update {
    /// Parses `<old> <new> <refname>`, as git writes it to pre-receive and post-receive.
    pub fn parse(line: &str) -> Result<Update> {
        let bad =
            || Error::Env(format!("git gave the hook a line that is not `<old> <new> <ref>`: {line:?}"));
        let mut words = line.split_whitespace();
        let (Some(old), Some(new), Some(refname), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(bad());
        };
        let id = |hex: &str| Oid::from_str(hex).map(|oid| (!oid.is_zero()).then_some(oid)).map_err(|_| bad());
        Ok(Update { old: id(old)?, new: id(new)?, refname: refname.to_owned() })
    }

    /// True when this update moves the deploy branch `branch` to a commit: what post-receive
    /// deploys.
    pub fn deploys(&self, branch: &str) -> bool {
        self.new.is_some() && self.refname == branch_ref(branch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refused, with the sentence the pusher reads.
    Refuse(String),
    /// Refused for a commit's signature (`refusal`, for `troops status`), with the sentence the
    /// pusher reads.
    Unverified {
        refusal: Refusal,
        message: String,
    },
}

/// A push of a commit to this ref asks for its preview (`node::run::preview`), which the pusher
/// reads; the push itself is refused, so nothing moves and nothing of it stays.
pub const PREVIEW_REF: &str = "refs/troops/preview";
/// What starts each line of such a preview the node shows the pusher.
pub const PREVIEW_MARK: &str = "troops: preview | ";

/// Opens the repo at `git_dir` of `node` as a pre-receive hook sees it: the pushed objects are
/// still in git's quarantine directory (`GIT_QUARANTINE_PATH`) until every hook accepts, so it is
/// added as an alternate.
pub fn open_pushed(
    node: &crate::model::node::Node,
    git_dir: &Path,
    quarantine: Option<&Path>,
) -> Result<crate::mech::repo::NodeRepo> {
    let ledger = node.is_owner().then(|| node.ledger_path());
    let repo = crate::mech::repo::NodeRepo::open(git_dir, &node.config.branch, ledger)?;
    match quarantine {
        Some(quarantine) => repo.with_pushed(quarantine),
        None => Ok(repo),
    }
}

/// Decides whether the node accepts `update`, with `config` the node config (its `branch` is the
/// deploy branch) of a node whose SSH-signed commits' first-seen times are at `seen`
/// (`Node::seen_path`).
pub fn check(repo: &Repository, config: &Config, seen: &Path, update: &Update) -> Result<Verdict> {
    let name = &update.refname;
    if let Some(space) = NODE_REFS.iter().find(|space| name.starts_with(*space)) {
        return Ok(Verdict::Refuse(format!(
            "troops: refusing to update {name}: {space}* belongs to the node, not to pushes"
        )));
    }
    if *name != branch_ref(&config.branch) {
        return Ok(Verdict::Accept);
    }
    let Some(new) = update.new else {
        let at = update.old.map_or(String::new(), |old| format!(" (at {})", short(old)));
        return Ok(Verdict::Refuse(format!(
            "troops: refusing to delete {name}{at}, the branch this node deploys"
        )));
    };
    if let Some(old) = update.old {
        let forward = old == new
            || repo.graph_descendant_of(new, old).ctx(|| format!("comparing {new} with {old} for {name}"))?;
        if !forward {
            return Ok(Verdict::Refuse(format!(
                "troops: refusing non-fast-forward update of {name} ({} does not descend from {})",
                short(new),
                short(old)
            )));
        }
    }
    if let Some(refusal) = signatures(repo, &config.verify, seen, update.old, new)? {
        return Ok(Verdict::Unverified {
            message: format!("troops: refusing {name} at {}: {refusal}", short(new)),
            refusal,
        });
    }
    Ok(match plan_error(repo, new)? {
        None => Verdict::Accept,
        Some(error) => Verdict::Refuse(format!("troops: refusing {name} at {}: {error}", short(new))),
    })
}

/// Why the plan of `commit` cannot be run, if it cannot even be read: missing, not a regular
/// file, not UTF-8, bad TOML, a bad key or value, or for a newer troops. Its scripts are checked in
/// the run's checkout (and by `troops check` in a clone), not here: a pre-receive hook has no
/// checkout.
fn plan_error(repo: &Repository, commit: Oid) -> Result<Option<Error>> {
    let path = Path::new(crate::model::plan::FILE_NAME);
    let text = match crate::mech::repo::plan_text(repo, commit) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(Some(crate::model::plan::missing(path))),
        Err(e @ Error::Plan { .. }) => return Ok(Some(e)),
        Err(e) => return Err(e),
    };
    Ok(crate::model::plan::Plan::parse(path, &text, None).err())
}

/// Signature checks (`[verify]` of the node config): given the deploy branch moving from `old` to
/// `new`, the commit refused and why, or `None` to accept. With `scope = "tip"` only `new` is
/// checked; with `"all"`, every commit reachable from `new` and not from `old`. A keyring or
/// allowed signers file that cannot be read is an error, which refuses the push too.
fn signatures(
    repo: &Repository,
    verify: &Verify,
    seen: &Path,
    old: Option<Oid>,
    new: Oid,
) -> Result<Option<Refusal>> {
    match verify::enforced(verify, seen)? {
        Some(policy) => verify::check_update(repo, &policy, old, new, verify.scope),
        None => Ok(None),
    }
}

fn branch_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: std::path::PathBuf,
        repo: Repository,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!("troops-receive-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let repo = Repository::init_bare(&dir).unwrap();
            Fixture { dir, repo }
        }

        /// A commit whose plan is one step.
        fn commit(&self, parents: &[Oid], message: &str) -> Oid {
            self.commit_plan(parents, message, Some("[[step]]\nname = \"a\"\nrun = \"true\"\n"))
        }

        /// A commit whose tree holds only `plan` as `troops.toml` (nothing: `None`).
        fn commit_plan(&self, parents: &[Oid], message: &str, plan: Option<&str>) -> Oid {
            let mut tree = self.repo.treebuilder(None).unwrap();
            if let Some(plan) = plan {
                tree.insert("troops.toml", self.repo.blob(plan.as_bytes()).unwrap(), 0o100644).unwrap();
            }
            let tree = self.repo.find_tree(tree.write().unwrap()).unwrap();
            let sig = git2::Signature::new("t", "t@t", &git2::Time::new(0, 0)).unwrap();
            let parents: Vec<_> = parents.iter().map(|p| self.repo.find_commit(*p).unwrap()).collect();
            let parents: Vec<_> = parents.iter().collect();
            self.repo.commit(None, &sig, &sig, message, &tree, &parents).unwrap()
        }

        fn check(&self, config: &Config, old: Option<Oid>, new: Option<Oid>, refname: &str) -> Verdict {
            check(
                &self.repo,
                config,
                &self.dir.join("seen.json"),
                &Update { old, new, refname: refname.into() },
            )
            .unwrap()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/troops/troops.toml"), text).unwrap()
    }

    fn refused(verdict: Verdict) -> String {
        match verdict {
            Verdict::Refuse(reason) | Verdict::Unverified { message: reason, .. } => reason,
            Verdict::Accept => panic!("expected a refusal"),
        }
    }

    #[test]
    fn parses_hook_lines() {
        let zero = "0".repeat(40);
        let one = "1".repeat(40);
        let update = Update::parse(&format!("{zero} {one} refs/heads/main\n")).unwrap();
        assert_eq!(
            update,
            Update { old: None, new: Some(Oid::from_str(&one).unwrap()), refname: "refs/heads/main".into() }
        );
        assert!(update.deploys("main"));
        assert!(!update.deploys("prod"));
        assert!(!Update::parse(&format!("{one} {zero} refs/heads/main")).unwrap().deploys("main"));
        assert!(Update::parse("abc refs/heads/main").is_err());
        assert!(Update::parse(&format!("{zero} nothex refs/heads/main")).is_err());
    }

    #[test]
    fn deploy_branch_moves_only_forward() {
        let f = Fixture::new("forward");
        let config = config("");
        let a = f.commit(&[], "a");
        let b = f.commit(&[a], "b");
        let other = f.commit(&[], "other");
        assert_eq!(f.check(&config, None, Some(a), "refs/heads/main"), Verdict::Accept);
        assert_eq!(f.check(&config, Some(a), Some(b), "refs/heads/main"), Verdict::Accept);

        let back = refused(f.check(&config, Some(b), Some(a), "refs/heads/main"));
        let (a, b) = (a.to_string(), b.to_string());
        assert_eq!(
            back,
            format!(
                "troops: refusing non-fast-forward update of refs/heads/main ({} does not descend from {})",
                &a[..12],
                &b[..12]
            )
        );
        let sideways = refused(f.check(&config, Some(b.parse().unwrap()), Some(other), "refs/heads/main"));
        assert!(sideways.contains(&other.to_string()[..12]), "{sideways}");

        let delete = refused(f.check(&config, Some(b.parse().unwrap()), None, "refs/heads/main"));
        assert_eq!(
            delete,
            format!(
                "troops: refusing to delete refs/heads/main (at {}), the branch this node deploys",
                &b[..12]
            )
        );
    }

    #[test]
    fn a_plan_that_cannot_be_read_never_reaches_the_deploy_branch() {
        let f = Fixture::new("plans");
        let config = config("");
        let good = f.commit(&[], "good");
        for (case, plan, says) in [
            ("bad TOML", Some("[[step]\nname = \"a\"\n"), "troops.toml:1:7: "),
            ("unknown key", Some("[[step]]\nname = \"a\"\nrun = \"true\"\nrnu = 1\n"), "troops.toml:4:1: "),
            ("a newer troops", Some("min_troops = \"99.0\"\n"), "troops.toml:1:14: "),
            ("no plan", None, "troops.toml:1:1: no such plan file"),
        ] {
            let bad = f.commit_plan(&[good], case, plan);
            let refusal = refused(f.check(&config, Some(good), Some(bad), "refs/heads/main"));
            let at = format!("troops: refusing refs/heads/main at {}: {says}", &bad.to_string()[..12]);
            assert!(refusal.starts_with(&at), "{case}: {refusal}");
            // Only the branch the node deploys carries a plan.
            assert_eq!(
                f.check(&config, Some(good), Some(bad), "refs/heads/other"),
                Verdict::Accept,
                "{case}"
            );
        }
    }

    #[test]
    fn other_branches_are_free_and_node_refs_are_closed() {
        let f = Fixture::new("others");
        let config = config("branch = \"prod\"");
        let a = f.commit(&[], "a");
        let b = f.commit(&[a], "b");
        assert_eq!(f.check(&config, Some(b), Some(a), "refs/heads/main"), Verdict::Accept);
        assert_eq!(f.check(&config, Some(b), None, "refs/tags/v1"), Verdict::Accept);
        assert!(refused(f.check(&config, Some(b), Some(a), "refs/heads/prod")).contains("non-fast-forward"));
        for name in ["refs/troops/deployed", "refs/remotes/origin/prod"] {
            assert!(refused(f.check(&config, None, Some(a), name)).contains("belongs to the node"));
        }
    }

    #[test]
    fn require_signed_fails_closed_without_a_keyring() {
        let f = Fixture::new("signed");
        let a = f.commit(&[], "a");
        let config = config("[verify]\nrequire_signed = true\nkeyring = \"/nonexistent/trusted.pgp\"");
        let update = Update { old: None, new: Some(a), refname: "refs/heads/main".into() };
        let error = check(&f.repo, &config, &f.dir, &update).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/trusted.pgp"), "{error}");
        // Signatures guard only the deploy branch (what `deploy --commit` runs is checked there).
        assert_eq!(f.check(&config, None, Some(a), "refs/heads/other"), Verdict::Accept);
    }

    #[test]
    fn quarantined_objects_are_seen() {
        let f = Fixture::new("quarantine");
        let a = f.commit(&[], "a");
        // The same commit (fixed author and date) and a child of it, written only to another
        // object store, as git leaves a push in quarantine.
        let elsewhere = Fixture::new("quarantine-objects");
        assert_eq!(elsewhere.commit(&[], "a"), a);
        let b = elsewhere.commit(&[a], "b");
        assert!(f.repo.find_commit(b).is_err());
        let pushed = crate::mech::repo::NodeRepo::open(&f.dir, "main", None)
            .and_then(|repo| repo.with_pushed(&elsewhere.dir.join("objects")))
            .unwrap();
        assert_eq!(
            check(
                &pushed.git,
                &config(""),
                &f.dir,
                &Update { old: Some(a), new: Some(b), refname: "refs/heads/main".into() }
            )
            .unwrap(),
            Verdict::Accept
        );
    }
}
