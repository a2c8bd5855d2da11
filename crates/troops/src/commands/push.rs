//! `troops push`: the operator's fan-out, run in a clone of the deploy repo. Pushes a branch with
//! `git push` (so ssh, the operator's ssh config and the nodes' hooks work as for a person) to
//! every selected node, canaries first and alone, then `--parallel` at a time; shows the nodes'
//! output as whole lines prefixed by host, and ends with a table. Which hosts, and what a push's
//! output means, is `troops_operator::push`'s; this module runs the processes and the screen.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use troops_core::model::plan::{self, Plan};
use troops_core::model::shown::escape;
use troops_core::Error;
use troops_operator::push::{self as fanout, Outcome, Target};

use crate::cli::PushArgs;

/// How often the wait for the pushes also looks at Ctrl-C (the handler only sets a flag).
const TICK: Duration = Duration::from_millis(200);

pub fn run(args: PushArgs) -> Result<ExitCode> {
    let repo = git2::Repository::discover(".").map_err(|e| {
        Error::Input(format!(
            "troops push works in a clone of the deploy repo, and this is none: {}",
            e.message()
        ))
    })?;
    let branch = match args.branch {
        Some(branch) => branch,
        None => head_branch(&repo)?,
    };
    let plan = plan_of(&repo, &branch)?;
    let selection = fanout::select(&plan, &args.roles, &args.hosts)?;
    for note in &selection.notes {
        eprintln!("troops: {note}");
    }
    let fleet = Fleet {
        targets: selection.targets,
        to: if args.preview {
            troops_core::node::receive::PREVIEW_REF.to_owned()
        } else {
            format!("refs/heads/{branch}")
        },
        branch,
        parallel: args.parallel as usize,
        // A preview deploys nothing: no host goes first.
        canary: if args.preview { 0 } else { args.canary },
        timeout: args.timeout,
    };
    let results = fleet.push();
    if args.preview {
        return print_previews(&fleet, &results);
    }
    print_table(&fleet.targets, &results)?;
    Ok(troops_core::Exit::ok_if(results.iter().all(|r| r.outcome.is_ok())).into())
}

/// Every host's preview, as Markdown; exit 0 when every host showed one.
fn print_previews(fleet: &Fleet, results: &[Report]) -> Result<ExitCode> {
    let hosts: Vec<(String, std::result::Result<fanout::HostPreview, String>)> = fleet
        .targets
        .iter()
        .zip(results)
        .map(|(target, report)| {
            let preview = fanout::preview_of(&report.said)
                .ok_or_else(|| format!("{}: {}", report.outcome.word(), report.outcome.detail()));
            (target.host.clone(), preview)
        })
        .collect();
    write!(std::io::stdout(), "\n{}", fanout::preview_markdown(&fleet.branch, &hosts))?;
    Ok(troops_core::Exit::ok_if(hosts.iter().all(|(_, p)| p.is_ok())).into())
}

/// The branch HEAD is on.
fn head_branch(repo: &git2::Repository) -> Result<String> {
    let head =
        repo.head().map_err(|e| Error::Input(format!("this clone has no HEAD commit: {}", e.message())))?;
    match head.shorthand() {
        Some(name) if head.is_branch() => Ok(name.to_owned()),
        _ => {
            Err(Error::Input("HEAD is not on a branch; name the branch to push with --branch".into()).into())
        }
    }
}

/// The plan of the commit being pushed (its hosts are the ones that count), named
/// `<branch>:troops.toml` in errors.
fn plan_of(repo: &git2::Repository, branch: &str) -> Result<Plan> {
    let commit =
        repo.find_branch(branch, git2::BranchType::Local).and_then(|b| b.get().peel_to_commit()).map_err(
            |e| Error::Input(format!("--branch {branch}: no such branch in this clone ({})", e.message())),
        )?;
    let path = PathBuf::from(format!("{branch}:{}", plan::FILE_NAME));
    let tree = commit.tree().map_err(|e| Error::git(format!("reading {}", path.display()), e))?;
    let entry = tree.get_path(Path::new(plan::FILE_NAME)).map_err(|_| Error::Plan {
        path: path.clone(),
        line: 1,
        column: 1,
        message: format!(
            "no such plan file (a deploy repo keeps its plan in {} at its root)",
            plan::FILE_NAME
        ),
    })?;
    if entry.filemode() == 0o120000 {
        return Err(plan::not_a_file(&path, "a symlink").into());
    }
    let blob = entry
        .to_object(repo)
        .and_then(|o| o.peel_to_blob())
        .map_err(|_| plan::not_a_file(&path, "a directory or special file"))?;
    let text = plan::text(&path, blob.content().to_vec())?;
    Ok(Plan::parse(&path, &text, None)?)
}

/// The pushes to make and how.
struct Fleet {
    targets: Vec<Target>,
    branch: String,
    /// The ref each host is pushed: the branch, or `refs/troops/preview`.
    to: String,
    parallel: usize,
    canary: usize,
    timeout: Duration,
}

