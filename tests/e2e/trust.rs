//! The trust boundary: what root runs is what the policy allows, whatever moved the ref and
//! whatever members of the admin group wrote; a lost or broken config never weakens `[verify]`;
//! run records and checkouts are private; nothing troops writes as root follows a planted symlink;
//! bytes that are not UTF-8 are bad input.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::gpg::{Gpg, Key};
use crate::support::sshd::Sshd;
use crate::support::{combined, text, wait_until, DeployRepo, Env};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// The group that stands for `admin_group` (as in push.rs: `users`, so no new group is needed)
/// and a uid no account has, for a member of it who is not root.
const GROUP: &str = "users";
const MEMBER: &str = "4242";

fn root_only(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: {test} needs root to give the node to a group and act as a member");
    false
}

fn group_id() -> u32 {
    nix::unistd::Group::from_name(GROUP).unwrap().unwrap_or_else(|| panic!("no group {GROUP}")).gid.as_raw()
}

/// `sh -c script` in `dir` as MEMBER, whose only group is GROUP.
fn as_member(env: &Env, dir: &Path, script: &str) -> Output {
    let mut command = Command::new("setpriv");
    env.hermetic(&mut command);
    command
        .args(["--reuid", MEMBER, "--regid", MEMBER, "--groups", &group_id().to_string(), "--"])
        .args(["sh", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A node shared with GROUP, reachable by the member (the test's temp dir is private).
fn shared_node(config: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\nadmin_group = \"{GROUP}\"\n{config}"));
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.init();
    env
}

/// A node `web-1` that requires commits signed by `trusted` (scope tip), with bare remote
/// `a.git`, the signed plan deployed by pull as run 1; returns the base commit too.
fn signed_node(extra: &str) -> (Env, Gpg, Key, DeployRepo, String) {
    let env = Env::new();
    // A member of the admin group must reach the node in the test's (private) temp dir.
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gpg = Gpg::new();
    let trusted = gpg.generate("Trusted");
    std::fs::write(env.path("trusted.pgp"), gpg.export(&[&trusted], true)).unwrap();
    env.write_config(&signed_config(&env, extra));
    let a = env.path("a.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &a.display().to_string()]);
    env.ok(&["init", &format!("--remote=a={}", a.display())]);
    let work = env.deploy_repo("work");
    let base = gpg.commit(&env, &work, &trusted, &[("troops.toml", PLAN)], "base");
    push_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(base.as_str()), "{}", combined(&out));
    (env, gpg, trusted, work, base)
}

fn signed_config(env: &Env, extra: &str) -> String {
    format!(
        "hostname = \"web-1\"\n{extra}[verify]\nrequire_signed = true\nkeyring = \"{}\"\n",
        env.path("trusted.pgp").display()
    )
}

fn push_to_a(env: &Env, work: &DeployRepo) {
    let out = work.push(env, &env.path("a.git").display().to_string(), &["--force", "HEAD:main"]);
    assert!(out.status.success(), "push to a failed: {}", text(&out.stderr));
}

/// Puts `commit` of the work repo in the node repo and points its branch at it, as a member of
/// the admin group with write access to refs could: no hook, no check.
fn update_ref(env: &Env, work: &DeployRepo, commit: &str) {
    smuggle(env, work);
    let repo = env.repo().display().to_string();
    env.git(&work.path, &["--git-dir", &repo, "update-ref", "refs/heads/main", commit]);
}

/// The work repo's objects in the node repo, under a ref nobody follows.
fn smuggle(env: &Env, work: &DeployRepo) {
    let repo = env.repo().display().to_string();
    let work_path = work.path.display().to_string();
    env.git(&work.path, &["--git-dir", &repo, "fetch", "-q", &work_path, "+main:refs/smuggled"]);
}

fn refused(commit: &str) -> String {
    format!("refusing to run {}: commit {} is not signed", &commit[..12], &commit[..12])
}

#[test]
fn an_unsigned_commit_put_in_place_by_update_ref_is_refused_by_deploy_pull_and_daemon() {
    let shared = nix::unistd::geteuid().is_root();
    let group = if shared { format!("admin_group = \"{GROUP}\"\n") } else { String::new() };
    let (env, _gpg, _key, work, base) = signed_node(&format!("interval = \"1h\"\n{group}"));
    let unsigned = work.commit(&env, &[("x", "unsigned")], "unsigned");
    update_ref(&env, &work, &unsigned);

    for args in [&["deploy"][..], &["pull"], &["deploy", "--commit", "main"]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", combined(&out));
        assert!(text(&out.stderr).contains(&refused(&unsigned)), "{args:?}: {}", combined(&out));
        assert!(!combined(&out).contains("hello from"), "{args:?}: {}", combined(&out));
        assert_eq!(env.run_ids(), [1], "{args:?}: something ran");
        assert_eq!(env.deployed().as_deref(), Some(base.as_str()));
    }
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    let last = &status["verify"]["last_refusal"];
    assert_eq!(last["commit"].as_str(), Some(unsigned.as_str()), "{status}");
    assert_eq!(last["source"].as_str(), Some("manual run"), "{status}");

    // The daemon refuses it in its start-up cycle, and a later one moved in while it watches.
    let daemon = Daemon::start(&env);
    wait_until("the daemon's refusal", Duration::from_secs(20), || {
        daemon.log().contains(&refused(&unsigned))
    });
    // This time by a member of the admin group itself, when the test can act as one.
    let later = work.commit(&env, &[("x", "later")], "later, unsigned too");
    if shared {
        smuggle(&env, &work);
        let update =
            format!("git -c safe.directory='*' --git-dir repo/main.git update-ref refs/heads/main {later}");
        let out = as_member(&env, &env.state, &update);
        assert!(out.status.success(), "{}", combined(&out));
    } else {
        update_ref(&env, &work, &later);
    }
    wait_until("the daemon's second refusal", Duration::from_secs(20), || {
        daemon.log().contains(&refused(&later))
    });
    assert_eq!(env.run_ids(), [1], "something ran:\n{}", daemon.log());
    assert_eq!(env.deployed().as_deref(), Some(base.as_str()));
}

#[test]
fn a_lost_emptied_or_half_written_config_still_refuses_unsigned_commits() {
    let (env, _gpg, _key, work, base) = signed_node("");
    let unsigned = work.commit(&env, &[("x", "unsigned")], "unsigned");
    push_to_a(&env, &work);
    let half = "hostname = \"web-1\"\n[verify]\nrequire_signed = tr";

    // The CLI: a missing or empty file takes the policy init recorded; a broken one stops it.
    for (case, text) in [("missing", None), ("empty", Some("")), ("half-written", Some(half))] {
        match text {
            None => std::fs::remove_file(&env.config).unwrap(),
            Some(text) => env.write_config(text),
        }
        let out = env.run(&["pull"]);
        let said = combined(&out);
        if case == "half-written" {
            assert_eq!(out.status.code(), Some(2), "{case}: {said}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{case}: {said}");
            assert!(said.contains(&format!("commit {} is not signed", &unsigned[..12])), "{case}: {said}");
        }
        assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(base.as_str()), "{case}: {said}");
        assert_eq!(env.run_ids(), [1], "{case}: something ran: {said}");
    }

    // The daemon: each change reloads (or, broken, keeps the last good config), and a branch
    // moved to an unsigned commit is refused all the same.
    env.write_config(&signed_config(&env, "interval = \"1h\"\n"));
    let daemon = Daemon::start(&env);
    for (case, text) in [("missing", None), ("empty", Some("")), ("half-written", Some(half))] {
        let said = if text == Some(half) { "config not reloaded" } else { "config reloaded" };
        let before = daemon.log().matches(said).count();
        match text {
            // A removal is no change the daemon watches for: it reloads when told.
            None => {
                std::fs::remove_file(&env.config).unwrap();
                daemon.signal(nix::sys::signal::Signal::SIGHUP);
            }
            Some(text) => env.write_config(text),
        }
        wait_until(&format!("{case}: {said}"), Duration::from_secs(20), || {
            daemon.log().matches(said).count() > before
        });
        let commit = work.commit(&env, &[("x", case)], case);
        update_ref(&env, &work, &commit);
        wait_until(&format!("{case}: the refusal"), Duration::from_secs(20), || {
            daemon.log().contains(&refused(&commit))
        });
        assert_eq!(env.run_ids(), [1], "{case}: something ran:\n{}", daemon.log());
    }
}

#[test]
fn a_loose_object_replaced_after_the_push_fails_the_run_instead_of_running() {
    let env = Env::new();
    env.init();
    let work = env.deploy_repo("work");
    let plan = "[[step]]\nname = \"x\"\nscript = \"x.sh\"\n";
    let good = work.commit(&env, &[("troops.toml", plan), ("x.sh", "#!/bin/sh\necho good script\n")], "good");
    work.publish(&env);
    let evil = work.commit(&env, &[("x.sh", "#!/bin/sh\necho evil script\n")], "evil");
    let repo = env.repo().display().to_string();
    env.git(
        &work.path,
        &["--git-dir", &repo, "fetch", "-q", &work.path.display().to_string(), "main:refs/other"],
    );

    // The good script's blob, rewritten on disk with the evil one's bytes.
    let loose = |commit: &str| {
        let id = env.git(&work.path, &["rev-parse", &format!("{commit}:x.sh")]);
        env.repo().join("objects").join(&id[..2]).join(&id[2..])
    };
    let (good_blob, evil_blob) = (loose(&good), loose(&evil));
    assert!(good_blob.is_file() && evil_blob.is_file(), "the objects are not loose");
    std::fs::set_permissions(&good_blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::copy(&evil_blob, &good_blob).unwrap();

    let out = env.run(&["deploy"]);
    let said = combined(&out);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("evil script") && !said.contains("good script"), "{said}");
    assert!(said.contains("hash mismatch"), "{said}");
    assert_eq!(env.run_record(1)["status"], "failed");
    assert_eq!(env.deployed(), None);
}

#[test]
fn members_cannot_change_what_root_runs_or_reads() {
    if !root_only("members_cannot_change_what_root_runs_or_reads") {
        return;
    }
    let env = shared_node("");
    let work = env.deploy_repo("work");
    work.commit(
        &env,
        &[("troops.toml", "[[step]]\nname = \"x\"\nscript = \"x.sh\"\n"), ("x.sh", "#!/bin/sh\necho x\n")],
        "x",
    );
    work.publish(&env);
    env.ok(&["deploy"]);
    let checkout = std::fs::metadata(env.state.join("work/1")).unwrap();
    assert_eq!((checkout.uid(), checkout.mode() & 0o777), (0, 0o750));

    let state = env.state.clone();
    for attempt in [
        "printf '#!/bin/sh\\ntouch /tmp/troops-planted\\n' > repo/main.git/hooks/reference-transaction",
        "printf '[core]\\n\\tsshCommand = touch /tmp/troops-planted\\n' >> repo/main.git/config",
        "mv repo/main.git/config repo/main.git/config.old",
        "git config --file repo/main.git/config core.hooksPath /tmp",
        "mkdir repo/main.git/hooks/x",
        "echo 'echo evil' >> work/1/x.sh",
        "mv work/1 work/gone",
        "mv runs/1 runs/gone",
        "echo '{}' > runs/1/run.json",
        "mv repo/main.git/refs/remotes repo/main.git/refs/gone",
        "echo x > ssh/id_ed25519",
    ] {
        let out = as_member(&env, &state, attempt);
        assert!(!out.status.success(), "a member could: {attempt}");
    }
    assert!(!Path::new("/tmp/troops-planted").exists());
    assert!(std::fs::read_to_string(state.join("work/1/x.sh")).unwrap().ends_with("echo x\n"));

    // What the group may add to the repo dir, a `commondir` that would redirect it, root refuses.
    let out = as_member(&env, &state, "echo /tmp > repo/main.git/commondir");
    assert!(out.status.success(), "{}", combined(&out));
    let out = env.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(3), "{}", combined(&out));
    assert!(text(&out.stderr).contains("commondir redirects the node repo"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1]);
}

