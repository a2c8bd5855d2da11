//! What a name may be, and how troops writes a commit id for people: one rule for the names of
//! hosts, steps, roles and groups, which reach logs, step environments, run records and one-line
//! summaries; and the short form of a commit id every sentence uses.

/// Why `name` (of a host, step, role or group) cannot be one, if it cannot: names go into logs,
/// step environments, run records and one-line summaries, where a control character (a newline,
/// an escape sequence, NUL) would forge or garble lines, or fail every step's start.
pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("is empty".into());
    }
    let c = name.chars().find(|c| c.is_control())?;
    Some(format!("has a control character ({})", c.escape_unicode()))
}

/// `name_problem`, and a role name has no comma: `TROOPS_ROLES` lists roles comma-separated.
pub fn role_name_problem(name: &str) -> Option<String> {
    name_problem(name).or_else(|| name.contains(',').then(|| "has a comma".into()))
}

/// The first 12 characters of `commit`: of a commit id, or of what a file or a peer's document
/// holds where one should be (which may be anything).
pub fn short(commit: impl std::fmt::Display) -> String {
    commit.to_string().chars().take(12).collect()
}
