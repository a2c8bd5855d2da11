//! Runs a run's steps, and the other commands troops must end with everything they started
//! (`run` health checks, the notify command): `/bin/sh -c` or a script from the checkout, each
//! under a supervisor (`supervise`), with exactly the environment it is given, stdin `/dev/null`
//! (or the input it is given), stdout and stderr merged into one pipe whose bytes go to the
//! caller as they come. A step ends when its main process exits, times out or is stopped; then
//! everything it started is ended too (SIGTERM, then SIGKILL after the step's `kill_grace`)
//! before the next step starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::mech::output::Output;
use crate::mech::supervise;
use crate::model::error::{Context, Result};
use crate::model::plan::{Action, Step};
use crate::model::records::StepStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub status: StepStatus,
    /// The exit code, or 128 + the signal that ended the step (as a shell reports it).
    pub exit_code: Option<i32>,
    /// Why the step could not even start (its program could not be executed), if so.
    pub cannot_start: Option<String>,
    pub duration: Duration,
}

/// How often a running step looks at the stop flag, which a signal handler or another thread sets.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Why troops ended a step before its main process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    TimedOut,
    Stopped,
}

/// The supervisor of a run's steps, started on the first step and again after one that it ended
/// by signal (it exits then); it exits when dropped.
pub struct Supervisor {
    /// The environment the supervisor itself carries: the run's, by which leftovers of a run
    /// whose troops was SIGKILLed are found (`supervise::end_leftovers`).
    env: Vec<(String, String)>,
    running: Option<Running>,
}

struct Running {
    child: Child,
    exited: OwnedFd,
    requests: UnixStream,
    answers: BufReader<UnixStream>,
    output: std::io::PipeReader,
}

impl Supervisor {
    pub fn new(env: &[(&str, String)]) -> Supervisor {
        Supervisor { env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), running: None }
    }

    fn running(&mut self, what: &str) -> Result<&mut Running> {
        if self.running.is_none() {
            self.running = Some(self.start().ctx(|| format!("starting the supervisor of {what}"))?);
        }
        Ok(self.running.as_mut().expect("started above"))
    }

    fn start(&self) -> std::io::Result<Running> {
        let (output, writer) = std::io::pipe()?;
        let (requests, theirs) = UnixStream::pair()?;
        let stderr = writer.try_clone()?;
        let mut command = supervise::command(&self.env);
        command.current_dir("/").stdin(Stdio::from(OwnedFd::from(theirs))).stdout(writer).stderr(stderr);
        let child = command.spawn()?;
        drop(command); // closes our copies of its ends
        let exited = pidfd_open(child.id() as i32)?;
        let answers = BufReader::new(requests.try_clone()?);
        Ok(Running { child, exited, requests, answers, output })
    }
}

