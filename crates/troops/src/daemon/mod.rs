//! `troops daemon`: the agent, and the only async part of troops. One single-threaded tokio loop
//! owns all of the daemon's state (the config, the queue of asks, the run under way, the fetch,
//! the status publisher, the timers) and hears everything as events on one channel: the timer,
//! the retry timer, the control socket, file changes, signals, and the ends of its jobs. Anything
//! that blocks (git, runs, NSS lookups) is a job on tokio's blocking pool, so nothing stalls the
//! loop: at most one run, one fetch and one status publish at a time. SIGTERM ends the current
//! step (SIGTERM to all it started, SIGKILL after its `kill_grace`), then exits 0. A job that
//! panics ends the daemon non-zero at once (systemd restarts it) rather than take requests
//! nothing will answer. systemd hears readiness and status through NOTIFY_SOCKET.

mod events;
mod jobs;
mod listener;
pub(crate) mod metrics;
mod publisher;
mod queue;
mod socket;
mod watch;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use git2::Oid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use troops_core::mech::control::{DaemonStatus, Done, Request};
use troops_core::model::ask::Ask;
use troops_core::model::config::Config;
use troops_core::model::node::Node;
use troops_core::policy::watch::Verdict;
use troops_core::Exit;

use events::{Event, Events};
use listener::{Gap, Listener};
use queue::{Pending, Queue};
use watch::{Change, Watch};

/// Set on SIGTERM/SIGINT: the run under way ends its current step and stops, `interrupted`.
static STOP: AtomicBool = AtomicBool::new(false);

/// How long a moved branch may wait for the push that moved it to ask: a push's hook asks over
/// the socket right after git moved the ref, and its run is the push's; a branch moved by hand
/// (`git update-ref`) runs as a tick once this has passed.
const SETTLE: Duration = Duration::from_millis(500);

pub fn run(node: Node) -> Result<ExitCode> {
    init_logging();
    node.repo()?; // a node that was never initialised fails here, with the reason

    // Every thread glibc gives an allocation arena of its own keeps what it once held, and the
    // blocking pool's threads come and go: two arenas bound what the daemon keeps after a storm
    // of connections, and the pool has a ceiling.
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING)
        .thread_keep_alive(Duration::from_secs(5))
        .build()?;
    let code = runtime.block_on(serve(node));
    // A fetch may still wait on a remote: its process group is killed at its own deadline.
    runtime.shutdown_background();
    code
}

/// The run under way: who listens, what it printed so far (for those who join late), and the
/// tip it runs once it has read it.
struct Running {
    follows_tip: bool,
    tip: Option<Oid>,
    /// The output so far, up to `REPLAY_LIMIT`.
    output: Vec<u8>,
    /// The output after that: how much, and its end.
    dropped: Gap,
    listeners: Vec<Listener>,
}

impl Running {
    fn new(follows_tip: bool, listeners: Vec<Listener>) -> Running {
        Running { follows_tip, tip: None, output: Vec::new(), dropped: Gap::default(), listeners }
    }

