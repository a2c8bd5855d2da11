//! The daemon's blocking work, each piece run on tokio's blocking pool by the loop, which hears
//! its output and its end as events: a run (the same `dispatch::perform` that the CLI and the
//! hook call in-process, so a trigger runs the same either way), a pull cycle, a read of the tip.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use git2::Oid;
use troops_core::mech::control::Done;
use troops_core::mech::notify;
use troops_core::mech::probe::News as ProbeNews;
use troops_core::model::node::Node;
use troops_core::node::dispatch::{self, Work};
use troops_core::node::pull;
use troops_core::node::run::Outcome;

use super::events::{Event, Events, Pulled, RunEnd};

/// A recheck of what is deployed (`drift::recheck`); its probes' lines go to the log at debug
/// level, what drifted at warning level. A recheck that cannot be made is logged, and the next
/// one is due as the plan says.
pub fn recheck(node: &Node, stop: &AtomicBool) -> troops_core::node::drift::Rechecked {
    let mut lines = Vec::new();
    let rechecked = troops_core::node::drift::recheck(node, &mut lines, stop);
    for line in String::from_utf8_lossy(&lines).lines() {
        tracing::debug!(output = line, "recheck");
    }
    rechecked.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "recheck failed");
        troops_core::node::drift::Rechecked {
            period: troops_core::node::drift::period(node),
            redeploy: false,
        }
    })
}

/// Runs `work`, its output going to the loop as it comes. A run that follows the tip first tells
/// the loop which tip it read, so that a push of that tip can join it.
pub fn run(node: &Node, work: &Work, events: &Events, stop: &AtomicBool) -> RunEnd {
    if work.ask.follows_tip() {
        let _ = events.send(Event::RunTip(tip(node)));
    }
    let mut out = Output::new(events.clone(), Event::RunOutput);
    let (done, next_due, tell) = match dispatch::perform(node, work, &mut out, stop) {
        Ok(outcome) => {
            log(&outcome, troops_core::node::facts::next_due(node));
            let next_due = dispatch::next_due(node);
            let tell = outcome.records().filter(|r| notify::worth_telling(node, r)).map(|r| r.id).collect();
            (Done { exit: dispatch::conclude(&outcome, &mut out), error: None }, next_due, tell)
        }
        Err(e) => {
            tracing::error!(error = %e, "run failed to start");
            (Done { exit: e.exit(), error: Some(e.to_string()) }, dispatch::next_due(node), Vec::new())
        }
    };
    // What systemd's status line says, from the same read of the node as `troops status`.
    let summary = match troops_core::node::state::read(node) {
        Ok(now) => now.summary(),
        Err(e) => format!("cannot read the node: {e}"),
    };
    RunEnd { done, next_due, summary, tell }
}

fn log(outcome: &Outcome, next_due: Option<SystemTime>) {
    if let Outcome::Ran { run, rollback } = outcome {
        for record in std::iter::once(run).chain(rollback.as_deref()) {
            for step in &record.steps {
                tracing::info!(run = record.id, step = %step.name, status = %step.status, exit_code = %step.exit_code.map_or("none".into(), |c| c.to_string()), ms = step.duration_ms, "step");
            }
            tracing::info!(run = record.id, commit = %record.commit, trigger = %record.trigger, status = %record.status, "run finished");
        }
        if let Some(at) = next_due {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tracing::warn!(commit = %run.commit, retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())), "the commit failed; will retry");
        }
    }
    if let Some(message) = outcome.nothing_ran() {
        tracing::info!(reason = %message.trim_start_matches("troops: "), "nothing runs");
    }
}

/// One pull cycle (fetch every remote, fast-forward), its output going to the loop.
pub fn pull(node: &Node, events: &Events) -> Result<Pulled, Done> {
    let mut out = Output::new(events.clone(), Event::FetchOutput);
    let cycle = pull::cycle(node, &mut out).map_err(|e| {
        tracing::error!(error = %e, "pull failed");
        Done { exit: e.exit(), error: Some(e.to_string()) }
    })?;
    for f in &cycle.fetched {
        match &f.tip {
            Ok(tip) => {
                tracing::info!(remote = %f.remote, tip = %tip.map_or("none".into(), |t| t.to_string()), downloaded = f.downloaded, ms = f.duration.as_millis() as u64, "fetched")
            }
            Err(e) => tracing::warn!(remote = %f.remote, url = %f.url, error = %e, "fetch failed"),
        }
        match &f.probe_news {
            Some(news @ ProbeNews::Lags { .. }) => tracing::warn!(remote = %f.remote, url = %f.url, "{news}"),
            Some(news) => tracing::info!(remote = %f.remote, url = %f.url, "{news}"),
            None => {}
        }
    }
    for refused in &cycle.decision.refused {
        tracing::warn!(remote = %refused.remote, commit = %refused.tip, reason = ?refused.refusal, "remote tip refused");
    }
    if !cycle.decision.conflict.is_empty() {
        tracing::warn!(remotes = %cycle.decision.conflict.join(","), "remotes forked; nothing moves");
    }
    if let Some(moved) = cycle.moved {
        tracing::info!(from = %moved.from.map_or("none".into(), |f| f.to_string()), to = %moved.to, "fast-forwarded");
    }
    Ok(Pulled { tip: tip(node), no_remote: cycle.all_failed(), fleet: cycle.fleet })
}

/// The node's branch tip, if it can be read.
pub fn tip(node: &Node) -> Option<Oid> {
    node.repo().and_then(|repo| repo.tip()).ok().flatten()
}

/// A job's output, sent to the loop in whole UTF-8 sequences as `event`s.
struct Output {
    events: Events,
    event: fn(String) -> Event,
    pending: Vec<u8>,
}

impl Output {
    fn new(events: Events, event: fn(String) -> Event) -> Output {
        Output { events, event, pending: Vec::new() }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        // Hold back the tail of a UTF-8 sequence split between two writes.
        let whole = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let chunk: Vec<u8> = self.pending.drain(..whole).collect();
        if !chunk.is_empty() {
            let _ = self.events.send((self.event)(String::from_utf8_lossy(&chunk).into_owned()));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
