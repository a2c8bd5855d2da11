//! `troops daemon`: the agent, and the only async part of troops. A single-threaded tokio loop
//! waits on the timer (interval plus jitter), a pending retry, the control socket, file changes
//! (config and branch ref, read by notify on a thread of its own) and signals; the actual work
//! runs on one worker thread, fetches on another. SIGTERM ends the current step (SIGTERM to all
//! it started, SIGKILL after its `kill_grace`), then exits 0. If a worker thread or the socket
//! server ends, the daemon exits non-zero at once (systemd restarts it) rather than take requests
//! nothing will answer. systemd hears readiness and status through NOTIFY_SOCKET.

mod listener;
mod metrics;
mod socket;
mod status;
mod watch;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};
use troops_core::config::Config;
use troops_core::control::DaemonStatus;
use troops_core::node::Node;
use troops_core::runs::Trigger;

use watch::{Change, Watch};
use worker::{Event, Job, Work, Worker};

/// Set on SIGTERM/SIGINT: the run under way ends its current step and stops, `interrupted`.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(node: Node) -> Result<ExitCode> {
    init_logging();
    node.repo()?; // a node that was never initialised fails here, with the reason
    troops_core::init::use_group_umask(&node.state_dir);
    // Runs, and whoever waits for them, never wait for a notify command; its output is logged.
    troops_core::notify::on_a_thread();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(node))
}

async fn serve(node: Node) -> Result<ExitCode> {
    let config = Arc::new(Mutex::new(node.config.clone()));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let listener = socket::bind(&node.socket_path(), &node.config.admin_group)?;
    let mut watch = Watch::new(&node.config.path, &node.repo_path(), &node.config.branch).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not watching the branch ref and the config (pushes still reach the daemon through its socket; SIGHUP reloads the config)");
        Watch::inert()
    });
    let (mut term, mut int, mut hup) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    let socket_path = node.socket_path();
    let repo_path = node.repo_path();
    let config_path = node.config.path.clone();
    let status = Arc::new(Mutex::new(DaemonStatus {
        pid: std::process::id(),
        started_at: troops_core::runs::now(),
        next_pull_at: None,
        retry_at: None,
        metrics_error: None,
    }));
    let (worker, thread) = Worker::start(
        Node { state_dir: node.state_dir.clone(), config: node.config.clone() },
        config.clone(),
        &STOP,
        events_tx.clone(),
    );
    let publisher = status::Publisher::start(node.state_dir.clone(), config.clone(), events_tx);
    let runs = Arc::new(node.runs());
    let mut server = tokio::spawn(socket::serve(
        listener,
        worker.clone(),
        config.clone(),
        repo_path,
        runs,
        status.clone(),
    ));
    tracing::info!(state_dir = %node.state_dir.display(), config = %config_path.display(), branch = %node.config.branch, "daemon started");
    if let Some(addr) = node.config.metrics.listen {
        metrics::start(addr, node.state_dir.clone(), config.clone(), status.clone()).await;
    }
    notify(&format!("READY=1\nSTATUS={}", systemd_status(&status.lock().unwrap())));

    let submit = |work: Work| worker.submit(Job { work, listeners: Vec::new() }, || None);
    let pull = || worker.pull(None, config.lock().unwrap().fetch_timeout);
    pull();
    // The first tick falls anywhere in the first period, so that daemons started together (a
    // fleet's reboot, a package upgrade) spread their polls over it from the start.
    let first = period(&config.lock().unwrap());
    let mut next_tick = Instant::now() + Duration::from_millis(fastrand::u64(..=first.as_millis() as u64));
    let mut retry_at: Option<Instant> = None;
    let mut upgrade = None;
    loop {
        {
            let mut status = status.lock().unwrap();
            status.next_pull_at = Some(wall_clock(next_tick));
            status.retry_at = retry_at.map(wall_clock);
        }
        tokio::select! {
            _ = sleep_until(next_tick) => {
                publisher.poke();
                pull();
                next_tick = Instant::now() + period(&config.lock().unwrap());
            }
            _ = sleep_until(retry_at.unwrap_or(next_tick)), if retry_at.is_some() => {
                retry_at = None;
                submit(Work::Tip(Trigger::Retry));
            }
            Some(event) = events.recv() => match event {
                Event::RetryAt(at) => {
                    // A batch ended (a run, a pull cycle): the node's status may have changed.
                    publisher.poke();
                    retry_at = at.map(Instant::from_std);
                    if let Some(exe) = replaced_executable() {
                        if worker.idle_and_closed() {
                            upgrade = Some(exe);
                            break;
                        }
                    }
                }
                Event::Ended(thread) => {
                    tracing::error!(thread, "a worker thread ended; exiting so that the daemon is restarted");
                    return Ok(fail(&socket_path));
                }
            },
            _ = &mut server => {
                tracing::error!("the control socket server ended; exiting so that the daemon is restarted");
                return Ok(fail(&socket_path));
            }
            change = watch.next() => match change {
                Change::Config => reload(&config, &mut watch, &node),
                Change::Branch => {
                    tracing::debug!(branch = %config.lock().unwrap().branch, "branch ref moved");
                    submit(Work::Tip(Trigger::Push))
                }
            },
            _ = hup.recv() => reload(&config, &mut watch, &node),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: ending the current step, if any");
    notify("STOPPING=1");
    STOP.store(true, Ordering::SeqCst);
    worker.stop();
    publisher.stop();
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    let _ = std::fs::remove_file(&socket_path);
    if let Some(exe) = upgrade {
        return Ok(restart_into(&exe));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
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
    notify("STATUS=failed: a worker thread or the socket server ended");
    let _ = std::fs::remove_file(socket_path);
    ExitCode::FAILURE
}

/// `at` as a time of day, for `troops status`.
fn wall_clock(at: Instant) -> String {
    let at = std::time::SystemTime::now() + at.saturating_duration_since(Instant::now());
    humantime::format_rfc3339_millis(at).to_string()
}

/// The wait until the next cycle: the interval plus a random share of the jitter.
fn period(config: &Config) -> Duration {
    config.interval + Duration::from_millis(fastrand::u64(..=config.jitter.as_millis() as u64))
}

/// Re-reads the config file. What the loop set up from the old config follows the new one: the
/// branch ref it watches and the socket's group.
fn reload(config: &Mutex<Config>, watch: &mut Watch, node: &Node) {
    let old = config.lock().unwrap().clone();
    // With the node's recorded [verify] policy: a file lost or emptied meanwhile keeps it.
    let new = match troops_core::node::load_config(&node.state_dir, &old.path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "config not reloaded; keeping the previous one");
            return;
        }
    };
    tracing::info!(config = %old.path.display(), "config reloaded");
    if new.branch != old.branch {
        match Watch::new(&new.path, &node.repo_path(), &new.branch) {
            Ok(new_watch) => *watch = new_watch,
            Err(e) => tracing::warn!(error = %e, branch = %new.branch, "not watching the new branch's ref"),
        }
    }
    if new.admin_group != old.admin_group {
        socket::give_to_group(&node.socket_path(), &new.admin_group);
    }
    *config.lock().unwrap() = new;
}

/// What systemd shows of the running daemon (`systemctl status`): that it works, and what it
/// cannot do.
fn systemd_status(status: &DaemonStatus) -> String {
    match &status.metrics_error {
        None => "following the branch".to_owned(),
        Some(e) => format!("following the branch; /metrics NOT SERVED: {e}"),
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
