//! The plan's `[hosts]` table: each host's git URL, for `troops push` and for the rollout to know
//! the fleet's hosts, read and checked with the rest of the plan.

use std::collections::BTreeMap;

use toml::Spanned;

use crate::model::error::{Error, Result};

/// Validates the plan's `[hosts]` table (host name to the git URL `troops push` pushes to);
/// `err` places a message at a span of the plan.
pub fn parse_hosts(
    raw: BTreeMap<Spanned<String>, Spanned<String>>,
    err: impl Fn(std::ops::Range<usize>, String) -> Error,
) -> Result<BTreeMap<String, String>> {
    let mut hosts = BTreeMap::new();
    for (host, url) in raw {
        if let Some(problem) = host_problem(host.get_ref()) {
            return Err(err(host.span(), format!("[hosts]: host {:?} {problem}", host.get_ref())));
        }
        if let Some(problem) = url_problem(url.get_ref()) {
            return Err(err(
                url.span(),
                format!("[hosts]: `{}` = {:?} {problem}", host.get_ref(), url.get_ref()),
            ));
        }
        hosts.insert(host.into_inner(), url.into_inner());
    }
    Ok(hosts)
}

/// Why `host` cannot be pushed to by name, if it cannot: it goes into logs and, without a `[hosts]`
/// entry, into an ssh address, where a leading `-` would be read as an option.
pub fn host_problem(host: &str) -> Option<String> {
    crate::model::names::name_problem(host)
        .or_else(|| host.starts_with('-').then(|| "starts with `-`".into()))
}

/// Why `url` is no git URL to push to, if it is not.
fn url_problem(url: &str) -> Option<String> {
    if url.trim().is_empty() {
        return Some("is empty".into());
    }
    if url.starts_with('-') {
        return Some("starts with `-` (git would read it as an option)".into());
    }
    let c = url.chars().find(|c| c.is_control())?;
    Some(format!("has a control character ({})", c.escape_unicode()))
}
