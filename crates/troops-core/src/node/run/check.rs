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
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::mech::mask::Masker;
use crate::mech::output::Output;
use crate::mech::runner::{self, Supervisor};
use crate::mech::runs::Runs;
use crate::model::error::Result;
use crate::model::plan::{Action, Check, Expect, HttpProbe, Phase, Plan, Probe, Step};
use crate::model::records::{CheckRecord, CheckStatus, RunRecord, RunStatus, StepStatus};
use crate::model::url::Verify;
use crate::policy::paths::{self, Changes};

/// How often a wait between probes looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The most of an HTTP body read, for `expect`.
const MAX_BODY: usize = 64 * 1024;
/// The most of an HTTP body (or of what answered in its place), in characters, an error quotes.
const BODY_SHOWN: usize = 120;
/// The most of a failed `run` probe's output shown, in bytes (its end, cut from masked output).
const OUTPUT_SHOWN: usize = 4096;
/// How long what a `run` probe started has between SIGTERM and SIGKILL when the probe ends.
const PROBE_KILL_GRACE: Duration = Duration::from_millis(500);
/// Present where systemd is the running init (as `sd_booted()` decides).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// Where `run` probes run, and with what.
pub struct ProbeEnv<'a> {
    /// The run's checkout: the probes' working directory.
    pub checkout: &'a Path,
    /// The whole environment of the run's steps (deploy's `step_env`), for `run` probes.
    pub env: &'a [(&'static str, String)],
    /// The run's secret values, masked in what a failed probe says (it goes to run.json, the
    /// fleet's status refs and notifications) before anything of it is cut or quoted.
    pub mask: &'a Masker,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probed {
    Passed,
    Failed(String),
    /// The check cannot be probed on this host; why.
    Skipped(String),
}

/// The checks a run probes: this host's (by role) whose `paths` saw a change, and the soak;
/// those skipped by their paths are on record as skipped, saying why.
pub struct Due<'p> {
    pub checks: Vec<&'p Check>,
    pub skipped: Vec<CheckRecord>,
    pub soak: Duration,
}

