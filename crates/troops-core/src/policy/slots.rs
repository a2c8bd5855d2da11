//! Whether a disruption slot is free, as a pure function of what its ref holds and the reader's
//! own clock. A lease runs from when this reader first saw the holder's document (never from the
//! time the document states), so a holder whose clock is ahead or behind can neither shorten nor
//! stretch it; a document that cannot be read counts as held for the plan's `ttl` from first sight,
//! so garbage on a slot ref delays, and never admits, a disruption.

use std::time::{Duration, SystemTime};

use crate::model::limits::DAY;
use crate::model::shown::escape;
use crate::model::slot::SlotDoc;

/// What this node found at a slot's ref.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No ref: the slot was never taken.
    Missing,
    /// A document, first seen (at this commit) at `first_seen` by this node's clock.
    Doc { doc: SlotDoc, first_seen: SystemTime },
    /// A commit whose document cannot be read (too large, not JSON, another slot's), and why.
    Unreadable { why: String, first_seen: SystemTime },
}

/// Whose a slot is now, for a node that wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody's: missing or given back.
    Free,
    /// This node's own, from a run of its that is over (the node lock says so): taken again at once.
    Mine,
    /// Its holder's lease ended, by this node's clock, without a renewal: taken over.
    Expired { holder: String },
    /// Someone else's until `until` (this node's clock).
    Held { holder: String, since: String, until: SystemTime },
}

/// Judges slot `seen` for host `me` at `now`; `ttl` is the plan's lease, for a document that
/// cannot be read. A document's own lease is believed up to a day.
pub fn judge(seen: &Seen, me: &str, ttl: Duration, now: SystemTime) -> Verdict {
    let (holder, since, lease, first_seen) = match seen {
        Seen::Missing => return Verdict::Free,
        Seen::Doc { doc, .. } if doc.released => return Verdict::Free,
        Seen::Doc { doc, .. } if doc.holder == me => return Verdict::Mine,
        Seen::Doc { doc, first_seen } => (
            doc.holder.clone(),
            doc.since.clone(),
            Duration::from_secs(doc.lease_seconds).min(DAY),
            *first_seen,
        ),
        Seen::Unreadable { why, first_seen } => {
            (format!("an unreadable document ({why})"), "?".into(), ttl, *first_seen)
        }
    };
    let until = first_seen + lease;
    match now >= until {
        true => Verdict::Expired { holder },
        false => Verdict::Held { holder, since, until },
    }
}

/// Of slots judged in order, the first this node may take now (its own, a free one, an expired
/// one), else `None`.
pub fn pick(verdicts: &[Verdict]) -> Option<usize> {
    let rank = |v: &Verdict| match v {
        Verdict::Mine => Some(0),
        Verdict::Free => Some(1),
        Verdict::Expired { .. } => Some(2),
        Verdict::Held { .. } => None,
    };
    verdicts.iter().enumerate().filter_map(|(i, v)| rank(v).map(|r| (r, i))).min().map(|(_, i)| i)
}

