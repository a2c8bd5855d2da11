//! The supervisor of a run's steps (and of the other commands troops runs for an operator and
//! must end: `run` health checks, the notify command), so that a step's end ends everything it
//! started. The runner starts one per run as a re-exec of the troops binary (`/proc/self/exe __troops-supervise`,
//! entered at the top of each binary's `main` through [`enter_if_asked`]); one per run, not per
//! step, because an exec of troops costs milliseconds and a trivial step less than one. It reads
//! one [`Request`] line per step from its stdin (a socket to the runner), starts the step and
//! writes back its status, and exits at end of file. It is a child subreaper, so what a step
//! leaves behind (`setsid`, a double fork) is reparented to it rather than to init: when the
//! step's main process exits, or the runner sends SIGTERM (timeout, stop), or the runner's thread
//! dies (PDEATHSIG), every descendant still alive gets SIGTERM, then SIGKILL after the grace, and
//! only once none is left does the supervisor answer with the step's status (its exit code, or
//! 128 + the signal that ended it; for a step that could not start, 127 and why). After a SIGTERM
//! it exits too.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The hidden first argument that makes a troops binary a supervisor.
pub const ARG: &str = "__troops-supervise";

/// The status of a step that cannot start (as a shell reports a missing command).
pub const CANNOT_START: i32 = 127;

/// The supervisor's answer for one step, one line: its status, then, if it could not even start,
/// why (the system's words: "Permission denied", "No such file or directory"...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: i32,
    pub cannot_start: Option<String>,
}

impl Answer {
    fn line(&self) -> String {
        match &self.cannot_start {
            None => self.status.to_string(),
            Some(why) => format!("{} {}", self.status, why.replace('\n', " ")),
        }
    }

    /// The answer in `line`; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Answer> {
        let line = line.trim();
        let (status, why) = line.split_once(' ').map_or((line, None), |(s, why)| (s, Some(why)));
        Some(Answer { status: status.parse().ok()?, cannot_start: why.map(str::to_owned) })
    }
}

/// One step for the supervisor to run: exactly this program, environment and directory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub grace_ms: u64,
    /// Fed to its stdin, which is `/dev/null` without it.
    #[serde(default)]
    pub input: Option<String>,
}

/// The supervisor's command, with the environment `env` (the run's), for the runner to complete
/// with its stdin (the request socket) and output.
pub fn command(env: &[(String, String)]) -> Command {
    let mut c = crate::mech::env::command("/proc/self/exe", env.iter().map(|(k, v)| (k, v)));
    c.arg(ARG)
        .arg(std::process::id().to_string())
        // Its own process group: a terminal's Ctrl-C reaches troops, which decides, not the steps.
        .process_group(0);
    c
}

/// Called first thing in each binary's `main`: when this process was started as a supervisor,
/// supervises and exits; otherwise returns at once.
pub fn enter_if_asked() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(OsStr::new(ARG)) {
        std::process::exit(supervise(args.collect()));
    }
}

/// `args`: the runner's pid. Requests come on stdin, answers go back on it.
fn supervise(args: Vec<OsString>) -> i32 {
    let Some(runner) = args.first().and_then(|a| a.to_str()?.parse::<i32>().ok()) else {
        eprintln!("troops: {ARG} needs the runner's pid");
        return 2;
    };
    // SAFETY: prctl with integer arguments only changes attributes of this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
    }
    if nix::unistd::getppid().as_raw() != runner {
        return 1; // the runner died before PDEATHSIG was armed: start nothing
    }
    // Taken as they come with sigtimedwait, never by a handler; steps start with none blocked.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    umask(Mode::from_bits_truncate(0o022));
    // SAFETY: fd 0 is the runner's socket, ours alone from here on.
    let socket = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(0) });
    let mut answers = socket.try_clone().expect("duplicating the runner's socket");
    for line in BufReader::new(socket).lines() {
        let Ok(request) =
            line.map_err(|_| ()).and_then(|l| serde_json::from_str::<Request>(&l).map_err(|_| ()))
        else {
            return 2;
        };
        let (answer, stopped) = run(&request, &signals);
        if writeln!(answers, "{}", answer.line()).is_err() || stopped {
            return 0;
        }
    }
    0
}

