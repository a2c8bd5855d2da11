//! What this node should run now: one pure function of what is on disk (the tip, the deployed
//! commit, quarantined commits, the newest runs, the fleet's verdict on the tip) and the clock,
//! obeyed by every trigger (the hook,
//! the daemon's timer, retry and start, `troops pull` from cron, `troops deploy`), so that a
//! restarted daemon, a cron pull and a push all agree on backoff and quarantine.

use std::time::{Duration, SystemTime};

use git2::Oid;

use crate::model::config::Retry;
use crate::model::records::{RunStatus, Trigger};

/// Why someone asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The daemon's timer, a fetch, its start or retry timer, or `troops pull`: run what is due.
    Tick,
    /// A push moved the branch: as `Tick`, but the run is the push's.
    Push,
    /// A person's `troops deploy` (of `commit`, else the tip): runs whatever the state, even a
    /// quarantined or deployed commit.
    Person { commit: Option<Oid> },
}

/// One finished or unfinished run, as far as deciding needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastRun {
    pub id: u64,
    pub commit: Option<Oid>,
    pub status: RunStatus,
    pub trigger: Trigger,
    pub finished_at: Option<SystemTime>,
    /// Its commit is quarantined.
    pub quarantined: bool,
    pub rolled_back: bool,
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
    /// The tip was last moved by a pull (a push-triggered run of it is held like a pull's).
    pub tip_pulled: bool,
}

/// The rollout holds the tip back: this node's wave, and why (`fleet::waves::gate`).
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNow {
    pub commit: Oid,
    pub trigger: Trigger,
    /// For a rollback: the run whose failure it undoes, and its commit.
    pub undoes: Option<Failed>,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// The failed run, when it is the newest (a rollback retried later undoes a commit).
    pub run: Option<u64>,
    pub commit: Oid,
}

