//! What this node should run now: one pure function of who asks (`Ask`, unchanged from the CLI,
//! the hook or the socket), what is on disk (the tip, the deployed commit, quarantined commits,
//! the newest runs, the fleet's verdict on the tip, what a person named) and the clock, obeyed by
//! every trigger (the hook, the daemon's timer, retry and start, `troops pull` from cron,
//! `troops deploy`, `troops rollback`), so that a restarted daemon, a cron pull and a push all
//! agree on backoff and quarantine, and a person's rollback is decided like any other run.

use std::time::{Duration, SystemTime};

use git2::Oid;

use crate::model::ask::Ask;
use crate::model::config::Retry;
use crate::model::names::short;
use crate::model::records::{RunStatus, Trigger};

/// One finished or unfinished run, as far as deciding needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastRun {
    pub id: u64,
    pub commit: Oid,
    pub status: RunStatus,
    pub trigger: Trigger,
    pub finished_at: Option<SystemTime>,
    /// Its commit is quarantined.
    pub quarantined: bool,
    pub rolled_back: bool,
    /// It is on record as under way, but its troops died (nobody holds the node lock): `status`
    /// is what the next run's recovery makes of it.
    pub abandoned: bool,
}

/// The node's state, as read from disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// The followed branch, for messages.
    pub branch: String,
    pub tip: Option<Oid>,
    pub deployed: Option<Oid>,
    /// Why the tip is quarantined, if it is.
    pub tip_quarantined: Option<String>,
    /// The newest runs, newest first: at least the newest, and then as long as they are runs of
    /// the same commit (how many times in a row it failed).
    pub recent: Vec<PastRun>,
    /// What the plan's `[rollout]` says of running the tip here, when it holds it back (read only
    /// when the tip may be due).
    pub rollout: Option<RolloutHold>,
    /// What a person named (`troops deploy`, `troops rollback`), resolved; `None` for the asks
    /// that follow the tip.
    pub asked: Option<Asked>,
    /// A person paused the node (`troops pause`): nothing automatic runs a commit.
    pub paused: Option<Held>,
    /// A believed freeze of the fleet stands (`troops freeze`; read only when the tip may be due).
    pub frozen: Option<Held>,
    /// The deploy windows of the tip's plan are closed now (read only when the tip may be due).
    pub window: Option<Held>,
    /// The tip's wave wants more trusted approvals of it (read only when the tip may be due).
    pub approval: Option<Held>,
    /// The watched exports differ from what the deployed run saw, and have settled (read only for
    /// `Ask::Fleet`).
    pub fleet: Option<FleetChanged>,
    /// With `[rollout] fleet_rollback` in the deployed commit's plan: the fleet's believed
    /// reports say, at quorum, that the deployed commit failed.
    pub fleet_failed: Option<FleetFailed>,
}

/// The fleet reports the deployed commit failed (`waves::fleet_failure`): it is quarantined and
/// the node goes back to `back_to`, the newest other commit that succeeded here and is not
/// quarantined (`None`: there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFailed {
    pub commit: Oid,
    /// "the fleet reports 1a2b3c4d5e6f failed: 1 of 1 canary nodes (web-1) at quorum 1".
    pub why: String,
    pub back_to: Option<Oid>,
}

/// The peers' exports this host watches changed (`policy::watch`), and have settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetChanged {
    /// "app-3 addr appeared (\"10.0.0.3:80\")", one a change.
    pub changes: Vec<String>,
}

/// One hold on what would run by itself, as deciding needs it: why ("paused by alice since T
/// until U: kernel upgrade", "outside its deploy windows (...); the next opens at T") and when it
/// ends by itself, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub why: String,
    pub until: Option<SystemTime>,
}

/// The commit a person's ask names, as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// `troops deploy`: the named commit, else the tip. `troops rollback`: the named commit, else
    /// the newest other commit that succeeded here and is not quarantined. `None`: there is none.
    pub commit: Option<Oid>,
    /// Why that commit is quarantined, if it is.
    pub quarantined: Option<String>,
}