/// Runs one step to its end and ends all it left; the answer, and whether a signal ended it.
fn run(request: &Request, signals: &SigSet) -> (Answer, bool) {
    let mut step = crate::mech::env::command(&request.program, request.env.iter().map(|(k, v)| (k, v)));
    step.args(&request.args)
        .current_dir(&request.dir)
        .stdin(if request.input.is_some() { Stdio::piped() } else { Stdio::null() })
        .process_group(0);
    // SAFETY: between fork and exec the child only calls sigprocmask, which is async-signal-safe.
    // std leaves the mask as it is, and a step that cannot see SIGTERM could not be ended by it.
    unsafe {
        step.pre_exec(|| {
            SigSet::empty().thread_set_mask().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut tree = Tree { grace: Duration::from_millis(request.grace_ms), main: None, status: None };
    match step.spawn() {
        Ok(mut child) => {
            tree.main = Some(Pid::from_raw(child.id() as i32));
            // Fed from a thread, which a step that reads nothing only keeps until it is ended
            // (the write fails then). Threads start with the signals blocked, as they must stay.
            if let (Some(mut stdin), Some(input)) = (child.stdin.take(), request.input.clone()) {
                std::thread::spawn(move || {
                    let _ = stdin.write_all(input.as_bytes());
                });
            }
        }
        Err(e) => {
            eprintln!("troops: cannot start {}: {e}", request.program.display());
            return (Answer { status: CANNOT_START, cannot_start: Some(e.to_string()) }, false);
        }
    }
    let mut stopped = false;
    while tree.status.is_none() {
        match wait_signal(signals, None) {
            Some(Signal::SIGCHLD) => {
                tree.reap();
            }
            Some(_) => {
                stopped = true; // timeout, stop, or the runner died
                break;
            }
            None => {}
        }
    }
    tree.end(signals);
    (Answer { status: tree.status(), cannot_start: None }, stopped)
}

struct Tree {
    grace: Duration,
    /// The step's main process.
    main: Option<Pid>,
    /// How the main process ended, as a shell reports it.
    status: Option<i32>,
}

impl Tree {
    /// Ends every descendant: SIGTERM, then SIGKILL to those alive after the grace; returns once
    /// no child is left (orphans come to us, so no child means no descendant).
    fn end(&mut self, signals: &SigSet) {
        if !self.reap() {
            return;
        }
        signal_descendants(Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while self.reap() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait_signal(signals, Some(left));
        }
        loop {
            signal_descendants(Signal::SIGKILL);
            match waitpid(None, None) {
                Ok(status) => self.record(status),
                Err(Errno::EINTR) => {}
                Err(_) => return, // ECHILD: nothing left
            }
        }
    }

    /// Reaps every child that has ended; true while some child is left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => self.record(status),
                Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }

    fn record(&mut self, status: WaitStatus) {
        let code = match status {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
            _ => return,
        };
        if status.pid() == self.main {
            self.status = Some(code);
        }
    }

    /// The step's status; a step ended by the supervisor before it was reaped counts as killed.
    fn status(&self) -> i32 {
        self.status.unwrap_or(128 + Signal::SIGKILL as i32)
    }
}

/// Waits up to `timeout` (`None`: for ever) for one of the blocked `signals`.
fn wait_signal(signals: &SigSet, timeout: Option<Duration>) -> Option<Signal> {
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the set and the timeout live across the call; no siginfo is asked for.
    let signal = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), timeout_ptr) };
    Signal::try_from(signal).ok()
}

/// Sends `signal` to every process below this one, found through the parent links in /proc.
fn signal_descendants(signal: Signal) {
    for pid in descendants(Pid::this()) {
        let _ = kill(pid, signal);
    }
}