pub fn decide(cause: Cause, facts: &Facts, now: SystemTime, retry: &Retry) -> Decision {
    let newest = facts.recent.first();
    if let Cause::Person { commit } = cause {
        return match commit.or(facts.tip) {
            Some(commit) => run(commit, Trigger::Manual, None, "asked for by a person"),
            None => Decision::Idle { why: "the branch has no commits yet".into() },
        };
    }
    let Some(tip) = facts.tip else {
        return Decision::Idle { why: "the branch has no commits yet".into() };
    };
    if let Some(newest) = newest.filter(|r| r.status.unfinished()) {
        return Decision::Idle { why: format!("run {} is under way", newest.id) };
    }
    // A commit that failed with `on_failure = "rollback"` is quarantined; until the last good
    // commit ran again, that is what runs.
    if let (Some(newest), Some(deployed)) = (newest, facts.deployed) {
        let undone = newest.status == RunStatus::Failed && newest.quarantined && !newest.rolled_back;
        if undone && newest.commit != Some(deployed) {
            let failed = newest.commit.map(|commit| Failed { run: Some(newest.id), commit });
            let why = format!("run {} failed and its commit is quarantined", newest.id);
            return run(deployed, Trigger::Rollback, failed, &why);
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
        .take_while(|r| {
            r.commit == Some(target) && matches!(r.status, RunStatus::Failed | RunStatus::RolledBack)
        })
        .collect();
    if Some(target) == facts.deployed {
        // Deployed: nothing to do, unless going back to it did not succeed (failed: it is retried
        // after backoff; interrupted: at once).
        let rollback_unfinished = newest.is_some_and(|r| {
            r.commit == Some(target) && r.trigger == Trigger::Rollback && r.status != RunStatus::Succeeded
        });
        if !rollback_unfinished {
            return Decision::Idle {
                why: match &facts.tip_quarantined {
                    Some(reason) => format!(
                        "the tip {} is quarantined ({reason}); {} stays deployed",
                        short(tip),
                        short(target)
                    ),
                    None => match newest
                        .filter(|r| r.commit == Some(target) && r.status == RunStatus::Succeeded)
                    {
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
    let trigger = match (cause, target == tip) {
        (_, false) => Trigger::Rollback,
        (Cause::Push, true) => Trigger::Push,
        _ => Trigger::Pull,
    };
    // A pulled tip waits for the earlier waves of the rollout; a person's push does not.
    let pulled = cause == Cause::Tick || (cause == Cause::Push && facts.tip_pulled);
    if let (true, true, Some(hold)) = (target == tip, pulled, &facts.rollout) {
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

fn run(commit: Oid, trigger: Trigger, undoes: Option<Failed>, why: &str) -> Decision {
    Decision::Run(RunNow { commit, trigger, undoes, why: why.to_owned() })
}

fn short(commit: Oid) -> String {
    commit.to_string()[..12].to_owned()
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
            commit: Some(oid(commit)),
            status,
            trigger,
            finished_at: (!status.unfinished()).then(|| at(0)),
            quarantined,
            rolled_back: false,
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
            tip_pulled: false,
        }
    }

    /// `facts`, with the rollout holding the tip back; `pulled`: a pull moved the tip.
    fn held(facts: Facts, pulled: bool) -> Facts {
        let hold = RolloutHold {
            wave: "wave 2 of 2 (rest)".into(),
            why: "waiting".into(),
            until: None,
            halted: false,
        };
        Facts { rollout: Some(hold), tip_pulled: pulled, ..facts }
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
        }
    }

    #[test]
    fn every_trigger_and_state() {
        use RunStatus::*;
        use Trigger::{Manual, Pull, Push as PushT, Rollback as RollbackT};
        let tick = Cause::Tick;
        let push = Cause::Push;
        let person = Cause::Person { commit: None };
        let person_a = Cause::Person { commit: Some(oid(A)) };
        #[rustfmt::skip]
        let table: Vec<(&str, Cause, Facts, u64, &str)> = vec![
            ("empty branch", tick, facts(None, None, false, vec![]), 0, "idle"),
            ("empty branch, person", person, facts(None, None, false, vec![]), 0, "idle"),
            ("steady", tick, facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "idle"),
            ("steady, push", push, facts(Some(A), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "idle"),
            ("steady, person redeploys", person, facts(Some(A), Some(A), false, vec![]), 0, "run a manual"),
            ("person runs a quarantined commit", person_a, facts(Some(B), Some(B), true, vec![]), 0, "run a manual"),
            ("first deploy", tick, facts(Some(A), None, false, vec![]), 0, "run a pull"),
            ("new tip by pull", tick, facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run b pull"),
            ("new tip by push", push, facts(Some(B), Some(A), false, vec![past(1, A, Succeeded, Pull, false)]), 0, "run b push"),
            ("run under way", tick, facts(Some(B), Some(A), false, vec![past(2, B, Running, Pull, false)]), 0, "idle"),
            ("checks under way", tick, facts(Some(B), Some(A), false, vec![past(2, B, Checking, Pull, false)]), 0, "idle"),
            ("interrupted: again at once", tick, facts(Some(B), Some(A), false, vec![past(2, B, Interrupted, Pull, false)]), 0, "run b pull"),
            ("failed once, in backoff", tick, facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 10, "wait 30s"),
            ("failed once, push of the same tip waits too", push, facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 10, "wait 30s"),
            ("failed once, backoff over", tick, facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), 30, "run b retry"),
            ("failed twice: longer backoff", tick, facts(Some(B), Some(A), false, vec![past(3, B, Failed, Trigger::Retry, false), past(2, B, Failed, Pull, false)]), 30, "wait 60s"),
            ("a newer tip starts over", tick, facts(Some(C), Some(A), false, vec![past(3, B, Failed, Pull, false)]), 0, "run c pull"),
            ("failed with rollback: roll back at once", tick, facts(Some(B), Some(A), true, vec![past(2, B, Failed, Pull, true)]), 0, "run a rollback undoing run 2"),
            ("failed with rollback, nothing to go back to", tick, facts(Some(B), None, true, vec![past(2, B, Failed, Pull, true)]), 0, "idle"),
            ("rolled back: the quarantined tip stays out", tick, facts(Some(B), Some(A), true, vec![past(3, A, Succeeded, RollbackT, false), past(2, B, RolledBack, Pull, true)]), 0, "idle"),
            ("rolled back: a push of it neither", push, facts(Some(B), Some(A), true, vec![past(3, A, Succeeded, RollbackT, false)]), 9999, "idle"),
            ("rolled back: a newer tip runs", tick, facts(Some(C), Some(A), false, vec![past(3, A, Succeeded, RollbackT, false)]), 0, "run c pull"),
            ("rollback failed: retried with backoff", tick, facts(Some(B), Some(A), true, vec![past(3, A, Failed, RollbackT, false)]), 10, "wait 30s"),
            ("rollback failed: backoff over", tick, facts(Some(B), Some(A), true, vec![past(3, A, Failed, RollbackT, false)]), 31, "run a rollback"),
            ("rollback interrupted: again at once", tick, facts(Some(B), Some(A), true, vec![past(3, A, Interrupted, RollbackT, false)]), 0, "run a rollback"),
            ("a person's failed commit is rolled back", tick, facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)]), 0, "run a rollback undoing run 2"),
            ("a person's failed redeploy of the deployed commit", tick, facts(Some(A), Some(A), false, vec![past(2, A, Failed, Manual, false)]), 0, "idle"),
            ("the deployed commit is never rolled back to itself", tick, facts(Some(A), Some(A), false, vec![past(2, A, Failed, PushT, true)]), 0, "idle"),
            ("person, tip quarantined", person, facts(Some(B), Some(A), true, vec![]), 0, "run b manual"),
            ("the rollout holds a pulled tip", tick, held(facts(Some(B), Some(A), false, vec![]), false), 0, "hold"),
            ("the rollout holds a retry too", tick, held(facts(Some(B), Some(A), false, vec![past(2, B, Failed, Pull, false)]), false), 60, "hold"),
            ("a push is a person's: not held", push, held(facts(Some(B), Some(A), false, vec![]), false), 0, "run b push"),
            ("the watcher's push of a pulled tip is held", push, held(facts(Some(B), Some(A), false, vec![]), true), 0, "hold"),
            ("a person's deploy is not held", person, held(facts(Some(B), Some(A), false, vec![]), true), 0, "run b manual"),
            ("a rollback is not held", tick, held(facts(Some(A), Some(A), false, vec![past(2, C, Failed, Manual, true)]), true), 0, "run a rollback undoing run 2"),
        ];
        let mut wrong = Vec::new();
        for (name, cause, facts, now, want) in table {
            let got = verdict(&decide(cause, &facts, at(now), &RETRY));
            if got != want {
                wrong.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn waits_and_idles_say_why() {
        let f = facts(Some(B), Some(A), false, vec![past(7, B, RunStatus::Failed, Trigger::Pull, false)]);
        let Decision::Wait { why, .. } = decide(Cause::Tick, &f, at(10), &RETRY) else { panic!() };
        assert_eq!(why, "0b0b0b0b0b0b failed once (run 7); it is retried in 20s");
        let f = facts(Some(B), Some(A), true, vec![]);
        let Decision::Idle { why } = decide(Cause::Tick, &f, at(0), &RETRY) else { panic!() };
        assert_eq!(
            why,
            "the tip 0b0b0b0b0b0b is quarantined (check `web` failed); 0a0a0a0a0a0a stays deployed"
        );
    }
}