    /// Keeps `text` for those who join late: whole up to `REPLAY_LIMIT`, then its end.
    fn keep(&mut self, text: &str) {
        if self.output.len() < REPLAY_LIMIT {
            self.output.extend_from_slice(text.as_bytes());
            return;
        }
        if self.dropped.is_empty() {
            self.dropped = Gap::after(!self.output.ends_with(b"\n"));
        }
        self.dropped.add(text);
    }

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

/// The most jobs that run at once: one run, fetch, status publish and notification each, and the
/// short reads connections make (credentials, the tip), which wait for a thread beyond this.
const MAX_BLOCKING: usize = 16;

/// Output beyond this is not kept for late joiners (it is in output.log).
const REPLAY_LIMIT: usize = 1 << 20;

const STOPPING: &str = "the daemon is stopping";

/// Notifications that may wait for a slow notify command; one more is dropped, and logged.
const MAX_TO_TELL: usize = 64;

/// systemd's STATUS before the first run has ended.
const FOLLOWING: &str = "following the branch";

struct Daemon {
    state_dir: std::path::PathBuf,
    /// The config, held here alone; connections and the metrics listener see it through the
    /// watch channel's receivers.
    config: tokio::sync::watch::Sender<Arc<Config>>,
    /// A reload changed the branch: the watch must follow it.
    rewatch: bool,
    events: Events,
    queue: Queue<Listener>,
    running: Option<Running>,
    /// Listeners of the pull cycle under way (`Some` while one runs), and of the next one.
    fetching: Option<(Instant, Vec<Listener>)>,
    fetch_again: Option<Vec<Listener>>,
    publisher: publisher::Publisher,
    /// The tip as the daemon last knew it: a branch move to anything else was not its own.
    known_tip: Option<Oid>,
    settle: Option<Instant>,
    next_tick: Instant,
    retry_at: Option<Instant>,
    /// When the watched exports will have settled (`[[watch]] settle`): then the deployed commit
    /// runs again for them, if they still differ.
    fleet_at: Option<Instant>,
    /// When the deployed commit's checks are run again (`[health] recheck`); `None`: not now.
    recheck_at: Option<Instant>,
    started_at: String,
    /// Runs whose notify command waits for the one under way (`telling`), oldest first.
    to_tell: std::collections::VecDeque<u64>,
    telling: bool,
    /// Why `/metrics` is not served, when it is not.
    metrics_error: Option<String>,
    /// What systemd's STATUS says the daemon does: what it deployed after its last run.
    summary: String,
    stopping: bool,
}

async fn serve(node: Node) -> Result<ExitCode> {
    let (events, mut heard) = mpsc::unbounded_channel();
    let (config, config_seen) = tokio::sync::watch::channel(Arc::new(node.config.clone()));
    let listener = socket::bind(&node.socket_path(), &node.config.admin_group)?;
    let mut watch = Watch::new(&node.config.path, &node.repo_path(), &node.config.branch).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not watching the branch ref and the config (pushes still reach the daemon through its socket; SIGHUP reloads the config)");
        Watch::inert()
    });
    let (mut term, mut int, mut hup) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    let mut server = tokio::spawn(socket::serve(listener, events.clone(), config_seen.clone(), node.clone()));
    tracing::info!(state_dir = %node.state_dir.display(), config = %node.config.path.display(), branch = %node.config.branch, "daemon started");
    let metrics_error = match node.config.metrics.listen {
        Some(addr) => metrics::start(addr, node.state_dir.clone(), config_seen, events.clone()).await,
        None => None,
    };
    notify(&format!("READY=1\nSTATUS={}", systemd_status(FOLLOWING, metrics_error.as_deref())));
    // The first tick falls anywhere in the first period, so that daemons started together (a
    // fleet's reboot, a package upgrade) spread their polls over it from the start.
    let first = period(&node.config);
    let mut daemon = Daemon {
        publisher: publisher::Publisher::default(),
        state_dir: node.state_dir.clone(),
        config,
        rewatch: false,
        events,
        queue: Queue::default(),
        running: None,
        fetching: None,
        fetch_again: None,
        known_tip: None,
        settle: None,
        next_tick: Instant::now() + Duration::from_millis(fastrand::u64(..=first.as_millis() as u64)),
        retry_at: None,
        fleet_at: None,
        recheck_at: None,
        started_at: troops_core::model::records::now(),
        to_tell: Default::default(),
        telling: false,
        metrics_error,
        summary: FOLLOWING.to_owned(),
        stopping: false,
    };
    daemon.pull(None);
    daemon.publisher.poke();
    daemon.job("startup", {
        let node = daemon.snapshot();
        move || Event::NextDue(troops_core::node::dispatch::next_due(&node))
    });
    daemon.read_recheck_period();
    let mut upgrade = None;
    loop {
        daemon.start_work();
        if daemon.stopping && daemon.running.is_none() {
            break;
        }
        let publish_at = daemon.publisher.due(&daemon.config.borrow());
        tokio::select! {
            _ = sleep_until(daemon.next_tick) => {
                daemon.publisher.poke();
                daemon.pull(None);
                daemon.next_tick = Instant::now() + period(&daemon.config.borrow());
            }
            _ = sleep_until(daemon.retry_at.unwrap_or(daemon.next_tick)), if daemon.retry_at.is_some() => {
                daemon.retry_at = None;
                daemon.ask(Ask::Tick, Vec::new());
            }
            _ = sleep_until(daemon.fleet_at.unwrap_or(daemon.next_tick)), if daemon.fleet_at.is_some() => {
                daemon.fleet_at = None;
                daemon.ask(Ask::Fleet, Vec::new());
            }
            _ = sleep_until(daemon.settle.unwrap_or(daemon.next_tick)), if daemon.settle.is_some() => {
                daemon.settle = None;
                let node = daemon.snapshot();
                daemon.job("branch", move || Event::TipRead(jobs::tip(&node)));
            }
            _ = sleep_until(publish_at.unwrap_or(daemon.next_tick)), if publish_at.is_some() => {
                daemon.publish();
            }
            _ = sleep_until(daemon.recheck_at.unwrap_or(daemon.next_tick)), if daemon.recheck_at.is_some() => {
                daemon.recheck_at = None;
                // A run's own checks are newer than any recheck: the run's end reads the period anew.
                if daemon.running.is_none() && !daemon.stopping {
                    let node = daemon.snapshot();
                    daemon.job("recheck", move || Event::Rechecked(jobs::recheck(&node, &STOP)));
                }
            }
            Some(event) = heard.recv() => {
                if let Some(code) = daemon.hear(event) {
                    return Ok(code);
                }
                if daemon.running.is_none() && daemon.queue.is_empty() && !daemon.stopping {
                    if let Some(exe) = replaced_executable() {
                        upgrade = Some(exe);
                        daemon.stop();
                    }
                }
            }
            _ = &mut server => {
                tracing::error!("the control socket server ended; exiting so that the daemon is restarted");
                return Ok(fail(&node.socket_path()));
            }
            change = watch.next() => match change {
                Change::Config => daemon.reload(),
                Change::Branch => daemon.settle = Some(Instant::now() + SETTLE),
            },
            _ = hup.recv() => daemon.reload(),
            _ = term.recv() => daemon.stop(),
            _ = int.recv() => daemon.stop(),
        }
        if std::mem::take(&mut daemon.rewatch) {
            let config = daemon.config.borrow().clone();
            match Watch::new(&config.path, &node.repo_path(), &config.branch) {
                Ok(new) => watch = new,
                Err(e) => {
                    tracing::warn!(error = %e, branch = %config.branch, "not watching the new branch's ref")
                }
            }
        }
    }
    let _ = std::fs::remove_file(node.socket_path());
    if let Some(exe) = upgrade {
        return Ok(restart_into(&exe));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

impl Daemon {
    /// A copy of the node as the loop holds it now, for a job.
    fn snapshot(&self) -> Node {
        Node { state_dir: self.state_dir.clone(), config: (**self.config.borrow()).clone() }
    }

    /// Runs `work` on the blocking pool; the loop hears its event, or `Panicked(name)`.
    fn job(&self, name: &'static str, work: impl FnOnce() -> Event + Send + 'static) {
        let events = self.events.clone();
        let handle = tokio::task::spawn_blocking(work);
        tokio::spawn(async move {
            let _ = events.send(handle.await.unwrap_or(Event::Panicked(name)));
        });
    }

    /// Handles one event; `Some` when the daemon must exit with that code.
    fn hear(&mut self, event: Event) -> Option<ExitCode> {
        match event {
            Event::Request { request, listener, tip } => self.request(request, listener, tip),
            Event::Status(reply) => {
                let _ = reply.send(DaemonStatus {
                    pid: std::process::id(),
                    started_at: self.started_at.clone(),
                    next_pull_at: Some(wall_clock(self.next_tick)),
                    retry_at: self.retry_at.map(wall_clock),
                    metrics_error: self.metrics_error.clone(),
                });
            }
            Event::RunOutput(text) => {
                if let Some(running) = self.running.as_mut() {
                    running.keep(&text);
                    running.listeners.retain(|l| l.output(&text));
                }
            }
            Event::RunTip(tip) => {
                if let Some(running) = self.running.as_mut() {
                    running.tip = tip;
                    self.known_tip = tip.or(self.known_tip);
                }
            }
            Event::RunDone(end) => {
                let running = self.running.take();
                for listener in running.map(|r| r.listeners).unwrap_or_default() {
                    listener.done(end.done.clone());
                }
                self.due_at(end.next_due);
                self.tell(end.tell);
                self.summary = end.summary;
                self.read_recheck_period();
                notify(&format!("STATUS={}", systemd_status(&self.summary, self.metrics_error.as_deref())));
                self.publisher.poke();
            }
            Event::FetchOutput(text) => {
                if let Some((_, listeners)) = self.fetching.as_mut() {
                    listeners.retain(|l| l.output(&text));
                }
            }
            Event::Pulled(result) => {
                let listeners = self.fetching.take().map(|(_, l)| l).unwrap_or_default();
                match result {
                    Ok(pulled) => {
                        self.known_tip = pulled.tip.or(self.known_tip);
                        if !self.stopping {
                            self.queue.push(Pending {
                                ask: Ask::Tick,
                                no_remote: pulled.no_remote,
                                listeners,
                            });
                            self.follow_fleet(pulled.fleet);
                        }
                    }
                    Err(done) => listeners.into_iter().for_each(|l| l.done(done.clone())),
                }
                self.publisher.poke();
                if let Some(waiting) = self.fetch_again.take() {
                    self.fetching = None;
                    self.pull_now(waiting);
                }
            }
            Event::Published(round) => self.publisher.ended(*round, &self.config.borrow()),
            Event::TipRead(tip) => {
                if tip.is_some() && tip != self.known_tip {
                    tracing::info!(tip = %tip.map_or("none".into(), |t| t.to_string()), "the branch moved outside troops");
                    self.known_tip = tip;
                    self.ask(Ask::Tick, Vec::new());
                }
            }
            Event::Reloaded(config) => {
                if let Some(config) = *config {
                    tracing::info!(config = %config.path.display(), "config reloaded");
                    let old = self.config.borrow().clone();
                    if config.admin_group != old.admin_group {
                        socket::give_to_group(&self.snapshot().socket_path(), &config.admin_group);
                    }
                    self.rewatch = config.branch != old.branch;
                    self.config.send_replace(Arc::new(config));
                }
            }
            Event::NextDue(at) => self.due_at(at),
            Event::Rechecked(rechecked) => {
                self.recheck_at = rechecked.period.map(|period| Instant::now() + period);
                if rechecked.redeploy {
                    tracing::info!("redeploying the deployed commit after drift (on_drift = \"redeploy\")");
                    self.ask(Ask::Drift, Vec::new());
                }
            }
            Event::Told => {
                self.telling = false;
                self.tell(Vec::new());
            }
            Event::MetricsServed(problem) => {
                self.metrics_error = problem;
                notify(&format!("STATUS={}", systemd_status(&self.summary, self.metrics_error.as_deref())));
            }
            Event::Panicked(name) => {
                tracing::error!(
                    job = name,
                    "a job of the daemon panicked; exiting so that the daemon is restarted"
                );
                return Some(fail(&self.snapshot().socket_path()));
            }
        }
        None
    }

    fn request(&mut self, request: Request, listener: Listener, tip: Option<Oid>) {
        if self.stopping {
            listener.done(Done { exit: Exit::Environment, error: Some(STOPPING.into()) });
            return;
        }
        match request {
            Request::Status => {} // answered by the connection itself
            Request::Pull => self.pull(Some(listener)),
            Request::Run(ask) => {
                if ask == Ask::Push {
                    self.known_tip = tip.or(self.known_tip);
                    // A push of the tip that the run under way runs joins it, from its start.
                    if let Some(running) = self.running.as_mut().filter(|r| r.follows_tip && r.tip.is_some())
                    {
                        if running.tip == tip {
                            listener.output(&running.replay());
                            running.listeners.push(listener);
                            return;
                        }
                    }
                }
                self.ask(ask, vec![listener]);
            }
        }
    }

    /// The watched exports changed: the deployed commit runs again once they settled (at once when
    /// they have; `schedule` decides then whether it may).
    fn follow_fleet(&mut self, verdict: Option<Verdict>) {
        match verdict {
            Some(Verdict::Due { changes }) => {
                tracing::info!(changes = %changes.join("; "), "the watched exports changed; running the deployed commit again");
                self.fleet_at = None;
                self.ask(Ask::Fleet, Vec::new());
            }
            Some(Verdict::Settling { until, changes }) => {
                tracing::info!(changes = %changes.join("; "), "the watched exports changed; waiting for them to settle");
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                self.fleet_at = Some(Instant::now() + wait);
            }
            _ => self.fleet_at = None,
        }
    }

    /// Queues `ask`, saying so to whoever waits behind a run.
    fn ask(&mut self, ask: Ask, listeners: Vec<Listener>) {
        if self.running.is_some() {
            for listener in &listeners {
                listener.output("troops: waiting for the daemon's current run to end\n");
            }
        }
        self.queue.push(Pending { ask, no_remote: false, listeners });
    }

    /// Starts the next batch when nothing runs.
    fn start_work(&mut self) {
        if self.running.is_some() || self.stopping {
            return;
        }
        let Some(batch) = self.queue.next() else { return };
        self.running = Some(Running::new(batch.ask.follows_tip(), batch.listeners));
        let node = self.snapshot();
        let events = self.events.clone();
        let work = troops_core::node::dispatch::Work { ask: batch.ask, no_remote: batch.no_remote };
        self.job("run", move || Event::RunDone(jobs::run(&node, &work, &events, &STOP)));
    }

    /// Asks for a pull cycle; one that arrives during a cycle waits for the next one.
    fn pull(&mut self, listener: Option<Listener>) {
        if self.stopping {
            return;
        }
        match &self.fetching {
            Some((since, _)) => {
                if let Some(listener) = &listener {
                    listener.output(&format!(
                        "troops: waiting for the daemon's fetch under way (started {} ago, gives up after {}), then fetching again\n",
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                        humantime::format_duration(self.config.borrow().fetch_timeout),
                    ));
                }
                self.fetch_again.get_or_insert_with(Vec::new).extend(listener);
            }
            None => self.pull_now(listener.into_iter().collect()),
        }
    }

    fn pull_now(&mut self, listeners: Vec<Listener>) {
        self.fetching = Some((Instant::now(), listeners));
        let node = self.snapshot();
        let events = self.events.clone();
        self.job("fetch", move || Event::Pulled(jobs::pull(&node, &events)));
    }

    fn publish(&mut self) {
        let config = self.config.borrow().clone();
        if let Some(round) = self.publisher.start(&config) {
            let node = self.snapshot();
            self.job("status", move || Event::Published(Box::new(round.run(&node))));
        }
    }

    /// Queues notifications for `runs`, and runs the next one when none runs: one at a time, after
    /// the run's listeners heard its end, so nobody waits for a notify command.
    fn tell(&mut self, runs: Vec<u64>) {
        for run in runs {
            if self.to_tell.len() >= MAX_TO_TELL {
                tracing::warn!(
                    run,
                    "notification dropped: {MAX_TO_TELL} are waiting for slow notify commands already"
                );
                continue;
            }
            self.to_tell.push_back(run);
        }
        if self.telling {
            return;
        }
        if let Some(run) = self.to_tell.pop_front() {
            self.telling = true;
            let node = self.snapshot();
            self.job("notify", move || {
                // It logs how it went; its failure never changes the run's.
                let _ = troops_core::mech::notify::now(&node, run);
                Event::Told
            });
        }
    }

    /// Reads when the deployed commit's plan wants its next recheck (after a run, at start).
    fn read_recheck_period(&self) {
        let node = self.snapshot();
        self.job("recheck period", move || {
            let period = troops_core::node::drift::period(&node);
            Event::Rechecked(troops_core::node::drift::Rechecked { period, redeploy: false })
        });
    }

    fn due_at(&mut self, at: Option<SystemTime>) {
        self.retry_at =
            at.map(|at| Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default());
    }

    fn reload(&self) {
        let (state_dir, path) = (self.state_dir.clone(), self.config.borrow().path.clone());
        self.job("config", move || {
            // With the node's recorded [verify] policy: a file lost or emptied meanwhile keeps it.
            Event::Reloaded(Box::new(match troops_core::mech::recorded::load_config(&state_dir, &path) {
                Ok(config) => Some(config),
                Err(e) => {
                    tracing::error!(error = %e, "config not reloaded; keeping the previous one");
                    None
                }
            }))
        });
    }

    /// Takes nothing new, tells whoever waits, and lets the run under way end its current step.
    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        tracing::info!("stopping: ending the current step, if any");
        notify("STOPPING=1");
        self.stopping = true;
        STOP.store(true, Ordering::SeqCst);
        let stopping = Done { exit: Exit::Environment, error: Some(STOPPING.into()) };
        let fetching = self.fetching.as_mut().map(|(_, l)| std::mem::take(l)).unwrap_or_default();
        let waiting = self.fetch_again.take().unwrap_or_default();
        for listener in self.queue.drain_listeners().into_iter().chain(fetching).chain(waiting) {
            listener.done(stopping.clone());
        }
    }
}

