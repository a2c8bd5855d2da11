//! A disruption slot's document (`slot.json`), as its holder commits it at
//! `refs/troops/slots/<group>/<n>` of the status remote: who holds the slot, for which run, since
//! when and for how long a lease. The times in it are the holder's words: a reader measures the
//! lease from when it first saw the document, by its own clock (`policy::slots`).

use serde::{Deserialize, Serialize};

/// Where slot refs live, on the status remote and in the node's status repo.
pub const REF_PREFIX: &str = "refs/troops/slots/";
/// The one file in a slot commit's tree.
pub const FILE: &str = "slot.json";
/// The largest slot document read: a real one is a few hundred bytes.
pub const MAX_DOC: usize = 4096;
/// The schema this troops writes and reads.
pub const SCHEMA: u32 = 1;

/// The ref of slot `n` of `group`.
pub fn reference(group: &str, n: u32) -> String {
    format!("{REF_PREFIX}{group}/{n}")
}

/// What a slot's holder says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDoc {
    pub schema: u32,
    pub group: String,
    pub slot: u32,
    /// The host that took it (or gave it back).
    pub holder: String,
    /// The holder's run that took it.
    pub run: u64,
    /// When the holder took it, by its clock: kept by renewals, shown to people.
    pub since: String,
    /// How long after a reader first sees this document the slot is the holder's, unless renewed.
    pub lease_seconds: u64,
    /// How many times the holder renewed the lease: each renewal is a new document, which a reader
    /// sees as new (and measures the lease from) even within the second it was taken.
    pub renewals: u64,
    /// Given back: the slot is free.
    pub released: bool,
}
