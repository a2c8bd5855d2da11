//! Stopping a run politely: SIGINT, SIGTERM or SIGHUP to a process running a plan in-process sets
//! a flag; the current step is ended (SIGTERM, then SIGKILL after its `kill_grace`) and the run
//! ends `interrupted`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The process-wide stop flag, with the handlers installed on first use.
pub fn stop_flag() -> &'static AtomicBool {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let action = SigAction::new(SigHandler::Handler(request_stop), SaFlags::SA_RESTART, SigSet::empty());
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            let _ = unsafe { sigaction(signal, &action) };
        }
    });
    &STOP
}