/// The rollout holds the tip back: this node's wave, and why (`waves::gate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutHold {
    /// "wave 2 of 3 (early)".
    pub wave: String,
    pub why: String,
    /// When the earlier wave will have soaked, if enough of it is healthy already.
    pub until: Option<SystemTime>,
    /// A node reported the commit failed: only a newer commit goes on.
    pub halted: bool,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run(RunNow),
    /// Something is due later (a retry after backoff): a failure state.
    Wait {
        until: SystemTime,
        why: String,
    },
    /// Nothing to do, and nothing wrong with that.
    Idle {
        why: String,
    },
    /// The rollout keeps the tip from running yet (earlier waves are not healthy on it long
    /// enough, or a node reported it failed); `until`: when it may go, if that is known.
    Hold {
        why: String,
        until: Option<SystemTime>,
    },
    /// What a person asked for cannot be (a rollback with nothing to go back to, say): bad input.
    Refuse {
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNow {
    pub commit: Oid,
    pub trigger: Trigger,
    /// For a rollback: the run whose failure it undoes, and its commit.
    pub undoes: Option<Failed>,
    /// A rollback by a person or by the fleet quarantines the commit it leaves before it runs.
    pub quarantines: Option<Leaving>,
    pub why: String,
}

/// The commit a rollback leaves, and who decided it ("a person (troops rollback)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaving {
    pub commit: Oid,
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// The failed run, when it is the newest (a rollback retried later undoes a commit).
    pub run: Option<u64>,
    pub commit: Oid,
}

pub fn decide(ask: &Ask, facts: &Facts, now: SystemTime, retry: &Retry) -> Decision {
    match decide_unheld(ask, facts, now, retry) {
        Decision::Run(run) => match holding(&run, facts) {
            Some(held) => Decision::Hold {
                why: format!("{} is not run yet: {}", short(run.commit), held.why),
                until: held.until,
            },
            None => Decision::Run(run),
        },
        decision => decision,
    }
}

/// The first hold on `run`, if one holds it. None holds a person's push or deploy, nor a rollback
/// to the last good commit. A pause holds whatever runs a commit by itself (a pull, a retry, a
/// corrective run); a freeze, a window and a wave's approvals hold only a new commit that would
/// run by itself, not the deployed one again.
fn holding(run: &RunNow, facts: &Facts) -> Option<Held> {
    match run.trigger {
        Trigger::Pull | Trigger::Retry | Trigger::Drift | Trigger::Fleet => {
            holds_on(run.commit, facts).into_iter().next()
        }
        Trigger::Push | Trigger::Manual | Trigger::Rollback => None,
    }
}

/// Every hold that would keep `commit` from running by itself now, the pause first: what a
/// person's push or deploy of it says it runs in spite of.
pub fn holds_on(commit: Oid, facts: &Facts) -> Vec<Held> {
    let paused =
        facts.paused.as_ref().map(|p| Held { why: format!("the node is {}", p.why), until: p.until });
    let new = Some(commit) != facts.deployed;
    let others = [&facts.frozen, &facts.window, &facts.approval].into_iter().flatten().filter(|_| new);
    paused.into_iter().chain(others.cloned()).collect()
}

