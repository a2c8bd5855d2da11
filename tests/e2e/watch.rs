//! The daemon's file watching (notify): a branch moved in the node repo without a push, as a
//! loose ref or in `packed-refs` only, runs at once; files beside the config do not reload it.

use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::{wait_until, Env};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello\"\n";

#[test]
fn a_branch_moved_without_a_push_runs_at_once_loose_or_packed() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let work = env.deploy_repo("work");
    let first = work.publish_plan(&env, PLAN);
    let daemon = Daemon::start(&env);
    wait_until("the start-up run", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(first.as_str())
    });
    let repo = env.repo();
    let git_dir = repo.display().to_string();

    // A loose ref, moved by hand (`git update-ref`, no hook): the objects come first, unreferenced
    // by the branch.
    let second = work.commit(&env, &[("n", "2")], "second");
    env.git(
        &work.path,
        &["--git-dir", &git_dir, "fetch", "-q", &work.path.display().to_string(), "main:refs/objects"],
    );
    env.git(&work.path, &["--git-dir", &git_dir, "update-ref", "refs/heads/main", &second]);
    wait_until("the run of the moved ref", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(second.as_str())
    });

    // Only in `packed-refs`: no loose ref, and the file replaced by renaming its lock over it, as
    // git and libgit2 do.
    env.git(&work.path, &["--git-dir", &git_dir, "pack-refs", "--all"]);
    assert!(!repo.join("refs/heads/main").exists(), "pack-refs left the loose ref");
    let third = work.commit(&env, &[("n", "3")], "third");
    env.git(
        &work.path,
        &["--git-dir", &git_dir, "fetch", "-q", &work.path.display().to_string(), "main:refs/objects"],
    );
    env.git(&work.path, &["--git-dir", &git_dir, "pack-refs", "--all"]);
    let packed = std::fs::read_to_string(repo.join("packed-refs")).unwrap();
    assert!(packed.contains(&format!("{second} refs/heads/main")), "{packed}");
    std::fs::write(
        repo.join("packed-refs.lock"),
        packed.replace(&format!("{second} refs/heads/main"), &format!("{third} refs/heads/main")),
    )
    .unwrap();
    std::fs::rename(repo.join("packed-refs.lock"), repo.join("packed-refs")).unwrap();
    wait_until("the run of the packed ref", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(third.as_str())
    });
    assert_eq!(env.run_ids(), [1, 2, 3], "{}", daemon.log());
}

#[test]
fn only_the_config_file_itself_reloads_the_config() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let daemon = Daemon::start(&env);
    let dir = env.config.parent().unwrap();
    let name = env.config.file_name().unwrap().to_str().unwrap();

    // An editor's swap and backup files, and a file renamed into the directory, beside it.
    std::fs::write(dir.join(format!(".{name}.swp")), "x").unwrap();
    std::fs::write(dir.join(format!("{name}~")), "hostname = \"web-9\"\n").unwrap();
    std::fs::write(dir.join("other.toml.tmp"), "x").unwrap();
    std::fs::rename(dir.join("other.toml.tmp"), dir.join("other.toml")).unwrap();

    // Then the file itself, replaced the way editors save: a new file renamed over it. The events
    // come in order, so once this reload is logged the ones before would have been too.
    let new = dir.join(format!("{name}.new"));
    std::fs::write(&new, "hostname = \"web-2\"\ninterval = \"1h\"\n").unwrap();
    std::fs::rename(&new, &env.config).unwrap();
    wait_until("the reload", Duration::from_secs(10), || daemon.log().contains("config reloaded"));
    assert_eq!(daemon.log().matches("config reloaded").count(), 1, "{}", daemon.log());
    assert!(env.ok(&["status"]).contains("web-2"), "{}", env.ok(&["status"]));
}

/// The daemon hears each change once: a push is its hook's ask (the watcher leaves the move to
/// it), the daemon's own fast-forward does not wake it, and only a move troops did not make (`git
/// update-ref` by hand) runs as a tick.
#[test]
fn a_push_and_the_daemons_own_pull_are_heard_once_and_a_hand_moved_branch_as_a_tick() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    let work = env.init_following_a();
    let daemon = Daemon::start(&env);
    let node = env.repo().display().to_string();

    let pushed = work.commit(&env, &[("troops.toml", PLAN)], "pushed");
    let out = work.push(&env, &node, &["HEAD:main"]);
    assert!(out.status.success(), "{}", crate::support::combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(pushed.as_str()), "{}", daemon.log());

    let pulled = work.commit(&env, &[("n", "2")], "pulled");
    crate::support::publish_to_a(&env, &work);
    env.ok(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(pulled.as_str()), "{}", daemon.log());

    let moved = work.commit(&env, &[("n", "3")], "moved by hand");
    env.git(
        &work.path,
        &["--git-dir", &node, "fetch", "-q", &work.path.display().to_string(), "main:refs/objects"],
    );
    env.git(&work.path, &["--git-dir", &node, "update-ref", "refs/heads/main", &moved]);
    wait_until("the run of the moved ref", Duration::from_secs(10), || {
        env.deployed().as_deref() == Some(moved.as_str())
    });
    let triggers: Vec<String> =
        env.run_ids().iter().map(|id| env.run_record(*id)["trigger"].as_str().unwrap().to_owned()).collect();
    assert_eq!(triggers, ["push", "pull", "pull"], "{}", daemon.log());
    // Moves are heard in order: had the push's or the pull's been taken for a move outside
    // troops, it would be logged before the hand's.
    assert_eq!(daemon.log().matches("the branch moved outside troops").count(), 1, "{}", daemon.log());
}