/// Why a node waits when every slot is held: the holder whose lease ends first, e.g. "held by
/// web-3 since 2026-12-06T12:01:00Z, lease until 2026-12-06T12:31:00Z".
pub fn waiting_for(verdicts: &[Verdict]) -> Option<String> {
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Held { holder, since, until } => Some((until, holder, since)),
            _ => None,
        })
        .min()
        .map(|(until, holder, since)| {
            // The holder's words: escaped, as everything another machine says.
            format!(
                "held by {} since {}, lease until {}",
                escape(holder),
                escape(since),
                humantime::format_rfc3339_seconds(*until)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(holder: &str, lease: u64, released: bool) -> SlotDoc {
        SlotDoc {
            schema: 1,
            group: "fleet".into(),
            slot: 0,
            holder: holder.into(),
            run: 1,
            // The holder's clock, ten minutes ahead or a year behind: never read for the lease.
            since: "2099-01-01T00:00:00Z".into(),
            lease_seconds: lease,
            renewals: 0,
            released,
        }
    }

    #[test]
    fn a_slot_is_free_held_or_expired_by_the_readers_clock() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let ttl = Duration::from_secs(60);
        let seen = |d: SlotDoc| Seen::Doc { doc: d, first_seen: t0 };
        let held = |until: u64| Verdict::Held {
            holder: "web-3".into(),
            since: "2099-01-01T00:00:00Z".into(),
            until: at(until),
        };
        let expired = Verdict::Expired { holder: "web-3".into() };
        #[rustfmt::skip]
        let cases: Vec<(&str, Seen, u64, Verdict)> = vec![
            ("never taken", Seen::Missing, 0, Verdict::Free),
            ("given back", seen(doc("web-3", 60, true)), 0, Verdict::Free),
            ("given back by me", seen(doc("web-1", 60, true)), 0, Verdict::Free),
            ("my own, from a run that is over", seen(doc("web-1", 60, false)), 0, Verdict::Mine),
            ("held, just seen", seen(doc("web-3", 60, false)), 0, held(60)),
            ("held, a second before its lease ends", seen(doc("web-3", 60, false)), 59, held(60)),
            ("its lease ended by my clock", seen(doc("web-3", 60, false)), 60, expired.clone()),
            ("long gone", seen(doc("web-3", 60, false)), 86_400 * 365, expired.clone()),
            ("a lease of a century is believed for a day", seen(doc("web-3", 3_155_760_000, false)), 86_399, held(86_400)),
            ("a lease of a century ends after a day", seen(doc("web-3", 3_155_760_000, false)), 86_400, expired.clone()),
            ("a zero lease is over at once", seen(doc("web-3", 0, false)), 0, expired),
            ("unreadable: held for the plan's ttl", Seen::Unreadable { why: "not JSON".into(), first_seen: t0 }, 30,
                Verdict::Held { holder: "an unreadable document (not JSON)".into(), since: "?".into(), until: at(60) }),
            ("unreadable, after the ttl", Seen::Unreadable { why: "not JSON".into(), first_seen: t0 }, 60,
                Verdict::Expired { holder: "an unreadable document (not JSON)".into() }),
        ];
        for (case, seen, now, want) in cases {
            assert_eq!(judge(&seen, "web-1", ttl, at(now)), want, "{case}");
        }
        // A clock behind the first sighting (set back by a person) holds the slot on.
        assert_eq!(
            judge(&seen(doc("web-3", 60, false)), "web-1", ttl, t0 - Duration::from_secs(600)),
            held(60)
        );
    }

    #[test]
    fn the_slot_taken_is_mine_then_free_then_expired_and_waiting_names_the_first_to_end() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let held = |holder: &str, until: u64| Verdict::Held {
            holder: holder.into(),
            since: "s".into(),
            until: t0 + Duration::from_secs(until),
        };
        let expired = Verdict::Expired { holder: "x".into() };
        assert_eq!(pick(&[held("a", 1), expired.clone(), Verdict::Free, Verdict::Mine]), Some(3));
        assert_eq!(pick(&[held("a", 1), expired.clone(), Verdict::Free]), Some(2));
        assert_eq!(pick(&[expired, held("a", 1)]), Some(0));
        assert_eq!(pick(&[held("a", 1), held("b", 2)]), None);
        assert_eq!(pick(&[]), None);
        assert_eq!(
            waiting_for(&[held("web-4", 90), held("web-3", 30)]).unwrap(),
            "held by web-3 since s, lease until 2027-01-15T08:00:30Z"
        );
        let hostile = waiting_for(&[held("\u{1b}[2Jweb-9\n", 30)]).unwrap();
        assert!(hostile.starts_with("held by \\u{1b}[2Jweb-9\\n since"), "{hostile}");
    }
}
