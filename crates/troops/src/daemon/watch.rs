//! What the daemon watches besides its timer, through one inotify descriptor on the tokio loop
//! (no thread, no wake-ups while nothing changes): the config file, and the followed branch's
//! ref in the node repo (loose or packed), so a moved branch runs without waiting for the timer.

use std::ffi::OsString;
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Config,
    Branch,
}

pub struct Watch {
    fd: AsyncFd<Events>,
    config: Option<(WatchDescriptor, OsString)>,
    refs: (WatchDescriptor, OsString),
    repo: (WatchDescriptor, OsString),
}

/// The inotify descriptor, as tokio wants it.
struct Events(Inotify);

impl std::os::fd::AsRawFd for Events {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

const FLAGS: AddWatchFlags =
    AddWatchFlags::IN_CLOSE_WRITE.union(AddWatchFlags::IN_MOVED_TO).union(AddWatchFlags::IN_CREATE);
/// In the repo's own directory only `packed-refs` matters, and git and libgit2 both replace it by
/// renaming `packed-refs.lock` over it. Renames alone, then: libgit2 rewrites `FETCH_HEAD` there on
/// every fetch of every remote (even with FETCH_HEAD updates off), which would wake the daemon
/// once per remote and cycle for nothing.
const REPO_FLAGS: AddWatchFlags = AddWatchFlags::IN_MOVED_TO;

impl Watch {
    pub fn new(config: &Path, repo: &Path, branch: &str) -> anyhow::Result<Watch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let ref_path = repo.join("refs/heads").join(branch);
        let ref_dir = ref_path.parent().expect("a ref has a directory");
        std::fs::create_dir_all(ref_dir)?;
        let refs =
            (inotify.add_watch(ref_dir, FLAGS)?, ref_path.file_name().expect("a ref has a name").to_owned());
        let repo = (inotify.add_watch(repo, REPO_FLAGS)?, OsString::from("packed-refs"));
        let config = match (config.parent(), config.file_name()) {
            (Some(dir), Some(name)) => match inotify
                .add_watch(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }, FLAGS)
            {
                Ok(wd) => Some((wd, name.to_owned())),
                Err(e) => {
                    tracing::warn!(config = %config.display(), error = %e, "not watching the config's directory; reload with SIGHUP");
                    None
                }
            },
            _ => None,
        };
        // SAFETY: the descriptor is owned by `Events`, which the AsyncFd owns until both drop.
        let fd = unsafe { AsyncFd::register(Events(inotify)) }
            .map_err(|e| anyhow::anyhow!("watching with inotify: {e}"))?;
        Ok(Watch { fd, config, refs, repo })
    }

    /// The next change (several at once count as one of each kind, config first).
    pub async fn next(&mut self) -> Change {
        loop {
            let mut guard = self.fd.readable().await.expect("inotify stays readable");
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    let is = |(wd, name): &(WatchDescriptor, OsString),
                              e: &nix::sys::inotify::InotifyEvent| {
                        e.wd == *wd && e.name.as_ref() == Some(name)
                    };
                    if events.iter().any(|e| self.config.as_ref().is_some_and(|c| is(c, e))) {
                        return Change::Config;
                    }
                    if events.iter().any(|e| is(&self.refs, e) || is(&self.repo, e)) {
                        return Change::Branch;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => panic!("reading inotify events: {e}"),
            }
        }
    }
}