/// One host's end: what came of it and how long its push took (none if it never started).
struct Report {
    outcome: Outcome,
    took: Option<Duration>,
    /// What git and the node said (git's lines and the node's `troops:` lines).
    said: String,
}

/// What a push thread tells the main thread, which alone prints and keeps time.
enum Event {
    /// The push's `git` runs as `pid`, leader of its own session and process group.
    Started {
        index: usize,
        pid: i32,
    },
    Line {
        index: usize,
        line: String,
    },
    Finished {
        index: usize,
        outcome: Outcome,
        said: String,
    },
}

/// A push under way.
struct Running {
    since: Instant,
    pid: Option<i32>,
    /// Set when this side killed it, and why.
    killed: Option<Outcome>,
}

impl Running {
    /// Ends the push (its process group, git and ssh) and remembers why. Ctrl-C does to each push
    /// what it does to one `git push` (the pushes have no terminal): SIGINT ends git and ssh, and
    /// a node's hook ignores it, so its run goes on. A timeout kills: the push may hang on anything.
    /// A push not yet started is ended when it says it has.
    fn end(&mut self, why: Outcome) {
        let signal = match why {
            Outcome::TimedOut => Signal::SIGKILL,
            _ => Signal::SIGINT,
        };
        if let Some(pid) = self.pid {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
        self.killed = Some(why);
    }
}

impl Fleet {
    /// Pushes to every target, canaries first and alone, and returns each one's report, in order.
    fn push(&self) -> Vec<Report> {
        let stop = troops_core::mech::signals::stop_flag();
        let mut screen = Screen::new(&self.targets);
        // A preview's lines are in its Markdown, which alone goes to stdout.
        screen.lines = !self.previews();
        // Bounded: a node that prints faster than the operator's terminal takes waits at its push.
        let (tx, rx) = mpsc::sync_channel(1024);
        let mut reports: Vec<Option<Report>> = self.targets.iter().map(|_| None).collect();
        let mut running: Vec<Option<Running>> = self.targets.iter().map(|_| None).collect();
        let mut next = 0;
        let mut halted: Option<String> = None;
        loop {
            while next < self.targets.len() && halted.is_none() && self.may_start(next, &running) {
                running[next] = Some(Running { since: Instant::now(), pid: None, killed: None });
                let refspec = format!("refs/heads/{}:{}", self.branch, self.to);
                spawn_push(next, self.targets[next].url.clone(), refspec, tx.clone());
                next += 1;
            }
            if running.iter().all(Option::is_none) {
                break;
            }
            if stop.load(Ordering::SeqCst) && halted.is_none() {
                halted = Some("stopped by the operator".into());
                for push in running.iter_mut().flatten() {
                    push.end(Outcome::Interrupted);
                }
            }
            let now = Instant::now();
            for push in running.iter_mut().flatten() {
                if push.killed.is_none() && now >= push.since + self.timeout {
                    push.end(Outcome::TimedOut);
                }
            }
            let nearest =
                running.iter().flatten().filter(|p| p.killed.is_none()).map(|p| p.since + self.timeout);
            let wait = nearest.min().map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            let event = match rx.recv_timeout(wait) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => unreachable!("this thread holds a sender"),
            };
            match event {
                Event::Started { index, pid } => {
                    if let Some(push) = &mut running[index] {
                        push.pid = Some(pid);
                        if let Some(why) = push.killed.take() {
                            push.end(why);
                        }
                    }
                }
                Event::Line { index, line } => screen.line(index, &line),
                Event::Finished { index, outcome, said } => {
                    let push = running[index].take().expect("a finished push was running");
                    let outcome = push.killed.unwrap_or(outcome);
                    if index < self.canary && !outcome.is_ok() && halted.is_none() {
                        let host = &self.targets[index].host;
                        halted = Some(format!("canary {host} failed first"));
                        screen.note(&format!(
                            "canary {host}: {}; not pushing to the {} hosts after it",
                            outcome.word(),
                            self.targets.len() - next
                        ));
                    }
                    reports[index] = Some(Report { outcome, took: Some(push.since.elapsed()), said });
                }
            }
            screen.progress(&reports, running.iter().flatten().count());
        }
        screen.clear();
        let why = halted.unwrap_or_default();
        reports
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Report {
                    outcome: Outcome::NotPushed(why.clone()),
                    took: None,
                    said: String::new(),
                })
            })
            .collect()
    }

    fn previews(&self) -> bool {
        self.to == troops_core::node::receive::PREVIEW_REF
    }

    /// Whether host `index` may start now: a canary, and the first host after the canaries, only
    /// once nothing else runs; the rest while fewer than `parallel` run.
    fn may_start(&self, index: usize, running: &[Option<Running>]) -> bool {
        let busy = running.iter().flatten().count();
        if index <= self.canary {
            busy == 0
        } else {
            busy < self.parallel
        }
    }
}

