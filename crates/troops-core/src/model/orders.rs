//! What operators order the whole fleet, as documents they sign (issue "change control"): a
//! freeze of automatic deploys until a time, its lift, and an approval of a commit for a wave.
//! Each is the one file `order.json` in the tree of a signed commit under `refs/troops/`
//! (`refs/troops/freeze`, `refs/troops/approve/<commit>/<wave>/<signer>`); this is its form and
//! how it reads, nothing of who may sign it or how it travels.

use serde::{Deserialize, Serialize};

use crate::model::time::Timestamp;

/// The file an order's commit holds.
pub const FILE: &str = "order.json";
/// The ref a fleet's freeze and its lift live at.
pub const FREEZE_REF: &str = "refs/troops/freeze";
/// Where approvals live: `<APPROVE_PREFIX><commit>/<wave>/<signer>`.
pub const APPROVE_PREFIX: &str = "refs/troops/approve/";
/// The most of an order a reader takes: it is a few lines of JSON.
pub const MAX_BYTES: usize = 16 * 1024;

/// One order, as its signer wrote it. `at` is when it was made, in the signed text: of two
/// freeze documents the later one stands, and one older than a document already believed is a
/// replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "snake_case", deny_unknown_fields)]
pub enum Order {
    /// No automatic run of a new commit until `until`.
    Freeze { until: Timestamp, reason: String, by: String, at: Timestamp },
    /// The freeze is over.
    Lift { reason: Option<String>, by: String, at: Timestamp },
    /// `commit` may run in wave `wave`.
    Approve { commit: String, wave: String, by: String, at: Timestamp },
}

impl Order {
    pub fn at(&self) -> Timestamp {
        match self {
            Order::Freeze { at, .. } | Order::Lift { at, .. } | Order::Approve { at, .. } => *at,
        }
    }

    /// Reads an order from its file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Order, String> {
        if bytes.len() > MAX_BYTES {
            return Err(format!("its {FILE} is larger than {MAX_BYTES} bytes"));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("its {FILE} does not read: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an order serializes") + "\n"
    }
}

/// The ref an approval of `commit` for `wave` by the key `signer` lives at.
pub fn approval_ref(commit: &str, wave: &str, signer: &str) -> String {
    format!("{APPROVE_PREFIX}{commit}/{wave}/{signer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_read_back_as_written_and_nothing_else_reads() {
        let at: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let orders = [
            Order::Freeze { until: at, reason: "holidays".into(), by: "alice".into(), at },
            Order::Lift { reason: None, by: "bob".into(), at },
            Order::Approve { commit: "ab".repeat(20), wave: "canary".into(), by: "carol".into(), at },
        ];
        for order in orders {
            assert_eq!(Order::parse(order.to_json().as_bytes()), Ok(order.clone()));
        }
        for bad in [
            &b"{}"[..],
            br#"{"order":"freeze","reason":"x","by":"a","at":"2026-12-06T10:00:00Z"}"#,
            br#"{"order":"lift","by":"a","at":"2026-12-06T10:00:00Z","extra":1}"#,
            br#"{"order":"thaw","by":"a","at":"2026-12-06T10:00:00Z"}"#,
            &vec![b' '; MAX_BYTES + 1],
        ] {
            assert!(Order::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
