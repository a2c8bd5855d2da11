//! Deploy windows: whether one of a host's `[[window]]`s is open at a moment, and when the next
//! opens. Windows are civil times in their zone: a window in a daylight-saving gap opens when the
//! clocks get there (if it has not closed by then), one in the hour that repeats is open both
//! times. Pure, tested as tables.

use std::collections::BTreeSet;
use std::time::SystemTime;

use jiff::{Timestamp, ToSpan};

use crate::model::plan::window::Window;

/// What a host's windows say of a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One is open, or none is the host's.
    Open,
    /// All are closed; the next opens at `next` (within a week and a day), and they are, in
    /// words, `windows`.
    Closed { next: Option<SystemTime>, windows: String },
}

/// What the windows of `windows` that apply to a host with `roles` say of `now`.
pub fn verdict(windows: &[Window], roles: &BTreeSet<String>, now: SystemTime) -> Verdict {
    let mine: Vec<&Window> = windows
        .iter()
        .filter(|w| w.roles.as_ref().is_none_or(|wanted| wanted.iter().any(|r| roles.contains(r))))
        .collect();
    let Ok(now) = Timestamp::try_from(now) else { return Verdict::Open };
    if mine.is_empty() || mine.iter().any(|w| open(w, now)) {
        return Verdict::Open;
    }
    let next = mine.iter().filter_map(|w| next_opening(w, now)).min();
    Verdict::Closed {
        next: next.map(SystemTime::from),
        windows: mine.iter().map(|w| w.describe()).collect::<Vec<_>>().join("; "),
    }
}

/// Whether `window` is open at `at`.
fn open(window: &Window, at: Timestamp) -> bool {
    let zoned = at.to_zoned(window.zone.clone());
    let (day, time) = (zoned.weekday(), zoned.time());
    let on = |day: jiff::civil::Weekday| window.days.contains(&day);
    if window.opens < window.closes {
        on(day) && window.opens <= time && time < window.closes
    } else {
        // Across midnight: from `opens` on one of its days to `closes` the day after.
        (on(day) && time >= window.opens) || (on(day.previous()) && time < window.closes)
    }
}