impl<'p> Due<'p> {
    pub fn of(plan: &'p Plan, roles: &BTreeSet<String>, changes: &Changes) -> Due<'p> {
        let mut due = Due { checks: Vec::new(), skipped: Vec::new(), soak: plan.health.soak };
        for check in plan.checks.iter().filter(|c| crate::model::roles::selects_check(c, roles).runs()) {
            match paths::check(check, changes) {
                by_path if by_path.runs() => due.checks.push(check),
                by_path => due.skipped.push(CheckRecord {
                    name: check.name.clone(),
                    status: CheckStatus::Skipped,
                    probes: 0,
                    last_error: Some(by_path.to_string()),
                }),
            }
        }
        due
    }
}

/// The health-check phase of a run whose steps all succeeded: with checks `due`, the record
/// becomes `checking` (saved, so a crash during the checks is seen), then `succeeded`, or
/// `failed` naming the failed check, or `interrupted` when `stop` ended the checks; the caller
/// saves that end, as it saves every run's. The record keeps `checks[]` up to date on disk as
/// probes go. Without checks to probe, only the skipped ones are noted.
pub fn run_phase(
    due: Due,
    record: &mut RunRecord,
    runs: &Runs,
    ctx: &ProbeEnv,
    out: &mut Output,
    stop: &AtomicBool,
) -> Result<()> {
    for skipped in &due.skipped {
        let why = skipped.last_error.as_deref().unwrap_or_default();
        let _ = writeln!(out, "==> check {} skipped: {why}", skipped.name);
    }
    let Due { checks, skipped, soak } = due;
    if checks.is_empty() {
        record.checks = skipped;
        return Ok(());
    }
    // The first `progress` saves the record `checking`, with every check pending.
    record.status = RunStatus::Checking;
    let mut progress = |checks: &[CheckRecord]| {
        record.checks = checks.to_vec();
        runs.save(record)
    };
    let mut checks = run_checks(&checks, soak, ctx, out, stop, &mut progress)?;
    checks.extend(skipped);
    (record.status, record.error) = if stop.load(Ordering::SeqCst) {
        (RunStatus::Interrupted, Some("troops was asked to stop during the health checks".to_owned()))
    } else {
        match failure(&checks) {
            Some(error) => (RunStatus::Failed, Some(error)),
            None => (RunStatus::Succeeded, None),
        }
    };
    record.checks = checks;
    Ok(())
}

/// Why `checks` fail a run, if one failed: "check `web` failed: 3 probes in a row: ...".
pub fn failure(checks: &[CheckRecord]) -> Option<String> {
    let failed = checks.iter().find(|c| c.status == CheckStatus::Failed)?;
    let why = failed.last_error.as_deref().unwrap_or("no probe passed");
    Some(format!("check `{}` failed: {why}", failed.name))
}

/// Probes `checks` until all passed (and kept passing for `soak`), one failed, or `stop` is set;
/// writes each event as one line to `out`. Calls `progress` with the records first, and whenever
/// they changed before the loop waits or probes again; the records it returns, how the checks
/// ended, are the caller's to save (one save fewer for a check that passes at once). Errors only
/// when troops itself cannot work (no supervisor for a `run` probe, a record not saved).
pub fn run_checks(
    checks: &[&Check],
    soak: Duration,
    ctx: &ProbeEnv,
    out: &mut Output,
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
    for check in checks {
        if let Probe::Http(HttpProbe { url, verify: Verify::Off }) = &check.probe {
            let _ = writeln!(
                out,
                "==> check {}: WARNING: insecure_skip_verify: the certificate of {url} is not checked; anyone on the way can answer for it",
                check.name
            );
        }
    }
    for check in checks.iter().filter(|c| !c.start_period.is_zero()) {
        let wait = humantime::format_duration(check.start_period);
        let _ = writeln!(out, "==> check {}: first probe in {wait} (start_period)", check.name);
    }
    // The records as they stand are saved before each wait; how they end, the caller saves.
    let mut changed = true;
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
        if std::mem::take(&mut changed) {
            progress(&records)?;
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
            return Ok(records);
        }
        if soak_ends.is_some_and(|end| Instant::now() >= end) {
            for record in records.iter_mut().filter(|r| r.status == CheckStatus::Passing) {
                record.status = CheckStatus::Passed;
            }
            let _ = writeln!(out, "==> soak {}: all checks passing", humantime::format_duration(soak));
            return Ok(records);
        }
        let Some(i) = next.filter(|i| due[*i] <= Instant::now()) else { continue };
        let check = checks[i];
        let started = Instant::now();
        // The probes mask what they quote of a service as they quote it; this pass covers the
        // rest of what they say (an error of the network, say). What a failed probe shows (a
        // `run` probe's output, masked) comes after its line, not before it.
        let mut shown = Vec::new();
        let probed = match probe(check, ctx, &mut supervisor, stop, &mut shown)? {
            Probed::Failed(why) => Probed::Failed(ctx.mask.masked_text(&why)),
            Probed::Skipped(why) => Probed::Skipped(ctx.mask.masked_text(&why)),
            Probed::Passed => Probed::Passed,
        };
        due[i] = started + check.interval;
        let record = &mut records[i];
        record.probes += 1;
        changed = true;
        if stop.load(Ordering::SeqCst) {
            end(&mut records, "troops was asked to stop");
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
                let _ = out.relay(&shown);
                let _ = out.release();
                if failed_in_a_row[i] >= check.retries {
                    let why = match check.retries {
                        1 => why,
                        n => format!("{n} probes in a row: {why}"),
                    };
                    let _ = writeln!(out, "==> check {} failed: {why}", check.name);
                    record.status = CheckStatus::Failed;
                    record.last_error = Some(why);
                    end(&mut records, "another check failed first");
                    return Ok(records);
                }
                record.last_error = Some(why);
            }
        }
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

/// One probe of `check`, never longer than its timeout (but for a `run` probe's kill grace);
/// what a failed one shows of its output, masked, goes to `shown`.
fn probe(
    check: &Check,
    ctx: &ProbeEnv,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    shown: &mut Vec<u8>,
) -> Result<Probed> {
    Ok(match &check.probe {
        Probe::Http(target) => http(target, ctx.checkout, check.expect.as_ref(), check.timeout, ctx.mask),
        Probe::Tcp(addr) => tcp(addr, check.timeout),
        Probe::Run(command) => run(check, command, ctx, supervisor, stop, shown)?,
        Probe::Unit(unit) => unit_active(unit, check.timeout),
    })
}

/// An `http` probe; a relative `ca` is the checkout's. What it quotes of the server's body is
/// masked first, then cut and escaped.
fn http(
    target: &HttpProbe,
    checkout: &Path,
    expect: Option<&Expect>,
    timeout: Duration,
    mask: &Masker,
) -> Probed {
    let url = &target.url;
    let verify = match &target.verify {
        Verify::CaFile(path) => Verify::CaFile(checkout.join(path)),
        verify => verify.clone(),
    };
    let response = match crate::mech::http::get(url, &verify, &[], timeout, MAX_BODY) {
        Ok(response) => response,
        Err(e) => return Probed::Failed(format!("GET {url} failed: {e}")),
    };
    let shown = || {
        // A body as long as the cap may go on beyond it: a tail that may begin a value is dropped.
        let cut = response.body.len() >= MAX_BODY;
        let masked = if cut { mask.masked_cut(&response.body) } else { mask.masked(&response.body) };
        excerpt(&masked, cut)
    };
    let status = response.status;
    if !(200..300).contains(&status) {
        return Probed::Failed(format!("GET {url} answered {status}: {}", shown()));
    }
    match expect {
        Some(expect) if !expect.holds(&String::from_utf8_lossy(&response.body)) => {
            Probed::Failed(format!("GET {url} answered {status} {}: {}", expect.missed("body"), shown()))
        }
        _ => Probed::Passed,
    }
}

/// The start of `masked` (trimmed), at most `BODY_SHOWN` characters, quoted and escaped; "..."
/// after it when there is more, or when `cut` (the text went on beyond what was read).
fn excerpt(masked: &[u8], cut: bool) -> String {
    let text = String::from_utf8_lossy(masked);
    let text = text.trim();
    let start: String = text.chars().take(BODY_SHOWN).collect();
    let more = cut || text.chars().nth(BODY_SHOWN).is_some();
    format!("{start:?}{}", if more { "..." } else { "" })
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
/// under the run's kind of supervisor); its output is shown only when the probe fails: the last
/// `OUTPUT_SHOWN` bytes of it, cut after it was masked whole, into `shown`.
fn run(
    check: &Check,
    command: &str,
    ctx: &ProbeEnv,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    shown: &mut Vec<u8>,
) -> Result<Probed> {
    let step = Step {
        name: format!("check {}", check.name),
        roles: None,
        paths: Vec::new(),
        action: Action::Run(command.to_owned()),
        preview: None,
        timeout: check.timeout,
        kill_grace: PROBE_KILL_GRACE,
        env: Default::default(),
        phase: Phase::Build,
        disruptive: false,
    };
    let mut output = Vec::new();
    let result =
        runner::run_step(supervisor, &step, ctx.checkout, ctx.env, stop, &mut Output::new(&mut output))?;
    let code = result.exit_code.map_or(String::new(), |c| format!(" {c}"));
    let why = match result.status {
        StepStatus::Succeeded => match &check.expect {
            Some(expect) if !expect.holds(&String::from_utf8_lossy(&output)) => {
                format!("`{command}` exited 0 {}", expect.missed("output"))
            }
            _ => return Ok(Probed::Passed),
        },
        StepStatus::TimedOut => {
            format!("`{command}` timed out after {}", humantime::format_duration(check.timeout))
        }
        StepStatus::Interrupted => "troops was asked to stop".to_owned(),
        StepStatus::Failed | StepStatus::NotRun | StepStatus::Skipped => format!("`{command}` exited{code}"),
    };
    let masked = ctx.mask.masked(&output);
    shown.extend_from_slice(&masked[masked.len().saturating_sub(OUTPUT_SHOWN)..]);
    Ok(Probed::Failed(why))
}

/// A `unit` probe: `systemctl is-active`; skipped where systemd is not running.
fn unit_active(unit: &str, timeout: Duration) -> Probed {
    if !Path::new(SYSTEMD_RUNNING).is_dir() {
        return Probed::Skipped(format!(
            "systemd is not running on this host (no {SYSTEMD_RUNNING}), so unit {unit} cannot be checked"
        ));
    }
    let child = crate::mech::env::command("systemctl", crate::mech::env::base())
        .args(["is-active", "--quiet", "--", unit])
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use troops_testkit::http::{HttpServer, Reply};
    use troops_testkit::BUDGET;

    fn get(url: String) -> Probe {
        Probe::Http(HttpProbe { url, verify: Verify::System })
    }

    fn check(name: &str, probe: Probe) -> Check {
        Check {
            name: name.into(),
            roles: None,
            paths: Vec::new(),
            probe,
            expect: None,
            start_period: Duration::ZERO,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(2),
            retries: 3,
        }
    }

    /// Runs `checks` with `soak`, returning the records, the output and how long it took; every
    /// record handed to `progress` is checked to be about these checks.
    fn probe_all(
        checks: &[Check],
        soak: Duration,
        stop: &AtomicBool,
    ) -> (Vec<CheckRecord>, String, Duration) {
        let env = [("PATH", "/usr/bin:/bin".to_owned())];
        let ctx = ProbeEnv { checkout: Path::new("/"), env: &env, mask: &Masker::default() };
        let mut out = Vec::new();
        let mut saved = 0;
        let mut progress = |records: &[CheckRecord]| {
            assert_eq!(records.len(), checks.len());
            saved += 1;
            Ok(())
        };
        let started = Instant::now();
        let refs: Vec<&Check> = checks.iter().collect();
        let records = run_checks(&refs, soak, &ctx, &mut Output::new(&mut out), stop, &mut progress).unwrap();
        let took = started.elapsed();
        assert!(saved >= 1);
        (records, String::from_utf8(out).unwrap(), took)
    }

    fn run_all(checks: &[Check], soak: Duration) -> (Vec<CheckRecord>, String, Duration) {
        probe_all(checks, soak, &AtomicBool::new(false))
    }

    #[test]
    fn an_http_check_that_passes_at_once_takes_one_probe_and_no_wait() {
        let server = HttpServer::answering(200, "ok");
        let mut web = check("web", get(server.url("/health")));
        web.expect = Some(Expect::Contains("ok".into()));
        web.interval = Duration::from_secs(60);
        let (records, out, took) = run_all(&[web.clone()], Duration::ZERO);
        assert_eq!(
            records[0],
            CheckRecord { name: "web".into(), status: CheckStatus::Passed, probes: 1, last_error: None }
        );
        assert!(out.starts_with("==> check web passed (probe 1, 0.0s)\n"), "{out}");
        assert_eq!(server.requests(), 1, "one probe");
        // No wait: an interval's would be a minute.
        assert!(took < BUDGET, "{took:?}");
        let best = (0..2).map(|_| run_all(&[web.clone()], Duration::ZERO).2).fold(took, Duration::min);
        eprintln!("one passing http check took {took:?}, at best {best:?}");
    }

    #[test]
    fn the_check_phase_saves_the_record_checking_before_it_probes() {
        let server = HttpServer::answering(200, "ok");
        let plan = Plan::parse(
            Path::new("troops.toml"),
            &format!("[[check]]\nname = \"web\"\nhttp = \"{}\"\n", server.url("/health")),
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let runs = Runs::new(dir.path());
        let mut record = RunRecord::for_test(1, "c", RunStatus::Running);
        std::fs::create_dir_all(runs.dir(1)).unwrap();
        let env = [("PATH", "/usr/bin:/bin".to_owned())];
        let ctx = ProbeEnv { checkout: Path::new("/"), env: &env, mask: &Masker::default() };
        let started = Instant::now();
        run_phase(
            Due::of(&plan, &BTreeSet::new(), &crate::policy::paths::Changes::all("a test")),
            &mut record,
            &runs,
            &ctx,
            &mut Output::new(&mut Vec::new()),
            &AtomicBool::new(false),
        )
        .unwrap();
        // One fsync'd save of the record: 3 to 50 ms on a busy disk, the rest well under 1 ms.
        eprintln!("the check phase (one http check, one record save) took {:?}", started.elapsed());
        assert_eq!((record.status, record.checks[0].status), (RunStatus::Succeeded, CheckStatus::Passed));
        let saved = runs.load(1).unwrap();
        assert_eq!((saved.status, saved.checks[0].status), (RunStatus::Checking, CheckStatus::Pending));
    }

    /// Runs `check` once with `mask`: what it recorded, and what it wrote.
    fn probe_masked(check: &Check, mask: &Masker) -> (String, String) {
        let env = [("PATH", "/usr/bin:/bin".to_owned())];
        let ctx = ProbeEnv { checkout: Path::new("/"), env: &env, mask };
        let (stop, mut out) = (AtomicBool::new(false), Vec::new());
        let records =
            run_checks(&[check], Duration::ZERO, &ctx, &mut Output::new(&mut out), &stop, &mut |_| Ok(()))
                .unwrap();
        (records[0].last_error.clone().unwrap(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn what_a_failed_probe_says_is_masked_before_it_is_recorded() {
        let mask = Masker::new(&[("db".into(), b"hunter2-secret".to_vec())]).unwrap();
        let server = HttpServer::answering(500, "config: password=hunter2-secret");
        let mut web = check("web", get(server.url("/health")));
        let mut leaky = check("leaky", Probe::Run("echo password is hunter2-secret; exit 1".into()));
        (web.retries, leaky.retries) = (1, 1);
        for check in [web, leaky] {
            let (why, out) = probe_masked(&check, &mask);
            assert!(why.contains("[secret:db]") && !why.contains("hunter2"), "{why}");
            assert!(!out.contains("hunter2"), "{out}");
        }
    }

    #[test]
    fn a_value_with_quotes_and_backslashes_is_masked_before_the_body_is_quoted() {
        // The body holds it raw and JSON-escaped; the error quotes the body escaped again.
        let value = r#"pa"ss\word-4711"#;
        let mask = Masker::new(&[("db".into(), value.as_bytes().to_vec())]).unwrap();
        let server = HttpServer::answering(500, r#"raw pa"ss\word-4711, json {"pw": "pa"ss\word-4711"}"#);
        let mut web = check("web", get(server.url("/health")));
        web.retries = 1;
        let (why, out) = probe_masked(&web, &mask);
        for shown in [why.as_str(), out.as_str()] {
            assert!(!shown.contains("word-4711"), "{shown}");
            assert!(shown.contains(r#": "raw [secret:db], json {\"pw\": \"[secret:db]\"}""#), "{shown}");
        }
        // Not HTTP at all: whatever is said of what came is masked.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.write_all(br#"pa"ss\word-4711 says hello"#);
            let _ = conn.write_all(b"\r\n\r\n");
        });
        let mut banner = check("banner", get(url));
        banner.retries = 1;
        let (why, _) = probe_masked(&banner, &mask);
        assert!(why.contains(" failed: the response is not HTTP: ") && !why.contains("word-4711"), "{why}");
    }

    #[test]
    fn an_https_check_trusts_its_ca_from_the_checkout_and_says_when_it_trusts_nothing() {
        let ca = troops_testkit::tls::TestCa::new();
        let server = HttpServer::start_tls(&ca.server("127.0.0.1"), |_| Reply::new(200, "ok"));
        let checkout = ca.path().parent().unwrap().to_owned();
        let env = [("PATH", "/usr/bin:/bin".to_owned())];
        let ctx = ProbeEnv { checkout: &checkout, env: &env, mask: &Masker::default() };
        let https = |verify: Verify| {
            let mut web = check("web", Probe::Http(HttpProbe { url: server.url("/health"), verify }));
            web.retries = 1;
            let mut out = Vec::new();
            let records = run_checks(
                &[&web],
                Duration::ZERO,
                &ctx,
                &mut Output::new(&mut out),
                &AtomicBool::new(false),
                &mut |_| Ok(()),
            )
            .unwrap();
            (records[0].clone(), String::from_utf8(out).unwrap())
        };
        let (record, out) = https(Verify::CaFile("ca.pem".into()));
        assert_eq!(record.status, CheckStatus::Passed, "{out}");
        assert!(!out.contains("WARNING"), "{out}");
        let (record, _) = https(Verify::System);
        let why = record.last_error.unwrap();
        assert!(
            why.contains(" failed: the certificate of 127.0.0.1 is not trusted: unknown issuer"),
            "{why}"
        );
        let (record, out) = https(Verify::Off);
        assert_eq!(record.status, CheckStatus::Passed, "{out}");
        assert!(
            out.starts_with(&format!(
                "==> check web: WARNING: insecure_skip_verify: the certificate of {} is not checked",
                server.url("/health")
            )),
            "{out}"
        );
    }

    #[test]
    fn a_body_cut_by_the_read_cap_shows_no_start_of_a_value() {
        // One value fills the cap but for the first bytes of another: those are all that would show.
        let big = "B".repeat(MAX_BODY - 10);
        let mask = Masker::new(&[
            ("big".into(), big.clone().into_bytes()),
            ("db".into(), b"hunter2-secret".to_vec()),
        ])
        .unwrap();
        let body: &'static str = Box::leak(format!("{big}hunter2-secret and more").into_boxed_str());
        let server = HttpServer::answering(500, body);
        let mut web = check("web", get(server.url("/health")));
        web.retries = 1;
        let (why, _) = probe_masked(&web, &mask);
        assert!(why.ends_with(": \"[secret:big]\"..."), "{why}");
    }

    #[test]
    fn a_run_probe_shows_the_end_of_its_masked_output_and_no_part_of_a_value_across_the_cut() {
        let mask = Masker::new(&[("db".into(), b"hunter2-secret-value".to_vec())]).unwrap();
        // The value, then as much as puts the 4 KiB cut 14 bytes into it: `-value` would show.
        let filler = OUTPUT_SHOWN - 6;
        let command =
            format!("printf hunter2-; printf secret-value; head -c {filler} /dev/zero | tr '\\0' x; exit 1");
        let mut leaky = check("leaky", Probe::Run(command));
        leaky.retries = 1;
        let (_, out) = probe_masked(&leaky, &mask);
        // The probe's line, then what it showed, then (the output ended mid-line) troops' next
        // line on a line of its own.
        let (line, rest) = out.split_once('\n').unwrap();
        assert!(line.starts_with("==> check leaky: probe 1 failed: `printf"), "{line}");
        let (shown, said) = rest.split_once("\n==> check leaky failed: ").unwrap();
        assert!(!shown.contains("value") && !shown.contains("hunter2"), "{}", &shown[..100]);
        assert!(shown.len() == OUTPUT_SHOWN && shown.starts_with("et:db]xxx"), "{}", &shown[..100]);
        assert!(said.ends_with("exit 1` exited 1\n"), "{said}");
    }

    #[test]
    fn retries_failed_probes_in_a_row_fail_the_check_and_fewer_do_not() {
        let server = HttpServer::answering(503, "down");
        let (records, out, _) = run_all(&[check("web", get(server.url("/health")))], Duration::ZERO);
        assert_eq!((records[0].status, records[0].probes, server.requests()), (CheckStatus::Failed, 3, 3));
        let why = format!("GET {} answered 503: \"down\"", server.url("/health"));
        assert_eq!(records[0].last_error.as_deref(), Some(&*format!("3 probes in a row: {why}")));
        for n in 1..=3 {
            assert!(out.contains(&format!("==> check web: probe {n} failed: {why}\n")), "{out}");
        }
        assert!(out.ends_with(&format!("==> check web failed: 3 probes in a row: {why}\n")), "{out}");
        assert_eq!(failure(&records), Some(format!("check `web` failed: 3 probes in a row: {why}")));

        // Two bad probes, then a good one: within three retries, the check passes.
        let server =
            HttpServer::start(|r| if r.n <= 2 { Reply::new(500, "starting") } else { Reply::new(200, "ok") });
        let (records, out, _) = run_all(&[check("web", get(server.url("/health")))], Duration::ZERO);
        assert_eq!((records[0].status, records[0].probes), (CheckStatus::Passed, 3), "{out}");
        assert!(out.contains("==> check web passed (probe 3, "), "{out}");
        assert_eq!(failure(&records), None);
    }

    #[test]
    fn expect_wants_its_text_in_the_body() {
        let server = HttpServer::answering(200, "degraded");
        let mut web = check("web", get(server.url("/health")));
        (web.expect, web.retries) = (Some(Expect::Contains("ok".into())), 1);
        let (records, _, _) = run_all(&[web], Duration::ZERO);
        let error = records[0].last_error.as_deref().unwrap();
        assert!(error.contains("answered 200 without \"ok\" in its body: \"degraded\""), "{error}");
    }

    #[test]
    fn expect_exact_wants_the_whole_body_or_output_not_a_part() {
        // "broken" holds "ok": a substring passes it, an exact match does not.
        let server = HttpServer::answering(200, "broken");
        let web = |expect: Expect| {
            let mut web = check("web", get(server.url("/health")));
            (web.expect, web.retries) = (Some(expect), 1);
            web
        };
        let (records, _, _) = run_all(&[web(Expect::Contains("ok".into()))], Duration::ZERO);
        assert_eq!(records[0].status, CheckStatus::Passed);
        let (records, _, _) = run_all(&[web(Expect::Exact("ok".into()))], Duration::ZERO);
        assert_eq!(
            records[0].last_error.as_deref(),
            Some(&*format!(
                "GET {} answered 200 but its body is not exactly \"ok\": \"broken\"",
                server.url("/health")
            ))
        );
        // Whitespace at either end aside, as `echo` and most health endpoints end with a newline.
        let server = HttpServer::answering(200, "ok\r\n");
        let mut exact = check("web", get(server.url("/health")));
        exact.expect = Some(Expect::Exact("ok".into()));
        let (records, _, _) = run_all(&[exact], Duration::ZERO);
        assert_eq!(records[0].status, CheckStatus::Passed);

        let run = |command: &str| {
            let mut cli = check("cli", Probe::Run(command.into()));
            (cli.expect, cli.retries) = (Some(Expect::Exact("ok".into())), 1);
            run_all(&[cli], Duration::ZERO).0.remove(0)
        };
        assert_eq!(run("echo ok").status, CheckStatus::Passed);
        let broken = run("echo broken; echo ok");
        assert_eq!(
            broken.last_error.as_deref(),
            Some("`echo broken; echo ok` exited 0 but its output is not exactly \"ok\"")
        );
    }

    #[test]
    fn start_period_delays_the_first_probe() {
        let server = HttpServer::answering(200, "");
        let mut web = check("web", get(server.url("/health")));
        web.start_period = Duration::from_millis(300);
        let (records, out, took) = run_all(&[web], Duration::ZERO);
        assert_eq!((records[0].status, server.requests()), (CheckStatus::Passed, 1));
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(out.starts_with("==> check web: first probe in 300ms (start_period)\n"), "{out}");
    }

    #[test]
    fn a_soak_holds_only_while_the_checks_keep_passing() {
        let server = HttpServer::answering(200, "ok");
        let (records, out, took) =
            run_all(&[check("web", get(server.url("/health")))], Duration::from_millis(300));
        assert_eq!(records[0].status, CheckStatus::Passed);
        assert!(records[0].probes > 3 && took >= Duration::from_millis(300), "{records:?} {took:?}");
        assert_eq!(out.matches("passed (probe").count(), 1, "one line per event, not per probe: {out}");
        assert!(
            out.contains("==> soak 300ms: every check passed once")
                && out.ends_with("==> soak 300ms: all checks passing\n"),
            "{out}"
        );

        // Good for five probes, then bad: the soak fails two bad probes later.
        let server =
            HttpServer::start(|r| if r.n <= 5 { Reply::new(200, "ok") } else { Reply::new(500, "broken") });
        let mut web = check("web", get(server.url("/health")));
        web.retries = 2;
        let (records, out, took) = run_all(&[web], Duration::from_secs(30));
        assert_eq!((records[0].status, records[0].probes), (CheckStatus::Failed, 7), "{out}");
        assert!(took < BUDGET, "the 30 s soak went on: {took:?}");
        assert!(
            out.ends_with("answered 500: \"broken\"\n")
                && out.contains("==> check web failed: 2 probes in a row"),
            "{out}"
        );
    }

    #[test]
    fn one_failed_check_ends_the_others() {
        let server = HttpServer::answering(500, "");
        let mut bad = check("bad", get(server.url("/health")));
        bad.retries = 1;
        let mut late = check("late", Probe::Tcp("127.0.0.1:1".into()));
        late.start_period = Duration::from_secs(30);
        let (records, _, took) = run_all(&[late, bad], Duration::ZERO);
        assert_eq!((records[0].status, records[1].status), (CheckStatus::NotRun, CheckStatus::Failed));
        assert!(took < BUDGET, "the 30 s start period went on: {took:?}");
        assert!(failure(&records).unwrap().starts_with("check `bad` failed: GET "));
    }

    #[test]
    fn tcp_probes_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut down = check("down", Probe::Tcp(closed.clone()));
        down.retries = 2;
        let (records, _, _) = run_all(&[check("up", Probe::Tcp(open)), down], Duration::ZERO);
        assert_eq!(records[0].status, CheckStatus::Passed);
        assert_eq!((records[1].status, records[1].probes), (CheckStatus::Failed, 2));
        assert!(records[1].last_error.as_deref().unwrap().contains(&format!("cannot connect to {closed}")));
    }

    #[test]
    fn run_probes_show_their_output_only_when_they_fail() {
        let mut ok = check("ok", Probe::Run("echo all ok; echo $PATH".into()));
        ok.expect = Some(Expect::Contains("all ok".into()));
        let (records, out, _) = run_all(&[ok], Duration::ZERO);
        assert_eq!(records[0].status, CheckStatus::Passed, "{out}");
        assert!(!out.contains("all ok"), "{out}");

        let mut failing = check("failing", Probe::Run("echo 'not ready' >&2; exit 4".into()));
        failing.retries = 1;
        let (records, out, _) = run_all(&[failing], Duration::ZERO);
        assert_eq!(records[0].last_error.as_deref(), Some("`echo 'not ready' >&2; exit 4` exited 4"));
        assert_eq!(
            out,
            "==> check failing: probe 1 failed: `echo 'not ready' >&2; exit 4` exited 4\nnot ready\n\
             ==> check failing failed: `echo 'not ready' >&2; exit 4` exited 4\n"
        );

        let mut unexpected = check("unexpected", Probe::Run("echo fine".into()));
        (unexpected.expect, unexpected.retries) = (Some(Expect::Contains("ok".into())), 1);
        let (records, _, _) = run_all(&[unexpected], Duration::ZERO);
        assert!(records[0].last_error.as_deref().unwrap().ends_with("exited 0 without \"ok\" in its output"));

        let mut slow = check("slow", Probe::Run("sleep 30".into()));
        (slow.timeout, slow.retries) = (Duration::from_millis(200), 1);
        let (records, _, took) = run_all(&[slow], Duration::ZERO);
        assert!(records[0].last_error.as_deref().unwrap().ends_with("timed out after 200ms"));
        assert!(took < BUDGET, "the 30 s sleep went on: {took:?}");
    }

    #[test]
    fn a_unit_check_is_skipped_without_systemd() {
        let systemd = Path::new(SYSTEMD_RUNNING).is_dir();
        if !troops_testkit::require(!systemd, "systemd runs here, so unit checks are not skipped") {
            return;
        }
        let (records, out, _) =
            run_all(&[check("nginx", Probe::Unit("nginx.service".into()))], Duration::from_secs(60));
        assert_eq!((records[0].status, records[0].probes), (CheckStatus::Skipped, 1));
        assert!(records[0].last_error.as_deref().unwrap().contains("systemd is not running on this host"));
        assert!(out.contains("==> check nginx skipped: systemd is not running"), "{out}");
        assert_eq!(failure(&records), None);
    }

    #[test]
    fn stop_ends_the_checks_at_once_waiting_or_probing() {
        for probe in [Probe::Tcp("127.0.0.1:1".into()), Probe::Run("sleep 30".into())] {
            let stop = AtomicBool::new(false);
            let mut web = check("web", probe.clone());
            web.timeout = Duration::from_secs(60);
            if matches!(probe, Probe::Tcp(_)) {
                web.start_period = Duration::from_secs(60);
            }
            let (records, _, took) = std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(200));
                    stop.store(true, Ordering::SeqCst);
                });
                probe_all(&[web], Duration::ZERO, &stop)
            });
            assert!(took < BUDGET, "{probe:?}: the 60 s wait went on: {took:?}");
            assert!(matches!(records[0].status, CheckStatus::NotRun | CheckStatus::Failed), "{records:?}");
        }
    }
}
