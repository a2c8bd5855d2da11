//! troops-core: everything a node does, synchronously. The binaries (`troops`, `troops-hook`) are
//! thin shells around it; only the daemon adds an async runtime on top.

pub mod config;
pub mod error;
pub mod host;
pub mod plan;

pub use error::{Error, Exit, Result};
pub mod access;
pub mod ask;
pub mod atomic;
pub mod background;
pub mod check;
pub mod control;
pub mod deploy;
pub mod dispatch;
pub mod fanout;
pub mod fastforward;
pub mod fetch;
pub mod fleet;
pub mod fs_safe;
pub mod http;
pub mod init;
pub mod ledger;
pub mod limits;
pub mod lock;
pub mod mask;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod output;
pub mod probe;
pub mod pull;
pub mod receive;
pub mod releases;
pub mod repo;
pub mod roles;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod secrets;
pub mod shown;
pub mod signals;
pub mod ssh;
pub mod supervise;
pub mod trust;
pub mod verify;
pub mod wait;

#[cfg(test)]
mod accepted;