/// When `window` next opens after `now`: the first of its opening times, in the next eight days,
/// at which it is open (a gap can swallow a whole window). An opening time in a gap is taken
/// past it, as the clocks read after it; the window opened when they jumped, found minute by
/// minute back (transitions fall on whole minutes; a gap lasts at most a few hours).
fn next_opening(window: &Window, now: Timestamp) -> Option<Timestamp> {
    let today = now.to_zoned(window.zone.clone()).date();
    let at = (0..=8)
        .filter_map(|d| today.checked_add(d.days()).ok())
        .filter(|date| window.days.contains(&date.weekday()))
        .filter_map(|date| date.to_datetime(window.opens).to_zoned(window.zone.clone()).ok())
        .map(|zoned| zoned.timestamp())
        .find(|at| *at > now && open(window, *at))?;
    let earlier = |at: Timestamp| at.checked_sub(1.minute()).ok().filter(|e| *e > now && open(window, *e));
    Some(std::iter::successors(Some(at), |at| earlier(*at)).take(24 * 60).last().unwrap_or(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::Plan;
    use std::path::Path;

    fn windows(text: &str) -> Vec<Window> {
        Plan::parse(Path::new("troops.toml"), text, None).unwrap().windows
    }

    fn at(utc: &str) -> SystemTime {
        SystemTime::from(utc.parse::<Timestamp>().unwrap())
    }

    /// "open", or "closed until <UTC>".
    fn say(windows: &[Window], roles: &[&str], utc: &str) -> String {
        let roles = roles.iter().map(|r| r.to_string()).collect();
        match verdict(windows, &roles, at(utc)) {
            Verdict::Open => "open".into(),
            Verdict::Closed { next, .. } => {
                format!("closed until {}", Timestamp::try_from(next.unwrap()).unwrap())
            }
        }
    }

    #[test]
    fn office_hours_in_berlin_winter_and_summer() {
        let w = windows("[[window]]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\ntime = \"08:00-17:00\"\ntimezone = \"Europe/Berlin\"\n");
        let table = [
            // A winter Monday (CET, UTC+1).
            ("2026-01-05T06:59:59Z", "closed until 2026-01-05T07:00:00Z"),
            ("2026-01-05T07:00:00Z", "open"),
            ("2026-01-05T15:59:59Z", "open"),
            ("2026-01-05T16:00:00Z", "closed until 2026-01-06T07:00:00Z"),
            // Friday evening to Monday morning.
            ("2026-01-09T18:00:00Z", "closed until 2026-01-12T07:00:00Z"),
            // Summer (CEST, UTC+2).
            ("2026-07-06T06:30:00Z", "open"),
            ("2026-07-04T12:00:00Z", "closed until 2026-07-06T06:00:00Z"),
            // The weekend the clocks go forward (Sunday 29 March 2026): Monday opens at 06:00Z.
            ("2026-03-28T12:00:00Z", "closed until 2026-03-30T06:00:00Z"),
        ];
        for (now, want) in table {
            assert_eq!(say(&w, &[], now), want, "at {now}");
        }
    }

    #[test]
    fn daylight_saving_gaps_and_repeats_and_nights() {
        // 02:00-03:00 on the night the clocks go forward does not exist: the next is a week later.
        let gap =
            windows("[[window]]\ndays = [\"sun\"]\ntime = \"02:00-03:00\"\ntimezone = \"Europe/Berlin\"\n");
        assert_eq!(say(&gap, &[], "2026-03-28T12:00:00Z"), "closed until 2026-04-05T00:00:00Z");
        // 02:30-04:00 on that night opens when the clocks jump to 03:00.
        let late =
            windows("[[window]]\ndays = [\"sun\"]\ntime = \"02:30-04:00\"\ntimezone = \"Europe/Berlin\"\n");
        assert_eq!(say(&late, &[], "2026-03-28T12:00:00Z"), "closed until 2026-03-29T01:00:00Z");
        assert_eq!(say(&late, &[], "2026-03-29T01:30:00Z"), "open");
        // The night they go back (25 October 2026), 02:00-03:00 happens twice: open both times.
        for (now, want) in [
            ("2026-10-25T00:30:00Z", "open"),
            ("2026-10-25T01:30:00Z", "open"),
            ("2026-10-25T02:00:00Z", "closed until 2026-11-01T01:00:00Z"),
        ] {
            assert_eq!(say(&gap, &[], now), want, "at {now}");
        }
        // Across midnight, in UTC (the default zone): Friday 22:00 to Saturday 04:00.
        let night = windows("[[window]]\ndays = [\"friday\"]\ntime = \"22:00-04:00\"\n");
        assert_eq!(say(&night, &[], "2026-01-10T03:59:00Z"), "open");
        assert_eq!(say(&night, &[], "2026-01-10T04:00:00Z"), "closed until 2026-01-16T22:00:00Z");
        assert_eq!(say(&night, &[], "2026-01-09T21:00:00Z"), "closed until 2026-01-09T22:00:00Z");
    }

    #[test]
    fn windows_by_role_and_none_for_a_host() {
        let w = windows(
            "[[window]]\ndays = [\"sat\"]\ntime = \"00:00-24:00\"\nroles = [\"db\"]\n\
             [[window]]\ndays = [\"mon\"]\ntime = \"09:00-10:00\"\nroles = [\"db\", \"web\"]\n",
        );
        assert_eq!(say(&w, &["db"], "2026-01-10T12:00:00Z"), "open", "Saturday is the db's");
        assert_eq!(say(&w, &["web"], "2026-01-10T12:00:00Z"), "closed until 2026-01-12T09:00:00Z");
        assert_eq!(say(&w, &["cache"], "2026-01-10T12:00:00Z"), "open", "no window of its own: any time");
        assert_eq!(say(&[], &["web"], "2026-01-10T12:00:00Z"), "open");
    }

    #[test]
    fn windows_that_cannot_be_are_refused_in_place() {
        let error = |text: &str| Plan::parse(Path::new("troops.toml"), text, None).unwrap_err().to_string();
        let w = |days: &str, time: &str, zone: &str| {
            format!("[[window]]\ndays = {days}\ntime = \"{time}\"\n{zone}")
        };
        assert!(error(&w("[]", "08:00-09:00", "")).contains(":2:8: window 1: `days` is empty"));
        assert!(error(&w("[\"mo\"]", "08:00-09:00", "")).contains(":2:9: window 1: \"mo\" is not a day"));
        assert!(error(&w("[\"mon\"]", "8-9", ""))
            .contains(":3:8: window 1: `time` \"8-9\" is not \"HH:MM-HH:MM\""));
        assert!(error(&w("[\"mon\"]", "09:00-09:00", "")).contains("two different times"));
        assert!(error(&w("[\"mon\"]", "25:00-26:00", "")).contains("is not \"HH:MM-HH:MM\""));
        assert!(error(&w("[\"mon\"]", "08:00-09:00", "timezone = \"Mars/Olympus\"\n"))
            .contains(":4:12: window 1: `timezone` \"Mars/Olympus\" is not a time zone this host knows"));
        assert_eq!(windows(&w("[\"Mon\", \"monday\"]", "08:00-09:00", "")).len(), 1);
        assert_eq!(
            windows(&w("[\"Mon\", \"monday\"]", "08:00-09:00", ""))[0].describe(),
            "mon 08:00-09:00 UTC"
        );
    }
}
