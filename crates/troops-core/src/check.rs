//! Health checks: after the steps, the plan's `[[check]]`s probe what the steps set up (an HTTP
//! endpoint, a TCP port, a command, a systemd unit) until every check has passed, and kept passing
//! through the soak, or one has failed. One thread, one loop: each check waits its
//! `start_period`, then probes every `interval`, each probe bounded by the check's `timeout`;
//! `retries` failed probes in a row fail the check and, since every check must pass, end the loop
//! at once. Nothing waits a fixed time: a check without `start_period` probes at once.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::plan::{Action, Check, Phase, Plan, Probe, Step};
use crate::runner::{self, Supervisor};
use crate::runs::{CheckRecord, CheckStatus, RunRecord, RunStatus, Runs, StepStatus};

/// How often a wait between probes looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The most of an HTTP body read, for `expect`.
const MAX_BODY: usize = 64 * 1024;
/// The most of an HTTP body, in characters, an error quotes.
const BODY_SHOWN: usize = 120;
/// The most of a failed `run` probe's output shown, in bytes (its end).
const OUTPUT_SHOWN: usize = 4096;
/// How long what a `run` probe started has between SIGTERM and SIGKILL when the probe ends.
const PROBE_KILL_GRACE: Duration = Duration::from_millis(500);
/// Present where systemd is the running init (as `sd_booted()` decides).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// Where `run` probes run, and with what.
pub struct Context<'a> {
    /// The run's checkout: the probes' working directory.
    pub checkout: &'a Path,
    /// The whole environment of the run's steps (deploy's `step_env`), for `run` probes.
    pub env: &'a [(&'static str, String)],
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probed {
    Passed,
    Failed(String),
    /// The check cannot be probed on this host; why.
    Skipped(String),
}

