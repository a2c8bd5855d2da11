//! Every duration troops reads, read one way: the node config's keys, the plan's and the command
//! line's flags, each with its bounds listed here, in one place. A duration is humantime ("90s",
//! "30m", "1h 30m"), within its key's bounds; what is wrong is said in one style, the value and
//! then the bound ("\"2years\" is too long; at most 1year"), after the key's name and, in a file,
//! at its line and column. No duration is longer than a year: a deadline is a clock plus a
//! duration, which the largest values humantime reads would overflow, and no fleet means more.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

pub const YEAR: Duration = Duration::from_secs(31_557_600);
pub const DAY: Duration = Duration::from_secs(86_400);
pub const HOUR: Duration = Duration::from_secs(3_600);
/// The shortest check duration (a check's `interval` and `timeout`; its `start_period` and the
/// health `soak` unless zero, for none). Each probe saves the run record with an fsync: at most
/// ten a second per check.
pub const CHECK_FLOOR: Duration = Duration::from_millis(100);

// The node config (`/etc/troops/troops.toml`).
/// `interval`: from one poll to the next.
pub const INTERVAL: Limit = Limit::up_to(YEAR);
/// `jitter`: zero for none.
pub const JITTER: Limit = Limit::up_to(YEAR).or_none();
/// `fetch_timeout`: a fetch that takes longer than a day is not going to end. Zero, which no
/// fetch could meet, used to be taken; it is refused now.
pub const FETCH_TIMEOUT: Limit = Limit::up_to(DAY);
/// `probe_trust`: zero for no probes.
pub const PROBE_TRUST: Limit = Limit::up_to(YEAR).or_none();
/// `retry.initial` and `retry.max`. A zero `retry.max` used to be refused only as less than
/// `retry.initial`; it is refused at its own value now.
pub const RETRY: Limit = Limit::up_to(YEAR);
/// `status_heartbeat`: how often an unchanged status is published.
pub const STATUS_HEARTBEAT: Limit = Limit::up_to(YEAR);
/// `notify.timeout`: a notification that takes longer than an hour is not arriving.
pub const NOTIFY_TIMEOUT: Limit = Limit::up_to(HOUR);

// The plan (`troops.toml` in the deploy repo).
/// A step's `timeout`.
pub const STEP_TIMEOUT: Limit = Limit::up_to(YEAR);
/// A step's `kill_grace`: from SIGTERM to SIGKILL.
pub const KILL_GRACE: Limit = Limit::up_to(YEAR);
/// A check's `start_period`: zero for none.
pub const CHECK_START_PERIOD: Limit = Limit::up_to(YEAR).at_least(CHECK_FLOOR).or_none();
/// A check's `interval` and `timeout`.
pub const CHECK_PROBE: Limit = Limit::up_to(YEAR).at_least(CHECK_FLOOR);
/// `[health] soak`: zero for none.
pub const HEALTH_SOAK: Limit = Limit::up_to(YEAR).at_least(CHECK_FLOOR).or_none();
/// `[health] recheck`: zero for none (no drift watch).
pub const HEALTH_RECHECK: Limit = Limit::up_to(YEAR).at_least(Duration::from_secs(1)).or_none();
/// `[rollout] soak`: zero for none.
pub const ROLLOUT_SOAK: Limit = Limit::up_to(YEAR).or_none();
/// `[[watch]] settle`: how long the watched exports stay as they are before the run for them; zero:
/// the first pull that finds them changed runs.
pub const WATCH_SETTLE: Limit = Limit::up_to(DAY).or_none();
/// `[disruption] ttl`: a slot's lease. At least a second (the holder renews at a third of it, each
/// renewal a push); at most a day, also the most a slot document's own lease is believed.
pub const SLOT_TTL: Limit = Limit::up_to(DAY).at_least(Duration::from_secs(1));
/// `[disruption] poll`: from one look at the slots to the next while a node waits for one.
pub const SLOT_POLL: Limit = Limit::up_to(HOUR).at_least(CHECK_FLOOR);
/// `[reboot] timeout`: how long a host has to go down once its reboot command returned.
pub const REBOOT_TIMEOUT: Limit = Limit::up_to(DAY);

// The command line.
/// `troops push --timeout` and `troops wait --timeout`.
pub const TIMEOUT_FLAG: Limit = Limit::up_to(YEAR);
/// `troops fleet serve --refresh`: a fetch of the status refs a second at most.
pub const REFRESH_FLAG: Limit = Limit::up_to(DAY).at_least(Duration::from_secs(1));

/// What one duration key or flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The shortest duration taken, other than zero.
    least: Duration,
    most: Duration,
    /// Whether zero is taken too, for "none of it".
    zero: bool,
}

impl Limit {
    /// More than zero, and at most `most`.
    const fn up_to(most: Duration) -> Limit {
        Limit { least: Duration::from_nanos(1), most, zero: false }
    }

    /// This, and at least `least`.
    const fn at_least(self, least: Duration) -> Limit {
        Limit { least, ..self }
    }

    /// This, or zero.
    const fn or_none(self) -> Limit {
        Limit { zero: true, ..self }
    }

