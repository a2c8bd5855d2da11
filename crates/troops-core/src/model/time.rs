//! A moment as troops' records hold it: a UTC time to the millisecond, written as RFC 3339 with
//! milliseconds ("2024-05-01T12:00:00.123Z"), the form every reader of a record (the status
//! document, a notify command's stdin, `troops runs --json`) has always been given. Read leniently
//! (whole seconds, no `Z`), so older records still read; what is no such time is no record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A time to the millisecond, between 1970 and the year 9999 (what RFC 3339 can write); the
/// precision a record keeps, so one read back equals the one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn time(self) -> SystemTime {
        self.0
    }
}

impl From<SystemTime> for Timestamp {
    /// `time` to the millisecond; one RFC 3339 cannot write (a clock gone wrong: before 1970, after
    /// 9999) is taken as the nearest it can.
    fn from(time: SystemTime) -> Timestamp {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let millis = Duration::from_millis(since.as_millis().try_into().unwrap_or(u64::MAX));
        Timestamp(UNIX_EPOCH + millis.min(LAST))
    }
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST: Duration = Duration::from_millis(253_402_300_799_999);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl std::str::FromStr for Timestamp {
    type Err = humantime::TimestampError;

    fn from_str(text: &str) -> Result<Timestamp, Self::Err> {
        humantime::parse_rfc3339_weak(text).map(Timestamp::from)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| {
            de::Error::invalid_value(de::Unexpected::Str(&text), &format!("an RFC 3339 time ({e})").as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_with_milliseconds_and_read_back_equal() {
        let at = UNIX_EPOCH + Duration::new(1_714_564_800, 123_456_789);
        let stamp = Timestamp::from(at);
        assert_eq!(stamp.to_string(), "2024-05-01T12:00:00.123Z");
        assert_eq!(serde_json::to_string(&stamp).unwrap(), "\"2024-05-01T12:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>("\"2024-05-01T12:00:00.123Z\"").unwrap(), stamp);
        assert_eq!(stamp.time(), UNIX_EPOCH + Duration::from_millis(1_714_564_800_123));
    }

    #[test]
    fn older_forms_read_and_what_is_no_time_does_not() {
        let whole = UNIX_EPOCH + Duration::from_secs(1_577_836_800);
        for text in ["2020-01-01T00:00:00Z", "2020-01-01T00:00:00", "2020-01-01T00:00:00.000Z"] {
            assert_eq!(text.parse::<Timestamp>().unwrap().time(), whole, "{text}");
        }
        for text in
            ["", "now", "start", "1969-12-31T23:59:59Z", "2020-13-01T00:00:00Z", "2020-01-01T00:00:00+02:00"]
        {
            let e = serde_json::from_str::<Timestamp>(&format!("{text:?}")).unwrap_err().to_string();
            assert!(e.contains("expected an RFC 3339 time"), "{text}: {e}");
        }
    }

    #[test]
    fn any_clock_makes_a_time_a_record_can_write() {
        assert_eq!(
            Timestamp::from(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(Timestamp::from(far).to_string(), "9999-12-31T23:59:59.999Z");
    }
}
