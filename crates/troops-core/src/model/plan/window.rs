//! The plan's `[[window]]`s: when automatic runs of a new commit may start on a host (days of the
//! week and a time of day, in a time zone named as in the IANA database, read from the system's
//! zoneinfo), read and checked with the rest of the plan. Whether one is open now, and when the
//! next opens, is `policy::windows`'.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;
use toml::Spanned;

use crate::model::plan::{role_list, Problem};

/// One deploy window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The days it opens on, Monday first.
    pub days: Vec<Weekday>,
    /// When it opens and closes, that day, in `zone`; a close at or before the open is the next
    /// day's (`22:00-04:00`).
    pub opens: Time,
    pub closes: Time,
    pub zone: TimeZone,
    /// The zone as written, for messages.
    pub zone_name: String,
    /// `None`: every host's window.
    pub roles: Option<Vec<String>>,
}

impl Window {
    /// "mon-fri 08:00-17:00 Europe/Berlin", as written.
    pub fn describe(&self) -> String {
        let days: Vec<&str> = self.days.iter().map(|d| DAYS[d.to_monday_zero_offset() as usize]).collect();
        format!("{} {}-{} {}", days.join(","), hm(self.opens), hm(self.closes), self.zone_name)
    }
}

fn hm(time: Time) -> String {
    match time {
        Time::MAX => "24:00".to_owned(),
        _ => format!("{:02}:{:02}", time.hour(), time.minute()),
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    days: Spanned<Vec<Spanned<String>>>,
    time: Spanned<String>,
    timezone: Option<Spanned<String>>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Validates the plan's `[[window]]`s; an error is the span to blame and the message.
pub fn validate(raw: Vec<Spanned<RawWindow>>) -> Result<Vec<Window>, Problem> {
    raw.into_iter().enumerate().map(|(i, w)| window(i + 1, w.into_inner())).collect()
}

fn window(n: usize, raw: RawWindow) -> Result<Window, Problem> {
    let owner = format!("window {n}");
    if raw.days.get_ref().is_empty() {
        return Err((raw.days.span(), format!("{owner}: `days` is empty; name the days it opens on")));
    }
    let mut days = Vec::new();
    for day in raw.days.into_inner() {
        let name = day.get_ref().to_ascii_lowercase();
        let Some(index) = DAYS.iter().position(|d| name.get(..3) == Some(*d) && is_day_name(&name, d)) else {
            return Err((
                day.span(),
                format!("{owner}: {:?} is not a day (mon, tue, ... sun)", day.get_ref()),
            ));
        };
        let weekday = Weekday::from_monday_zero_offset(index as i8).expect("0..7");
        if !days.contains(&weekday) {
            days.push(weekday);
        }
    }
    days.sort_by_key(|d| d.to_monday_zero_offset());
    let (opens, closes) = raw
        .time
        .get_ref()
        .split_once('-')
        .and_then(|(a, b)| Some((clock(a.trim())?, clock(b.trim())?)))
        .filter(|(a, b)| a != b)
        .ok_or_else(|| {
            (
                raw.time.span(),
                format!(
                    "{owner}: `time` {:?} is not \"HH:MM-HH:MM\" (two different times)",
                    raw.time.get_ref()
                ),
            )
        })?;
    let (zone, zone_name) = match raw.timezone {
        None => (TimeZone::UTC, "UTC".to_owned()),
        Some(name) => match TimeZone::get(name.get_ref()) {
            Ok(zone) => (zone, name.into_inner()),
            Err(e) => {
                return Err((
                    name.span(),
                    format!(
                        "{owner}: `timezone` {:?} is not a time zone this host knows: {e}",
                        name.get_ref()
                    ),
                ))
            }
        },
    };
    Ok(Window { days, opens, closes, zone, zone_name, roles: role_list(&owner, raw.roles)? })
}

/// "mon", "monday", "Mon": the day `short` names.
fn is_day_name(name: &str, short: &str) -> bool {
    const LONG: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    name == short || LONG.contains(&name) && name.starts_with(short)
}

/// "08:00", "8:30", "24:00" (the end of the day) as a time of day.
fn clock(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(Time::MAX),
        (0..=23, 0..=59) => Time::new(h, m, 0, 0).ok(),
        _ => None,
    }
}
