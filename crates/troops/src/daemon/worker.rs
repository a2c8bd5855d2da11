//! The daemon's one worker thread: it runs jobs one at a time with the synchronous core, and
//! coalesces what arrives meanwhile. Every queued job that targets the branch tip merges into one
//! batch, so after a run the newest tip runs once; a push that arrives while a run of the current
//! tip is under way joins it and sees its output from the start. What a batch runs, if anything,
//! is `schedule`'s decision from the node's state on disk (a failed tip waits for its backoff, a
//! quarantined one never runs again), and after each batch the daemon hears when to look again.
//!
//! Fetching, which a slow remote can stretch to `fetch_timeout`, happens on a thread of its own:
//! only the fast-forward and the run that follow it go through the worker, so a push never
//! waits behind a fetch. Both threads are supervised: if one ends, the daemon exits.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use git2::Oid;
use tokio::sync::mpsc::UnboundedSender;
use troops_core::config::Config;
use troops_core::deploy::{self, Outcome, Request};
use troops_core::fetch::Fetched;
use troops_core::node::Node;
use troops_core::probe::News as ProbeNews;
use troops_core::pull;
use troops_core::runs::Trigger;
use troops_core::schedule::Decision;

use super::listener::{Gap, Listener};

/// What a job asks for.
#[derive(Debug, Clone)]
pub enum Work {
    /// Fast-forward to what the fetcher fetched, run the tip if it is not deployed.
    Pull(Arc<Vec<Fetched>>),
    /// Run the branch tip (`Manual`: even if deployed).
    Tip(Trigger),
    /// Run this revision (manual).
    Commit(String),
    /// A person's rollback (to this revision, else the commit deployed before).
    Rollback(Option<String>),
}

impl Work {
    /// Whether the job runs the branch tip, and so merges with other such jobs.
    fn on_tip(&self) -> bool {
        matches!(self, Work::Pull(_) | Work::Tip(_))
    }
}

pub struct Job {
    pub work: Work,
    /// Who hears the job's output and end.
    pub listeners: Vec<Listener>,
}

/// What the worker threads tell the daemon loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A failed tip should be retried at this instant (or nothing is pending: `None`).
    RetryAt(Option<Instant>),
    /// The named thread ended (returned or panicked): nothing will run any more.
    Ended(&'static str),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    running: Option<Running>,
    stopping: bool,
}

/// The batch under way: who listens, and what it printed so far (for those who join late).
struct Running {
    tip_batch: bool,
    /// The tip a tip batch runs: `None` until it has read it (a push may still join then, since
    /// the read will see its commit), then what it read (`Some(None)`: the branch had none).
    commit: Option<Option<Oid>>,
    /// A push joined before the tip was read: the run is the push's.
    pushed: bool,
    /// The output so far, up to `REPLAY_LIMIT`.
    output: Vec<u8>,
    /// The output after that: how much, and its end.
    dropped: Gap,
    listeners: Vec<Listener>,
}

impl Running {
    /// What a listener that joins late gets first: the output so far, or when that was more
    /// than `REPLAY_LIMIT`, its start, a notice of what is left out on a line of its own, and
    /// the last lines (a run's summary, when the run has ended), as a slow reader gets them.
    fn replay(&self) -> String {
        let mut replay = String::from_utf8_lossy(&self.output).into_owned();
        if !self.dropped.is_empty() {
            replay.push_str(&self.dropped.render("troops log"));
        }
        replay
    }
}

/// The fetcher's queue: who waits for the next fetch, and since when the one under way runs.
#[derive(Default)]
struct Fetches {
    requested: bool,
    listeners: Vec<Listener>,
    under_way: Option<Instant>,
    stopping: bool,
}

#[derive(Clone)]
pub struct Handle {
    shared: Arc<(Mutex<State>, Condvar)>,
    fetches: Arc<(Mutex<Fetches>, Condvar)>,
}

/// Output beyond this is not kept for late joiners (it is in output.log).
const REPLAY_LIMIT: usize = 1 << 20;

const STOPPING: &str = "the daemon is stopping";

