//! `troops status`: what this node follows, what it has deployed, what it is doing.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use git2::Oid;
use serde::Serialize;
use troops_core::mech::control::Daemon;
use troops_core::mech::remotes::RemoteState;
use troops_core::mech::runs::{Other, Unreadable};
use troops_core::mech::verify::LastRefusal;
use troops_core::model::names::short;
use troops_core::model::node::Node;
use troops_core::model::records::{RunRecord, RunStatus, Trigger};
use troops_core::model::shown::escape;
use troops_core::model::status::{Diverged, State, StatusDoc};
use troops_core::policy::schedule::Decision;

/// The layout of `troops status --json`; a reader tolerates fields it does not know.
const SCHEMA: u32 = 1;

/// `troops status --json`: the node as it is (`node::state`), what its daemon says, and its
/// signature policy.
#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    host: &'a str,
    roles: &'a [String],
    plan_error: Option<&'a str>,
    branch: &'a str,
    tip: Option<String>,
    deployed: Option<String>,
    deployed_ref: Option<String>,
    remotes: Vec<RemoteReport<'a>>,
    daemon: serde_json::Value,
    running: Option<&'a RunRecord>,
    last_run: Option<&'a RunRecord>,
    next: Next<'a>,
    quarantined: Vec<QuarantineReport<'a>>,
    unreadable_runs: &'a [Unreadable],
    others_runs: &'a [Other],
    wave: Option<String>,
    state: State,
    since: Option<&'a str>,
    diverged: Option<&'a Diverged>,
    /// What the deployed commit's `[[watch]]`es say now, when it has some for this host.
    watching: Option<&'a str>,
    fleet: StatusDoc,
    verify: VerifyReport<'a>,
}

#[derive(Serialize)]
struct RemoteReport<'a> {
    name: &'a str,
    url: &'a str,
    last_fetch: Option<&'a RemoteState>,
}

