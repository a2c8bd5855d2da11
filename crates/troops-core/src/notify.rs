//! `[notify] command`: tells a person (a chat webhook, a pager, via curl) when a run failed, was
//! rolled back, or recovered (succeeded after the node's previous run failed). The command gets
//! the run record as JSON on stdin and a clean environment, runs in a process group of its own,
//! and is killed with that group at its timeout. Its output goes to the log (tracing), never to
//! the pusher; whatever it does, the run's result stays what it was.

use std::io::{BufRead, Write};
use std::ops::Range;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::runs::{RunRecord, RunStatus};

/// The longest `[notify] timeout`: a notification that takes longer is not arriving.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Lines of the command's output that reach the log; the rest is read and dropped.
const MAX_LOGGED_LINES: usize = 100;

/// The node config's `[notify]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Run with `/bin/sh -c`; none: nobody is notified.
    pub command: Option<String>,
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { command: None, timeout: Duration::from_secs(30) }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    command: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

impl Settings {
    pub(crate) fn parse(raw: RawSettings, err: impl Fn(Range<usize>, String) -> Error) -> Result<Settings> {
        let timeout = match raw.timeout {
            None => Settings::default().timeout,
            Some(v) => match humantime::parse_duration(v.get_ref()) {
                Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => d,
                Ok(_) => {
                    return Err(err(
                        v.span(),
                        "`notify.timeout` must be more than zero and at most 1h".into(),
                    ))
                }
                Err(e) => {
                    return Err(err(
                        v.span(),
                        format!("`notify.timeout`: {e} in {:?} (expected e.g. \"30s\")", v.get_ref()),
                    ))
                }
            },
        };
        let command = match raw.command {
            Some(c) if c.get_ref().trim().is_empty() => {
                return Err(err(c.span(), "`notify.command` is empty; leave it out to notify nobody".into()))
            }
            command => command.map(Spanned::into_inner),
        };
        Ok(Settings { command, timeout })
    }
}

/// Why a run is worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failed,
    /// A failed commit was rolled back: the last good one ran again and succeeded.
    RolledBack,
    /// It succeeded, and the node's run before it had failed.
    Recovered,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::RolledBack => "rolled_back",
            Event::Recovered => "recovered",
        }
    }
}

/// Whether `record` is worth a notification, given the node's run before it.
pub fn event(record: &RunRecord, previous: Option<&RunRecord>) -> Option<Event> {
    match record.status {
        RunStatus::Failed => Some(Event::Failed),
        // The last good commit ran again after a failure: the record is the rollback's
        // (`rollback_of` names the failed run).
        RunStatus::Succeeded if record.trigger == crate::runs::Trigger::Rollback => Some(Event::RolledBack),
        RunStatus::Succeeded if previous.is_some_and(|p| failed(p.status)) => Some(Event::Recovered),
        _ => None,
    }
}

/// A run that failed, or failed and was rolled back (status `rolled_back`).
fn failed(status: RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::RolledBack)
}

/// After a run's record is final and its summary written: runs the notify command if the run is
/// worth one. Waits for it (at most its timeout), so that a CLI or hook process does not end
/// before it; the pusher has seen the summary line by then.
pub fn after_run(node: &Node, record: &RunRecord) {
    let Some(command) = &node.config.notify.command else { return };
    let runs = node.runs();
    let previous = runs
        .ids()
        .ok()
        .and_then(|ids| ids.into_iter().rev().filter(|&id| id < record.id).find_map(|id| runs.load(id).ok()));
    let Some(event) = event(record, previous.as_ref()) else { return };
    match notify(command, node.config.notify.timeout, record, event) {
        Ok(()) => tracing::info!(run = record.id, event = event.name(), "notify command succeeded"),
        Err(e) => tracing::warn!(run = record.id, event = event.name(), error = %e, "notify command failed"),
    }
}