impl Handle {
    pub fn submit(&self, job: Job, tip: impl FnOnce() -> Option<Oid>) {
        let (lock, wake) = &*self.shared;
        let mut state = lock.lock().unwrap();
        if let (Work::Tip(Trigger::Push), [listener], Some(running)) =
            (&job.work, job.listeners.as_slice(), state.running.as_mut())
        {
            let joins = match running.commit {
                None => true,
                Some(commit) => commit.is_some() && commit == tip(),
            };
            if running.tip_batch && joins {
                running.pushed |= running.commit.is_none();
                listener.output(&running.replay());
                running.listeners.push(listener.clone());
                return;
            }
        }
        if state.stopping {
            for listener in job.listeners {
                listener.done(3, Some(STOPPING.into()));
            }
            return;
        }
        if state.running.is_some() {
            for listener in &job.listeners {
                listener.output("troops: waiting for the daemon's current run to end\n");
            }
        }
        state.queue.push_back(job);
        wake.notify_one();
    }

    /// Asks for a pull cycle: the fetcher fetches, then the worker fast-forwards and runs the tip.
    /// Requests that arrive during a fetch share the next one.
    pub fn pull(&self, listener: Option<Listener>, fetch_timeout: Duration) {
        let (lock, wake) = &*self.fetches;
        let mut fetches = lock.lock().unwrap();
        if fetches.stopping {
            if let Some(listener) = listener {
                listener.done(3, Some(STOPPING.into()));
            }
            return;
        }
        if let (Some(listener), Some(since)) = (&listener, fetches.under_way) {
            listener.output(&format!(
                "troops: waiting for the daemon's fetch under way (started {} ago, gives up after {}), then fetching again\n",
                humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                humantime::format_duration(fetch_timeout),
            ));
        }
        fetches.requested = true;
        fetches.listeners.extend(listener);
        wake.notify_one();
    }

    /// True, and the worker takes nothing new, when it runs nothing and nothing waits: the
    /// moment the daemon may replace itself without ending a step.
    pub fn idle_and_closed(&self) -> bool {
        let mut state = self.shared.0.lock().unwrap();
        let idle = state.running.is_none() && state.queue.is_empty() && !state.stopping;
        state.stopping |= idle;
        idle
    }

    /// Asks the worker to finish what it runs and take nothing new, and the fetcher to stop.
    pub fn stop(&self) {
        let (lock, wake) = &*self.fetches;
        let mut fetches = lock.lock().unwrap();
        fetches.stopping = true;
        for listener in fetches.listeners.drain(..) {
            listener.done(3, Some(STOPPING.into()));
        }
        wake.notify_one();
        drop(fetches);

        let (lock, wake) = &*self.shared;
        let mut state = lock.lock().unwrap();
        state.stopping = true;
        for listener in state.queue.drain(..).flat_map(|job| job.listeners) {
            listener.done(3, Some(STOPPING.into()));
        }
        wake.notify_one();
    }
}

/// Runs `work` on a thread named `name`; when it ends, by returning or by panicking, the daemon
/// loop hears `Event::Ended(name)`.
pub(super) fn supervised(
    name: &'static str,
    events: UnboundedSender<Event>,
    work: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    /// Sends the event when dropped, which unwinding does too.
    struct Ended(&'static str, UnboundedSender<Event>);
    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = self.1.send(Event::Ended(self.0));
        }
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ended = Ended(name, events);
            work()
        })
        .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"))
}

pub struct Worker {
    handle: Handle,
    node: Node,
    config: Arc<Mutex<Config>>,
    stop: &'static AtomicBool,
    events: UnboundedSender<Event>,
}

impl Worker {
    pub fn start(
        node: Node,
        config: Arc<Mutex<Config>>,
        stop: &'static AtomicBool,
        events: UnboundedSender<Event>,
    ) -> (Handle, std::thread::JoinHandle<()>) {
        let handle = Handle { shared: Arc::default(), fetches: Arc::default() };
        let fetcher =
            Fetcher { handle: handle.clone(), state_dir: node.state_dir.clone(), config: config.clone() };
        supervised("troops-fetcher", events.clone(), move || fetcher.run());
        let mut worker = Worker { handle: handle.clone(), node, config, stop, events: events.clone() };
        let thread = supervised("troops-worker", events, move || worker.run());
        (handle, thread)
    }