/// Starts `git push` of `refspec` to `url` on a thread that relays its stderr line by line and
/// ends with the push's outcome. git runs in a session of its own, without a terminal: a prompt
/// (an unknown host key, a passphrase) fails that host's push instead of waiting for a person
/// among many pushes at once, and a timeout kills git with its ssh as one process group.
fn spawn_push(index: usize, url: String, refspec: String, tx: SyncSender<Event>) {
    std::thread::spawn(move || {
        let (outcome, said) = push_one(index, &url, &refspec, &tx)
            .unwrap_or_else(|e| (Outcome::Unreachable(format!("running git push: {e}")), String::new()));
        let _ = tx.send(Event::Finished { index, outcome, said });
    });
}

fn push_one(
    index: usize,
    url: &str,
    refspec: &str,
    tx: &SyncSender<Event>,
) -> std::io::Result<(Outcome, String)> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("git");
    command
        .args(["push", "--porcelain", "--", url, refspec])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = command.spawn()?;
    let _ = tx.send(Event::Started { index, pid: child.id() as i32 });
    let mut stdout = child.stdout.take().expect("piped");
    let porcelain = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Kept for `classify`: git's own lines and the node's `troops:` lines, not all step output.
    let mut said = String::new();
    for chunk in BufReader::new(child.stderr.take().expect("piped")).split(b'\n') {
        let chunk = chunk?;
        for part in chunk.split(|b| *b == b'\r') {
            let text = String::from_utf8_lossy(part);
            let line = fanout::clean(&text);
            if line.is_empty() {
                continue;
            }
            if !line.starts_with("remote: ") || line.starts_with("remote: troops: ") {
                said.push_str(line);
                said.push('\n');
            }
            let _ = tx.send(Event::Line { index, line: line.to_owned() });
        }
    }
    let status = child.wait()?;
    let porcelain = porcelain.join().unwrap_or_default();
    Ok((fanout::classify(status.success(), &porcelain, &said), said))
}

/// The operator's view: live lines on stdout, prefixed by host; a progress line on stderr when
/// it is a terminal, cleared before each line so that nothing is ever printed mid-line.
struct Screen {
    hosts: Vec<String>,
    /// Whether the nodes' lines are shown as they come.
    lines: bool,
    width: usize,
    tty: bool,
    shown: bool,
}

impl Screen {
    fn new(targets: &[Target]) -> Screen {
        Screen {
            hosts: targets.iter().map(|t| t.host.clone()).collect(),
            lines: true,
            width: targets.iter().map(|t| t.host.chars().count()).max().unwrap_or(0),
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// A node's line, escaped: it is the node's bytes, which must not move the cursor, clear the
    /// screen or start lines of their own.
    fn line(&mut self, index: usize, line: &str) {
        if !self.lines {
            return;
        }
        self.clear();
        let mut out = std::io::stdout().lock();
        let line = escape(line);
        let _ = writeln!(out, "{:<width$} | {line}", self.hosts[index], width = self.width);
        let _ = out.flush();
    }

    fn note(&mut self, note: &str) {
        self.clear();
        eprintln!("troops: {note}");
    }

    fn progress(&mut self, reports: &[Option<Report>], running: usize) {
        if !self.tty {
            return;
        }
        let done = reports.iter().flatten().count();
        let failed = reports.iter().flatten().filter(|r| !r.outcome.is_ok()).count();
        eprint!("\r\x1b[K[{done}/{}] done, {failed} failed, {running} pushing", reports.len());
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// host, result, run, duration, and why (escaped: the node's words); then one line of totals.
fn print_table(targets: &[Target], reports: &[Report]) -> Result<()> {
    let rows: Vec<[String; 5]> = targets
        .iter()
        .zip(reports)
        .map(|(target, report)| {
            [
                target.host.clone(),
                report.outcome.word(),
                report.outcome.run().map_or("-".into(), |r| r.to_string()),
                report.took.map_or("-".into(), |t| format!("{:.1}s", t.as_secs_f64())),
                escape(report.outcome.detail()).into_owned(),
            ]
        })
        .collect();
    let header = ["HOST", "RESULT", "RUN", "DURATION", "DETAIL"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().chain([&header]).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    for row in [&header].into_iter().chain(&rows) {
        let cells: Vec<String> = (0..4).map(|c| format!("{:<w$}", row[c], w = widths[c])).collect();
        writeln!(out, "{}", format!("{}  {}", cells.join("  "), row[4]).trim_end())?;
    }
    let ok = reports.iter().filter(|r| r.outcome.is_ok()).count();
    let unpushed = reports.iter().filter(|r| matches!(r.outcome, Outcome::NotPushed(_))).count();
    writeln!(
        out,
        "{} hosts: {ok} ok, {} failed, {unpushed} not pushed",
        reports.len(),
        reports.len() - ok - unpushed
    )?;
    Ok(())
}