#[test]
fn a_root_pull_runs_no_hook_or_command_planted_in_the_repo() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\ninterval = \"1h\"\n");
    env.init();
    let sshd = Sshd::start(&env.path("sshd"));
    let node_key = std::fs::read_to_string(env.state.join("ssh/id_ed25519.pub")).unwrap();
    sshd.authorize(node_key.trim());
    let known = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public_key());
    std::fs::write(env.state.join("ssh/known_hosts"), known).unwrap();
    let bare = env.path("c.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &bare.display().to_string()]);
    env.git(&env.repo(), &["remote", "add", "c", &sshd.url(&bare)]);

    // Everything that would make git run a command, planted where the repo would hold it (as a
    // member could before `troops init` took config and hooks/ away from the group).
    let marker = env.path("planted");
    let touch = format!("#!/bin/sh\necho \"$0\" >> {}\n", marker.display());
    let hooks = env.path("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for name in ["reference-transaction", "pre-auto-gc", "post-checkout", "post-merge"] {
        for dir in [env.repo().join("hooks"), hooks.clone()] {
            std::fs::write(dir.join(name), &touch).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let repo = env.repo();
    for (key, value) in [
        ("core.hooksPath", hooks.display().to_string()),
        ("core.sshCommand", format!("touch {}; false", marker.display())),
        ("core.fsmonitor", format!("touch {}", marker.display())),
        ("credential.helper", format!("!touch {}", marker.display())),
        ("gc.auto", "1".into()),
        ("gc.autoPackLimit", "1".into()),
    ] {
        env.git(&repo, &["config", key, &value]);
    }

    let work = env.deploy_repo("work");
    for n in 0..3 {
        let commit = work.commit(&env, &[("troops.toml", PLAN), ("n", &n.to_string())], "plan");
        let out = work.push(&env, &bare.display().to_string(), &["HEAD:main"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = env.run(&["pull"]);
        assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
        assert_eq!(env.deployed().as_deref(), Some(commit.as_str()), "{}", combined(&out));
    }
    assert!(!marker.exists(), "root ran: {}", std::fs::read_to_string(&marker).unwrap_or_default());
}

#[test]
fn records_logs_and_checkouts_are_private_whatever_the_umask() {
    // A node of root's alone, and (when the test can give it to a group) one shared with GROUP,
    // whose runs the group reads; each run under the loosest umask, then the strictest.
    let shared = nix::unistd::geteuid().is_root();
    for env in [Some(Env::new()), shared.then(|| shared_node(""))].into_iter().flatten() {
        if !env.state.exists() {
            env.init();
        }
        let work = env.deploy_repo("work");
        work.publish_plan(&env, PLAN);
        for (id, umask) in [(1, "000"), (2, "077")] {
            let mut command = Command::new("sh");
            env.hermetic(&mut command);
            let out = command.args(["-c", &format!("umask {umask}; exec troops deploy")]).output().unwrap();
            assert!(out.status.success(), "{}", combined(&out));
            for (path, mode) in [
                (String::new(), 0o750),
                (format!("runs/{id}"), 0o750),
                (format!("runs/{id}/run.json"), 0o640),
                (format!("runs/{id}/output.log"), 0o640),
                (format!("work/{id}"), 0o750),
            ] {
                let meta = std::fs::symlink_metadata(env.state.join(&path)).unwrap();
                assert_eq!(meta.mode() & 0o777, mode, "umask {umask}: {path:?} has mode {:o}", meta.mode());
            }
        }
        let log = std::fs::metadata(env.state.join("runs/2/output.log")).unwrap();
        if std::fs::read_to_string(&env.config).unwrap().contains(GROUP) {
            assert_eq!(log.gid(), group_id(), "the group cannot read the log");
        }
    }
}

#[test]
fn symlinks_planted_at_run_and_state_files_are_not_followed() {
    let env = Env::new();
    let a = env.path("a.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &a.display().to_string()]);
    env.ok(&["init", &format!("--remote=a={}", a.display())]);
    let work = env.deploy_repo("work");
    work.publish_plan(&env, PLAN);
    env.ok(&["deploy"]);

    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("run.json"), "precious").unwrap();
    std::fs::write(env.path("precious"), "precious").unwrap();
    std::os::unix::fs::symlink(&victim, env.state.join("runs/2")).unwrap();
    std::os::unix::fs::symlink(env.path("precious"), env.state.join("remotes.json")).unwrap();

    env.ok(&["deploy"]);
    env.ok(&["pull"]);
    assert_eq!(std::fs::read_to_string(victim.join("run.json")).unwrap(), "precious");
    assert!(!victim.join("output.log").exists());
    assert_eq!(std::fs::read_to_string(env.path("precious")).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(env.state.join("runs/2")).unwrap().is_dir());
    assert_eq!(env.run_record(2)["status"], "succeeded");
    assert!(std::fs::symlink_metadata(env.state.join("remotes.json")).unwrap().is_file());
}

#[test]
fn a_remote_name_or_url_that_reads_as_an_option_is_refused() {
    let env = Env::new();
    for remote in ["--upload-pack=touch /tmp/troops-opt=/tmp/a.git", "a=-oProxyCommand=touch /tmp/troops-opt"]
    {
        let out = env.run(&["init", &format!("--remote={remote}")]);
        assert_eq!(out.status.code(), Some(2), "{remote}: {}", combined(&out));
        assert!(text(&out.stderr).contains("may not start with `-`"), "{remote}: {}", combined(&out));
    }
    assert!(!Path::new("/tmp/troops-opt").exists());
}