/// The health-check phase of a run whose steps all succeeded: with checks for this host, the
/// record becomes `checking` (saved, so a crash during the checks is seen), then `succeeded`, or
/// `failed` naming the failed check, or `interrupted` when `stop` ended the checks. The record
/// keeps `checks[]` up to date on disk as probes go. Without checks for this host, nothing changes.
pub fn run_phase(
    plan: &Plan,
    roles: &BTreeSet<String>,
    record: &mut RunRecord,
    runs: &Runs,
    ctx: &Context,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<()> {
    let checks: Vec<&Check> =
        plan.checks.iter().filter(|c| crate::roles::selects_check(c, roles).0).collect();
    if checks.is_empty() {
        return Ok(());
    }
    record.status = RunStatus::Checking;
    runs.save(record)?;
    let mut progress = |checks: &[CheckRecord]| {
        record.checks = checks.to_vec();
        runs.save(record)
    };
    let checks = run_checks(&checks, plan.health.soak, ctx, out, stop, &mut progress)?;
    (record.status, record.error) = if stop.load(Ordering::SeqCst) {
        (RunStatus::Interrupted, Some("troops was asked to stop during the health checks".to_owned()))
    } else {
        match failure(&checks) {
            Some(error) => (RunStatus::Failed, Some(error)),
            None => (RunStatus::Succeeded, None),
        }
    };
    record.checks = checks;
    runs.save(record)
}

/// Why `checks` fail a run, if one failed: "check `web` failed: 3 probes in a row: ...".
pub fn failure(checks: &[CheckRecord]) -> Option<String> {
    let failed = checks.iter().find(|c| c.status == CheckStatus::Failed)?;
    let why = failed.last_error.as_deref().unwrap_or("no probe passed");
    Some(format!("check `{}` failed: {why}", failed.name))
}

/// Probes `checks` until all passed (and kept passing for `soak`), one failed, or `stop` is set;
/// writes each event as one line to `out` and calls `progress` whenever a record changes. Errors
/// only when troops itself cannot work (no supervisor for a `run` probe, a record not saved).
pub fn run_checks(
    checks: &[&Check],
    soak: Duration,
    ctx: &Context,
    out: &mut dyn Write,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&[CheckRecord]) -> Result<()>,
) -> Result<Vec<CheckRecord>> {
    let begun = Instant::now();
    let mut records: Vec<CheckRecord> = checks
        .iter()
        .map(|c| CheckRecord {
            name: c.name.clone(),
            status: CheckStatus::Pending,
            probes: 0,
            last_error: None,
        })
        .collect();
    let mut due: Vec<Instant> = checks.iter().map(|c| begun + c.start_period).collect();
    let mut failed_in_a_row = vec![0u32; checks.len()];
    let mut supervisor = Supervisor::new(ctx.env);
    let mut soak_ends = None;
    for check in checks.iter().filter(|c| !c.start_period.is_zero()) {
        let wait = humantime::format_duration(check.start_period);
        let _ = writeln!(out, "==> check {}: first probe in {wait} (start_period)", check.name);
    }
    progress(&records)?;
    loop {
        if soak_ends.is_none() && records.iter().all(|r| r.status != CheckStatus::Pending) {
            if soak.is_zero() || records.iter().all(|r| r.status == CheckStatus::Skipped) {
                return Ok(records);
            }
            let _ = writeln!(
                out,
                "==> soak {}: every check passed once; they must keep passing",
                humantime::format_duration(soak)
            );
            soak_ends = Some(Instant::now() + soak);
        }
        let probing = |i: &usize| matches!(records[*i].status, CheckStatus::Pending | CheckStatus::Passing);
        let next = (0..checks.len()).filter(probing).min_by_key(|i| due[*i]);
        let wake = match (next, soak_ends) {
            (Some(i), Some(end)) => due[i].min(end),
            (Some(i), None) => due[i],
            (None, Some(end)) => end,
            (None, None) => return Ok(records),
        };
        if !wait_until(wake, stop) {
            end(&mut records, "troops was asked to stop");
            progress(&records)?;
            return Ok(records);
        }
        if soak_ends.is_some_and(|end| Instant::now() >= end) {
            for record in records.iter_mut().filter(|r| r.status == CheckStatus::Passing) {
                record.status = CheckStatus::Passed;
            }
            let _ = writeln!(out, "==> soak {}: all checks passing", humantime::format_duration(soak));
            progress(&records)?;
            return Ok(records);
        }
        let Some(i) = next.filter(|i| due[*i] <= Instant::now()) else { continue };
        let check = checks[i];
        let started = Instant::now();
        let probed = probe(check, ctx, &mut supervisor, stop, out)?;
        due[i] = started + check.interval;
        let record = &mut records[i];
        record.probes += 1;
        if stop.load(Ordering::SeqCst) {
            end(&mut records, "troops was asked to stop");
            progress(&records)?;
            return Ok(records);
        }
        match probed {
            Probed::Passed => {
                failed_in_a_row[i] = 0;
                if record.status == CheckStatus::Pending {
                    record.status = if soak.is_zero() { CheckStatus::Passed } else { CheckStatus::Passing };
                    let seconds = begun.elapsed().as_secs_f64();
                    let _ = writeln!(
                        out,
                        "==> check {} passed (probe {}, {seconds:.1}s)",
                        check.name, record.probes
                    );
                }
            }
            Probed::Skipped(why) => {
                let _ = writeln!(out, "==> check {} skipped: {why}", check.name);
                record.status = CheckStatus::Skipped;
                record.last_error = Some(why);
            }
            Probed::Failed(why) => {
                failed_in_a_row[i] += 1;
                let _ = writeln!(out, "==> check {}: probe {} failed: {why}", check.name, record.probes);
                if failed_in_a_row[i] >= check.retries {
                    let why = format!("{} probes in a row: {why}", check.retries);
                    let _ = writeln!(out, "==> check {} failed: {why}", check.name);
                    record.status = CheckStatus::Failed;
                    record.last_error = Some(why);
                    end(&mut records, "another check failed first");
                    progress(&records)?;
                    return Ok(records);
                }
                record.last_error = Some(why);
            }
        }
        progress(&records)?;
    }
}

