//! What a run in-process (no daemon: a push hook, cron's `troops pull`, `troops deploy`) leaves to
//! be done after it, publishing the node's status and the notify command, handed to a detached
//! `troops` so that whoever waits for the run (a pusher's `git push`, cron, a terminal) never
//! waits for that too. The process has a session of its own, none of its starter's environment
//! but a networked child's (`env::network`), none of its starter's descriptors (stdin, stdout and stderr are `/dev/null`, every other descriptor closes at exec),
//! and is never waited for.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::model::node::Node;

/// Starts `troops --state-dir S --config C ARGS...` for `node`, detached, and returns once it is
/// started. The `troops` started is the one beside the running executable (`troops-hook` is
/// installed beside it), else the one on PATH.
pub fn troops(node: &Node, args: &[&str]) -> std::io::Result<()> {
    let troops = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("troops")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| "troops".into());
    let mut command = crate::mech::env::command(troops, crate::mech::env::network());
    command.arg("--state-dir").arg(&node.state_dir).arg("--config").arg(&node.config.path).args(args);
    detached(command)
}

/// Starts `command` detached, as [`troops`] does.
fn detached(mut command: Command) -> std::io::Result<()> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: between fork and exec the child only makes system calls (setsid, close_range,
    // getrlimit, fcntl), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            close_inherited_at_exec();
            Ok(())
        });
    }
    command.spawn().map(drop)
}

/// Marks every descriptor above stderr close-on-exec: those this process inherited without the
/// mark (a hook's, from git) too, so the child holds none of them open. Kernels before 5.11 lack
/// `CLOSE_RANGE_CLOEXEC`; there each descriptor up to the soft limit is marked.
fn close_inherited_at_exec() {
    // SAFETY: close_range with these arguments only changes this process's descriptor flags.
    let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if marked == 0 {
        return;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    for fd in 3..limit.rlim_cur.min(i32::MAX as u64) as i32 {
        // SAFETY: F_SETFD on a descriptor that is not open fails with EBADF and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn the_child_has_a_session_of_its_own_and_none_of_our_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        // A descriptor without close-on-exec, as a hook inherits from git.
        let (_read, held) = std::io::pipe().unwrap();
        // SAFETY: clears FD_CLOEXEC on our own pipe's write end.
        assert_eq!(unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETFD, 0) }, 0);
        let ours = std::fs::read_link(format!("/proc/self/fd/{}", held.as_raw_fd())).unwrap();

        let out = dir.path().join("pid");
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(format!("echo $$ > {0}.tmp && mv {0}.tmp {0} && exec sleep 60", out.display()));
        detached(command).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Ok(pid) = std::fs::read_to_string(&out) {
                break pid.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the detached command never ran");
            std::thread::sleep(Duration::from_millis(10));
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the name's `)`: state, ppid, pgrp, session.
        let session = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(3).unwrap().to_owned();
        let fds: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read_link(e.path()).unwrap())
            })
            .collect();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(session, pid, "not the leader of a session of its own");
        assert!(!fds.iter().any(|(_, target)| *target == ours), "it holds our pipe: {fds:?}");
        for (fd, target) in &fds {
            assert!(["0", "1", "2"].contains(&fd.as_str()), "it holds descriptor {fd} ({target:?})");
            assert_eq!(target, std::path::Path::new("/dev/null"));
        }
    }
}