/// What the node runs next on its own.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Next<'a> {
    Run { commit: String, trigger: Trigger, why: &'a str },
    Wait { until: String, why: &'a str },
    Idle { why: &'a str },
    Hold { why: &'a str, until: Option<String> },
}

#[derive(Serialize)]
struct QuarantineReport<'a> {
    commit: String,
    reason: &'a str,
    at: Option<&'a str>,
}

#[derive(Serialize)]
struct VerifyReport<'a> {
    require_signed: bool,
    scope: &'static str,
    keyring: &'a std::path::Path,
    allowed_signers: Option<&'a std::path::Path>,
    keyring_error: Option<String>,
    last_refusal: Option<LastRefusal>,
}

pub fn run(node: &Node, json: bool) -> Result<ExitCode> {
    let now = troops_core::node::state::read(node)?;
    // What the deployed commit's `[[watch]]`es see: read here alone, not by every reading of the node.
    let watching = troops_core::node::fleet::describe(node);
    for skipped in &now.unreadable {
        eprintln!("troops: warning: {skipped}");
    }
    let verify = &node.config.verify;
    let scope = match verify.scope {
        troops_core::model::config::Scope::Tip => "tip",
        troops_core::model::config::Scope::All => "all",
    };
    // Loaded only to tell whether it works: a broken keyring or allowed signers stops every update.
    let policy = verify
        .require_signed
        .then(|| troops_core::mech::verify::TrustPolicy::load(verify, &node.seen_path()));
    let keyring_error = policy.as_ref().and_then(|p| p.as_ref().err().map(|e| e.to_string()));
    let lists = match policy.as_ref().and_then(|p| p.as_ref().ok()) {
        Some(p) => {
            let keyring = p.keyring().map(|k| format!("keyring {}", k.path().display()));
            let signers = p.allowed_signers().map(|s| format!("allowed signers {}", s.path().display()));
            keyring.into_iter().chain(signers).collect::<Vec<_>>().join(", ")
        }
        None => String::new(),
    };
    let last_refusal = troops_core::mech::verify::last_refusal(&node.refused_path())?;
    let daemon = troops_core::mech::control::daemon_status(&node.socket_path());
    let id = |c: Option<Oid>| c.map(|c| c.to_string());
    let commit = |c: Option<Oid>| c.map_or("none".to_owned(), |c| short(c).to_owned());

    if json {
        let report = Report {
            schema: SCHEMA,
            host: &now.host,
            roles: &now.roles,
            plan_error: now.plan_error.as_deref(),
            branch: &now.branch,
            tip: id(now.tip),
            deployed: id(now.deployed),
            deployed_ref: id(now.deployed_ref),
            remotes: now
                .remotes
                .iter()
                .map(|r| RemoteReport { name: &r.name, url: &r.url, last_fetch: r.last_fetch.as_ref() })
                .collect(),
            daemon: match &daemon {
                Daemon::Absent => serde_json::Value::Null,
                Daemon::Serving(d) => serde_json::to_value(d)?,
                Daemon::Refused(e) => serde_json::json!({ "error": e }),
                Daemon::NotServing(e) => serde_json::json!({ "error": e, "serving": false }),
            },
            running: now.running.as_ref(),
            last_run: now.last.as_ref(),
            next: match &now.next {
                Decision::Run(r) => {
                    Next::Run { commit: r.commit.to_string(), trigger: r.trigger, why: &r.why }
                }
                Decision::Wait { until, why } => {
                    Next::Wait { until: humantime::format_rfc3339_seconds(*until).to_string(), why }
                }
                Decision::Idle { why } | Decision::Refuse { why } => Next::Idle { why },
                Decision::Hold { why, until } => {
                    Next::Hold { why, until: until.map(|u| humantime::format_rfc3339_seconds(u).to_string()) }
                }
            },
            quarantined: now
                .quarantined
                .iter()
                .map(|q| QuarantineReport {
                    commit: q.commit.to_string(),
                    reason: &q.reason,
                    at: q.at.as_deref(),
                })
                .collect(),
            unreadable_runs: &now.unreadable,
            others_runs: &now.others,
            wave: now.wave.as_ref().map(ToString::to_string),
            state: now.state,
            since: now.since.as_deref(),
            diverged: now.diverged.as_ref(),
            watching: watching.as_deref(),
            fleet: now.status_doc(node),
            verify: VerifyReport {
                require_signed: verify.require_signed,
                scope,
                keyring: &verify.keyring,
                allowed_signers: verify.allowed_signers.as_deref(),
                keyring_error,
                last_refusal,
            },
        };
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout();
    writeln!(out, "host      {}", now.host)?;
    writeln!(out, "roles     {}", if now.roles.is_empty() { "none".into() } else { now.roles.join(", ") })?;
    if let Some(e) = &now.plan_error {
        writeln!(out, "plan      invalid at the tip: {e}")?;
    }
    writeln!(out, "branch    {} at {}", now.branch, commit(now.tip))?;
    let pending =
        if now.tip.is_some() && now.tip != now.deployed { " (the tip is not deployed)" } else { "" };
    writeln!(out, "deployed  {}{pending}", commit(now.deployed))?;
    if now.deployed_ref != now.deployed {
        writeln!(
            out,
            "          (refs/troops/deployed says {}: moved by another user's run or by hand; not gone by)",
            commit(now.deployed_ref)
        )?;
    }
    if let Some(wave) = &now.wave {
        writeln!(out, "wave      {wave}")?;
    }
    let since = now.since.as_deref().map_or(String::new(), |s| format!(" since {s}"));
    match &now.hold {
        Some(hold) => writeln!(out, "state     held{since}: {}", escape(&hold.why))?,
        None => writeln!(out, "state     {}{since}", now.state)?,
    }
    if let Some(paused) = &now.paused {
        writeln!(out, "paused    {}", escape(paused))?;
    }
    if let Some(frozen) = &now.frozen {
        writeln!(out, "frozen    {}", escape(frozen))?;
    }
    if let Some(approval) = &now.approval {
        writeln!(out, "approval  {}", escape(approval))?;
    }
    if let Some(slot) = &now.slot {
        writeln!(out, "slot      {}", escape(&slot.sentence()))?;
    }
    if let Some(reboot) = &now.reboot {
        writeln!(out, "reboot    {}", escape(reboot))?;
    }
    if let Some(refused) = &now.order_refused {
        writeln!(out, "refused   {}", escape(refused))?;
    }
    if let Some(drift) = &now.drift {
        let when = format!("the recheck at {} found", drift.checked_at);
        writeln!(out, "drift     {when}: {}", escape(&drift.found.join("; ")))?;
    }
    if let Some(watching) = &watching {
        writeln!(out, "watching  {}", escape(watching))?;
    }
    for (name, value) in &now.exports {
        writeln!(out, "export    {name} = {}", escape(value.trim_end_matches('\n')))?;
    }
    if let Some(diverged) = &now.diverged {
        writeln!(out, "diverged  {}", escape(&diverged.sentence(&now.branch)))?;
        writeln!(out, "          (README: \"When a node and its remotes fork\")")?;
    }
    for r in &now.remotes {
        let last = match &r.last_fetch {
            None => "never fetched".to_owned(),
            Some(s) => match (&s.error, &s.refused, &s.tip) {
                (Some(e), _, _) => format!("fetch failed at {}: {}", s.fetched_at, escape(e)),
                (None, Some(why), _) => format!("fetched at {}: {}", s.fetched_at, escape(why)),
                (None, None, tip) => format!(
                    "fetched at {}: {}",
                    s.fetched_at,
                    tip.as_deref().map_or("none".to_owned(), |t| short(t).to_owned())
                ),
            },
        };
        writeln!(out, "remote    {} {} ({last})", r.name, r.url)?;
    }
    match &daemon {
        Daemon::Absent => writeln!(out, "daemon    not running (each trigger runs the plan itself)")?,
        Daemon::Serving(d) => {
            // The daemon's own wake-up before its next pull: a failed tip's backoff ends, or a wave's
            // soak, or a reboot waiting for a slot looks again.
            let what = match &now.next {
                troops_core::policy::schedule::Decision::Wait { .. } => "the failed tip again",
                _ if now.slot.as_ref().is_some_and(|s| s.reboot && s.waiting.is_some()) => {
                    "the reboot looks for a slot again"
                }
                _ => "looks again",
            };
            let retry = d.retry_at.as_ref().map_or(String::new(), |at| format!("; {what} at {at}"));
            let next = d.next_pull_at.as_deref().unwrap_or("not scheduled");
            writeln!(out, "daemon    pid {} since {}; next pull at {next}{retry}", d.pid, d.started_at)?;
            if let Some(e) = &d.metrics_error {
                writeln!(out, "metrics   NOT SERVED: {e}")?;
            }
        }
        Daemon::Refused(e) => writeln!(out, "daemon    running, but it does not tell us how: {e}")?,
        Daemon::NotServing(e) => writeln!(
            out,
            "daemon    NOT SERVING: {e}; pushes and pulls sent to it hang or fail until it is restarted"
        )?,
    }
    match &now.running {
        Some(r) => writeln!(
            out,
            "running   run {} ({}) of {} since {}{}",
            r.id,
            r.trigger,
            short(r.commit),
            r.started_at,
            if r.status == RunStatus::Checking { ", checking health" } else { "" }
        )?,
        None => writeln!(out, "running   nothing")?,
    }
    match &now.last {
        Some(r) => writeln!(out, "last run  {}", last_run(r))?,
        None => writeln!(out, "last run  none")?,
    }
    if let Some(others) = others(&now.others) {
        writeln!(out, "others    {others}")?;
    }
    match &now.next {
        Decision::Run(r) => writeln!(out, "next      run {} ({}): {}", short(r.commit), r.trigger, r.why)?,
        Decision::Wait { why, .. } => writeln!(out, "next      waiting: {}", escape(why))?,
        Decision::Idle { why } | Decision::Refuse { why } => {
            writeln!(out, "next      nothing: {}", escape(why))?
        }
        Decision::Hold { why, .. } => writeln!(out, "next      held: {}", escape(why))?,
    }
    for q in &now.quarantined {
        writeln!(
            out,
            "bad       {} quarantined{}: {}",
            short(q.commit),
            q.at.as_deref().map_or(String::new(), |at| format!(" at {at}")),
            q.reason
        )?;
    }
    match (&policy, &keyring_error) {
        (None, _) => writeln!(out, "verify    off (unsigned commits are deployed)")?,
        (Some(_), Some(e)) => {
            writeln!(out, "verify    on (scope {scope}), but nothing can be verified: {e}")?
        }
        (Some(_), None) => writeln!(out, "verify    on (scope {scope}, {lists})")?,
    }
    if let Some(r) = &last_refusal {
        writeln!(out, "refused   {} from {} at {}: {}", short(&r.commit), r.source, r.at, r.reason)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What is said of the runs others recorded: "runs 5, 6 recorded by uid 4242, not gone by (troops
/// log ID shows them)".
pub fn others(others: &[troops_core::mech::runs::Other]) -> Option<String> {
    if others.is_empty() {
        return None;
    }
    let mut uids: Vec<u32> = others.iter().map(|o| o.uid).collect();
    uids.sort_unstable();
    uids.dedup();
    let ids: Vec<String> = others.iter().map(|o| o.id.to_string()).collect();
    let uids: Vec<String> = uids.iter().map(u32::to_string).collect();
    Some(format!(
        "run{} {} recorded by uid {}, not gone by (troops log ID shows them)",
        if ids.len() == 1 { "" } else { "s" },
        ids.join(", "),
        uids.join(", ")
    ))
}

/// The last run in one sentence: "run 3 (pull) of 2fcbae4df3f5 succeeded at ... after 4.2s; its
/// output: troops log 3", with why it failed before the output.
fn last_run(r: &RunRecord) -> String {
    let at = r.finished_at.map_or(String::new(), |at| format!(" at {at}"));
    let took =
        r.wall_time(SystemTime::now()).map_or(String::new(), |d| format!(" after {:.1}s", d.as_secs_f64()));
    let why = r.error.as_deref().map_or(String::new(), |e| format!(": {e}"));
    let fleet = match r.fleet_changes.is_empty() {
        true => String::new(),
        false => format!(" (watched exports: {})", r.fleet_changes.join("; ")),
    };
    format!(
        "run {} ({}) of {} {}{at}{took}{why}{fleet}; its output: troops log {}",
        r.id,
        r.trigger,
        short(r.commit),
        r.status.to_string().replace('_', " "),
        r.id
    )
}
