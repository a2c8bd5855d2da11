//! The plan's `[[check]]`s and `[health]`: raw as written, validated into `Check` and `Health`
//! with every mistake placed at its value (the probing itself is the run's check phase).

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::limits::{CHECK_PROBE, CHECK_START_PERIOD, HEALTH_RECHECK, HEALTH_SOAK};
use crate::model::plan::{
    path_globs, role_list, Check, Expect, Health, HttpProbe, OnDrift, OnFailure, Probe, Problem,
};
use crate::model::url::{Scheme, Url, Verify};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RETRIES: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    name: Spanned<String>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    http: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    run: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    expect_exact: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    insecure_skip_verify: Option<Spanned<bool>>,
    start_period: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    soak: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    recheck: Option<Spanned<String>>,
    on_drift: Option<Spanned<String>>,
}

pub(super) fn checks(raw: Vec<Spanned<RawCheck>>) -> Result<Vec<Check>, Problem> {
    let mut names = HashSet::new();
    raw.into_iter()
        .map(|check| {
            let name = check.get_ref().name.get_ref().clone();
            if let Some(problem) = crate::model::names::name_problem(&name) {
                return Err((check.get_ref().name.span(), format!("check name {name:?} {problem}")));
            }
            if !names.insert(name.clone()) {
                return Err((check.get_ref().name.span(), format!("duplicate check name `{name}`")));
            }
            check_of(name, check)
        })
        .collect()
}

/// The check `name` (its name known to be good) as written in `check`.
fn check_of(name: String, check: Spanned<RawCheck>) -> Result<Check, Problem> {
    let owner = format!("check `{name}`");
    let span = check.span();
    let raw = check.into_inner();
    let mut given = [("http", raw.http), ("tcp", raw.tcp), ("run", raw.run), ("unit", raw.unit)]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)));
    let (key, value) = given
        .next()
        .ok_or_else(|| (span.clone(), format!("{owner} needs one of `http`, `tcp`, `run` or `unit`")))?;
    if let Some((other, extra)) = given.next() {
        return Err((extra.span(), format!("{owner} has both `{key}` and `{other}`; keep one")));
    }
    let problem =
        |what: String| Err((value.span(), format!("{owner}: `{key}` {:?} {what}", value.get_ref())));
    let text = value.get_ref().clone();
    if key != "http" {
        if let Some(span) =
            raw.ca.as_ref().map(|v| v.span()).or(raw.insecure_skip_verify.as_ref().map(|v| v.span()))
        {
            return Err((span, format!("{owner}: `ca` and `insecure_skip_verify` are for `http` checks")));
        }
    }
    let probe = match key {
        "http" => match Url::parse(&text) {
            Ok(url) => {
                let verify = verify(&owner, url.scheme, raw.ca, raw.insecure_skip_verify)?;
                Probe::Http(HttpProbe { url: text, verify })
            }
            Err(e) => return problem(format!("is not a URL to probe: {e}")),
        },
        "tcp" => match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Probe::Tcp(text)
            }
            _ => return problem("is not `host:port`".into()),
        },
        "run" if text.trim().is_empty() => return problem("is empty".into()),
        "run" => Probe::Run(text),
        // `unit`: a name for systemctl, never an option of it.
        _ if text.starts_with('-')
            || text.is_empty()
            || text.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return problem("is not a systemd unit name".into())
        }
        _ => Probe::Unit(text),
    };

    let expect = match (raw.expect, raw.expect_exact) {
        (Some(_), Some(exact)) => {
            return Err((exact.span(), format!("{owner} has both `expect` and `expect_exact`; keep one")))
        }
        (Some(text), None) => Some(("expect", text.span(), Expect::Contains(text.into_inner()))),
        (None, Some(text)) => Some(("expect_exact", text.span(), Expect::Exact(text.into_inner()))),
        (None, None) => None,
    };
    if let Some((key, span, _)) = &expect {
        if matches!(probe, Probe::Tcp(_) | Probe::Unit(_)) {
            return Err((
                span.clone(),
                format!("{owner}: `{key}` is for `http` (the body) and `run` (the output)"),
            ));
        }
    }
    let retries = match raw.retries {
        None => DEFAULT_RETRIES,
        Some(r) => match u32::try_from(*r.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err((
                    r.span(),
                    format!("{owner}: `retries` {} must be a number from 1 up", r.get_ref()),
                ))
            }
        },
    };
    Ok(Check {
        roles: role_list(&owner, raw.roles)?,
        paths: path_globs(&owner, raw.paths)?,
        probe,
        expect: expect.map(|(_, _, expect)| expect),
        start_period: CHECK_START_PERIOD.key(
            &format!("{owner}: `start_period`"),
            raw.start_period,
            Duration::ZERO,
        )?,
        interval: CHECK_PROBE.key(&format!("{owner}: `interval`"), raw.interval, DEFAULT_INTERVAL)?,
        timeout: CHECK_PROBE.key(&format!("{owner}: `timeout`"), raw.timeout, DEFAULT_TIMEOUT)?,
        retries,
        name,
    })
}

