//! End-to-end tests: the built `troops` and `troops-hook` binaries against real git repos, real
//! pushes, a real sshd on 127.0.0.1 and real gpg. Every test owns a temp dir holding its state
//! dir, config, HOME and repos; nothing touches the machine's troops or git configuration.
//!
//! Run `cargo build --workspace` first (the README's test command does): the tests drive the
//! binaries from the same target dir.
//!
//! The fixtures (`Env`, `DeployRepo`, the daemon, sshd, gpg, the HTTP server) live in
//! `crates/troops-testkit`, shared with the unit tests; `crate::support` names it here.

use troops_testkit as support;

mod access;
mod believe;
mod changes;
mod checks;
mod daemon;
mod dispatch;
mod drift;
mod exports;
mod fanout;
mod fleet;
mod haproxy_pool;
mod hostile;
mod init;
mod inputs;
mod lines;
mod masking;
mod metrics;
mod node;
mod orders;
mod page;
mod pause;
mod plans;
mod preview;
mod probe;
mod pull;
mod push;
mod rollback;
mod secrets;
mod signed;
mod slots;
mod sshsig;
mod steps;
mod trust;
mod wait;
mod watch;
mod webapp;
mod windows;
