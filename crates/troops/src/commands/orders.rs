//! `troops freeze`, `troops unfreeze` and `troops approve`: operators' signed orders to the fleet,
//! made in a clone of the deploy repo and pushed to its remotes (`troops_operator::orders`);
//! what nodes make of them is `node::orders`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use troops_core::model::names::short;
use troops_core::model::orders::{approval_ref, Order, FREEZE_REF};
use troops_core::model::shown::escape;
use troops_core::model::time::Timestamp;
use troops_core::Error;
use troops_operator::orders;

use crate::cli::{ApproveArgs, FreezeArgs, UnfreezeArgs};
use crate::commands::pause;

pub fn freeze(args: FreezeArgs) -> Result<ExitCode> {
    let dir = clone()?;
    let now = SystemTime::now();
    let until = pause::until(&args.until, now)?;
    let reason = pause::reason(args.reason)?;
    let order = Order::Freeze { until, reason, by: orders::who(&dir), at: Timestamp::from(now) };
    publish_freeze(dir, &order, args.remote, &format!("froze the fleet until {until}"))
}

pub fn unfreeze(args: UnfreezeArgs) -> Result<ExitCode> {
    let dir = clone()?;
    let reason = args.reason.map(pause::reason).transpose()?;
    let order = Order::Lift { reason, by: orders::who(&dir), at: Timestamp::now() };
    publish_freeze(dir, &order, args.remote, "lifted the fleet's freeze")
}

pub fn approve(args: ApproveArgs) -> Result<ExitCode> {
    let dir = clone()?;
    let repo = git2::Repository::open(&dir)?;
    let commit = repo
        .revparse_single(&args.rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| Error::Input(format!("{:?} is no commit of this clone: {}", args.rev, e.message())))?
        .id();
    let waves = troops_core::mech::repo::plan_text(&repo, commit)?
        .and_then(|text| {
            troops_core::model::plan::Plan::parse(std::path::Path::new("troops.toml"), &text, None).ok()
        })
        .and_then(|plan| plan.rollout)
        .map(|r| r.waves.into_iter().map(|w| w.name).collect::<Vec<_>>())
        .unwrap_or_default();
    if !waves.contains(&args.wave) {
        return Err(Error::Input(format!(
            "the plan at {} has no wave {:?} (its waves: {})",
            short(commit),
            args.wave,
            if waves.is_empty() { "none".into() } else { waves.join(", ") }
        ))
        .into());
    }
    let order = Order::Approve {
        commit: commit.to_string(),
        wave: args.wave.clone(),
        by: orders::who(&dir),
        at: Timestamp::now(),
    };
    let signed = orders::sign(&dir, &order, None).map_err(Error::Env)?;
    let key = orders::signing_key(&dir, &signed).map_err(Error::Env)?;
    let reference = approval_ref(&commit.to_string(), &args.wave, &key);
    let said = format!("approved {} for wave {}", short(commit), args.wave);
    push(&dir, &signed, &reference, args.remote, &said)
}

/// Signs a freeze or lift on top of the fleet's freeze chain as the first remote has it, and
/// pushes it to the remotes.
fn publish_freeze(dir: PathBuf, order: &Order, remotes: Vec<String>, said: &str) -> Result<ExitCode> {
    let remotes = chosen(&dir, remotes)?;
    let parent = orders::fetch_freeze(&dir, &remotes[0]);
    let signed = orders::sign(&dir, order, parent.as_deref()).map_err(Error::Env)?;
    orders::keep(&dir, FREEZE_REF, &signed).map_err(Error::Env)?;
    push(&dir, &signed, FREEZE_REF, remotes, said)
}

/// Pushes `commit` to `reference` on the remotes; exit 1 if any push failed.
fn push(
    dir: &std::path::Path,
    commit: &str,
    reference: &str,
    remotes: Vec<String>,
    said: &str,
) -> Result<ExitCode> {
    let remotes = chosen(dir, remotes)?;
    let pushed = orders::push(dir, commit, reference, &remotes);
    let mut out = std::io::stdout();
    let good: Vec<&str> = pushed.iter().filter(|p| p.result.is_ok()).map(|p| p.remote.as_str()).collect();
    writeln!(
        out,
        "troops: {said} ({reference} = {}, signed); pushed to {}",
        short_id(commit),
        if good.is_empty() { "no remote".into() } else { good.join(", ") }
    )?;
    for failed in pushed.iter().filter(|p| p.result.is_err()) {
        let why = failed.result.as_ref().err().map_or("", String::as_str);
        writeln!(out, "troops: remote {}: the push failed: {}", failed.remote, escape(why))?;
    }
    Ok(if pushed.iter().all(|p| p.result.is_ok()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The remotes named, or all of the clone's; none is bad input.
fn chosen(dir: &std::path::Path, named: Vec<String>) -> Result<Vec<String>> {
    let remotes = if named.is_empty() { orders::remotes(dir).map_err(Error::Env)? } else { named };
    if remotes.is_empty() {
        return Err(Error::Input(
            "this clone has no remotes to push the order to; add one or name it with --remote".into(),
        )
        .into());
    }
    Ok(remotes)
}

fn short_id(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// The work tree of the clone of the deploy repo the person is in.
fn clone() -> Result<PathBuf> {
    let repo = git2::Repository::discover(".")
        .map_err(|e| Error::Input(format!("run this in a clone of the deploy repo: {}", e.message())))?;
    Ok(repo.workdir().unwrap_or(repo.path()).to_owned())
}
