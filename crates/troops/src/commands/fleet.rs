//! `troops fleet`: the fleet at a glance, from the status refs every node publishes. On a node it
//! reads the node's status repo (fetching from `status_remote`); anywhere else, the git clone of
//! the deploy repo in the current directory, with the status refs fetched from `origin` into a
//! scratch repo (with the caller's own git and SSH, bounded as a node's fetch is).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use troops_core::mech::statusrefs;
use troops_core::model::names::short;
use troops_core::model::node::Node;
use troops_core::model::shown::escape;
use troops_operator::fleet::{self as fleet_view, View};

use crate::cli::{FleetArgs, Global};

pub fn run(global: &Global, args: FleetArgs) -> Result<ExitCode> {
    if args.publish {
        return publish_now(&Node::load(global.state_dir.clone(), &global.config)?, args.remote.as_deref());
    }
    let node = Node::load(global.state_dir.clone(), &global.config).ok().filter(|n| n.repo().is_ok());
    if node.is_some() && from_environment(&global.state_dir) && git2::Repository::discover(".").is_ok() {
        eprintln!(
            "troops: the fleet as the node in {} sees it (TROOPS_STATE_DIR is set); unset it to read \
             this clone's remote instead",
            global.state_dir.display()
        );
    }
    let branch = node.as_ref().map_or("main".to_owned(), |n| n.config.branch.clone());
    // In a clone, the status refs go to a scratch repo of their own, never into the clone.
    let mut scratch = None;
    let (git, status, remote, fetched) = match &node {
        Some(node) => {
            let remote = args.remote.clone().or(node.config.status_remote.clone()).ok_or_else(|| {
                troops_core::Error::Input(format!(
                    "the node config {} has no `status_remote`; name the remote with --remote",
                    node.config.path.display()
                ))
            })?;
            let deadline = Instant::now() + node.config.fetch_timeout;
            let fetched = troops_core::node::pull::fetch_status(node, &remote, deadline);
            let status = node.status_repo_path();
            (git2::Repository::open_bare(node.repo_path())?, status, remote, fetched)
        }
        None => {
            let git = git2::Repository::discover(".").map_err(|_| {
                troops_core::Error::Input(format!(
                    "not on a node (no repo in {}) and not in a git clone of the deploy repo",
                    global.state_dir.display()
                ))
            })?;
            // A remote of the clone, or a URL.
            let remote = args.remote.clone().unwrap_or_else(|| "origin".to_owned());
            let url = git.find_remote(&remote).ok().and_then(|r| r.url().map(str::to_owned));
            let dir = scratch.insert(tempfile::tempdir()?).path().to_owned();
            git2::Repository::init_bare(&dir)?;
            let url = url.unwrap_or_else(|| remote.clone());
            let fetched = statusrefs::fetch_as_caller(&dir, &url);
            if fetched.is_ok() && statusrefs::read_all(&git2::Repository::open_bare(&dir)?).0.is_empty() {
                eprintln!(
                    "troops: {} holds no status refs; nodes publish where their `status_remote` points: \
                     name that remote or its URL with --remote",
                    if url == remote {
                        escape(&url).into_owned()
                    } else {
                        format!("remote {remote} ({})", escape(&url))
                    }
                );
            }
            (git, dir, remote, fetched)
        }
    };
    if let Err(e) = &fetched {
        eprintln!(
            "troops: the status refs could not be fetched from remote {remote}: {}; showing those fetched before",
            escape(e)
        );
    }
    let status = git2::Repository::open_bare(&status).map_err(|e| {
        troops_core::Error::Env(format!("opening the status repo {}: {}", status.display(), e.message()))
    })?;
    // The branch tip to compare with: the remote's, else origin's (a clone whose status remote is
    // not where the branch is), else the local branch.
    let tip = [
        format!("refs/remotes/{remote}/{branch}"),
        format!("refs/remotes/origin/{branch}"),
        format!("refs/heads/{branch}"),
    ]
    .iter()
    .find_map(|name| git.refname_to_id(name).ok());
    let view = fleet_view::view(&status, git, &branch, tip, SystemTime::now());
    for bad in &view.unreadable {
        eprintln!("troops: warning: {} is skipped: {}", escape(&bad.reference), escape(&bad.error));
    }
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        print_table(&mut out, &view)?;
    }
    if fetched.is_err() {
        return Ok(ExitCode::from(3));
    }
    let failing = view.nodes.iter().filter(|row| row.stale || row.doc.reports_failure()).count();
    Ok(if args.strict && failing > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Whether the state dir is the one `TROOPS_STATE_DIR` names (left in a shell, it makes a clone's
/// `troops fleet` read that node instead).
fn from_environment(state_dir: &std::path::Path) -> bool {
    std::env::var_os("TROOPS_STATE_DIR").is_some_and(|dir| std::path::Path::new(&dir) == state_dir)
}

/// Publishes this node's status document to `remote` (default: `status_remote`).
fn publish_now(node: &Node, remote: Option<&str>) -> Result<ExitCode> {
    let remote = remote.map(str::to_owned).or(node.config.status_remote.clone()).ok_or_else(|| {
        troops_core::Error::Input(format!(
            "the node config {} has no `status_remote`; name the remote with --remote",
            node.config.path.display()
        ))
    })?;
    let turn = statusrefs::Turn::take(node)?;
    let doc = troops_core::node::state::status_doc(node)?;
    let done = turn.publish(node, &doc, &remote, node.config.fetch_timeout)?;
    writeln!(
        std::io::stdout(),
        "troops: published {} ({}) to remote {} in {} ms",
        done.reference,
        doc.state,
        done.remote,
        done.duration.as_millis()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The table, each node's hold, and the summary. Every word a node wrote is escaped: a status
/// document is a peer's bytes.
fn print_table(out: &mut dyn Write, view: &View) -> Result<()> {
    let mut rows =
        vec![["HOST", "ROLES", "WAVE", "DEPLOYED", "BEHIND", "STATE", "AGE", "STALE"].map(String::from)];
    for row in &view.nodes {
        let doc = &row.doc;
        rows.push([
            escape(&doc.host).into_owned(),
            if doc.roles.is_empty() { "-".into() } else { escape(&doc.roles.join(",")).into_owned() },
            escape(doc.wave.as_deref().unwrap_or("-")).into_owned(),
            doc.deployed.as_deref().map_or("-".into(), |d| escape(&short(d)).into_owned()),
            row.behind.map_or("?".into(), |b| b.to_string()),
            if doc.diverged.is_some() { format!("{}, diverged", doc.state) } else { doc.state.to_string() },
            row.age_seconds.map_or("?".into(), |s| age(Duration::from_secs(s))),
            if row.stale { "stale".into() } else { String::new() },
        ]);
    }
    let widths: Vec<usize> =
        (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.hold.is_some()) {
        let hold = row.doc.hold.as_ref().expect("filtered");
        writeln!(out, "{}: {}", escape(&row.doc.host), escape(&hold.why))?;
    }
    for row in view.nodes.iter().filter(|r| !r.doc.drift.is_empty()) {
        writeln!(out, "{}: drifted: {}", escape(&row.doc.host), escape(&row.doc.drift.join("; ")))?;
    }
    for row in &view.nodes {
        if let Some(diverged) = &row.doc.diverged {
            // Its branch name is not in the document: the one compared with here stands for it.
            writeln!(out, "{}: {}", escape(&row.doc.host), escape(&diverged.sentence(&view.branch)))?;
        }
    }
    writeln!(out, "{}", escape(&view.summary))?;
    Ok(())
}

/// "42s", "7m", "3h", "12d": how old a report is, roughly.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
