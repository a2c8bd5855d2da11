//! `troops status`: what this node follows, what it has deployed, what it is doing.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use serde_json::json;
use troops_core::mech::control::Daemon;
use troops_core::mech::lock::NodeLock;
use troops_core::model::names::short;
use troops_core::model::node::Node;
use troops_core::model::records::RunRecord;
use troops_core::model::shown::escape;
use troops_core::policy::schedule::Decision;

pub fn run(node: &Node, json: bool) -> Result<ExitCode> {
    let repo = node.repo()?;
    let tip = repo.tip()?.map(|c| c.to_string());
    let deployed = repo.deployed()?.map(|c| c.to_string());
    // What git shows as deployed, which a member of the admin group can move (and their push run
    // in-process does): root goes by its ledger, and says when the two differ.
    let deployed_ref = repo.deployed_ref()?.map(|c| c.to_string());
    let host = node.config.hostname();
    let (roles, plan_error) = match node.roles(None) {
        Ok(roles) => (roles.into_iter().collect::<Vec<_>>(), None),
        Err(e) => (node.config.roles.clone(), Some(e.to_string())),
    };
    let states = troops_core::node::pull::remote_states(node)?;
    let remotes: Vec<_> = repo
        .git
        .remotes()?
        .iter()
        .flatten()
        .map(|name| {
            let url =
                repo.git.find_remote(name).ok().and_then(|r| r.url().map(str::to_owned)).unwrap_or_default();
            (name.to_owned(), url, states.get(name).cloned())
        })
        .collect();
    let history = node.runs().all()?;
    for skipped in &history.unreadable {
        eprintln!("troops: warning: {skipped}");
    }
    let others = others(&history.others);
    let mut newest_first = history.records.iter().rev().cloned();
    let (running, last) = match newest_first.next().map(|r| effective(node, r)) {
        Some(r) if r.status.unfinished() => (Some(r), newest_first.next()),
        last => (None, last),
    };

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
    let quarantined = repo.all_quarantined()?;
    // What the node does next on its own, and why: the same decision every trigger obeys.
    let next = troops_core::node::run::decision(node, &troops_core::model::ask::Ask::Tick)?;
    let next_json = match &next {
        Decision::Run(r) => {
            json!({"state": "run", "commit": r.commit.to_string(), "trigger": r.trigger, "why": r.why})
        }
        Decision::Wait { until, why } => {
            json!({"state": "wait", "until": humantime::format_rfc3339_seconds(*until).to_string(), "why": why})
        }
        Decision::Idle { why } | Decision::Refuse { why } => json!({"state": "idle", "why": why}),
        Decision::Hold { why, until } => {
            json!({"state": "hold", "why": why, "until": until.map(|u| humantime::format_rfc3339_seconds(u).to_string())})
        }
    };
    let daemon = troops_core::mech::control::daemon_status(&node.socket_path());
    let fleet = troops_core::node::state::status_doc(node)?;
    let wave = match repo.tip()? {
        Some(tip) => troops_core::node::rollout::place(node, &repo, tip),
        None => None,
    };

    if json {
        let status = json!({
            "host": host,
            "roles": roles,
            "plan_error": plan_error,
            "branch": node.config.branch,
            "tip": tip,
            "deployed": deployed,
            "deployed_ref": deployed_ref,
            "remotes": remotes.iter().map(|(name, url, last)| json!({"name": name, "url": url, "last_fetch": last})).collect::<Vec<_>>(),
            "daemon": match &daemon {
                Daemon::Absent => serde_json::Value::Null,
                Daemon::Serving(d) => json!(d),
                Daemon::Refused(e) => json!({ "error": e }),
                Daemon::NotServing(e) => json!({ "error": e, "serving": false }),
            },
            "running": running,
            "last_run": last,
            "next": next_json,
            "quarantined": quarantined.iter().map(|q| json!({"commit": q.commit.to_string(), "reason": q.reason, "at": q.at})).collect::<Vec<_>>(),
            "unreadable_runs": history.unreadable,
            "others_runs": history.others,
            "wave": wave.as_ref().map(ToString::to_string),
            "fleet": fleet,
            "verify": {
                "require_signed": verify.require_signed,
                "scope": scope,
                "keyring": verify.keyring,
                "allowed_signers": verify.allowed_signers,
                "keyring_error": keyring_error,
                "last_refusal": last_refusal,
            },
        });
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let commit = |c: &Option<String>| c.as_deref().map_or("none".to_owned(), |c| short(c).to_owned());
    writeln!(std::io::stdout(), "host      {host}")?;
    writeln!(
        std::io::stdout(),
        "roles     {}",
        if roles.is_empty() { "none".into() } else { roles.join(", ") }
    )?;
    if let Some(e) = plan_error {
        writeln!(std::io::stdout(), "plan      invalid at the tip: {e}")?;
    }
    writeln!(std::io::stdout(), "branch    {} at {}", node.config.branch, commit(&tip))?;
    let pending = if tip.is_some() && tip != deployed { " (the tip is not deployed)" } else { "" };
    writeln!(std::io::stdout(), "deployed  {}{pending}", commit(&deployed))?;
    if deployed_ref != deployed {
        writeln!(
            std::io::stdout(),
            "          (refs/troops/deployed says {}: moved by another user's run or by hand; not gone by)",
            commit(&deployed_ref)
        )?;
    }
    if let Some(wave) = &wave {
        writeln!(std::io::stdout(), "wave      {wave}")?;
    }
    let since = fleet.since.as_deref().map_or(String::new(), |s| format!(" since {s}"));
    match &fleet.hold {
        Some(hold) => writeln!(std::io::stdout(), "state     held{since}: {}", escape(&hold.why))?,
        None => writeln!(std::io::stdout(), "state     {}{since}", fleet.state)?,
    }
    for (name, url, last) in &remotes {
        let last = match last {
            None => "never fetched".to_owned(),
            Some(s) => match (&s.error, &s.refused, &s.tip) {
                (Some(e), _, _) => format!("fetch failed at {}: {}", s.fetched_at, escape(e)),
                (None, Some(r), _) => format!("fetched at {}: {}", s.fetched_at, escape(r)),
                (None, None, tip) => format!("fetched at {}: {}", s.fetched_at, commit(tip)),
            },
        };
        writeln!(std::io::stdout(), "remote    {name} {url} ({last})")?;
    }
    match &daemon {
        Daemon::Absent => {
            writeln!(std::io::stdout(), "daemon    not running (each trigger runs the plan itself)")?
        }
        Daemon::Serving(d) => {
            let retry =
                d.retry_at.as_ref().map_or(String::new(), |at| format!("; the failed tip again at {at}"));
            let next = d.next_pull_at.as_deref().unwrap_or("not scheduled");
            writeln!(
                std::io::stdout(),
                "daemon    pid {} since {}; next pull at {next}{retry}",
                d.pid,
                d.started_at
            )?;
            if let Some(e) = &d.metrics_error {
                writeln!(std::io::stdout(), "metrics   NOT SERVED: {e}")?;
            }
        }
        Daemon::Refused(e) => {
            writeln!(std::io::stdout(), "daemon    running, but it does not tell us how: {e}")?
        }
        Daemon::NotServing(e) => writeln!(
            std::io::stdout(),
            "daemon    NOT SERVING: {e}; pushes and pulls sent to it hang or fail until it is restarted"
        )?,
    }
    match &running {
        Some(r) => writeln!(
            std::io::stdout(),
            "running   run {} ({}) of {} since {}{}",
            r.id,
            r.trigger,
            short(&r.commit),
            r.started_at,
            if r.status == troops_core::model::records::RunStatus::Checking {
                ", checking health"
            } else {
                ""
            }
        )?,
        None => writeln!(std::io::stdout(), "running   nothing")?,
    }
    match &last {
        Some(r) => writeln!(std::io::stdout(), "last run  {}", last_run(r))?,
        None => writeln!(std::io::stdout(), "last run  none")?,
    }
    if let Some(others) = &others {
        writeln!(std::io::stdout(), "others    {others}")?;
    }
    match &next {
        Decision::Run(r) => writeln!(
            std::io::stdout(),
            "next      run {} ({}): {}",
            short(&r.commit.to_string()),
            r.trigger,
            r.why
        )?,
        Decision::Wait { why, .. } => writeln!(std::io::stdout(), "next      waiting: {}", escape(why))?,
        Decision::Idle { why } | Decision::Refuse { why } => {
            writeln!(std::io::stdout(), "next      nothing: {}", escape(why))?
        }
        Decision::Hold { why, .. } => writeln!(std::io::stdout(), "next      held: {}", escape(why))?,
    }
    for q in &quarantined {
        writeln!(
            std::io::stdout(),
            "bad       {} quarantined{}: {}",
            short(&q.commit.to_string()),
            q.at.as_deref().map_or(String::new(), |at| format!(" at {at}")),
            q.reason
        )?;
    }
    match (&policy, &keyring_error) {
        (None, _) => writeln!(std::io::stdout(), "verify    off (unsigned commits are deployed)")?,
        (Some(_), Some(e)) => {
            writeln!(std::io::stdout(), "verify    on (scope {scope}), but nothing can be verified: {e}")?
        }
        (Some(_), None) => writeln!(std::io::stdout(), "verify    on (scope {scope}, {lists})")?,
    }
    if let Some(r) = &last_refusal {
        writeln!(
            std::io::stdout(),
            "refused   {} from {} at {}: {}",
            short(&r.commit),
            r.source,
            r.at,
            r.reason
        )?;
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
    let at = r.finished_at.as_deref().map_or(String::new(), |at| format!(" at {at}"));
    let took =
        r.wall_time(SystemTime::now()).map_or(String::new(), |d| format!(" after {:.1}s", d.as_secs_f64()));
    let why = r.error.as_deref().map_or(String::new(), |e| format!(": {e}"));
    format!(
        "run {} ({}) of {} {}{at}{took}{why}; its output: troops log {}",
        r.id,
        r.trigger,
        short(&r.commit),
        r.status.to_string().replace('_', " "),
        r.id
    )
}

/// A record as it stands: one left unfinished while nobody holds the lock is what the next run
/// will make of it (`runs::abandon`).
pub fn effective(node: &Node, mut record: RunRecord) -> RunRecord {
    if record.status.unfinished() && matches!(NodeLock::try_acquire(&node.lock_path()), Ok(Some(_))) {
        troops_core::model::records::abandon(&mut record);
    }
    record
}