fn decide_unheld(ask: &Ask, facts: &Facts, now: SystemTime, retry: &Retry) -> Decision {
    let newest = facts.recent.first();
    let asked = facts.asked.as_ref().and_then(|a| a.commit);
    match ask {
        Ask::Deploy { .. } => {
            return match asked {
                Some(commit) => run(commit, Trigger::Manual, None, "asked for by a person"),
                None => Decision::Idle { why: "the branch has no commits yet".into() },
            }
        }
        Ask::Rollback { .. } => return persons_rollback(facts),
        // What a tick would run goes first; only a node with nothing else to do redeploys.
        Ask::Drift => {
            return match (decide(&Ask::Tick, facts, now, retry), facts.deployed) {
                (Decision::Idle { .. }, Some(deployed)) if newest.is_none_or(|r| !r.status.unfinished()) => {
                    run(deployed, Trigger::Drift, None, "a recheck found the host drifted from it")
                }
                (decision, _) => decision,
            }
        }
        Ask::Fleet => {
            return match (decide(&Ask::Tick, facts, now, retry), facts.deployed) {
                (Decision::Idle { .. }, Some(deployed)) if newest.is_none_or(|r| !r.status.unfinished()) => {
                    fleet_run(facts, deployed, now, retry)
                }
                (decision, _) => decision,
            }
        }
        Ask::Tick | Ask::Push => {}
    }
    let Some(tip) = facts.tip else {
        return Decision::Idle { why: "the branch has no commits yet".into() };
    };
    if let Some(newest) = newest.filter(|r| r.status.unfinished()) {
        return Decision::Idle { why: format!("run {} is under way", newest.id) };
    }
    // Its failed checks may quarantine its commit, which only the recovery under the lock does.
    if let Some(newest) = newest.filter(|r| r.abandoned && r.status != RunStatus::Interrupted) {
        return Decision::Idle {
            why: format!(
                "run {} was left checking by a troops that died; the next trigger fails its checks first",
                newest.id
            ),
        };
    }
    // The fleet says the deployed commit failed: it goes, as with a person's rollback (a person's
    // push runs what they pushed).
    let fleet_failed = facts.fleet_failed.as_ref().filter(|f| Some(f.commit) == facts.deployed);
    if let Some(failed) = fleet_failed.filter(|_| *ask == Ask::Tick) {
        let Some(back_to) = failed.back_to else {
            return Decision::Idle {
                why: format!("{}; no other commit succeeded here to go back to", failed.why),
            };
        };
        return Decision::Run(RunNow {
            commit: back_to,
            trigger: Trigger::Rollback,
            undoes: Some(Failed { run: None, commit: failed.commit }),
            quarantines: Some(Leaving {
                commit: failed.commit,
                by: format!("fleet_rollback ({})", failed.why),
            }),
            why: failed.why.clone(),
        });
    }
    // A commit that failed with `on_failure = "rollback"` is quarantined; until the last good
    // commit ran again, that is what runs.
    if let (Some(newest), Some(deployed)) = (newest, facts.deployed) {
        let undone = newest.status == RunStatus::Failed && newest.quarantined && !newest.rolled_back;
        if undone && newest.commit != deployed {
            let failed = Failed { run: Some(newest.id), commit: newest.commit };
            let why = format!("run {} failed and its commit is quarantined", newest.id);
            return run(deployed, Trigger::Rollback, Some(failed), &why);
        }
    }
    let target = match (&facts.tip_quarantined, facts.deployed) {
        (None, _) => tip,
        (Some(reason), None) => {
            return Decision::Idle {
                why: format!(
                    "the tip {} is quarantined ({reason}) and no commit was ever deployed to go back to",
                    short(tip)
                ),
            }
        }
        (Some(_), Some(deployed)) => deployed,
    };
    // How many times in a row the target failed, and when it last did.
    let failures: Vec<&PastRun> = facts
        .recent
        .iter()
        .take_while(|r| r.commit == target && matches!(r.status, RunStatus::Failed | RunStatus::RolledBack))
        .collect();
    if Some(target) == facts.deployed {
        // Deployed: nothing to do, unless going back to it did not succeed (failed: it is retried
        // after backoff; interrupted: at once).
        let rollback_unfinished = newest.is_some_and(|r| {
            r.commit == target && r.trigger == Trigger::Rollback && r.status != RunStatus::Succeeded
        });
        if !rollback_unfinished {
            return Decision::Idle {
                why: match &facts.tip_quarantined {
                    Some(reason) => format!(
                        "the tip {} is quarantined ({reason}); {} stays deployed",
                        short(tip),
                        short(target)
                    ),
                    None => match newest.filter(|r| r.commit == target && r.status == RunStatus::Succeeded) {
                        Some(run) => format!(
                            "{}, the tip of refs/heads/{}, is deployed already by run {} (troops log {})",
                            short(target),
                            facts.branch,
                            run.id,
                            run.id
                        ),
                        None => format!(
                            "{}, the tip of refs/heads/{}, is deployed already",
                            short(target),
                            facts.branch
                        ),
                    },
                },
            };
        }
    }
    let trigger = match (ask, target == tip) {
        (_, false) => Trigger::Rollback,
        (Ask::Push, true) => Trigger::Push,
        _ => Trigger::Pull,
    };
    // A pulled tip waits for the earlier waves of the rollout; a person's push does not.
    if let (true, Ask::Tick, Some(hold)) = (target == tip, ask, &facts.rollout) {
        return Decision::Hold {
            why: format!("{} is not run yet: {}", short(tip), hold.why),
            until: hold.until,
        };
    }
    // A rollback undoes the quarantined tip.
    let undoes = (trigger == Trigger::Rollback).then_some(Failed { run: None, commit: tip });
    let Some(last) = failures.first() else {
        return run(target, trigger, undoes, "it is not deployed");
    };
    let due = last.finished_at.unwrap_or(now) + retry.backoff(failures.len() as u32);
    let times =
        if failures.len() == 1 { "once".to_owned() } else { format!("{} times in a row", failures.len()) };
    if now < due {
        return Decision::Wait {
            until: due,
            why: format!(
                "{} failed {times} (run {}); it is retried in {}",
                short(target),
                last.id,
                humantime::format_duration(round(due.duration_since(now).unwrap_or_default()))
            ),
        };
    }
    let trigger = if trigger == Trigger::Rollback { trigger } else { Trigger::Retry };
    run(
        target,
        trigger,
        undoes,
        &format!("it failed {times}, last in run {}, and its backoff is over", last.id),
    )
}

