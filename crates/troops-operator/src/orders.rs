//! Operators' orders made in a clone of the deploy repo (`troops freeze`, `troops unfreeze`,
//! `troops approve`): the order as a commit of its own, signed by the operator's own git signing
//! set-up (`git commit-tree -S`: OpenPGP or SSH, as `git tag -s` would), pushed to the remotes
//! the nodes fetch from. Nodes believe it only against their `[verify]` keys (`node::orders`).

use std::path::Path;
use std::process::{Output, Stdio};

use troops_core::model::orders::{Order, FILE, FREEZE_REF};

/// What pushing an order to one remote gave.
#[derive(Debug)]
pub struct Pushed {
    pub remote: String,
    pub result: Result<(), String>,
}

/// Makes `order` a signed commit in the clone at `dir` (its parent: what `parent` names there,
/// if anything, so a ref's history reads as one chain). The commit's id.
pub fn sign(dir: &Path, order: &Order, parent: Option<&str>) -> Result<String, String> {
    let blob = git(dir, &["hash-object", "-w", "--stdin"], Some(order.to_json().as_bytes()))?;
    let tree = git(dir, &["mktree"], Some(format!("100644 blob {blob}\t{FILE}\n").as_bytes()))?;
    let message = message(order);
    let mut args = vec!["commit-tree", "-S", &tree, "-m", &message];
    if let Some(parent) = parent {
        args.extend(["-p", parent]);
    }
    git(dir, &args, None).map_err(|e| {
        format!(
            "signing the order failed: {e}\n(set up git commit signing in this clone: user.signingkey, and \
             gpg.format=ssh for an SSH key; the nodes trust the keys in their [verify] keyring or allowed_signers)"
        )
    })
}

/// The key a signed commit in the clone at `dir` says made it, as an approval ref names it.
pub fn signing_key(dir: &Path, commit: &str) -> Result<String, String> {
    let repo = git2::Repository::open(dir).map_err(|e| e.message().to_owned())?;
    let oid = git2::Oid::from_str(commit).map_err(|e| e.message().to_owned())?;
    let odb = repo.odb().map_err(|e| e.message().to_owned())?;
    let raw = odb.read(oid).map_err(|e| e.message().to_owned())?;
    let (signature, _) = troops_core::mech::verify::split_commit(raw.data())
        .ok_or_else(|| format!("commit {commit} is not signed"))?;
    troops_core::mech::verify::claimed_key(&signature)
        .ok_or_else(|| format!("the signature of commit {commit} names no key"))
}

/// Pushes `commit` to `reference` on each of `remotes`, all at once; forced, since which order
/// stands is the nodes' to decide (the newest they can verify), not the ref's history.
pub fn push(dir: &Path, commit: &str, reference: &str, remotes: &[String]) -> Vec<Pushed> {
    std::thread::scope(|scope| {
        let pushes: Vec<_> = remotes
            .iter()
            .map(|remote| {
                let refspec = format!("+{commit}:{reference}");
                scope.spawn(move || Pushed {
                    remote: remote.clone(),
                    result: git(dir, &["push", "--quiet", "--end-of-options", remote, &refspec], None)
                        .map(drop),
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().expect("a push thread does not panic")).collect()
    })
}

/// The clone's remotes, for pushing to all of them when none is named.
pub fn remotes(dir: &Path) -> Result<Vec<String>, String> {
    let out = git(dir, &["remote"], None)?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Brings the fleet's freeze ref from `remote` into the clone's own `refs/troops/freeze`, so that
/// the next freeze or lift made here continues its chain (`git log refs/troops/freeze` is the
/// audit trail). `None` when the remote has none.
pub fn fetch_freeze(dir: &Path, remote: &str) -> Option<String> {
    let refspec = format!("+{FREEZE_REF}:{FREEZE_REF}");
    git(dir, &["fetch", "--quiet", "--no-tags", "--end-of-options", remote, &refspec], None).ok()?;
    git(dir, &["rev-parse", "--verify", "--quiet", FREEZE_REF], None).ok()
}

/// Who the order is by, for people: the clone's git identity.
pub fn who(dir: &Path) -> String {
    let name = git(dir, &["config", "user.name"], None).unwrap_or_default();
    let email = git(dir, &["config", "user.email"], None).unwrap_or_default();
    match (name.is_empty(), email.is_empty()) {
        (false, false) => format!("{name} <{email}>"),
        (false, true) => name,
        (true, false) => email,
        (true, true) => "someone".to_owned(),
    }
}

/// Points the clone's own `reference` at `commit`, as the pushes do the remotes'.
pub fn keep(dir: &Path, reference: &str, commit: &str) -> Result<(), String> {
    git(dir, &["update-ref", reference, commit], None).map(drop)
}

fn message(order: &Order) -> String {
    match order {
        Order::Freeze { until, reason, by, .. } => {
            format!("troops freeze until {until} by {by}\n\n{reason}\n")
        }
        Order::Lift { reason, by, .. } => {
            format!("troops unfreeze by {by}\n\n{}\n", reason.as_deref().unwrap_or_default())
        }
        Order::Approve { commit, wave, by, .. } => {
            format!("troops approve {commit} for wave {wave} by {by}\n")
        }
    }
}

/// Runs `git` for the person in their clone (their config, agent and keys: `env::as_caller`), its
/// stdout trimmed, or its stderr as the error.
fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
    let mut child = troops_core::mech::env::as_caller("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running git: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(input).map_err(|e| format!("writing to git {}: {e}", args[0]))?;
    }
    let Output { status, stdout, stderr } =
        child.wait_with_output().map_err(|e| format!("running git: {e}"))?;
    match status.success() {
        true => Ok(String::from_utf8_lossy(&stdout).trim().to_owned()),
        false => Err(format!("git {}: {}", args[0], String::from_utf8_lossy(&stderr).trim())),
    }
}
