//! What the daemon watches besides its timer, through the `notify` crate: the config file, and
//! the followed branch's ref in the node repo (loose or packed), so a moved branch runs without
//! waiting for the timer. notify reads inotify on a thread of its own, which sleeps while nothing
//! in the watched directories changes; its callback keeps only the events that matter and wakes
//! the tokio loop for those. BENCHMARKS.md ("File watching") has what this costs against raw
//! inotify on the loop: one thread, 0.3 to 0.5 MiB, and wake-ups of that thread during pull cycles.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Config,
    Branch,
}

pub struct Watch {
    /// Stops notify's thread when dropped; `None`: nothing is watched (see `inert`).
    _watcher: Option<RecommendedWatcher>,
    /// One permit each: changes of a kind that arrive before the loop asks count as one.
    config: Arc<Notify>,
    branch: Arc<Notify>,
}

/// The paths that matter, as notify reports them (the watched directory joined with the name).
struct Paths {
    config: Option<PathBuf>,
    branch_ref: PathBuf,
    packed_refs: PathBuf,
}

impl Watch {
    pub fn new(config: &Path, repo: &Path, branch: &str) -> anyhow::Result<Watch> {
        let branch_ref = repo.join("refs/heads").join(branch);
        let ref_dir = branch_ref.parent().expect("a ref has a directory").to_owned();
        std::fs::create_dir_all(&ref_dir)?;
        // A branch with a `/` in its name: the directories made get the mode of `refs/heads`.
        troops_core::mech::modes::settle(repo, &[Path::new("refs/heads").join(branch)])?;
        let config_dir =
            config.parent().map(|dir| if dir.as_os_str().is_empty() { Path::new(".") } else { dir });
        let paths = Paths {
            config: config_dir.zip(config.file_name()).map(|(dir, name)| dir.join(name)),
            branch_ref,
            packed_refs: repo.join("packed-refs"),
        };
        let (config_changed, branch_changed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (on_config, on_branch) = (config_changed.clone(), branch_changed.clone());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            let Ok(event) = event else { return };
            if paths.config.as_ref().is_some_and(|config| written(&event, config)) {
                on_config.notify_one();
            }
            // In the repo's own directory only `packed-refs` matters, and git and libgit2 both
            // replace it by renaming `packed-refs.lock` over it. Renames alone, then: libgit2
            // rewrites `FETCH_HEAD` there on every fetch of every remote, which would wake the
            // loop once per remote and cycle for nothing.
            if written(&event, &paths.branch_ref) || renamed_to(&event, &paths.packed_refs) {
                on_branch.notify_one();
            }
        })?;
        watcher.watch(&ref_dir, RecursiveMode::NonRecursive)?;
        watcher.watch(repo, RecursiveMode::NonRecursive)?;
        if let Some(dir) = config_dir {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(config = %config.display(), error = %e, "not watching the config's directory; reload with SIGHUP");
            }
        }
        Ok(Watch { _watcher: Some(watcher), config: config_changed, branch: branch_changed })
    }

    /// A watch of nothing, for when the system gives no more inotify instances or watches: the
    /// daemon still hears pushes through its socket (the hook asks it) and polls on its timer,
    /// and SIGHUP reloads the config.
    pub fn inert() -> Watch {
        Watch { _watcher: None, config: Arc::new(Notify::new()), branch: Arc::new(Notify::new()) }
    }

    /// The next change (several at once count as one of each kind, config first).
    pub async fn next(&mut self) -> Change {
        tokio::select! {
            biased;
            _ = self.config.notified() => Change::Config,
            _ = self.branch.notified() => Change::Branch,
        }
    }
}

/// `path` was created, written and closed, or renamed into place.
fn written(event: &Event, path: &Path) -> bool {
    matches!(event.kind, EventKind::Create(_) | EventKind::Access(AccessKind::Close(AccessMode::Write)))
        && event.paths.iter().any(|p| p == path)
        || renamed_to(event, path)
}

/// Something was renamed to `path` (notify reports the rename's target in a `To` event).
fn renamed_to(event: &Event, path: &Path) -> bool {
    event.kind == EventKind::Modify(ModifyKind::Name(RenameMode::To)) && event.paths.iter().any(|p| p == path)
}