/// The deployed commit again, for the watched exports that changed; after a failed run of it, once
/// its backoff is over. Its failure never quarantines it (the deployed commit never is).
fn fleet_run(facts: &Facts, deployed: Oid, now: SystemTime, retry: &Retry) -> Decision {
    let Some(changed) = &facts.fleet else {
        return Decision::Idle { why: "the watched exports are as the deployed run saw them".into() };
    };
    let failures: Vec<&PastRun> =
        facts.recent.iter().take_while(|r| r.commit == deployed && r.status == RunStatus::Failed).collect();
    if let Some(last) = failures.first() {
        let due = last.finished_at.unwrap_or(now) + retry.backoff(failures.len() as u32);
        if now < due {
            return Decision::Wait {
                until: due,
                why: format!(
                    "the run of {} for the watched exports failed (run {}); it is retried in {}",
                    short(deployed),
                    last.id,
                    humantime::format_duration(round(due.duration_since(now).unwrap_or_default()))
                ),
            };
        }
    }
    run(
        deployed,
        Trigger::Fleet,
        None,
        &format!("the watched exports changed: {}", changed.changes.join("; ")),
    )
}

/// A person's `troops rollback`: back from the deployed commit, which it quarantines, to the one
/// they named or the newest other good one; never to a quarantined commit (running one on purpose
/// is `troops deploy --commit`), and never held.
fn persons_rollback(facts: &Facts) -> Decision {
    let refuse = |why: String| Decision::Refuse { why };
    let Some(deployed) = facts.deployed else {
        return refuse("nothing is deployed on this node, so there is nothing to roll back".into());
    };
    let asked = facts.asked.as_ref();
    let Some(target) = asked.and_then(|a| a.commit) else {
        return refuse(format!(
            "no run before {} succeeded on this node (or its runs were pruned); name a commit with --to",
            short(deployed)
        ));
    };
    if target == deployed {
        return refuse(format!(
            "{} is the deployed commit; roll back to another one with --to",
            short(target)
        ));
    }
    if let Some(reason) = asked.and_then(|a| a.quarantined.as_deref()) {
        let target = short(target);
        return refuse(format!(
            "{target} is quarantined ({reason}), so it is no commit to roll back to; name a good one with \
             --to, or run {target} on purpose with `troops deploy --commit {target}`"
        ));
    }
    Decision::Run(RunNow {
        commit: target,
        trigger: Trigger::Rollback,
        undoes: Some(Failed { run: None, commit: deployed }),
        quarantines: Some(Leaving { commit: deployed, by: "a person (troops rollback)".into() }),
        why: "asked for by a person".into(),
    })
}

