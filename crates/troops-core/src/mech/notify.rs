//! `[notify] command`: tells a person (a chat webhook, a pager, via curl) when a run failed, was
//! rolled back, or recovered (succeeded after the node's previous run failed), and when a recheck
//! found the host drifted from its deployed commit. The command gets the run record (or the
//! drift found) as JSON on stdin and a clean environment (`env`: every child's, and the run's
//! `TROOPS_*`), and runs under a supervisor, as a
//! step does (`runner`): at its timeout it is ended with everything it started, also what left
//! its process group or session. Nobody who waits for the run waits for it: the daemon runs it
//! as a job of its own, one at a time, after the run's listeners heard its end; any other process
//! hands it to a detached `troops notify` (`background`). Its output goes to the log (tracing), never to the pusher, read in bounded
//! chunks of which a bounded amount is kept; whatever it does, the run's result stays what it was.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::mech::output::Output;
use crate::mech::runner::{self, Supervisor};
use crate::mech::supervise;
use crate::model::error::{Error, Result};
use crate::model::node::Node;
use crate::model::records::{RunRecord, RunStatus, StepStatus};

/// How long what the command left running has after its timeout's SIGTERM, before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Lines of the command's output that reach the log; the rest is read and dropped.
const MAX_LOGGED_LINES: usize = 100;
/// The most of one line of its output that reaches the log; the rest of the line is dropped.
const MAX_LOGGED_LINE: usize = 2048;

/// Why a run is worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failed,
    /// A failed commit was rolled back: the last good one ran again and succeeded.
    RolledBack,
    /// It succeeded, and the node's run before it had failed.
    Recovered,
    /// A recheck found the host drifted from the deployed commit (`node::drift`).
    Drifted,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::RolledBack => "rolled_back",
            Event::Recovered => "recovered",
            Event::Drifted => "drifted",
        }
    }
}

/// Whether `record` is worth a notification, given the node's run before it.
pub fn event(record: &RunRecord, previous: Option<&RunRecord>) -> Option<Event> {
    match record.status {
        RunStatus::Failed => Some(Event::Failed),
        // The last good commit ran again after a failure: the record is the rollback's
        // (`rollback_of` names the failed run).
        RunStatus::Succeeded if record.trigger == crate::model::records::Trigger::Rollback => {
            Some(Event::RolledBack)
        }
        RunStatus::Succeeded if previous.is_some_and(|p| failed(p.status)) => Some(Event::Recovered),
        _ => None,
    }
}

/// A run that failed, or failed and was rolled back (status `rolled_back`).
fn failed(status: RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::RolledBack)
}

/// Whether `record` is worth a notification on `node`: a command is set, and the run failed, was
/// rolled back to, or recovered.
pub fn worth_telling(node: &Node, record: &RunRecord) -> bool {
    node.config.notify.command.is_some() && event(record, previous(node, record).as_ref()).is_some()
}

/// After a run in a process that ends soon (a CLI command, a hook): hands the notification, if
/// the run is worth one, to a detached `troops notify`, and returns without waiting for it.
pub fn in_background(node: &Node, record: &RunRecord) {
    if !worth_telling(node, record) {
        return;
    }
    if let Err(e) = crate::mech::background::troops(node, &["notify", &record.id.to_string()]) {
        tracing::warn!(run = record.id, error = %e, "cannot start troops notify");
    }
}

/// Runs the notify command for run `id` of `node` if the run is worth one, and waits for it (at
/// most its timeout and the grace), logging how it went: `troops notify RUN`, and the daemon's
/// notify job.
pub fn now(node: &Node, id: u64) -> Result<()> {
    let Some(command) = &node.config.notify.command else { return Ok(()) };
    let record = node.runs().load(id)?;
    let Some(event) = event(&record, previous(node, &record).as_ref()) else { return Ok(()) };
    let result = for_run(command, node.config.notify.timeout, &record, event);
    log_result(id, event, &result);
    result
}

