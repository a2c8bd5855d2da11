//! The node config's `[notify]` table: the command that tells a person how a run went, and how
//! long it may take, read and checked with the rest of the config.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::error::{Error, Result};

/// The node config's `[notify]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Run with `/bin/sh -c`; none: nobody is notified.
    pub command: Option<String>,
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { command: None, timeout: Duration::from_secs(30) }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    command: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

impl Settings {
    pub(crate) fn parse(raw: RawSettings, err: impl Fn(Range<usize>, String) -> Error) -> Result<Settings> {
        let timeout = crate::model::limits::NOTIFY_TIMEOUT
            .key("`notify.timeout`", raw.timeout, Settings::default().timeout)
            .map_err(|(span, message)| err(span, message))?;
        let command = match raw.command {
            Some(c) if c.get_ref().trim().is_empty() => {
                return Err(err(c.span(), "`notify.command` is empty; leave it out to notify nobody".into()))
            }
            command => command.map(Spanned::into_inner),
        };
        Ok(Settings { command, timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_values_name_their_key_and_line() {
        let parse =
            |text: &str| crate::model::config::Config::parse(std::path::Path::new("/etc/troops.toml"), text);
        let notify = parse("[notify]\ncommand = \"curl -d @- x\"\ntimeout = \"5s\"\n").unwrap().notify;
        assert_eq!(
            notify,
            Settings { command: Some("curl -d @- x".into()), timeout: Duration::from_secs(5) }
        );
        assert_eq!(parse("").unwrap().notify, Settings::default());
        let e = parse("[notify]\ncommand = \" \"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops.toml:2:11: `notify.command` is empty"), "{e}");
        let e = parse("[notify]\ntimeout = \"0s\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:11: `notify.timeout`"), "{e}");
        assert!(parse("[notify]\nurl = \"x\"\n").unwrap_err().to_string().contains("url"));
    }
}