fn run(commit: Oid, trigger: Trigger, undoes: Option<Failed>, why: &str) -> Decision {
    Decision::Run(RunNow { commit, trigger, undoes, quarantines: None, why: why.to_owned() })
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    const A: u8 = 0xa;
    const B: u8 = 0xb;
    const C: u8 = 0xc;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn past(id: u64, commit: u8, status: RunStatus, trigger: Trigger, quarantined: bool) -> PastRun {
        PastRun {
            id,
            commit: oid(commit),
            status,
            trigger,
            finished_at: (!status.unfinished()).then(|| at(0)),
            quarantined,
            rolled_back: false,
            abandoned: false,
        }
    }

    fn facts(tip: Option<u8>, deployed: Option<u8>, bad_tip: bool, recent: Vec<PastRun>) -> Facts {
        Facts {
            branch: "main".into(),
            tip: tip.map(oid),
            deployed: deployed.map(oid),
            tip_quarantined: bad_tip.then(|| "check `web` failed".into()),
            recent,
            rollout: None,
            asked: None,
            paused: None,
            frozen: None,
            window: None,
            approval: None,
            fleet: None,
            fleet_failed: None,
        }
    }

    fn fleet_changed(facts: Facts) -> Facts {
        Facts { fleet: Some(FleetChanged { changes: vec!["app-3 addr appeared".into()] }), ..facts }
    }

    /// `facts`, with the rollout holding the tip back.
    fn held(facts: Facts) -> Facts {
        let hold = RolloutHold {
            wave: "wave 2 of 2 (rest)".into(),
            why: "waiting".into(),
            until: None,
            halted: false,
        };
        Facts { rollout: Some(hold), ..facts }
    }

    fn closed(facts: Facts) -> Facts {
        let closed = Held { why: "outside its deploy windows".into(), until: Some(at(3600)) };
        Facts { window: Some(closed), ..facts }
    }

    fn frozen(facts: Facts) -> Facts {
        let frozen =
            Held { why: "the fleet is frozen by alice until T: holidays".into(), until: Some(at(7200)) };
        Facts { frozen: Some(frozen), ..facts }
    }

    fn unapproved(facts: Facts) -> Facts {
        let waits =
            Held { why: "wave canary waits for 1 more trusted approval(s) of it".into(), until: None };
        Facts { approval: Some(waits), ..facts }
    }

    fn paused(facts: Facts) -> Facts {
        let paused = Held { why: "paused by alice since T until troops resume".into(), until: None };
        Facts { paused: Some(paused), ..facts }
    }

    /// `facts` with the fleet reporting `commit` failed; `back_to`: the newest other good one.
    fn fleet_failed(facts: Facts, commit: u8, back_to: Option<u8>) -> Facts {
        let why = "the fleet reports it failed".to_owned();
        Facts {
            fleet_failed: Some(FleetFailed { commit: oid(commit), why, back_to: back_to.map(oid) }),
            ..facts
        }
    }

    /// `facts` for a person's ask naming `commit` (quarantined when `bad`), as read from disk.
    fn naming(facts: Facts, commit: Option<u8>, bad: bool) -> Facts {
        let asked = Asked { commit: commit.map(oid), quarantined: bad.then(|| "run 2 failed".into()) };
        Facts { asked: Some(asked), ..facts }
    }

    const RETRY: Retry = Retry { initial: Duration::from_secs(30), max: Duration::from_secs(1800) };

    /// The decision as a short word, for the table.
    fn verdict(d: &Decision) -> String {
        match d {
            Decision::Run(r) => format!(
                "run {:x} {}{}",
                r.commit.as_bytes()[0],
                r.trigger,
                r.undoes.and_then(|f| f.run).map_or(String::new(), |run| format!(" undoing run {run}"))
            ),
            Decision::Wait { until, .. } => {
                format!("wait {}s", until.duration_since(at(0)).unwrap().as_secs())
            }
            Decision::Idle { .. } => "idle".into(),
            Decision::Hold { .. } => "hold".into(),
            Decision::Refuse { .. } => "refuse".into(),
        }
    }

    #[test]
    fn every_trigger_and_state() {
        use RunStatus::*;
        use Trigger::{Manual, Pull, Push as PushT, Rollback as RollbackT};
        let (tick, push) = (Ask::Tick, Ask::Push);
        let person = Ask::Deploy { rev: None, all_steps: false };
        let person_a = Ask::Deploy { rev: Some("a".into()), all_steps: false };
        let back = Ask::Rollback { to: None };
        #[rustfmt::skip]
        let table: Vec<(&str, Ask, Facts, u64, &str)> = vec![
            ("empty branch", tick.clone(), facts(None, None, false, vec![]), 0, "idle"),
            ("empty branch, person", person.clone(), naming(facts(None, None, false, vec![]), None, false), 0, "idle"),
            ("steady", tick.clone(), facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "idle"),
            ("steady, push", push.clone(), facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "idle"),
            ("steady, person redeploys", person.clone(), naming(facts(Some(A), Some(A), false, vec![]), Some(A), false), 0, "run a manual"),
            ("person runs a quarantined commit", person_a, naming(facts(Some(B), Some(B), true, vec![]), Some(A), true), 0, "run a manual"),
            ("first deploy", tick.clone(), facts(Some(A), None, false, vec![]), 0, "run a pull"),
            ("new tip by pull", tick.clone(), facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run b pull"),
            ("new tip by push", push.clone(), facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run b push"),
            ("run under way", tick.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Running, Pull, false)]), 0, "idle"),
            ("checks under way", tick.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Checking, Pull, false)]), 0, "idle"),
            ("interrupted: again at once", tick.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Interrupted, Pull, false)]), 0, "run b pull"),
            ("its troops died running it: again at once", tick.clone(), facts(Some(B), Some(A), false, vec![PastRun { abandoned: true, ..past(2, B, Interrupted, Pull, false) }]), 0, "run b pull"),
            ("its troops died checking it: the recovery decides", tick.clone(), facts(Some(B), Some(A), false, vec![PastRun { abandoned: true, ..past(2, B, Failed, Pull, false) }]), 0, "idle"),
            ("failed once, in backoff", tick.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 10, "wait 30s"),
            ("failed once, push of the same tip waits too", push.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 10, "wait 30s"),
            ("failed once, backoff over", tick.clone(), facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 30, "run b retry"),
            ("failed twice: longer backoff", tick.clone(), facts(Some(B), Some(A), false, vec![past(3, B, Failed, Trigger::Retry, false), past(2, B, Failed, Pull, false)]), 30, "wait 60s"),
            ("a newer tip starts over", tick.clone(), facts(Some(C), Some(A), false, vec![past(3, B, Failed, Pull, false)]), 0, "run c pull"),
            ("failed with rollback: roll back at once", tick.clone(), facts(Some(B), Some(A), true, vec![past(2, B, Failed, Pull, true)]), 0, "run a rollback undoing run 2"),
            ("failed with rollback, nothing to go back to", tick.clone(), facts(Some(B), None, true, vec![past(2, B, Failed, Pull, true)]), 0, "idle"),
            ("rolled back: the quarantined tip stays out", tick.clone(), facts(Some(B), Some(A), true, vec![past(3, A, Succeeded, RollbackT, false), past(2, B, RolledBack, Pull, true)]), 0, "idle"),
            ("rolled back: a push of it neither", push.clone(), facts(Some(B), Some(A), true, vec![past(3, A, Succeeded, RollbackT, false)]), 9999, "idle"),
            ("rolled back: a newer tip runs", tick.clone(), facts(Some(C), Some(A), false, vec![past(3, A, Succeeded, RollbackT, false)]), 0, "run c pull"),
            ("rollback failed: retried with backoff", tick.clone(), facts(Some(B), Some(A), true, vec![past(3, A, Failed, RollbackT, false)]), 10, "wait 30s"),
            ("rollback failed: backoff over", tick.clone(), facts(Some(B), Some(A), true, vec![past(3, A, Failed, RollbackT, false)]), 31, "run a rollback"),
            ("rollback interrupted: again at once", tick.clone(), facts(Some(B), Some(A), true, vec![past(3, A, Interrupted, RollbackT, false)]), 0, "run a rollback"),
            ("a person's failed commit is rolled back", tick.clone(), facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)]), 0, "run a rollback undoing run 2"),
            ("a person's failed redeploy of the deployed commit", tick.clone(), facts(Some(A), Some(A), false, vec![past(2, A, Failed, Manual, false)]), 0, "idle"),
            ("the deployed commit is never rolled back to itself", tick.clone(), facts(Some(A), Some(A), false, vec![past(2, A, Failed, PushT, true)]), 0, "idle"),
            ("person, tip quarantined", person.clone(), naming(facts(Some(B), Some(A), true, vec![]), Some(B), true), 0, "run b manual"),
            ("the rollout holds a pulled tip", tick.clone(), held(facts(Some(B), Some(A), false, vec![])), 0, "hold"),
            ("the rollout holds a retry too", tick.clone(), held(facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)])), 60, "hold"),
            ("a push is a person's: not held", push.clone(), held(facts(Some(B), Some(A), false, vec![])), 0, "run b push"),
            ("a person's deploy is not held", person.clone(), naming(held(facts(Some(B), Some(A), false, vec![])), Some(B), false), 0, "run b manual"),
            ("a rollback is not held", tick.clone(), held(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)])), 0, "run a rollback undoing run 2"),
            ("a person's rollback to the newest good commit", back.clone(), naming(facts(Some(B), Some(B), false, vec![]), Some(A), false), 0, "run a rollback"),
            ("a person's rollback with nothing deployed", back.clone(), naming(facts(Some(B), None, false, vec![]), None, false), 0, "refuse"),
            ("a person's rollback with nothing to go back to", back.clone(), naming(facts(Some(B), Some(B), false, vec![]), None, false), 0, "refuse"),
            ("a person's rollback to the deployed commit", back.clone(), naming(facts(Some(B), Some(B), false, vec![]), Some(B), false), 0, "refuse"),
            ("a person's rollback to a quarantined commit", back.clone(), naming(facts(Some(B), Some(B), false, vec![]), Some(A), true), 0, "refuse"),
            ("a person's rollback is not held", back.clone(), naming(held(facts(Some(B), Some(B), false, vec![])), Some(A), false), 0, "run a rollback"),
            ("a pause holds a pulled tip", tick.clone(), paused(facts(Some(B), Some(A), false, vec![])), 0, "hold"),
            ("a pause holds a retry", tick.clone(), paused(facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)])), 60, "hold"),
            ("a pause holds a corrective run", Ask::Drift, paused(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)])), 0, "hold"),
            ("unpaused, drift redeploys the deployed commit", Ask::Drift, facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run a drift"),
            ("drift, a newer tip runs instead", Ask::Drift, facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run b pull"),
            ("a pause holds no push", push.clone(), paused(facts(Some(B), Some(A), false, vec![])), 0, "run b push"),
            ("a pause holds no person's deploy", person.clone(), naming(paused(facts(Some(B), Some(A), false, vec![])), Some(B), false), 0, "run b manual"),
            ("a pause holds no rollback", tick.clone(), paused(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)])), 0, "run a rollback undoing run 2"),
            ("a closed window holds a pulled tip", tick.clone(), closed(facts(Some(B), Some(A), false, vec![])), 0, "hold"),
            ("a closed window holds the retry of a new commit", tick.clone(), closed(facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)])), 60, "hold"),
            ("a closed window holds no push", push.clone(), closed(facts(Some(B), Some(A), false, vec![])), 0, "run b push"),
            ("a closed window holds no rollback", tick.clone(), closed(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)])), 0, "run a rollback undoing run 2"),
            ("a closed window holds no retry of the deployed commit", tick.clone(), closed(facts(Some(A), Some(A), false, vec![past(3, A, Failed, RollbackT, false)])), 31, "run a retry"),
            ("a closed window holds no corrective run", Ask::Drift, closed(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)])), 0, "run a drift"),
            ("a freeze holds a pulled tip", tick.clone(), frozen(facts(Some(B), Some(A), false, vec![])), 0, "hold"),
            ("a freeze holds the retry of a new commit", tick.clone(), frozen(facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)])), 60, "hold"),
            ("a freeze holds no push", push.clone(), frozen(facts(Some(B), Some(A), false, vec![])), 0, "run b push"),
            ("a freeze holds no person's deploy", person.clone(), naming(frozen(facts(Some(B), Some(A), false, vec![])), Some(B), false), 0, "run b manual"),
            ("a freeze holds no rollback", tick.clone(), frozen(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)])), 0, "run a rollback undoing run 2"),
            ("a freeze holds no retry of the deployed commit", tick.clone(), frozen(facts(Some(A), Some(A), false, vec![past(3, A, Failed, RollbackT, false)])), 31, "run a retry"),
            ("a freeze holds no corrective run", Ask::Drift, frozen(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)])), 0, "run a drift"),
            ("a wave's approvals hold a pulled tip", tick.clone(), unapproved(facts(Some(B), Some(A), false, vec![])), 0, "hold"),
            ("a wave's approvals hold no push", push.clone(), unapproved(facts(Some(B), Some(A), false, vec![])), 0, "run b push"),
            ("a wave's approvals hold no rollback", tick.clone(), unapproved(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)])), 0, "run a rollback undoing run 2"),
            ("fleet: as seen, nothing", Ask::Fleet, facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "idle"),
            ("fleet: changed, the deployed commit again", Ask::Fleet, fleet_changed(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)])), 0, "run a fleet"),
            ("fleet: a newer tip runs instead", Ask::Fleet, fleet_changed(facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)])), 0, "run b pull"),
            ("fleet: nothing deployed, the tip runs", Ask::Fleet, fleet_changed(facts(Some(A), None, false, vec![])), 0, "run a pull"),
            ("fleet: a run under way", Ask::Fleet, fleet_changed(facts(Some(A), Some(A), false, vec![past(2, A, Running, Trigger::Fleet, false)])), 0, "idle"),
            ("fleet: failed once, in backoff", Ask::Fleet, fleet_changed(facts(Some(A), Some(A), false, vec![past(2, A, Failed, Trigger::Fleet, false)])), 10, "wait 30s"),
            ("fleet: failed twice, longer backoff", Ask::Fleet, fleet_changed(facts(Some(A), Some(A), false, vec![past(3, A, Failed, Trigger::Fleet, false), past(2, A, Failed, Trigger::Fleet, false)])), 30, "wait 60s"),
            ("fleet: backoff over", Ask::Fleet, fleet_changed(facts(Some(A), Some(A), false, vec![past(2, A, Failed, Trigger::Fleet, false)])), 30, "run a fleet"),
            ("fleet: its failure leaves the tick idle (no quarantine, no rollback)", tick.clone(), fleet_changed(facts(Some(A), Some(A), false, vec![past(2, A, Failed, Trigger::Fleet, false)])), 0, "idle"),
            ("fleet: a pause holds it", Ask::Fleet, paused(fleet_changed(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]))), 0, "hold"),
            ("fleet: a closed window does not (the deployed commit)", Ask::Fleet, closed(fleet_changed(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]))), 0, "run a fleet"),
            ("fleet: a freeze does not hold it (the deployed commit)", Ask::Fleet, frozen(fleet_changed(facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]))), 0, "run a fleet"),
            ("fleet: the rollback of a failed tip goes first", Ask::Fleet, fleet_changed(facts(Some(B), Some(A), true, vec![past(2, B, Failed, Pull, true)])), 0, "run a rollback undoing run 2"),
            ("the fleet reports the deployed commit failed: back", tick.clone(), fleet_failed(facts(Some(B), Some(B), false, vec![past(2, B, Succeeded, Pull, false)]), B, Some(A)), 0, "run a rollback"),
            ("...with nothing to go back to", tick.clone(), fleet_failed(facts(Some(B), Some(B), false, vec![past(1, B, Succeeded, Pull, false)]), B, None), 0, "idle"),
            ("...not held by a pause", tick.clone(), paused(fleet_failed(facts(Some(B), Some(B), false, vec![]), B, Some(A))), 0, "run a rollback"),
            ("...nor by a closed window", tick.clone(), closed(fleet_failed(facts(Some(B), Some(B), false, vec![]), B, Some(A))), 0, "run a rollback"),
            ("...nor by the rollout", tick.clone(), held(fleet_failed(facts(Some(C), Some(B), false, vec![]), B, Some(A))), 0, "run a rollback"),
            ("...but not while a run is under way", tick.clone(), fleet_failed(facts(Some(B), Some(A), false, vec![past(2, B, Running, Pull, false)]), B, Some(A)), 0, "idle"),
            ("a failure of a commit not deployed here rolls nothing back", tick.clone(), fleet_failed(facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), B, Some(A)), 0, "run b pull"),
            ("a push is a person's: its commit runs", push.clone(), fleet_failed(facts(Some(C), Some(B), false, vec![]), B, Some(A)), 0, "run c push"),
            ("nor does it wait for a backoff", back, naming(facts(Some(B), Some(B), false, vec![past(2, B, Failed, Pull, false)]), Some(A), false), 1, "run a rollback"),
        ];
        let mut wrong = Vec::new();
        for (name, ask, facts, now, want) in table {
            let got = verdict(&decide(&ask, &facts, at(now), &RETRY));
            if got != want {
                wrong.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn each_hold_says_why_and_until_when_and_a_pause_says_it_first() {
        let f = frozen(closed(facts(Some(B), Some(A), false, vec![])));
        let Decision::Hold { why, until } = decide(&Ask::Tick, &f, at(0), &RETRY) else { panic!() };
        assert_eq!(why, "0b0b0b0b0b0b is not run yet: the fleet is frozen by alice until T: holidays");
        assert_eq!(until, Some(at(7200)));
        let Decision::Hold { why, until } = decide(&Ask::Tick, &paused(f), at(0), &RETRY) else { panic!() };
        assert_eq!(
            why,
            "0b0b0b0b0b0b is not run yet: the node is paused by alice since T until troops resume"
        );
        assert_eq!(until, None);
    }

    #[test]
    fn waits_and_idles_say_why() {
        let f = facts(Some(B), Some(A), false, vec![past(7, B, RunStatus::Failed, Trigger::Pull, false)]);
        let Decision::Wait { why, .. } = decide(&Ask::Tick, &f, at(10), &RETRY) else { panic!() };
        assert_eq!(why, "0b0b0b0b0b0b failed once (run 7); it is retried in 20s");
        let f = facts(Some(B), Some(A), true, vec![]);
        let Decision::Idle { why } = decide(&Ask::Tick, &f, at(0), &RETRY) else { panic!() };
        assert_eq!(
            why,
            "the tip 0b0b0b0b0b0b is quarantined (check `web` failed); 0a0a0a0a0a0a stays deployed"
        );
    }
}