/// The path of this process's executable when that file has been replaced since it started (as
/// dpkg replaces it: a new file renamed over the old, whose inode lives on as "(deleted)").
fn replaced_executable() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let link = std::fs::read_link("/proc/self/exe").ok()?;
    let path = link.as_os_str().as_bytes().strip_suffix(b" (deleted)")?;
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path));
    path.is_file().then_some(path)
}

/// Becomes the new executable at `exe`, same pid and arguments (systemd keeps following it and
/// hears READY again); returns only if that fails, with the code that gets the daemon restarted.
fn restart_into(exe: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    tracing::info!(exe = %exe.display(), "the troops executable was replaced; restarting into it");
    notify("RELOADING=1\nSTATUS=restarting into the new troops executable");
    let error = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    tracing::error!(exe = %exe.display(), %error, "cannot restart into the new executable");
    ExitCode::FAILURE
}

/// The daemon cannot go on: its socket goes first, so that hooks and the CLI run the plan
/// themselves until it is restarted.
fn fail(socket_path: &std::path::Path) -> ExitCode {
    notify("STATUS=failed: a job of the daemon or its socket server ended");
    let _ = std::fs::remove_file(socket_path);
    ExitCode::FAILURE
}

/// `at` as a time of day, for `troops status`.
fn wall_clock(at: Instant) -> String {
    let at = SystemTime::now() + at.saturating_duration_since(Instant::now());
    humantime::format_rfc3339_millis(at).to_string()
}