impl Drop for Running {
    /// The end of its requests: the supervisor exits, and is reaped.
    fn drop(&mut self) {
        let _ = self.requests.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// Runs `step` in `checkout` under `supervisor` with `env` (the whole environment but the
/// step's own `env`), relaying its output to `out` as it is produced; `stop`, once set, ends the
/// step. Errors only when troops itself cannot work (no pipe, no supervisor); a step that cannot
/// start is a failed step, explained in `out`.
pub fn run_step(
    supervisor: &mut Supervisor,
    step: &Step,
    checkout: &Path,
    env: &[(&str, String)],
    stop: &AtomicBool,
    out: &mut Output,
) -> Result<StepResult> {
    let (program, args) = match &step.action {
        Action::Run(run) => ("/bin/sh".into(), vec!["-c".to_owned(), "--".to_owned(), run.clone()]),
        Action::Script(path) => (checkout.join(path), vec![]),
    };
    let request = supervise::Request {
        program,
        args,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(step.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect(),
        dir: checkout.to_owned(),
        grace_ms: step.kill_grace.as_millis() as u64,
        input: None,
    };
    run(supervisor, &format!("step `{}`", step.name), &request, step.timeout, stop, out)
}

/// Runs `request` under `supervisor` as [`run_step`] runs a step, for at most `timeout`; `what`
/// names it in what troops says (`step `build``, `the notify command`). Its output reaches `out`
/// in reads of at most 16 KiB, as it comes: nothing here holds more of it.
pub fn run(
    supervisor: &mut Supervisor,
    what: &str,
    request: &supervise::Request,
    timeout: Duration,
    stop: &AtomicBool,
    out: &mut Output,
) -> Result<StepResult> {
    let started = Instant::now();
    let running = supervisor.running(what)?;
    let line = serde_json::to_string(request).expect("requests serialize") + "\n";
    running.requests.write_all(line.as_bytes()).ctx(|| format!("starting {what}"))?;
    let deadline = started + timeout;
    let mut ending = None;
    let mut buf = [0u8; 16 * 1024];
    let mut answer = String::new();
    let status = loop {
        let now = Instant::now();
        if ending.is_none() {
            ending = if now >= deadline {
                let _ = writeln!(
                    out,
                    "troops: {what} timed out after {}; ending everything it started",
                    humantime::format_duration(timeout)
                );
                Some(Ending::TimedOut)
            } else if stop.load(Ordering::SeqCst) {
                let _ = writeln!(out, "troops: asked to stop; ending {what} and everything it started");
                Some(Ending::Stopped)
            } else {
                None
            };
            if ending.is_some() {
                // The supervisor ends the step's whole tree, answers, and exits.
                let _ = kill(Pid::from_raw(running.child.id() as i32), Signal::SIGTERM);
            }
        }
        let wait = match ending {
            None => deadline.saturating_duration_since(now).min(STOP_CHECK),
            Some(_) => STOP_CHECK,
        };
        let ms = PollTimeout::try_from(wait.as_millis() as i32 + 1).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(running.answers.get_ref().as_fd(), PollFlags::POLLIN),
            PollFd::new(running.output.as_fd(), PollFlags::POLLIN),
            PollFd::new(running.exited.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| format!("waiting for {what}")),
            Ok(_) => {}
        }
        let [answered, output, exited] = fds.map(|f| f.any().unwrap_or(false));
        if output {
            copy_available(&mut running.output, &mut buf, out);
        }
        if answered || exited {
            // Everything the step started is gone: what they wrote is in the pipe already.
            drain(&running.output, &mut buf, out);
            let status = match running.answers.read_line(&mut answer) {
                Ok(n) if n > 0 => supervise::Answer::parse(&answer),
                _ => None,
            };
            break status;
        }
    };
    let (exit_code, cannot_start) = match status {
        Some(answer) => (Some(answer.status), answer.cannot_start),
        None => {
            // The supervisor died without answering (killed, say): what it says by its own end.
            let mut gone = supervisor.running.take().expect("running above");
            let status = gone.child.wait().ctx(|| format!("waiting for {what}"))?;
            (status.code().or_else(|| status.signal().map(|s| 128 + s)), None)
        }
    };
    if ending.is_some() {
        drop(supervisor.running.take()); // it exits after a SIGTERM; the next step starts another
    }
    let status = match (ending, exit_code) {
        (Some(Ending::TimedOut), _) => StepStatus::TimedOut,
        (Some(Ending::Stopped), _) => StepStatus::Interrupted,
        (None, Some(0)) => StepStatus::Succeeded,
        (None, _) => StepStatus::Failed,
    };
    Ok(StepResult { status, exit_code, cannot_start, duration: started.elapsed() })
}

/// Relays one read's worth of output; false at end of file.
fn copy_available(reader: &mut impl Read, buf: &mut [u8], out: &mut Output) -> bool {
    match reader.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = out.relay(&buf[..n]);
            let _ = out.flush();
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
    }
}

/// Copies whatever is in the pipe now, without blocking on writers that are still alive.
fn drain(reader: &std::io::PipeReader, buf: &mut [u8], out: &mut Output) {
    let mut reader = reader;
    loop {
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            || !copy_available(&mut reader, buf, out)
        {
            return;
        }
    }
}

/// The most of a helper's output (git's stderr, say, which a remote's messages fill) that is kept
/// by [`read_tail`].
pub(crate) const MAX_KEPT_OUTPUT: usize = 64 * 1024;

/// Reads `reader` to its end in pieces, keeping only its last `max` bytes (where git's complaint
/// is), as text: a helper that writes without end costs no more memory than that.
pub(crate) fn read_tail(mut reader: impl Read, max: usize) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * max {
                    kept.drain(..kept.len() - max);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let start = kept.len().saturating_sub(max);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

/// Waits for `child`, the leader of its own process group, until `deadline`; past it, kills the
/// whole group, reaps the child and returns `None`.
pub(crate) fn wait_or_kill(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let exited = pidfd_open(child.id() as i32)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(exited.as_fd(), PollFlags::POLLIN)], ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) if Instant::now() >= deadline => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                child.wait()?;
                return Ok(None);
            }
            Ok(0) => continue,
            Ok(_) => return child.wait().map(Some),
        }
    }
}