/// Runs `command` for `event` of `record`, the record as JSON on its stdin.
fn for_run(command: &str, timeout: Duration, record: &RunRecord, event: Event) -> Result<()> {
    let env = [
        ("TROOPS_RUN_ID", record.id.to_string()),
        ("TROOPS_COMMIT", record.commit.to_string()),
        ("TROOPS_STATUS", record.status.to_string()),
        ("TROOPS_HOST", record.host.clone()),
    ];
    let input = serde_json::to_string_pretty(record).expect("run records serialize");
    notify(command, timeout, record.id, event, &env, input)
}

/// Tells the notify command, if there is one, that the recheck after run `run` found the host
/// drifted from `commit` (`found`, as JSON on stdin), and waits for it like [`now`].
pub fn drift(node: &Node, run: u64, commit: &str, found: &[String]) -> Result<()> {
    let Some(command) = &node.config.notify.command else { return Ok(()) };
    let env = [
        ("TROOPS_RUN_ID", run.to_string()),
        ("TROOPS_COMMIT", commit.to_owned()),
        ("TROOPS_STATUS", "drifted".to_owned()),
        ("TROOPS_HOST", node.config.hostname()),
    ];
    let input =
        serde_json::json!({ "host": node.config.hostname(), "commit": commit, "run": run, "drift": found });
    let result = notify(command, node.config.notify.timeout, run, Event::Drifted, &env, input.to_string());
    log_result(run, Event::Drifted, &result);
    result
}

/// The node's newest run before `record` that can be read.
fn previous(node: &Node, record: &RunRecord) -> Option<RunRecord> {
    let runs = node.runs();
    runs.ids().ok()?.into_iter().rev().filter(|&id| id < record.id).find_map(|id| runs.load(id).ok())
}

fn log_result(run: u64, event: Event, result: &Result<()>) {
    match result {
        Ok(()) => tracing::info!(run, event = event.name(), "notify command succeeded"),
        Err(e) => tracing::warn!(run, event = event.name(), error = %e, "notify command failed"),
    }
}

