//! The plan's `[[watch]]`es: which of its peers' exports a host depends on. When the values it
//! watches change, the host runs its deployed commit again (`policy::watch` says when, `schedule`
//! whether), so a load balancer lists the app servers that exist now.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::limits::WATCH_SETTLE;
use crate::model::plan::{role_list, Problem};

/// How long the watched values must stay as they are before the run that follows them starts,
/// unless a watch says otherwise: ten hosts joining within it make one run.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);

/// One watch: export `export` of every peer with role `role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The peers' role.
    pub role: String,
    pub export: String,
    /// The watching hosts' roles; `None`: every host watches.
    pub roles: Option<Vec<String>>,
    pub settle: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    role: Spanned<String>,
    export: Spanned<String>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    settle: Option<Spanned<String>>,
}

/// Validates the plan's `[[watch]]`es; an error is the span to blame and the message.
pub fn validate(raw: Vec<Spanned<RawWatch>>) -> Result<Vec<Watch>, Problem> {
    raw.into_iter().enumerate().map(|(i, w)| watch(i + 1, w.into_inner())).collect()
}

fn watch(n: usize, raw: RawWatch) -> Result<Watch, Problem> {
    let owner = format!("watch {n}");
    if let Some(problem) = crate::model::names::role_name_problem(raw.role.get_ref()) {
        return Err((raw.role.span(), format!("{owner}: role name {:?} {problem}", raw.role.get_ref())));
    }
    if let Some(problem) = crate::model::exports::name_problem(raw.export.get_ref()) {
        return Err((
            raw.export.span(),
            format!("{owner}: export name {:?} {problem}", raw.export.get_ref()),
        ));
    }
    let settle = WATCH_SETTLE.key(&format!("{owner}: `settle`"), raw.settle, DEFAULT_SETTLE)?;
    Ok(Watch {
        role: raw.role.into_inner(),
        export: raw.export.into_inner(),
        roles: role_list(&owner, raw.roles)?,
        settle,
    })
}