    /// `text` as a duration within this limit. The error is the value and what is wrong with it
    /// ("\"0s\" must be more than zero"), for the caller to put after the key's name.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration: {e} (e.g. \"90s\", \"30m\", \"1h 30m\")"))?;
        let or_none = if self.zero { ", or 0s for none" } else { "" };
        match d {
            d if d.is_zero() && self.zero => Ok(d),
            d if d.is_zero() && self.least <= Duration::from_nanos(1) => {
                Err(format!("{text:?} must be more than zero"))
            }
            d if d < self.least => Err(format!(
                "{text:?} is too short; at least {}{or_none}",
                humantime::format_duration(self.least)
            )),
            d if d > self.most => {
                Err(format!("{text:?} is too long; at most {}", humantime::format_duration(self.most)))
            }
            d => Ok(d),
        }
    }

    /// The duration of a key in a file, called `key` there ("`interval`", "step `a`: `timeout`"):
    /// `default` when the file leaves it out. The error is the span of the value and the message,
    /// for the file to place at its line and column.
    pub fn key(
        &self,
        key: &str,
        value: Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, (Range<usize>, String)> {
        match value {
            None => Ok(default),
            Some(v) => self.parse(v.get_ref()).map_err(|problem| (v.span(), format!("{key} {problem}"))),
        }
    }
}

/// A `--timeout` on the command line, for clap, which puts the error after the flag's name.
pub fn timeout_arg(text: &str) -> Result<Duration, String> {
    TIMEOUT_FLAG.parse(text)
}

/// A `--refresh` on the command line, for clap.
pub fn refresh_arg(text: &str) -> Result<Duration, String> {
    REFRESH_FLAG.parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_limit_reads_and_refuses_in_one_style() {
        let ms = Duration::from_millis;
        let not_a_duration =
            |v: &str, e: &str| format!("\"{v}\" is not a duration: {e} (e.g. \"90s\", \"30m\", \"1h 30m\")");
        for (limit, text, read) in [
            (INTERVAL, "60s", Ok(Duration::from_secs(60))),
            (INTERVAL, "1h 30m", Ok(Duration::from_secs(5400))),
            (INTERVAL, "1year", Ok(YEAR)),
            (INTERVAL, "0s", Err("\"0s\" must be more than zero".to_owned())),
            (INTERVAL, "1ns", Ok(Duration::from_nanos(1))),
            (INTERVAL, "2years", Err("\"2years\" is too long; at most 1year".into())),
            (
                INTERVAL,
                "18446744073709551615s",
                Err("\"18446744073709551615s\" is too long; at most 1year".into()),
            ),
            (INTERVAL, "soon", Err(not_a_duration("soon", "expected number at 0"))),
            (INTERVAL, "5", Err(not_a_duration("5", "time unit needed, for example 5sec or 5ms"))),
            (INTERVAL, "", Err(not_a_duration("", "value was empty"))),
            (JITTER, "0s", Ok(Duration::ZERO)),
            (PROBE_TRUST, "0s", Ok(Duration::ZERO)),
            (ROLLOUT_SOAK, "0s", Ok(Duration::ZERO)),
            (FETCH_TIMEOUT, "0s", Err("\"0s\" must be more than zero".into())),
            (FETCH_TIMEOUT, "1day", Ok(DAY)),
            (FETCH_TIMEOUT, "25h", Err("\"25h\" is too long; at most 1day".into())),
            (NOTIFY_TIMEOUT, "1h", Ok(HOUR)),
            (NOTIFY_TIMEOUT, "61m", Err("\"61m\" is too long; at most 1h".into())),
            (RETRY, "0s", Err("\"0s\" must be more than zero".into())),
            (STATUS_HEARTBEAT, "0s", Err("\"0s\" must be more than zero".into())),
            (STEP_TIMEOUT, "2years", Err("\"2years\" is too long; at most 1year".into())),
            (KILL_GRACE, "0s", Err("\"0s\" must be more than zero".into())),
            (CHECK_PROBE, "100ms", Ok(ms(100))),
            (CHECK_PROBE, "99ms", Err("\"99ms\" is too short; at least 100ms".into())),
            (CHECK_PROBE, "0s", Err("\"0s\" is too short; at least 100ms".into())),
            (CHECK_START_PERIOD, "0s", Ok(Duration::ZERO)),
            (CHECK_START_PERIOD, "1us", Err("\"1us\" is too short; at least 100ms, or 0s for none".into())),
            (CHECK_START_PERIOD, "2years", Err("\"2years\" is too long; at most 1year".into())),
            (HEALTH_SOAK, "10ms", Err("\"10ms\" is too short; at least 100ms, or 0s for none".into())),
            (HEALTH_SOAK, "5m", Ok(Duration::from_secs(300))),
            (TIMEOUT_FLAG, "30m", Ok(Duration::from_secs(1800))),
            (TIMEOUT_FLAG, "2years", Err("\"2years\" is too long; at most 1year".into())),
        ] {
            assert_eq!(limit.parse(text), read, "{limit:?} {text:?}");
        }
        assert_eq!(timeout_arg("0s"), TIMEOUT_FLAG.parse("0s"));
    }

    #[test]
    fn a_key_in_a_file_is_its_default_or_placed_at_its_value() {
        #[derive(serde::Deserialize)]
        struct Raw {
            a: Option<Spanned<String>>,
            b: Option<Spanned<String>>,
        }
        let raw: Raw = toml::from_str("a = \"0s\"").unwrap();
        assert_eq!(INTERVAL.key("`b`", raw.b, Duration::from_secs(60)), Ok(Duration::from_secs(60)));
        assert_eq!(
            INTERVAL.key("step `x`: `a`", raw.a, Duration::from_secs(60)),
            Err((4..8, "step `x`: `a` \"0s\" must be more than zero".into()))
        );
    }
}