/// The wait until the next cycle: the interval plus a random share of the jitter.
fn period(config: &Config) -> Duration {
    config.interval + Duration::from_millis(fastrand::u64(..=config.jitter.as_millis() as u64))
}

/// What systemd shows of the running daemon (`systemctl status`): that it works, and what it
/// cannot do.
fn systemd_status(now: &str, metrics_error: Option<&str>) -> String {
    match metrics_error {
        None => now.to_owned(),
        Some(e) => format!("{now}; /metrics NOT SERVED: {e}"),
    }
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) how we are.
fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    if let (Ok(socket), Ok(addr)) = (UnixDatagram::unbound(), addr) {
        let _ = socket.send_to_addr(state.as_bytes(), &addr);
    }
}

/// One line per event with fields: colours on a terminal, no timestamps under journald (it adds them).
fn init_logging() {
    use std::io::IsTerminal;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TROOPS_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::stderr().is_terminal());
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_listener_gets_the_start_a_notice_on_its_own_line_and_the_end() {
        let mut running = Running::new(true, Vec::new());
        running.keep("==> build\ncompiling");
        assert_eq!(running.replay(), "==> build\ncompiling", "all of it was kept");
        // Past the limit: the summary, at the end, reaches a listener that joins as the run ends.
        running.keep(&"x".repeat(REPLAY_LIMIT));
        for _ in 0..1000 {
            running.keep(" more\n");
        }
        running.keep("troops: run 4 succeeded: 1 of 1 steps ran in 9.0s (troops log 4)\n");
        let replay = running.replay();
        let (head, _) =
            replay.split_once(" bytes of output skipped; the whole log: troops log\n more\n").unwrap();
        assert!(head.starts_with("==> build\ncompilingxxx"), "{}", &head[..40]);
        let (before, notice) = head.rsplit_once('\n').unwrap();
        assert!(before.ends_with('x') && notice.starts_with("troops: "), "the notice starts its own line");
        assert!(replay
            .ends_with(" more\n more\ntroops: run 4 succeeded: 1 of 1 steps ran in 9.0s (troops log 4)\n"));
    }
}