/// Waits until `when`, looking at `stop` on the way; false when it was set.
fn wait_until(when: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = when.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// The loop ended early (`why`): a check never probed did not run; one that never passed failed
/// (its last probe's error stands, or `why`); one passing through the soak passed what it was given.
fn end(records: &mut [CheckRecord], why: &str) {
    for record in records {
        match record.status {
            CheckStatus::Pending if record.probes == 0 => record.status = CheckStatus::NotRun,
            CheckStatus::Pending => {
                record.status = CheckStatus::Failed;
                record.last_error.get_or_insert_with(|| why.to_owned());
            }
            CheckStatus::Passing => record.status = CheckStatus::Passed,
            _ => {}
        }
    }
}

/// One probe of `check`, never longer than its timeout (but for a `run` probe's kill grace).
fn probe(
    check: &Check,
    ctx: &Context,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Probed> {
    let expect = check.expect.as_deref();
    Ok(match &check.probe {
        Probe::Http(url) => http(url, expect, check.timeout),
        Probe::Tcp(addr) => tcp(addr, check.timeout),
        Probe::Run(command) => run(check, command, ctx, supervisor, stop, out)?,
        Probe::Unit(unit) => unit_active(unit, check.timeout),
    })
}

fn http(url: &str, expect: Option<&str>, timeout: Duration) -> Probed {
    let response = match crate::http::get(url, &[], timeout, MAX_BODY) {
        Ok(response) => response,
        Err(e) => return Probed::Failed(format!("GET {url}: {e}")),
    };
    let body = String::from_utf8_lossy(&response.body);
    let shown = || {
        let start: String = body.trim().chars().take(BODY_SHOWN).collect();
        format!("{start:?}{}", if body.trim().chars().nth(BODY_SHOWN).is_some() { "..." } else { "" })
    };
    let status = response.status;
    if !(200..300).contains(&status) {
        return Probed::Failed(format!("GET {url} answered {status}: {}", shown()));
    }
    match expect {
        Some(expect) if !body.contains(expect) => {
            Probed::Failed(format!("GET {url} answered {status} without {expect:?} in its body: {}", shown()))
        }
        _ => Probed::Passed,
    }
}

fn tcp(addr: &str, timeout: Duration) -> Probed {
    let deadline = Instant::now() + timeout;
    let addrs = match addr.to_socket_addrs() {
        Ok(addrs) => addrs,
        Err(e) => return Probed::Failed(format!("cannot resolve {addr}: {e}")),
    };
    let mut why = "the name has no address".to_owned();
    for socket in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&socket, left) {
            Ok(_) => return Probed::Passed,
            Err(e) => why = e.to_string(),
        }
    }
    Probed::Failed(format!("cannot connect to {addr}: {why}"))
}

/// A `run` probe: the command as a step would run (the run's environment, in the checkout,
/// under the run's kind of supervisor); its output is shown only when the probe fails.
fn run(
    check: &Check,
    command: &str,
    ctx: &Context,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Probed> {
    let step = Step {
        name: format!("check {}", check.name),
        roles: None,
        action: Action::Run(command.to_owned()),
        timeout: check.timeout,
        kill_grace: PROBE_KILL_GRACE,
        env: Default::default(),
        phase: Phase::Build,
    };
    let mut output = Vec::new();
    let result = runner::run_step(supervisor, &step, ctx.checkout, ctx.env, stop, &mut output)?;
    let code = result.exit_code.map_or(String::new(), |c| format!(" {c}"));
    let why = match result.status {
        StepStatus::Succeeded => match check.expect.as_deref() {
            Some(expect) if !String::from_utf8_lossy(&output).contains(expect) => {
                format!("`{command}` exited 0 without {expect:?} in its output")
            }
            _ => return Ok(Probed::Passed),
        },
        StepStatus::TimedOut => {
            format!("`{command}` timed out after {}", humantime::format_duration(check.timeout))
        }
        StepStatus::Interrupted => "troops was asked to stop".to_owned(),
        StepStatus::Failed | StepStatus::NotRun => format!("`{command}` exited{code}"),
    };
    let shown = &output[output.len().saturating_sub(OUTPUT_SHOWN)..];
    if !shown.is_empty() {
        let _ = out.write_all(shown);
        if !shown.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
    }
    Ok(Probed::Failed(why))
}

/// A `unit` probe: `systemctl is-active`; skipped where systemd is not running.
fn unit_active(unit: &str, timeout: Duration) -> Probed {
    if !Path::new(SYSTEMD_RUNNING).is_dir() {
        return Probed::Skipped(format!(
            "systemd is not running on this host (no {SYSTEMD_RUNNING}), so unit {unit} cannot be checked"
        ));
    }
    let child = Command::new("systemctl")
        .args(["is-active", "--quiet", "--", unit])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return Probed::Failed(format!("cannot run systemctl: {e}")),
    };
    match runner::wait_or_kill(&mut child, Instant::now() + timeout) {
        Ok(Some(status)) if status.success() => Probed::Passed,
        Ok(Some(status)) => Probed::Failed(format!(
            "unit {unit} is not active (systemctl is-active: exit {})",
            status.code().map_or("by signal".to_owned(), |c| c.to_string())
        )),
        Ok(None) => Probed::Failed(format!(
            "systemctl is-active {unit} did not answer within {}",
            humantime::format_duration(timeout)
        )),
        Err(e) => Probed::Failed(format!("waiting for systemctl: {e}")),
    }
}