/// The PATH of the notify command: fixed, like a step's.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn notify(command: &str, timeout: Duration, record: &RunRecord, event: Event) -> Result<()> {
    let io = |what: &str, e| Error::io(format!("{what} the notify command `{command}`"), e);
    let (reader, writer) = std::io::pipe().map_err(|e| io("making a pipe for", e))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).env_clear().env("PATH", PATH).env("LANG", "C.UTF-8");
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
        cmd.env("HOME", user.dir);
    }
    cmd.env("TROOPS_RUN_ID", record.id.to_string())
        .env("TROOPS_COMMIT", &record.commit)
        .env("TROOPS_STATUS", record.status.to_string())
        .env("TROOPS_HOST", &record.host)
        .env("TROOPS_EVENT", event.name())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().map_err(|e| io("making a pipe for", e))?)
        .stderr(writer)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| io("starting", e))?;
    drop(cmd); // our copies of the pipe's write end: the reader sees EOF when the command ends
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);

    // Neither feeding stdin nor reading output may block us: a command that reads nothing, or a
    // leftover of it that holds the pipe open, only keeps these threads, which end with it.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let json = serde_json::to_vec_pretty(record).expect("run records serialize");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&json);
    });
    let run = record.id;
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(reader).split(b'\n');
        for (i, line) in lines.by_ref().map_while(|l| l.ok()).enumerate() {
            if i < MAX_LOGGED_LINES {
                tracing::info!(run, output = %String::from_utf8_lossy(&line), "notify command");
            }
        }
    });

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done_rx.recv_timeout(timeout) {
        Ok(status) => status.map_err(|e| io("waiting for", e))?,
        Err(_) => {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = done_rx.recv();
            return Err(Error::Env(format!(
                "the notify command `{command}` took longer than {}; its process group was killed",
                humantime::format_duration(timeout)
            )));
        }
    };
    if !status.success() {
        return Err(Error::Env(format!("the notify command `{command}` ended with {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Trigger;

    fn record(id: u64, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, &"c".repeat(40), status)
    }

    #[test]
    fn settings_parse_and_bad_values_name_their_key_and_line() {
        let parse = |text: &str| crate::config::Config::parse(std::path::Path::new("/etc/troops.toml"), text);
        let notify = parse("[notify]\ncommand = \"curl -d @- x\"\ntimeout = \"5s\"\n").unwrap().notify;
        assert_eq!(
            notify,
            Settings { command: Some("curl -d @- x".into()), timeout: Duration::from_secs(5) }
        );
        assert_eq!(parse("").unwrap().notify, Settings::default());
        let e = parse("[notify]\ncommand = \" \"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops.toml:2:11: `notify.command` is empty"), "{e}");
        let e = parse("[notify]\ntimeout = \"0s\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:11: `notify.timeout`"), "{e}");
        assert!(parse("[notify]\nurl = \"x\"\n").unwrap_err().to_string().contains("url"));
    }

    #[test]
    fn failures_and_recoveries_notify_plain_successes_do_not() {
        let ok = record(1, RunStatus::Succeeded);
        let failed = record(2, RunStatus::Failed);
        let interrupted = record(3, RunStatus::Interrupted);
        assert_eq!(event(&failed, Some(&ok)), Some(Event::Failed));
        assert_eq!(event(&failed, Some(&failed)), Some(Event::Failed));
        assert_eq!(event(&ok, Some(&failed)), Some(Event::Recovered));
        assert_eq!(event(&ok, Some(&ok)), None);
        assert_eq!(event(&ok, None), None);
        assert_eq!(event(&ok, Some(&interrupted)), None);
        assert_eq!(event(&interrupted, Some(&ok)), None);
        let mut rolled_back = record(4, RunStatus::RolledBack);
        rolled_back.rolled_back_by = Some(5);
        let rollback =
            RunRecord { trigger: Trigger::Rollback, rollback_of: Some(4), ..record(5, RunStatus::Succeeded) };
        assert_eq!(event(&rollback, Some(&rolled_back)), Some(Event::RolledBack));
        assert_eq!(event(&ok, Some(&rolled_back)), Some(Event::Recovered));
    }

    #[test]
    fn a_hanging_command_is_killed_at_its_timeout_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let command = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
        let started = std::time::Instant::now();
        let e = notify(&command, Duration::from_millis(500), &record(1, RunStatus::Failed), Event::Failed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("took longer than 500ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // The background sleep was in the group: it dies of the SIGKILL (a zombie counts as dead:
        // its parent, the shell, is gone, so init reaps it).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(std::time::Instant::now() < deadline, "the notify command's background process survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_command_reads_the_record_and_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let command = format!("cat > {0}.json; env | sort > {0}.env", out.display());
        notify(&command, Duration::from_secs(30), &record(7, RunStatus::Failed), Event::Failed).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!((json["id"].as_u64(), json["status"].as_str()), (Some(7), Some("failed")));
        let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
        for want in ["TROOPS_RUN_ID=7", "TROOPS_STATUS=failed", "TROOPS_HOST=web-1", "TROOPS_EVENT=failed"] {
            assert!(env.lines().any(|l| l == want), "{want} missing from\n{env}");
        }
        assert!(!env.contains("CARGO"), "the caller's environment leaked:\n{env}");
    }
}