/// Runs `command` for `event` of run `run` under a supervisor of its own, for at most `timeout`,
/// with `vars` added to its environment and `input` on its stdin.
fn notify(
    command: &str,
    timeout: Duration,
    run: u64,
    event: Event,
    vars: &[(&'static str, String)],
    input: String,
) -> Result<()> {
    let mut env = crate::mech::env::base();
    env.extend(vars.iter().cloned());
    env.push(("TROOPS_EVENT", event.name().to_owned()));
    let request = supervise::Request {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "--".into(), command.to_owned()],
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        dir: "/".into(),
        grace_ms: KILL_GRACE.as_millis() as u64,
        input: Some(input),
    };
    let mut output = Logged::new(|line: &[u8]| {
        tracing::info!(run, output = %String::from_utf8_lossy(line), "notify command");
    });
    let result = runner::run(
        &mut Supervisor::new(&[]),
        "the notify command",
        &request,
        timeout,
        &AtomicBool::new(false),
        &mut Output::new(&mut output),
    );
    let dropped = output.finish();
    if dropped > 0 {
        tracing::info!(run, bytes = dropped, "notify command: the rest of its output was not logged");
    }
    let result = result?;
    match (result.status, result.exit_code) {
        (StepStatus::Succeeded, _) => Ok(()),
        (StepStatus::TimedOut, _) => Err(Error::Env(format!(
            "the notify command `{command}` took longer than {}; it was ended with everything it started",
            humantime::format_duration(timeout)
        ))),
        (_, Some(code)) => {
            Err(Error::Env(format!("the notify command `{command}` ended with exit status: {code}")))
        }
        (_, None) => Err(Error::Env(format!("the notify command `{command}` ended without a status"))),
    }
}

/// The command's output, a line at a time to `line`: at most [`MAX_LOGGED_LINES`] lines of at
/// most [`MAX_LOGGED_LINE`] bytes. The rest is counted and dropped, so output without end, or
/// without a newline, costs no memory.
struct Logged<F: FnMut(&[u8])> {
    line: F,
    /// The line under way, up to its limit.
    pending: Vec<u8>,
    lines: usize,
    dropped: u64,
}

impl<F: FnMut(&[u8])> Logged<F> {
    fn new(line: F) -> Logged<F> {
        Logged { line, pending: Vec::new(), lines: 0, dropped: 0 }
    }

    fn end_line(&mut self) {
        if self.lines < MAX_LOGGED_LINES {
            (self.line)(&self.pending);
            self.lines += 1;
        }
        self.pending.clear();
    }

    /// Logs the last line if it had no newline; returns how many bytes were dropped.
    fn finish(mut self) -> u64 {
        if !self.pending.is_empty() {
            self.end_line();
        }
        self.dropped
    }
}

impl<F: FnMut(&[u8])> Write for Logged<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for piece in buf.split_inclusive(|&b| b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            let room = if self.lines < MAX_LOGGED_LINES { MAX_LOGGED_LINE - self.pending.len() } else { 0 };
            let kept = text.len().min(room);
            self.pending.extend_from_slice(&text[..kept]);
            self.dropped += (text.len() - kept) as u64;
            if ends {
                self.end_line();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::Trigger;

    fn record(id: u64, status: RunStatus) -> RunRecord {
        RunRecord::for_test(id, &"c".repeat(40), status)
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

    /// Whether `pid` runs (a zombie is dead: only its parent has not looked yet).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'))
    }

    #[test]
    fn a_hanging_command_is_ended_at_its_timeout_with_all_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A background child, and one in a session of its own (out of the command's group).
        let command =
            format!("sleep 600 & echo $! > {0}; setsid sleep 600 & echo $! >> {0}; wait", pids.display());
        let started = std::time::Instant::now();
        let e = for_run(&command, Duration::from_millis(500), &record(1, RunStatus::Failed), Event::Failed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("took longer than 500ms; it was ended with everything it started"), "{e}");
        assert!(started.elapsed() < troops_testkit::BUDGET, "the 600 s sleep went on");
        // Ended before notify returned, not just signalled.
        let pids = std::fs::read_to_string(&pids).unwrap();
        assert_eq!(pids.lines().count(), 2, "{pids}");
        for pid in pids.lines() {
            assert!(!alive(pid), "{pid} outlived the notify command");
        }
    }

    #[test]
    fn output_is_logged_a_bounded_line_at_a_time_and_the_rest_dropped() {
        let mut lines = Vec::new();
        let mut logged = Logged::new(|line: &[u8]| lines.push(line.to_vec()));
        logged.write_all(b"one\ntw").unwrap();
        logged.write_all(b"o\n").unwrap();
        // A line without end, in many writes: one line of the limit is kept.
        for _ in 0..1000 {
            logged.write_all(&[b'x'; 1000]).unwrap();
        }
        logged.write_all(b"\n").unwrap();
        for i in 0..MAX_LOGGED_LINES {
            logged.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        logged.write_all(b"unfinished").unwrap();
        let dropped = logged.finish();
        assert_eq!(lines.len(), MAX_LOGGED_LINES);
        assert_eq!((lines[0].as_slice(), lines[1].as_slice()), (&b"one"[..], &b"two"[..]));
        assert_eq!(lines[2], vec![b'x'; MAX_LOGGED_LINE]);
        assert_eq!(lines[3], b"line 0");
        let last_kept = MAX_LOGGED_LINES - 4;
        assert_eq!(lines.last().unwrap(), format!("line {last_kept}").as_bytes());
        let dropped_lines: u64 =
            (last_kept + 1..MAX_LOGGED_LINES).map(|i| format!("line {i}").len() as u64).sum();
        assert_eq!(dropped, (1_000_000 - MAX_LOGGED_LINE) as u64 + dropped_lines + "unfinished".len() as u64);
    }

    #[test]
    fn the_command_reads_the_record_and_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let command = format!("cat > {0}.json; env | sort > {0}.env", out.display());
        for_run(&command, Duration::from_secs(30), &record(7, RunStatus::Failed), Event::Failed).unwrap();
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
