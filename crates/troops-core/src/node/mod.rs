//! The top floor: a node's work in the order it happens, built from the floors below: a run in
//! phases (`run`), a pull cycle, a push's checks (`receive`), the rollout's facts, publishing the
//! node's status, `troops init`, and the one dispatch every trigger goes through.

pub mod access;
pub mod dispatch;
pub mod fanout;
pub mod fleet_view;
pub mod init;
pub mod pull;
pub mod receive;
pub mod rollout;
pub mod run;
pub mod wait;
