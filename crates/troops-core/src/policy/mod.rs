//! The third floor: pure decisions, as functions of facts and a clock, tested as tables: what a
//! node runs now (`schedule`), whether a wave may go (`waves`), where the branch moves
//! (`fastforward`).

pub mod fastforward;
pub mod schedule;
pub mod waves;
