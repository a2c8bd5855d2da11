//! `min_troops`: a plan names the oldest troops it is for, and an older troops refuses it by that
//! key, in one sentence naming both versions, before the strict parse could stop at a key of the
//! newer troops that it does not know.

use serde::Deserialize;
use toml::Spanned;

use crate::model::error::Error;
use crate::model::plan::Problem;

/// Only `min_troops`; every other key is let through here.
#[derive(Deserialize)]
struct Lenient {
    min_troops: Option<Spanned<String>>,
}

/// A troops version, MAJOR.MINOR.PATCH (a missing PATCH is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u64, u64, u64);

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let numbers = text
            .split('.')
            .map(|n| (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok())?)
            .collect::<Option<Vec<u64>>>()?;
        match numbers[..] {
            [major, minor] => Some(Version(major, minor, 0)),
            [major, minor, patch] => Some(Version(major, minor, patch)),
            _ => None,
        }
    }
}

/// This troops, from its package version.
fn ours() -> Version {
    Version::parse(env!("CARGO_PKG_VERSION")).expect("the package version is MAJOR.MINOR.PATCH")
}

/// Refuses plan `text` when its `min_troops` is malformed or newer than this troops. A plan that
/// is no TOML, or whose `min_troops` is no string, is left to the strict parse to explain.
pub(super) fn check(text: &str) -> Result<(), Problem> {
    let Ok(Lenient { min_troops: Some(wanted) }) = toml::from_str(text) else { return Ok(()) };
    let Some(version) = Version::parse(wanted.get_ref()) else {
        return Err((
            wanted.span(),
            format!(
                "`min_troops` {:?} is not a version like \"0.2\" (MAJOR.MINOR[.PATCH])",
                wanted.get_ref()
            ),
        ));
    };
    if version > ours() {
        return Err((
            wanted.span(),
            format!(
                "this plan needs troops {} or later (min_troops); this is troops {}",
                wanted.get_ref(),
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    Ok(())
}

/// An unknown key may be one a newer troops knows: its error says how such plans make that clear.
pub(super) fn hint_newer(error: Error) -> Error {
    match error {
        Error::Plan { path, line, column, message } if message.contains("unknown field") => Error::Plan {
            path,
            line,
            column,
            message: format!("{message} (a key of a newer troops? plans that need one set min_troops)"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_text() {
        assert_eq!(Version::parse("0.2"), Some(Version(0, 2, 0)));
        assert!(Version::parse("0.10").unwrap() > Version::parse("0.9.9").unwrap());
        for bad in ["", "1", "1.2.3.4", "v1.2", "1..2", "1.2-rc1", "1.+2", " 1.2"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(ours() >= Version(0, 2, 0));
    }
}
