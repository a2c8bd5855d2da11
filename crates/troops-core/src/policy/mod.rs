//! The third floor: pure decisions, as functions of facts and a clock, tested as tables: what a
//! node runs now (`schedule`), whether a wave may go (`waves`), where the branch moves
//! (`fastforward`), which steps a commit's changes call for (`paths`), whether a deploy window is
//! open (`windows`).

pub mod fastforward;
pub mod paths;
pub mod reboot;
pub mod schedule;
pub mod slots;
pub mod watch;
pub mod waves;
pub mod windows;