/// The processes below `root`, parents before their children.
pub(crate) fn descendants(root: Pid) -> Vec<Pid> {
    let links: Vec<(Pid, Pid)> = processes().filter_map(|pid| Some((pid, parent(pid)?))).collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(links.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// The pids in /proc.
pub(crate) fn processes() -> impl Iterator<Item = Pid> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok().map(Pid::from_raw))
}

/// The parent of `pid`, from /proc/<pid>/stat (the field after the state, after the name's `)`).
pub(crate) fn parent(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok().map(Pid::from_raw)
}

/// What [`end_leftovers`] found: processes it ended, and any still alive when it gave up.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub ended: Vec<Pid>,
    pub alive: Vec<Pid>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty() && self.alive.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |pids: &[Pid]| pids.iter().map(Pid::to_string).collect::<Vec<_>>().join(" ");
        write!(
            f,
            "ended {} process(es) left running by an interrupted run: {}",
            self.ended.len(),
            list(&self.ended)
        )?;
        if !self.alive.is_empty() {
            write!(f, "; still alive after SIGKILL: {}", list(&self.alive))?;
        }
        Ok(())
    }
}

/// Ends the processes of run `id` of the node at `state_dir` that outlived the troops running it
/// (SIGKILLed with its supervisor): SIGTERM, then SIGKILL after `grace`, and waits until they are
/// gone. Only under the node lock, when no step of the node runs. They are found by what every
/// step and supervisor carries in its environment: `TROOPS_STATE_DIR` and `TROOPS_RUN_ID`.
pub fn end_leftovers(state_dir: &std::path::Path, id: u64, grace: Duration) -> Leftovers {
    let state = format!("TROOPS_STATE_DIR={}", state_dir.display());
    let run = format!("TROOPS_RUN_ID={id}");
    // This process, and whatever started it, may carry the same (a step that runs `troops deploy`).
    let mut spared = vec![Pid::this()];
    while let Some(up) = parent(*spared.last().unwrap()).filter(|p| p.as_raw() > 1) {
        spared.push(up);
    }
    let find = || -> Vec<Pid> {
        processes()
            .filter(|pid| !spared.contains(pid) && is_alive(*pid))
            .filter(|pid| {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let mut vars = environ.split(|&b| b == 0);
                let (mut node, mut of_run) = (false, false);
                for var in &mut vars {
                    node |= var == state.as_bytes();
                    of_run |= var == run.as_bytes();
                }
                node && of_run
            })
            .collect()
    };
    let mut found = Leftovers::default();
    let term_until = Instant::now() + grace;
    let give_up = term_until + Duration::from_secs(5);
    loop {
        let alive = find();
        if alive.is_empty() {
            return found;
        }
        let now = Instant::now();
        if now >= give_up {
            found.alive = alive;
            return found;
        }
        for &pid in &alive {
            if !found.ended.contains(&pid) {
                found.ended.push(pid);
                let _ = kill(pid, Signal::SIGTERM);
            } else if now >= term_until {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs: exists and is no zombie (which only waits for its parent to look).
fn is_alive(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The unit tests' binary has no `main` of ours: it becomes a supervisor before libtest starts.
/// (std has not read the arguments yet when this runs, hence /proc/self/cmdline.)
#[cfg(test)]
#[used]
#[link_section = ".init_array"]
static ENTER_IN_UNIT_TESTS: extern "C" fn() = {
    extern "C" fn enter() {
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let mut args = cmdline.split(|&b| b == 0).map(|a| {
            use std::os::unix::ffi::OsStrExt;
            OsStr::from_bytes(a).to_owned()
        });
        if args.nth(1).as_deref() == Some(OsStr::new(ARG)) {
            let mut args: Vec<OsString> = args.collect();
            args.pop_if(|a| a.is_empty()); // the trailing NUL
            std::process::exit(supervise(args));
        }
    }
    enter
};
