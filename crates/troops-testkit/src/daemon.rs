//! A `troops daemon` child for one test: started against the test's node, ready once its control
//! socket answers, stopped with SIGTERM (and reaped) when dropped.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{wait_until, Env};

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(env: &Env) -> Daemon {
        Daemon::start_with(env, &[])
    }

    /// A daemon with `vars` added to its environment (as systemd adds NOTIFY_SOCKET).
    pub fn start_with(env: &Env, vars: &[(&str, &str)]) -> Daemon {
        let mut command = env.troops(&["daemon"]);
        command.envs(vars.iter().copied());
        Daemon::start_command(env, command)
    }

    /// Starts `command`, which must exec `troops daemon` in its own process (a `prlimit` wrapper,
    /// say), and waits until the daemon serves.
    pub fn start_command(env: &Env, mut command: std::process::Command) -> Daemon {
        let log = env.path("daemon.log");
        command.env("TROOPS_LOG", "info").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let mut daemon = Daemon { child: command.spawn().expect("starting troops daemon"), log };
        let socket = env.state.join("troops.sock");
        wait_until("the daemon's control socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the daemon exited early ({status}):\n{}", daemon.log());
            }
            // A whole request, as `troops status` makes it, so the daemon logs no broken connection.
            std::os::unix::net::UnixStream::connect(&socket).is_ok_and(|mut stream| {
                let mut answer = String::new();
                stream.write_all(b"{\"op\":\"status\"}\n").is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.contains("\"done\"")
            })
        });
        daemon
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the daemon to exit on its own (after a signal) and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut status = None;
        wait_until("the daemon to exit", limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