    fn run(&mut self) {
        while let Some(work) = self.next_batch() {
            self.node.config = self.config.lock().unwrap().clone();
            let exit = match &work[0] {
                Work::Commit(rev) => self.run_commit(rev.clone()),
                Work::Rollback(to) => self.run_rollback(to.as_deref()),
                _ => self.run_tip(&work),
            };
            self.finish(exit);
        }
    }

    /// Waits for jobs, then takes either one explicit-commit job or every tip job queued; their
    /// listeners become the running batch's.
    fn next_batch(&self) -> Option<Vec<Work>> {
        let (lock, wake) = &*self.handle.shared;
        let mut state = lock.lock().unwrap();
        loop {
            if state.stopping {
                return None;
            }
            if let Some(first) = state.queue.pop_front() {
                let batch = if !first.work.on_tip() {
                    vec![first]
                } else {
                    let (tips, rest): (VecDeque<Job>, VecDeque<Job>) =
                        state.queue.drain(..).partition(|j| j.work.on_tip());
                    state.queue = rest;
                    std::iter::once(first).chain(tips).collect()
                };
                let tip_batch = batch[0].work.on_tip();
                let (work, listeners): (Vec<Work>, Vec<_>) =
                    batch.into_iter().map(|j| (j.work, j.listeners)).unzip();
                let listeners = listeners.into_iter().flatten().collect();
                state.running = Some(Running {
                    tip_batch,
                    commit: None,
                    pushed: false,
                    output: Vec::new(),
                    dropped: Gap::default(),
                    listeners,
                });
                return Some(work);
            }
            state = wake.wait(state).unwrap();
        }
    }

    fn run_commit(&mut self, rev: String) -> (i32, Option<String>) {
        let mut out = Broadcast(self.handle.clone(), Vec::new());
        let result = deploy::deploy(&self.node, &Request::Person(Some(rev)), &mut out, self.stop);
        self.outcome(result, &mut out, (0, None))
    }

    fn run_rollback(&mut self, to: Option<&str>) -> (i32, Option<String>) {
        let mut out = Broadcast(self.handle.clone(), Vec::new());
        let result = deploy::rollback(&self.node, to, &mut out, self.stop);
        self.outcome(result, &mut out, (0, None))
    }

    /// A merged batch of tip jobs: fast-forward to the newest fetch if any brought one, then run
    /// the tip once.
    fn run_tip(&mut self, work: &[Work]) -> (i32, Option<String>) {
        let mut out = Broadcast(self.handle.clone(), Vec::new());
        let mut exit_if_nothing_runs = 0;
        let fetched = work.iter().rev().find_map(|w| match w {
            Work::Pull(fetched) => Some(fetched),
            _ => None,
        });
        if let Some(fetched) = fetched {
            match pull::advance(&self.node, fetched.to_vec(), &mut out) {
                Ok(cycle) => {
                    for (remote, tip, why) in &cycle.decision.refused {
                        tracing::warn!(remote = %remote, commit = %tip, reason = ?why, "remote tip refused");
                    }
                    if !cycle.decision.conflict.is_empty() {
                        tracing::warn!(remotes = %cycle.decision.conflict.join(","), "remotes forked; nothing moves");
                    }
                    if let Some((from, to)) = cycle.moved {
                        tracing::info!(from = %from.map_or("none".into(), |f| f.to_string()), to = %to, "fast-forwarded");
                    }
                    if cycle.all_failed() {
                        exit_if_nothing_runs = 3;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "pull failed");
                    return (e.exit_code(), Some(e.to_string()));
                }
            }
        }
        let (tip, pushed) = self.take_tip();
        let trigger = [Trigger::Manual, Trigger::Push, Trigger::Pull, Trigger::Retry]
            .into_iter()
            .find(|t| {
                (*t == Trigger::Push && pushed)
                    || work.iter().any(|w| match w {
                        Work::Tip(trigger) => trigger == t,
                        Work::Pull(_) => *t == Trigger::Pull,
                        Work::Commit(_) | Work::Rollback(_) => false,
                    })
            })
            .unwrap_or(Trigger::Pull);
        let nothing_runs =
            (exit_if_nothing_runs, (exit_if_nothing_runs == 3).then(|| "no remote could be fetched".into()));
        if tip.is_none() && trigger != Trigger::Manual {
            // A new node whose remotes have no commits yet: nothing to run, nothing wrong.
            return nothing_runs;
        }
        let result = deploy::deploy(&self.node, &Request::from_trigger(trigger, None), &mut out, self.stop);
        self.outcome(result, &mut out, nothing_runs)
    }