/// Whose certificate an `http` check of a `scheme` URL must show: `ca`'s, none
/// (`insecure_skip_verify`), or the system's; both, or either for `http://`, is a mistake.
fn verify(
    owner: &str,
    scheme: Scheme,
    ca: Option<Spanned<String>>,
    insecure: Option<Spanned<bool>>,
) -> Result<Verify, Problem> {
    let insecure = insecure.filter(|skip| *skip.get_ref());
    if scheme == Scheme::Http {
        if let Some(span) = ca.map(|v| v.span()).or(insecure.map(|v| v.span())) {
            return Err((span, format!("{owner}: `ca` and `insecure_skip_verify` are for https:// URLs")));
        }
        return Ok(Verify::System);
    }
    match (ca, insecure) {
        (Some(_), Some(skip)) => {
            Err((skip.span(), format!("{owner} has both `ca` and `insecure_skip_verify`; keep one")))
        }
        (Some(ca), None) if ca.get_ref().trim().is_empty() => {
            Err((ca.span(), format!("{owner}: `ca` is empty; a PEM file of the CAs to trust")))
        }
        (Some(ca), None) => Ok(Verify::CaFile(ca.into_inner().into())),
        (None, Some(_)) => Ok(Verify::Off),
        (None, None) => Ok(Verify::System),
    }
}

pub(super) fn health(raw: Option<RawHealth>) -> Result<Health, Problem> {
    let Some(raw) = raw else {
        return Ok(Health {
            soak: Duration::ZERO,
            on_failure: OnFailure::Retry,
            recheck: Duration::ZERO,
            on_drift: OnDrift::Report,
        });
    };
    let on_failure = match raw.on_failure {
        None => OnFailure::Retry,
        Some(value) => match value.get_ref().as_str() {
            "retry" => OnFailure::Retry,
            "rollback" => OnFailure::Rollback,
            other => {
                return Err((
                    value.span(),
                    format!("health: `on_failure` {other:?} is not \"retry\" or \"rollback\""),
                ))
            }
        },
    };
    let on_drift = match raw.on_drift {
        None => OnDrift::Report,
        Some(value) => match value.get_ref().as_str() {
            "report" => OnDrift::Report,
            "redeploy" => OnDrift::Redeploy,
            other => {
                return Err((
                    value.span(),
                    format!("health: `on_drift` {other:?} is not \"report\" or \"redeploy\""),
                ))
            }
        },
    };
    let soak = HEALTH_SOAK.key("health: `soak`", raw.soak, Duration::ZERO)?;
    let recheck = HEALTH_RECHECK.key("health: `recheck`", raw.recheck, Duration::ZERO)?;
    Ok(Health { soak, on_failure, recheck, on_drift })
}
