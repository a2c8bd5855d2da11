//! Durations a person types on the command line (`troops push --timeout`, `troops wait
//! --timeout`), read one way: humantime, more than zero, at most a year, like every duration of
//! the node config and the plan. A deadline is a clock plus the duration, which a larger one
//! would overflow.

use std::time::Duration;

use crate::model::config::MAX_PERIOD;

/// Parses a command-line duration ("30m", "90s", "1h 30m"); the error says what is wrong, for
/// clap to place after the flag's name.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) if d > MAX_PERIOD => {
            Err(format!("{text:?} is too long; at most {}", humantime::format_duration(MAX_PERIOD)))
        }
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (expected e.g. \"90s\" or \"30m\")")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_more_than_zero_and_at_most_a_year() {
        assert_eq!(duration_arg("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration_arg("1year"), Ok(MAX_PERIOD));
        assert_eq!(duration_arg("0s").unwrap_err(), "must be more than zero");
        assert_eq!(duration_arg("2years").unwrap_err(), "\"2years\" is too long; at most 1year");
        assert!(duration_arg("18446744073709551615s").unwrap_err().contains("at most 1year"));
        assert!(duration_arg("soon").unwrap_err().contains("expected e.g."));
    }
}