    /// Logs a run's end (or why nothing ran) and gives the exit code for listeners; `nothing_runs`
    /// when nothing ran and nothing waits.
    fn outcome(
        &mut self,
        result: troops_core::Result<Outcome>,
        out: &mut Broadcast,
        nothing_runs: (i32, Option<String>),
    ) -> (i32, Option<String>) {
        match result {
            Ok(outcome) => {
                if let Outcome::Ran { run, rollback } = &outcome {
                    for record in std::iter::once(run).chain(rollback.as_deref()) {
                        for step in &record.steps {
                            tracing::info!(run = record.id, step = %step.name, status = %step.status, exit_code = %step.exit_code.map_or("none".into(), |c| c.to_string()), ms = step.duration_ms, "step");
                        }
                        tracing::info!(run = record.id, commit = %record.commit, trigger = %record.trigger, status = %record.status, "run finished");
                    }
                    if let Some(at) = deploy::next_due(&self.node) {
                        let wait = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                        tracing::warn!(commit = %run.commit, retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())), "the commit failed; will retry");
                    }
                }
                if let Some(message) = outcome.nothing_ran() {
                    tracing::info!(reason = %message.trim_start_matches("troops: "), "nothing runs");
                    let _ = writeln!(out, "{message}");
                }
                match outcome {
                    Outcome::Nothing(Decision::Idle { .. } | Decision::Hold { .. }) => nothing_runs,
                    outcome => (outcome.exit_code(), None),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "run failed to start");
                (e.exit_code(), Some(e.to_string()))
            }
        }
    }

    /// Reads the tip this batch runs and records it, and says whether a push joined before the
    /// read. Under the lock `submit` holds while it decides whether a push joins: a push either
    /// joins before the read (which then sees its commit) or finds the tip read, and then joins
    /// only a run of its own commit.
    fn take_tip(&self) -> (Option<Oid>, bool) {
        let mut state = self.handle.shared.0.lock().unwrap();
        let tip = self.node.repo().and_then(|r| r.tip()).ok().flatten();
        let running = state.running.as_mut().expect("a batch is running");
        running.commit = Some(tip);
        (tip, running.pushed)
    }

    fn finish(&mut self, (exit, error): (i32, Option<String>)) {
        let running = self.handle.shared.0.lock().unwrap().running.take();
        for listener in running.map(|r| r.listeners).unwrap_or_default() {
            listener.done(exit, error.clone());
        }
        // When a failed commit's backoff ends, as the disk says (a cron pull or a hook may have
        // run meanwhile): the daemon's retry timer.
        let due = deploy::next_due(&self.node);
        let _ =
            self.events.send(Event::RetryAt(due.map(|at| {
                Instant::now() + at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
            })));
        let deployed = self.node.repo().and_then(|r| r.deployed()).ok().flatten();
        super::notify(&format!(
            "STATUS=deployed {}{}",
            deployed.map_or("nothing".into(), |d| deploy::short(&d.to_string()).to_owned()),
            if due.is_some() { "; a failed commit waits for its retry" } else { "" }
        ));
    }
}

/// The thread that fetches, so that a slow remote holds up no run.
struct Fetcher {
    handle: Handle,
    state_dir: PathBuf,
    config: Arc<Mutex<Config>>,
}

impl Fetcher {
    fn run(&self) {
        while let Some(listeners) = self.next_fetch() {
            let node =
                Node { state_dir: self.state_dir.clone(), config: self.config.lock().unwrap().clone() };
            let result = pull::fetch(&node, &mut Fanout(&listeners, Vec::new()));
            self.handle.fetches.0.lock().unwrap().under_way = None;
            match result {
                Ok(fetched) => {
                    for f in &fetched {
                        match &f.tip {
                            Ok(tip) => {
                                tracing::info!(remote = %f.remote, tip = %tip.map_or("none".into(), |t| t.to_string()), downloaded = f.downloaded, ms = f.duration.as_millis() as u64, "fetched")
                            }
                            Err(e) => {
                                tracing::warn!(remote = %f.remote, url = %f.url, error = %e, "fetch failed")
                            }
                        }
                        match &f.probe_news {
                            Some(news @ ProbeNews::Lags { .. }) => {
                                tracing::warn!(remote = %f.remote, url = %f.url, "{news}")
                            }
                            Some(news) => tracing::info!(remote = %f.remote, url = %f.url, "{news}"),
                            None => {}
                        }
                    }
                    self.handle.submit(Job { work: Work::Pull(Arc::new(fetched)), listeners }, || None);
                }
                Err(e) => {
                    tracing::error!(error = %e, "fetch failed");
                    for listener in listeners {
                        listener.done(e.exit_code(), Some(e.to_string()));
                    }
                }
            }
        }
    }

