//! One way to do what a trigger asks, whoever asks (the CLI, the hook) and wherever it runs: the
//! daemon does it when one listens on its socket, else this process does the very same work
//! (`perform`, which the daemon's own jobs call too), so a trigger gives the same run, record,
//! output and exit code either way.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use crate::mech::control::{self, Done, Request};
use crate::model::ask::Ask;
use crate::model::error::{Error, Exit, Result};
use crate::model::node::Node;
use crate::node::run::{self, Outcome};

/// A run asked for: the ask, and whether it follows a pull cycle that could fetch no remote
/// (then nothing running is the environment's failure, exit 3).
pub struct Work {
    pub ask: Ask,
    pub no_remote: bool,
}

/// Does `work`: runs what the ask and the node's state call for. A tick (the daemon's, a pull
/// from cron) first finishes a reboot an earlier troops began, and after its run begins one if the
/// host needs it and nothing holds it (`node::reboot`).
pub fn perform(node: &Node, work: &Work, out: &mut dyn Write, stop: &AtomicBool) -> Result<Outcome> {
    let tick = work.ask == Ask::Tick;
    if tick {
        reboot(node, out, stop, crate::node::reboot::after_boot);
    }
    let outcome = match run::deploy(node, &work.ask, out, stop)? {
        Outcome::Nothing(decision) if work.no_remote => Outcome::Unreachable(decision),
        outcome => outcome,
    };
    if tick {
        reboot(node, out, stop, crate::node::reboot::consider);
    }
    Ok(outcome)
}

/// When the daemon should run a tick on its own, before its timer's next pull: a failed commit's
/// backoff or an earlier wave's soak ends (`facts::next_due`), or a reboot that waits for a slot
/// looks again (`reboot::next_look`), whichever comes first.
pub fn next_due(node: &Node) -> Option<std::time::SystemTime> {
    let due = crate::node::facts::next_due(node);
    let look = crate::node::reboot::next_look(node);
    due.into_iter().chain(look).min()
}

/// One part of a reboot, its lines to `out` and to the log; its failure is said, and changes
/// nothing of the tick's outcome.
fn reboot(
    node: &Node,
    out: &mut dyn Write,
    stop: &AtomicBool,
    part: fn(&Node, &mut dyn Write, &AtomicBool) -> Result<()>,
) {
    let mut logged = crate::mech::output::Logged::new(out, "reboot");
    if let Err(e) = part(node, &mut logged, stop) {
        let _ = writeln!(logged, "troops: the reboot cannot go on: {e}");
    }
}

/// The end of a trigger: says why when nothing ran, and gives the exit code.
pub fn conclude(outcome: &Outcome, out: &mut dyn Write) -> Exit {
    if let Some(message) = outcome.nothing_ran() {
        let _ = writeln!(out, "{message}");
    }
    outcome.exit()
}

/// Does `request` through the daemon when one listens, else here; `out` gets all the output. An
/// error the daemon ended with comes back as `Error::Daemon`, with its exit code.
pub fn dispatch(node: &Node, request: &Request, out: &mut dyn Write, stop: &AtomicBool) -> Result<Exit> {
    if let Some(Done { exit, error }) = control::call(&node.socket_path(), request, out)? {
        return match error {
            Some(message) => Err(Error::Daemon { exit, message }),
            None => Ok(exit),
        };
    }
    let (work, fleet) = match request {
        Request::Run(ask) => (Work { ask: ask.clone(), no_remote: false }, None),
        Request::Pull => {
            let cycle = crate::node::pull::cycle(node, out)?;
            (Work { ask: Ask::Tick, no_remote: cycle.all_failed() }, cycle.fleet)
        }
        Request::Status => return Err(Error::Input("no daemon runs to say how it is".into())),
    };
    let outcome = perform(node, &work, out, stop)?;
    // A pull from cron follows the watched exports as the daemon's cycle does; one that finds them
    // still settling leaves them to the next pull.
    let outcome = match (&outcome, fleet) {
        (Outcome::Nothing(_), Some(crate::policy::watch::Verdict::Due { .. })) => {
            perform(node, &Work { ask: Ask::Fleet, no_remote: false }, out, stop)?
        }
        _ => outcome,
    };
    for record in outcome.records() {
        crate::mech::notify::in_background(node, record);
    }
    crate::mech::statusrefs::in_background(node);
    Ok(conclude(&outcome, out))
}
