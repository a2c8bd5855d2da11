//! `troops fleet`: the fleet at a glance, from the status refs every node publishes. On a node it
//! reads the node's status repo (fetching from `status_remote`); anywhere else, the git clone of
//! the deploy repo in the current directory, with the status refs fetched from `origin` into a
//! scratch repo (with the caller's own git and SSH, bounded as a node's fetch is). The same view
//! prints as a table, as JSON, or as the page (`--html FILE`, and `troops fleet serve`, which
//! reads it anew every `--refresh` and answers GET / with it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use troops_core::mech::{believe, statusrefs};
use troops_core::model::names::short;
use troops_core::model::node::Node;
use troops_core::model::shown::escape;
use troops_operator::fleet::{self as fleet_view, age, View};
use troops_operator::page;

use crate::cli::{ExportsArgs, FleetArgs, FleetCommand, Global, ServeArgs};

pub fn run(global: &Global, args: FleetArgs) -> Result<ExitCode> {
    match args.command {
        Some(FleetCommand::Serve(serve_args)) => return serve(global, serve_args),
        Some(FleetCommand::Exports(exports_args)) => return exports(global, exports_args),
        None => {}
    }
    if args.publish {
        return publish_now(&Node::load(global.state_dir.clone(), &global.config)?, args.remote.as_deref());
    }
    let (source, _scratch) = Source::open(global, args.remote.as_deref())?;
    let reading = source.read()?;
    for note in &reading.notes {
        eprintln!("troops: {note}");
    }
    let mut out = std::io::stdout();
    if let Some(file) = &args.html {
        write_page(file, &reading.page(None))?;
        writeln!(
            out,
            "troops: wrote the fleet page ({} hosts) to {}",
            reading.view.nodes.len(),
            file.display()
        )?;
    } else if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reading.view)?)?;
    } else {
        print_table(&mut out, &reading.view)?;
    }
    if reading.fetch_error.is_some() {
        return Ok(ExitCode::from(3));
    }
    let failing = reading.view.nodes.iter().filter(|row| row.stale || row.doc.reports_failure()).count();
    Ok(if args.strict && failing > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `troops fleet exports`: every node's exports, read as `troops fleet` reads the fleet; a value
/// is a peer's bytes, so the table shows it escaped (JSON carries it as written).
fn exports(global: &Global, args: ExportsArgs) -> Result<ExitCode> {
    let (source, _scratch) = Source::open(global, args.remote.as_deref())?;
    let reading = source.read()?;
    for note in &reading.notes {
        eprintln!("troops: {note}");
    }
    let found = troops_operator::exports::exports(&reading.view, args.name.as_deref(), args.role.as_deref());
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
    } else {
        let mut rows = vec![["HOST", "NAME", "VALUE", "AGE", "STALE"].map(String::from)];
        for e in &found {
            rows.push([
                escape(&e.host).into_owned(),
                e.name.clone(),
                escape(e.value.trim_end_matches('\n')).into_owned(),
                e.age_seconds.map_or("?".into(), |s| age(Duration::from_secs(s))),
                if e.stale { "stale".into() } else { String::new() },
            ]);
        }
        let widths: Vec<usize> =
            (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        for row in &rows {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            writeln!(out, "{}", cells.join("  ").trim_end())?;
        }
    }
    Ok(if reading.fetch_error.is_some() { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Where the status refs are read: a node's status repo, fetched from its status remote, or in a
/// clone a scratch repo (never the clone) fetched with the caller's own git and SSH; and the
/// deploy repo whose branch tip the nodes are compared with.
struct Source {
    node: Option<Node>,
    /// The deploy repo: the node's, or the clone's git dir.
    git_dir: PathBuf,
    status_dir: PathBuf,
    branch: String,
    /// The remote as named (a remote of the repo, or a URL), and in a clone the URL it stands for.
    remote: String,
    url: String,
}

/// One reading of the status refs: the view, and what to say of how it was read.
struct Reading {
    view: View,
    at: SystemTime,
    remote: String,
    fetch_error: Option<String>,
    /// Lines for stderr: a failed fetch, skipped documents, where to look instead.
    notes: Vec<String>,
}

impl Reading {
    /// The view as a page; `reload`: how often a served page reloads itself.
    fn page(&self, reload: Option<Duration>) -> String {
        let context = page::Context {
            at: self.at,
            remote: &self.remote,
            fetch_error: self.fetch_error.as_deref(),
            reload,
        };
        page::render(&self.view, &context)
    }
}

impl Source {
    /// The source of `troops fleet` here, and in a clone the scratch status repo, removed when
    /// the returned guard goes.
    fn open(global: &Global, remote: Option<&str>) -> Result<(Source, Option<tempfile::TempDir>)> {
        let node = Node::load(global.state_dir.clone(), &global.config).ok().filter(|n| n.repo().is_ok());
        if node.is_some() && from_environment(&global.state_dir) && git2::Repository::discover(".").is_ok() {
            eprintln!(
                "troops: the fleet as the node in {} sees it (TROOPS_STATE_DIR is set); unset it to read \
                 this clone's remote instead",
                global.state_dir.display()
            );
        }
        let branch = node.as_ref().map_or("main".to_owned(), |n| n.config.branch.clone());
        match node {
            Some(node) => {
                let remote =
                    remote.map(str::to_owned).or(node.config.status_remote.clone()).ok_or_else(|| {
                        troops_core::Error::Input(format!(
                            "the node config {} has no `status_remote`; name the remote with --remote",
                            node.config.path.display()
                        ))
                    })?;
                let (git_dir, status_dir) = (node.repo_path(), node.status_repo_path());
                let source =
                    Source { node: Some(node), git_dir, status_dir, branch, url: remote.clone(), remote };
                Ok((source, None))
            }
            None => {
                let git = git2::Repository::discover(".").map_err(|_| {
                    troops_core::Error::Input(format!(
                        "not on a node (no repo in {}) and not in a git clone of the deploy repo",
                        global.state_dir.display()
                    ))
                })?;
                // A remote of the clone, or a URL.
                let remote = remote.unwrap_or("origin").to_owned();
                let url = git.find_remote(&remote).ok().and_then(|r| r.url().map(str::to_owned));
                let scratch = tempfile::tempdir()?;
                git2::Repository::init_bare(scratch.path())?;
                let source = Source {
                    node: None,
                    git_dir: git.path().to_owned(),
                    status_dir: scratch.path().to_owned(),
                    branch,
                    url: url.unwrap_or_else(|| remote.clone()),
                    remote,
                };
                Ok((source, Some(scratch)))
            }
        }
    }

    /// Fetches the status refs (a failure is said, and those fetched before are read) and reads
    /// the fleet from them.
    fn read(&self) -> Result<Reading> {
        let mut notes = Vec::new();
        // On a node, what it believes now, as its fetch recorded it.
        let (fetched, on_node) = match &self.node {
            Some(node) => {
                let deadline = Instant::now() + node.config.fetch_timeout;
                let read = troops_core::node::pull::fetch_status(node, &self.remote, deadline);
                (read.fetched, Some(read.belief))
            }
            None => (statusrefs::fetch_as_caller(&self.status_dir, &self.url), None),
        };
        let status = git2::Repository::open_bare(&self.status_dir).map_err(|e| {
            troops_core::Error::Env(format!(
                "opening the status repo {}: {}",
                self.status_dir.display(),
                e.message()
            ))
        })?;
        if self.node.is_none() && fetched.is_ok() && statusrefs::hosts(&status).is_empty() {
            notes.push(format!(
                "{} holds no status refs; nodes publish where their `status_remote` points: name that \
                 remote or its URL with --remote",
                if self.url == self.remote {
                    escape(&self.url).into_owned()
                } else {
                    format!("remote {} ({})", self.remote, escape(&self.url))
                }
            ));
        }
        if let Err(e) = &fetched {
            notes.push(format!(
                "the status refs could not be fetched from remote {}: {}; showing those fetched before",
                self.remote,
                escape(e)
            ));
        }
        let git = match &self.node {
            Some(_) => git2::Repository::open_bare(&self.git_dir)?,
            None => git2::Repository::open(&self.git_dir)?,
        };
        // The branch tip to compare with: the remote's, else origin's (a clone whose status remote
        // is not where the branch is), else the local branch.
        let (remote, branch) = (&self.remote, &self.branch);
        let tip = [
            format!("refs/remotes/{remote}/{branch}"),
            format!("refs/remotes/origin/{branch}"),
            format!("refs/heads/{branch}"),
        ]
        .iter()
        .find_map(|name| git.refname_to_id(name).ok());
        let belief = match on_node {
            Some(belief) => belief,
            None => {
                // A clone trusts the keys of what it has checked out (the branch tip before it
                // has), and remembers the newest documents it believed in its git dir, so that a
                // ref set back is refused here too.
                let head = git.head().ok().and_then(|h| h.peel_to_commit().ok()).map(|c| c.id());
                let trusted = head.or(tip);
                let remembered = self.git_dir.join(CLONE_BELIEVED);
                let belief = believe::believe(
                    &status,
                    &believe::Keys::at(&git, trusted),
                    &believe::Newest::load(&remembered),
                    SystemTime::now(),
                );
                if let Err(e) = believe::remember(&remembered, &belief) {
                    notes.push(format!("the newest documents believed are not remembered: {e}"));
                }
                belief
            }
        };
        let at = SystemTime::now();
        let view = fleet_view::view(belief, git, branch, tip, at);
        Ok(Reading { view, at, remote: self.remote.clone(), fetch_error: fetched.err(), notes })
    }
}

/// Where a clone remembers the newest status documents it believed, in its git dir.
const CLONE_BELIEVED: &str = "troops-believed.json";

/// Writes `page` to `file` whole: a temp file beside it, renamed over it, readable by all (a web
/// server may serve it), so a reader never sees half a page.
fn write_page(file: &Path, page: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let writing = || format!("writing the fleet page {}", file.display());
    let dir = file.parent().unwrap_or(Path::new("/"));
    let mut temp = tempfile::Builder::new()
        .prefix(".fleet-page-")
        .tempfile_in(dir)
        .map_err(|e| troops_core::Error::Env(format!("{}: {e}", writing())))?;
    let written = temp
        .write_all(page.as_bytes())
        .and_then(|()| temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)));
    written.map_err(|e| troops_core::Error::Env(format!("{}: {e}", writing())))?;
    temp.persist(file).map_err(|e| troops_core::Error::Env(format!("{}: {}", writing(), e.error)))?;
    Ok(())
}

/// How long `serve` waits, once told to stop, for a fetch under way to end before it leaves it.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A served page reloads itself as often as it is read anew, but no more often than this: a
/// person reads it, and a slow browser must get to show it before it goes again.
const RELOAD_FLOOR: Duration = Duration::from_secs(5);

/// `troops fleet serve`: the page at GET /, read anew every `refresh` on a thread of its own (a
/// slow status remote never keeps a request waiting; a request never starts a fetch), answered
/// by the daemon's bounded responder. Ends on SIGTERM or Ctrl-C.
fn serve(global: &Global, args: ServeArgs) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Heard from the start: a signal during the first fetch ends it after that, scratch repo removed.
    let (mut term, mut int) = {
        let _entered = runtime.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    let (source, _scratch) = Source::open(global, args.remote.as_deref())?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| troops_core::Error::Env(format!("cannot listen on {}: {e}", args.listen)))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let reload = args.refresh.max(RELOAD_FLOOR);
    let first = source.read()?;
    let mut said = first.notes.clone();
    for note in &said {
        eprintln!("troops: {note}");
    }
    let shown = std::sync::Arc::new(std::sync::Mutex::new(first.page(Some(reload))));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let refreshed = shown.clone();
    std::thread::spawn(move || {
        let _done = done;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(args.refresh) {
            match source.read() {
                Ok(reading) => {
                    // Said again only when it changes, not at every refresh.
                    if reading.notes != said {
                        for note in &reading.notes {
                            eprintln!("troops: {note}");
                        }
                        said = reading.notes.clone();
                    }
                    *refreshed.lock().unwrap() = reading.page(Some(reload));
                }
                Err(error) => eprintln!("troops: reading the fleet: {error}; the page stays as it was"),
            }
        }
    });
    eprintln!(
        "troops: serving the fleet page on http://{addr}/ (the status refs of remote {}, fetched every {}); \
         Ctrl-C or SIGTERM ends it",
        escape(&first.remote),
        humantime::format_duration(args.refresh)
    );
    let route = crate::daemon::metrics::Route {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: std::sync::Arc::new(move || Ok(shown.lock().unwrap().clone())),
    };
    let signal = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::select! {
            () = crate::daemon::metrics::serve(listener, route) => unreachable!("it serves until dropped"),
            _ = term.recv() => Ok::<_, std::io::Error>("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    })?;
    drop(stop);
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(STOP_GRACE) {
        eprintln!("troops: a fetch of the status refs is still under way; not waiting for it");
    }
    eprintln!("troops: {signal}: the fleet page is no longer served");
    Ok(ExitCode::SUCCESS)
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
    for row in view.nodes.iter().filter(|r| r.doc.paused.is_some()) {
        writeln!(
            out,
            "{}: {}",
            escape(&row.doc.host),
            escape(row.doc.paused.as_deref().unwrap_or_default())
        )?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.window.is_some()) {
        let why = row.doc.window.as_deref().unwrap_or_default();
        writeln!(out, "{}: the tip waits: {}", escape(&row.doc.host), escape(why))?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.frozen.is_some()) {
        let why = row.doc.frozen.as_deref().unwrap_or_default();
        writeln!(out, "{}: {}", escape(&row.doc.host), escape(why))?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.approval.is_some()) {
        let why = row.doc.approval.as_deref().unwrap_or_default();
        writeln!(out, "{}: the tip waits: {}", escape(&row.doc.host), escape(why))?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.slot.is_some()) {
        let slot = row.doc.slot.as_deref().unwrap_or_default();
        writeln!(out, "{}: {}", escape(&row.doc.host), escape(slot))?;
    }
    for row in view.nodes.iter().filter(|r| r.doc.state == troops_core::model::status::State::Rebooting) {
        let reboot = row.doc.reboot.as_deref().unwrap_or("under way");
        writeln!(out, "{}: rebooting: {}", escape(&row.doc.host), escape(reboot))?;
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
    for sentence in &view.fleet_rollbacks {
        writeln!(out, "fleet rollback: {sentence}; every node that runs it rolls back")?;
    }
    for refused in &view.refused {
        // `reference` and `detail` are escaped already.
        writeln!(out, "{}: not believed ({}): {}", refused.reference, refused.reason, refused.detail)?;
    }
    writeln!(out, "{}", escape(&view.summary))?;
    Ok(())
}