    /// Waits for a request, then takes every listener waiting; `None` once the daemon stops.
    fn next_fetch(&self) -> Option<Vec<Listener>> {
        let (lock, wake) = &*self.handle.fetches;
        let mut fetches = lock.lock().unwrap();
        while !fetches.requested && !fetches.stopping {
            fetches = wake.wait(fetches).unwrap();
        }
        if fetches.stopping {
            return None;
        }
        fetches.requested = false;
        fetches.under_way = Some(Instant::now());
        Some(std::mem::take(&mut fetches.listeners))
    }
}

/// The fetcher's output, to those who asked for the fetch (whole UTF-8 sequences only).
struct Fanout<'a>(&'a [Listener], Vec<u8>);

impl Write for Fanout<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = whole_utf8(&mut self.1, buf);
        for listener in self.0 {
            listener.output(&text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends `buf` to `pending` and takes out what is whole UTF-8, holding back the tail of a
/// sequence split between two writes.
fn whole_utf8(pending: &mut Vec<u8>, buf: &[u8]) -> String {
    pending.extend_from_slice(buf);
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => pending.len(),
    };
    let chunk: Vec<u8> = pending.drain(..valid).collect();
    String::from_utf8_lossy(&chunk).into_owned()
}

/// The worker's output: to every listener of the running batch, and kept for late joiners.
/// Holds back the tail of a UTF-8 sequence split between two writes.
struct Broadcast(Handle, Vec<u8>);

impl Write for Broadcast {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = whole_utf8(&mut self.1, buf);
        if let Some(running) = self.0.shared.0.lock().unwrap().running.as_mut() {
            if running.output.len() < REPLAY_LIMIT {
                running.output.extend_from_slice(text.as_bytes());
            } else {
                if running.dropped.is_empty() {
                    running.dropped = Gap::after(!running.output.ends_with(b"\n"));
                }
                running.dropped.add(&text);
            }
            running.listeners.retain(|l| l.output(&text));
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

    #[test]
    fn a_late_listener_gets_the_start_a_notice_on_its_own_line_and_the_end() {
        let mut running = Running {
            tip_batch: true,
            commit: None,
            pushed: false,
            output: b"==> build\ncompiling".to_vec(),
            dropped: Gap::default(),
            listeners: Vec::new(),
        };
        assert_eq!(running.replay(), "==> build\ncompiling", "all of it was kept");
        // Past the limit: the summary, at the end, reaches a listener that joins as the run ends.
        running.dropped = Gap::after(true);
        for _ in 0..1000 {
            running.dropped.add(" more\n");
        }
        running.dropped.add("troops: run 4 succeeded: 1 of 1 steps ran in 9.0s (troops log 4)\n");
        let replay = running.replay();
        let (head, _) =
            replay.split_once(" bytes of output skipped; the whole log: troops log\n more\n").unwrap();
        assert!(head.starts_with("==> build\ncompiling\ntroops: "), "{head}");
        assert!(replay
            .ends_with(" more\n more\ntroops: run 4 succeeded: 1 of 1 steps ran in 9.0s (troops log 4)\n"));
    }

    #[test]
    fn a_supervised_thread_that_panics_or_returns_is_reported() {
        let (events, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let panicked = supervised("test-panics", events.clone(), || panic!("injected"));
        assert!(panicked.join().is_err());
        assert_eq!(heard.blocking_recv(), Some(Event::Ended("test-panics")));
        supervised("test-returns", events, || ()).join().unwrap();
        assert_eq!(heard.blocking_recv(), Some(Event::Ended("test-returns")));
    }
}
