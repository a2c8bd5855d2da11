//! Runs one step: `/bin/sh -c` or a script from the checkout, in its own process group, stdin
//! `/dev/null`, stdout and stderr merged into one pipe whose bytes go to the caller as they come.
//! On timeout the whole process group is killed. The step ends when its main process exits:
//! what background children it left keep running, but the run does not wait for them.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Context, Result};
use crate::plan::{Action, Step};
use crate::runs::StepStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepResult {
    pub status: StepStatus,
    /// The exit code, or 128 + the signal that ended the step (as a shell reports it).
    pub exit_code: Option<i32>,
    pub duration: Duration,
}

/// Runs `step` in `checkout` with `env` added to the inherited environment, copying its output to
/// `out` as it is produced. Errors only when troops itself cannot work (no pipe); a step that
/// cannot start is a failed step, explained in `out`.
pub fn run_step(
    step: &Step,
    checkout: &Path,
    env: &[(&str, String)],
    out: &mut dyn Write,
) -> Result<StepResult> {
    let started = Instant::now();
    let (mut reader, writer) =
        std::io::pipe().ctx(|| format!("creating the output pipe of step `{}`", step.name))?;
    let mut command = match &step.action {
        Action::Run(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
        Action::Script(path) => Command::new(checkout.join(path)),
    };
    let stderr = writer.try_clone().ctx(|| format!("creating the output pipe of step `{}`", step.name))?;
    command
        .current_dir(checkout)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .process_group(0)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(&step.env);
    let spawned = command.spawn();
    drop(command); // closes our copies of the pipe's write end, so EOF can come
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = writeln!(out, "troops: cannot start step `{}`: {e}", step.name);
            return Ok(StepResult {
                status: StepStatus::Failed,
                exit_code: None,
                duration: started.elapsed(),
            });
        }
    };
    let pid = child.id() as i32;
    let deadline = started + step.timeout;
    let exited = pidfd_open(pid).ctx(|| format!("watching step `{}`", step.name))?;
    let mut open = true;
    let mut timed_out = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = vec![PollFd::new(exited.as_fd(), PollFlags::POLLIN)];
        if open {
            fds.push(PollFd::new(reader.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| format!("waiting for step `{}`", step.name)),
            Ok(0) if Instant::now() >= deadline => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = writeln!(
                    out,
                    "troops: step `{}` timed out after {}; killed its process group",
                    step.name,
                    humantime::format_duration(step.timeout)
                );
                timed_out = true;
                break;
            }
            Ok(_) => {}
        }
        let done = fds[0].any().unwrap_or(false);
        if open && fds.get(1).and_then(|f| f.any()).unwrap_or(false) {
            open = copy_available(&mut reader, &mut buf, out);
        }
        if done {
            // The main process is gone: take what it wrote, but do not wait for its children.
            if open {
                drain(&reader, &mut buf, out);
            }
            break;
        }
    }
    let status = child.wait().ctx(|| format!("waiting for step `{}`", step.name))?;
    let exit_code = status.code().or_else(|| status.signal().map(|s| 128 + s));
    let status = match (timed_out, status.success()) {
        (true, _) => StepStatus::TimedOut,
        (false, true) => StepStatus::Succeeded,
        (false, false) => StepStatus::Failed,
    };
    Ok(StepResult { status, exit_code, duration: started.elapsed() })
}

/// Copies one read's worth of output; false at end of file.
fn copy_available(reader: &mut impl Read, buf: &mut [u8], out: &mut dyn Write) -> bool {
    match reader.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
    }
}

/// Copies whatever is in the pipe now, without blocking on writers that are still alive.
fn drain(reader: &std::io::PipeReader, buf: &mut [u8], out: &mut dyn Write) {
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
            action: Action::Run(run.into()),
            timeout: Duration::from_millis(timeout_ms),
            env: BTreeMap::from([("LEVEL".into(), "prod".into())]),
        }
    }

    fn run(run: &str, timeout_ms: u64) -> (StepResult, String) {
        let mut out = Vec::new();
        let result =
            run_step(&step(run, timeout_ms), Path::new("/"), &[("TROOPS_STEP", "t".into())], &mut out)
                .unwrap();
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn output_is_merged_and_env_is_set() {
        let (r, out) =
            run("echo out; echo err >&2; echo $TROOPS_STEP $LEVEL; read x || echo no-stdin", 10_000);
        assert_eq!((r.status, r.exit_code), (StepStatus::Succeeded, Some(0)));
        assert_eq!(out, "out\nerr\nt prod\nno-stdin\n");
    }

    #[test]
    fn failure_keeps_the_exit_code() {
        let (r, _) = run("exit 7", 10_000);
        assert_eq!((r.status, r.exit_code), (StepStatus::Failed, Some(7)));
    }

    #[test]
    fn background_children_do_not_hold_the_step() {
        let (r, out) = run("echo started; sleep 30 & echo $! > /dev/null", 20_000);
        assert_eq!(r.status, StepStatus::Succeeded);
        assert!(r.duration < Duration::from_secs(10), "{:?}", r.duration);
        assert_eq!(out, "started\n");
    }
}