/// A file descriptor that becomes readable when process `pid` exits (Linux 5.3+).
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(run: &str, timeout_ms: u64) -> Step {
        Step {
            name: "t".into(),
            roles: None,
            paths: Vec::new(),
            action: Action::Run(run.into()),
            preview: None,
            timeout: Duration::from_millis(timeout_ms),
            kill_grace: Duration::from_millis(300),
            env: BTreeMap::from([("LEVEL".into(), "prod".into())]),
            phase: crate::model::plan::Phase::Build,
            disruptive: false,
        }
    }

    fn run_with(run: &str, timeout_ms: u64, stop: &AtomicBool) -> (StepResult, String) {
        let mut out = Vec::new();
        let env = [("TROOPS_STEP", "t".into()), ("PATH", "/usr/bin:/bin".into())];
        let mut supervisor = Supervisor::new(&[]);
        let step = step(run, timeout_ms);
        let result =
            run_step(&mut supervisor, &step, Path::new("/"), &env, stop, &mut Output::new(&mut out)).unwrap();
        (result, String::from_utf8(out).unwrap())
    }

    fn run(run: &str, timeout_ms: u64) -> (StepResult, String) {
        run_with(run, timeout_ms, &AtomicBool::new(false))
    }

    fn alive(pid: &str) -> bool {
        let pid = Pid::from_raw(pid.trim().parse().unwrap());
        // A zombie is dead too: only its parent has not looked yet.
        kill(pid, None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
    }

    #[test]
    fn output_is_merged_and_env_is_set_and_nothing_else() {
        let (r, out) = run(
            "echo out; echo err >&2; echo $TROOPS_STEP $LEVEL; read x || echo no-stdin; umask; env | cut -d= -f1 | sort | tr '\\n' ' '",
            10_000,
        );
        assert_eq!((r.status, r.exit_code), (StepStatus::Succeeded, Some(0)));
        assert_eq!(out, "out\nerr\nt prod\nno-stdin\n0022\nLEVEL PATH PWD TROOPS_STEP ");
    }

    #[test]
    fn the_step_starts_with_no_signal_blocked() {
        // A step that could not see SIGTERM could not be ended by it.
        let (r, out) = run("exec grep '^SigBlk' /proc/self/status", 10_000);
        assert_eq!(r.status, StepStatus::Succeeded, "{out}");
        assert_eq!(out, "SigBlk:\t0000000000000000\n");
    }

    #[test]
    fn failure_keeps_the_exit_code() {
        let (r, _) = run("exit 7", 10_000);
        assert_eq!((r.status, r.exit_code), (StepStatus::Failed, Some(7)));
        let (r, _) = run("kill -9 $$", 10_000);
        assert_eq!((r.status, r.exit_code), (StepStatus::Failed, Some(137)));
    }

    #[test]
    fn what_a_step_leaves_behind_is_ended_with_it() {
        // A background child, one in its own session, one that ignores SIGTERM (killed after
        // the grace), a double fork: all gone when the step is.
        let (r, out) = run(
            "sleep 30 & echo $!; setsid sleep 30 & echo $!; \
             f=$(mktemp); sh -c \"trap '' TERM; echo \\$\\$ > $f; exec sleep 60\" & \
             while [ ! -s $f ]; do sleep 0.01; done; cat $f; rm $f; \
             sh -c 'sleep 30 & echo $!' ; echo done",
            20_000,
        );
        assert_eq!((r.status, r.exit_code), (StepStatus::Succeeded, Some(0)), "{out}");
        let pids: Vec<&str> = out.lines().filter(|l| *l != "done").collect();
        assert_eq!(pids.len(), 4, "{out}");
        for pid in pids {
            assert!(!alive(pid), "{pid} outlived its step: {out}");
        }
        // The one that ignores SIGTERM took the grace, and no more than a while longer.
        assert!((300..5000).contains(&r.duration.as_millis()), "{:?}", r.duration);
    }

    #[test]
    fn one_supervisor_serves_the_steps_of_a_run_and_another_follows_one_it_ended() {
        let mut supervisor = Supervisor::new(&[]);
        let stop = AtomicBool::new(false);
        let mut step_in = |run: &str, timeout_ms| {
            let mut out = Vec::new();
            let env = [("PATH", "/usr/bin:/bin".to_owned())];
            let step = step(run, timeout_ms);
            let r = run_step(&mut supervisor, &step, Path::new("/"), &env, &stop, &mut Output::new(&mut out));
            (r.unwrap().status, String::from_utf8(out).unwrap())
        };
        let (_, first) = step_in("echo $PPID", 10_000);
        assert_eq!(step_in("echo $PPID", 10_000).1, first, "the same supervisor");
        assert_eq!(step_in("sleep 30", 200).0, StepStatus::TimedOut);
        let (status, after) = step_in("echo $PPID", 10_000);
        assert_eq!(status, StepStatus::Succeeded);
        assert_ne!(after, first, "a new supervisor");
    }

    #[test]
    fn a_timeout_ends_the_step_and_its_children() {
        let (r, out) = run("setsid sleep 30 & echo $!; sleep 30", 300);
        assert_eq!(r.status, StepStatus::TimedOut, "{out}");
        assert_eq!(r.exit_code, Some(143), "{out}");
        assert!(!alive(out.lines().next().unwrap()), "{out}");
        assert!(out.contains("timed out after 300ms"), "{out}");
        // What troops says of it starts a line, also after output that ended mid-line.
        let (r, out) = run("printf 'progress 50%%'; sleep 30", 300);
        assert_eq!(r.status, StepStatus::TimedOut, "{out}");
        assert!(out.starts_with("progress 50%\ntroops: step `t` timed out after 300ms;"), "{out}");
    }

    #[test]
    fn stop_ends_the_step() {
        let stop = AtomicBool::new(true);
        let (r, out) = run_with("sleep 60", 60_000, &stop);
        assert_eq!(r.status, StepStatus::Interrupted, "{out}");
        assert!(r.duration < troops_testkit::BUDGET, "the 60 s step went on: {:?}", r.duration);
    }

    #[test]
    fn read_tail_keeps_the_end_of_output_without_end() {
        let endless = std::io::repeat(b'x').take(10 << 20).chain(&b"fatal: the end"[..]);
        let tail = read_tail(endless, 100);
        assert_eq!(tail.len(), 100);
        assert!(tail.ends_with("xxfatal: the end"), "{tail}");
        assert_eq!(read_tail(&b"short"[..], 100), "short");
    }

    #[test]
    fn a_script_that_cannot_start_fails_the_step() {
        let mut s = step("", 10_000);
        s.action = Action::Script("no/such/script".into());
        let mut out = Vec::new();
        let stop = AtomicBool::new(false);
        let r =
            run_step(&mut Supervisor::new(&[]), &s, Path::new("/"), &[], &stop, &mut Output::new(&mut out))
                .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!((r.status, r.exit_code), (StepStatus::Failed, Some(supervise::CANNOT_START)));
        assert!(out.contains("cannot start /no/such/script"), "{out}");
        assert_eq!(r.cannot_start.as_deref(), Some("No such file or directory (os error 2)"));
        // A file without its executable bit: the system's words come back with the status.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain.sh"), "#!/bin/sh\necho never\n").unwrap();
        s.action = Action::Script("plain.sh".into());
        let r = run_step(
            &mut Supervisor::new(&[]),
            &s,
            dir.path(),
            &[],
            &AtomicBool::new(false),
            &mut Output::new(&mut Vec::new()),
        )
        .unwrap();
        assert_eq!((r.status, r.exit_code), (StepStatus::Failed, Some(supervise::CANNOT_START)));
        assert_eq!(r.cannot_start.as_deref(), Some("Permission denied (os error 13)"));
        // A step that started and exited 127 itself did start.
        assert_eq!(run("exit 127", 10_000).0.cannot_start, None);
    }
}
