//! `troops fleet`: the fleet at a glance, from the status refs every node publishes. On a node it
//! reads the node repo (fetching from `status_remote`); anywhere else, the git clone of the deploy
//! repo in the current directory (fetching from `origin`, with the caller's own git and SSH).

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use troops_core::deploy::short;
use troops_core::fleet::publish::{self, FETCH_REFSPEC};
use troops_core::fleet::view::{self, View};
use troops_core::node::Node;

use crate::cli::{FleetArgs, Global};

pub fn run(global: &Global, args: FleetArgs) -> Result<ExitCode> {
    if args.publish {
        return publish_now(&Node::load(global.state_dir.clone(), &global.config)?, args.remote.as_deref());
    }
    let node = Node::load(global.state_dir.clone(), &global.config).ok().filter(|n| n.repo().is_ok());
    let branch = node.as_ref().map_or("main".to_owned(), |n| n.config.branch.clone());
    let (git, remote, fetched) = match &node {
        Some(node) => {
            let remote = args.remote.clone().or(node.config.status_remote.clone()).ok_or_else(|| {
                troops_core::Error::Input(format!(
                    "the node config {} has no `status_remote`; name the remote with --remote",
                    node.config.path.display()
                ))
            })?;
            let deadline = Instant::now() + node.config.fetch_timeout;
            let fetched = publish::fetch(&node.repo_path(), &remote, &node.ssh_dir(), deadline);
            (git2::Repository::open_bare(node.repo_path())?, remote, fetched)
        }
        None => {
            let git = git2::Repository::discover(".").map_err(|_| {
                troops_core::Error::Input(format!(
                    "not on a node (no repo in {}) and not in a git clone of the deploy repo",
                    global.state_dir.display()
                ))
            })?;
            let remote = args.remote.clone().unwrap_or_else(|| "origin".to_owned());
            let fetched = fetch_in_clone(git.path(), &remote);
            (git, remote, fetched)
        }
    };
    if let Err(e) = &fetched {
        eprintln!("troops: the status refs could not be fetched from remote {remote}: {e}; showing those fetched before");
    }
    // The branch tip to compare with: the remote's, else origin's (a clone whose status remote is
    // not where the branch is), else the local branch.
    let tip = [
        format!("refs/remotes/{remote}/{branch}"),
        format!("refs/remotes/origin/{branch}"),
        format!("refs/heads/{branch}"),
    ]
    .iter()
    .find_map(|name| git.refname_to_id(name).ok());
    let view = view::view(git, &branch, tip, SystemTime::now());
    for bad in &view.unreadable {
        eprintln!("troops: warning: {} is skipped: {}", bad.reference, bad.error);
    }
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        print_table(&mut out, &view)?;
    }
    Ok(if fetched.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// Publishes this node's status document to `remote` (default: `status_remote`).
fn publish_now(node: &Node, remote: Option<&str>) -> Result<ExitCode> {
    let remote = remote.map(str::to_owned).or(node.config.status_remote.clone()).ok_or_else(|| {
        troops_core::Error::Input(format!(
            "the node config {} has no `status_remote`; name the remote with --remote",
            node.config.path.display()
        ))
    })?;
    let doc = troops_core::fleet::status::StatusDoc::build(node)?;
    let done = publish::publish(node, &doc, &remote, node.config.fetch_timeout)?;
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

/// `git fetch REMOTE` of the status refs, as the caller (their SSH keys and config).
fn fetch_in_clone(git_dir: &Path, remote: &str) -> std::result::Result<(), String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["fetch", "--quiet", "--no-tags", "--end-of-options", remote, FETCH_REFSPEC])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running git fetch: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")),
    }
}

fn print_table(out: &mut dyn Write, view: &View) -> Result<()> {
    let mut rows =
        vec![["HOST", "ROLES", "WAVE", "DEPLOYED", "BEHIND", "STATE", "AGE", "STALE"].map(String::from)];
    for row in &view.nodes {
        let doc = &row.doc;
        rows.push([
            doc.host.clone(),
            if doc.roles.is_empty() { "-".into() } else { doc.roles.join(",") },
            doc.wave.clone().unwrap_or_else(|| "-".into()),
            doc.deployed.as_deref().map_or("-".into(), |d| short(d).to_owned()),
            row.behind.map_or("?".into(), |b| b.to_string()),
            doc.state.to_string(),
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
        writeln!(out, "{}: {}", row.doc.host, hold.why)?;
    }
    writeln!(out, "{}", view.summary)?;
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
