//! The trust boundary: what root runs is what the policy allows, whatever moved the ref and
//! whatever members of the admin group wrote; a lost or broken config never weakens `[verify]`;
//! run records and checkouts are private; nothing troops writes as root follows a planted symlink;
//! bytes that are not UTF-8 are bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::gpg::{Gpg, Key};
use crate::support::sshd::Sshd;
use crate::support::{combined, require_root, text, wait_until, DeployRepo, Env};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// The group that stands for `admin_group` (as in push.rs: `users`, so no new group is needed)
/// and a uid no account has, for a member of it who is not root.
const GROUP: &str = "users";
const MEMBER: &str = "4242";

/// What the tests that give the node to GROUP and act as MEMBER need root for.
const AS_MEMBER: &str = "giving the node to a group and acting as a member";

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
    let work = env.init_following_a();
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
    let shared = require_root(AS_MEMBER);
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
    if !require_root(AS_MEMBER) {
        return;
    }
    let env = shared_node("");
    let work = env.deploy_repo("work");
    let tip = work.commit(
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
    assert!(text(&out.stderr).contains("commondir redirects the repo elsewhere"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1]);

    // So is a `shallow` file (libgit2 takes the commits it names to have no parents, which would
    // cut short the history `scope = "all"` verifies) or a commit-graph (believed for parents).
    for (plant, said) in [
        (format!("echo {tip} > repo/main.git/shallow"), "shallow cuts the node repo's history short"),
        ("touch repo/main.git/objects/info/commit-graph".to_owned(), "commit-graph would rewire"),
    ] {
        let out = as_member(
            &env,
            &state,
            &format!("rm -f repo/main.git/commondir repo/main.git/shallow && {plant}"),
        );
        assert!(out.status.success(), "{plant}: {}", combined(&out));
        let out = env.run(&["deploy"]);
        assert_eq!(out.status.code(), Some(3), "{plant}: {}", combined(&out));
        assert!(text(&out.stderr).contains(said), "{plant}: {}", combined(&out));
        assert_eq!(env.run_ids(), [1], "{plant}");
    }
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
    // A node of root's alone, and one shared with GROUP, whose runs the group reads; each run
    // under the loosest umask, then the strictest.
    let shared = require_root(AS_MEMBER);
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

/// `name` with what differs from one node to the next made generic: runs of 7 or more hex digits
/// (commit, object and pack ids), and a loose object's two-digit directory.
fn generic(name: &str) -> String {
    if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return "<id>".into();
    }
    let (mut out, mut run) = (String::new(), String::new());
    for c in name.chars().chain(std::iter::once('/')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out += if run.len() >= 7 { "<id>" } else { &run };
        run.clear();
        if c != '/' {
            out.push(c);
        }
    }
    out
}

/// Every path under `dir` (but `skip`) and its type and mode, names made [`generic`].
fn modes(dir: &Path, skip: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, root: &Path, skip: &[&str], found: &mut BTreeMap<String, BTreeSet<String>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            if skip.contains(&relative.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = match meta.file_type() {
                t if t.is_symlink() => "link",
                t if t.is_dir() => "dir",
                _ => "file",
            };
            let generic: Vec<String> = relative.split('/').map(generic).collect();
            let mode = if kind == "link" { String::new() } else { format!(" {:o}", meta.mode() & 0o7777) };
            found.entry(generic.join("/")).or_default().insert(format!("{kind}{mode}"));
            if kind == "dir" {
                walk(&path, root, skip, found);
            }
        }
    }
    let mut found = BTreeMap::new();
    let mode = std::fs::metadata(dir).unwrap().mode() & 0o7777;
    found.insert(".".to_owned(), BTreeSet::from([format!("dir {mode:o}")]));
    walk(dir, dir, skip, &mut found);
    found
}

/// `troops ARGS` (or `git push`, with `push`) under `umask`, as a careless shell or pusher has it.
fn under_umask(env: &Env, umask: &str, dir: &Path, program: &str, args: &[&str]) -> Output {
    let mut command = Command::new("sh");
    env.hermetic(&mut command);
    command.current_dir(dir).args(["-c", &format!("umask {umask}; exec \"$0\" \"$@\""), program]).args(args);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{program} {args:?} under umask {umask}: {}", combined(&out));
    out
}

#[test]
fn what_troops_creates_has_the_same_modes_whatever_the_umask() {
    // A node shared with GROUP where root may, with releases, a check, a rollback, metrics and a
    // status remote: init, a push run by the hook, a pull and its rollback, a daemon's runs, all
    // under the loosest umask, then the strictest; every file and directory troops made, in the
    // state dir and beside it, must come out the same.
    let shared = require_root(AS_MEMBER);
    let plan = |exit: u8| {
        format!(
            "[health]\non_failure = \"rollback\"\n[release]\n[[check]]\nname = \"up\"\nrun = \"true\"\n\
             [[step]]\nname = \"build\"\nrun = \"mkdir -p out && echo built > out/file && exit {exit}\"\n"
        )
    };
    let mut seen = Vec::new();
    for umask in ["000", "077"] {
        let env = Env::new();
        std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let group = if shared { format!("admin_group = \"{GROUP}\"\n") } else { String::new() };
        let prom = env.path("prom/troops.prom");
        std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
        env.write_config(&format!(
            "hostname = \"web-1\"\ninterval = \"1h\"\nstatus_remote = \"status\"\n{group}\
             [metrics]\ntextfile = {:?}\n",
            prom.display().to_string()
        ));
        let (a, status) = (env.path("a.git"), env.path("status.git"));
        for bare in [&a, &status] {
            env.git(env.tmp.path(), &["init", "-q", "--bare", "-b", "main", &bare.display().to_string()]);
        }
        let tmp = env.tmp.path();
        let troops = crate::support::bin("troops").display().to_string();
        let remotes =
            [format!("--remote=a={}", a.display()), format!("--remote=status={}", status.display())];
        under_umask(&env, umask, tmp, &troops, &["init", &remotes[0], &remotes[1]]);
        let work = env.deploy_repo("work");

        // A push, run in-process by the hook; a pull of a failing commit, rolled back.
        work.commit(&env, &[("troops.toml", &plan(0))], "good");
        under_umask(
            &env,
            umask,
            &work.path,
            "git",
            &["push", "-q", &env.repo().display().to_string(), "main"],
        );
        work.commit(&env, &[("troops.toml", &plan(1))], "bad");
        push_to_a(&env, &work);
        let mut command = Command::new("sh");
        env.hermetic(&mut command);
        let out = command.args(["-c", &format!("umask {umask}; exec troops pull")]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
        // Through a daemon: a pull of a fixed commit, and a deploy.
        work.commit(&env, &[("troops.toml", &format!("{}# fixed\n", plan(0)))], "fixed");
        push_to_a(&env, &work);
        let mut command = Command::new("sh");
        env.hermetic(&mut command);
        command.args(["-c", &format!("umask {umask}; exec troops daemon")]);
        let daemon = Daemon::start_command(&env, command);
        under_umask(&env, umask, tmp, &troops, &["pull"]);
        under_umask(&env, umask, tmp, &troops, &["deploy"]);
        // Its publishing of run 5 done, the daemon stops as systemd stops it.
        wait_until("the daemon to publish run 5", LIMIT, || {
            let mut show = Command::new("git");
            env.hermetic(&mut show);
            let doc =
                show.arg("--git-dir").arg(&status).args(["show", "refs/troops/status/web-1:status.json"]);
            let doc = doc.output().map(|out| text(&out.stdout)).unwrap_or_default();
            doc.contains("\"id\": 5,") && doc.contains("\"state\": \"healthy\"")
        });
        let mut daemon = daemon;
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        daemon.wait_exit(LIMIT);
        assert_eq!(env.run_ids(), [1, 2, 3, 4, 5], "{}", env.ok(&["runs"]));
        // What the runs left to detached troopses (publishing) is done too.
        let state = env.state.display().to_string();
        wait_until("the detached troopses to end", LIMIT, || {
            !std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == state.as_bytes()))
            })
        });
        // The daemon's socket and log, and the test's own files, are not the product's.
        let mut modes_seen = modes(&env.state, &["troops.sock"]);
        modes_seen
            .extend(modes(prom.parent().unwrap(), &[]).into_iter().map(|(p, m)| (format!("prom/{p}"), m)));
        seen.push((umask, modes_seen));
    }
    let [(_, loose), (_, strict)] = &seen[..] else { unreachable!() };
    let differ: Vec<String> = loose
        .keys()
        .chain(strict.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|path| loose.get(*path) != strict.get(*path))
        .map(|path| format!("{path}: umask 000 {:?}, umask 077 {:?}", loose.get(path), strict.get(path)))
        .collect();
    assert!(differ.is_empty(), "modes that depend on the umask:\n{}", differ.join("\n"));
}

#[test]
fn symlinks_planted_at_run_and_state_files_are_not_followed() {
    let env = Env::new();
    let work = env.init_following_a();
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

const LIMIT: Duration = Duration::from_secs(60);

/// A process of MEMBER holding an exclusive flock on `path` (in the state dir), having written
/// `text` into it when it is a file; killed when dropped.
struct Held(std::process::Child);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold_as_member(env: &Env, path: &str, text: Option<&str>) -> Held {
    let write = text.map_or(String::new(), |t| format!("printf '{t}' >&9; "));
    let open = if text.is_some() { "<>" } else { "<" };
    let mut command = Command::new("setpriv");
    env.hermetic(&mut command);
    command
        .args(["--reuid", MEMBER, "--regid", MEMBER, "--groups", &group_id().to_string(), "--"])
        .args(["sh", "-c", &format!("exec 9{open}{path}; flock -x 9; {write}exec sleep 600")])
        .current_dir(&env.state);
    let held = Held(command.spawn().unwrap());
    let target = env.state.join(path);
    wait_until(&format!("the member's flock on {path}"), LIMIT, || {
        let file = std::fs::File::open(&target).unwrap();
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    });
    held
}

/// `troops ARGS` as root, which must end within LIMIT (it is killed if it does not).
fn run_within(env: &Env, args: &[&str]) -> Output {
    let mut command = env.troops(args);
    let child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("troops {args:?} did not end within {LIMIT:?}")
    })
}

#[test]
fn locks_and_files_a_member_holds_or_plants_hold_no_root_run_up() {
    if !require_root(AS_MEMBER) {
        return;
    }
    let env = shared_node("");
    let prom = env.path("troops.prom").display().to_string();
    env.write_config(&format!(
        "hostname = \"web-1\"\nadmin_group = \"{GROUP}\"\ninterval = \"1h\"\nstatus_remote = \"status\"\n\
         [metrics]\ntextfile = {prom:?}\n"
    ));
    let status = env.bare("status.git");
    env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);
    let work = env.deploy_repo("work");
    work.publish_plan(&env, PLAN);
    env.ok(&["deploy"]);
    env.ok(&["fleet", "--publish"]);
    assert!(env.state.join("metrics/counters.json").is_file());

    // The status repo is the group's to read: the member holds the flock on it and on its refs,
    // and root's status fetches and publishes go on (their locks are files only root can open).
    let status_repo = hold_as_member(&env, "status.git", None);
    let status_refs = hold_as_member(&env, "status.git/refs", None);
    let out = run_within(&env, &["fleet", "--publish"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let out = run_within(&env, &["fleet"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));

    // The member swaps the counters (metrics/ is the group's) for a FIFO nobody writes to, and
    // holds the flock on metrics/ and on the repo directory (where fetches once took turns).
    let out = as_member(&env, &env.state, "rm metrics/counters.json && mkfifo metrics/counters.json");
    assert!(out.status.success(), "{}", combined(&out));
    let metrics = hold_as_member(&env, "metrics", None);
    let repo = hold_as_member(&env, "repo/main.git", None);
    let second = work.commit(&env, &[("n", "2")], "second");
    work.publish(&env);
    let out = run_within(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()), "{}", combined(&out));
    assert_eq!(env.run_record(2)["status"], "succeeded");
    let status = env.status_json();
    assert!(status["running"].is_null(), "{status}");
    assert_eq!(status["last_run"]["id"], 2, "{status}");
    drop((metrics, repo, status_repo, status_refs));
    // Once the member lets go, root's counters are a file of root's again.
    env.ok(&["deploy"]);
    let counters = std::fs::symlink_metadata(env.state.join("metrics/counters.json")).unwrap();
    assert!(counters.is_file() && counters.uid() == 0, "{counters:?}");

    // A member who holds the node lock (writing what a terminal would obey into it) keeps the
    // daemon's run waiting; SIGTERM still ends the daemon, and the waiter sees the text escaped.
    // (A commit of its own, not the branch's, so that only this deploy runs.)
    let mut daemon = Daemon::start(&env);
    let lock = hold_as_member(&env, "lock", Some("pid 1: \\033]0;owned\\007 run 9"));
    let third = work.commit(&env, &[("n", "3")], "third");
    smuggle(&env, &work);
    let mut client =
        env.troops(&["deploy", "--commit", &third]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (mut stdout, said) = (client.stdout.take().unwrap(), said.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                said.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_until("the daemon to wait for the member's lock", LIMIT, || {
        said.lock().unwrap().contains("waiting for the node lock")
    });
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = daemon.wait_exit(LIMIT);
    assert!(exit.success(), "{exit}:\n{}", daemon.log());
    client.wait().unwrap();
    reader.join().unwrap();
    let said = said.lock().unwrap().clone();
    assert!(said.contains("(pid 1: \\u{1b}]0;owned\\u{7} run 9)"), "{said}");
    assert!(!said.contains('\x1b'), "{said:?}");
    drop(lock);
    assert_ne!(env.deployed().as_deref(), Some(third.as_str()), "it ran while the member held the lock");
}

#[test]
fn run_ids_a_member_plants_are_passed_over_and_never_root_s_last_run() {
    if !require_root(AS_MEMBER) {
        return;
    }
    let env = shared_node("");
    let work = env.deploy_repo("work");
    let first = work.publish_plan(&env, PLAN);
    env.ok(&["deploy"]);

    // The largest id there is, "running" the tip (so that, believed, nothing would ever run
    // again), and the id root would take next, "succeeded" with a commit that never ran.
    let second = work.commit(&env, &[("n", "2")], "second");
    work.publish(&env);
    let max = u64::MAX;
    let forge = |id: u64, commit: &str, status: &str| {
        format!(
            "mkdir runs/{id} && printf '%s' '{{\"schema\":2,\"id\":{id},\"trigger\":\"push\",\"commit\":\"{commit}\",\
             \"previous_commit\":null,\"host\":\"web-1\",\"roles\":[],\"started_at\":\"2020-01-01T00:00:00Z\",\
             \"finished_at\":null,\"status\":\"{status}\",\"error\":null,\"steps\":[]}}' > runs/{id}/run.json"
        )
    };
    for script in [forge(max, &second, "running"), forge(2, &first, "succeeded")] {
        let out = as_member(&env, &env.state, &script);
        assert!(out.status.success(), "{}", combined(&out));
    }
    let planted = std::fs::read(env.state.join(format!("runs/{max}/run.json"))).unwrap();

    // A pull (what the daemon's timer does) runs the tip, as run 3: past the member's 2, not 0.
    let out = run_within(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains("run 3 (pull)"), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(second.as_str()));
    assert!(!env.state.join("runs/0").exists(), "ids wrapped");
    assert_eq!(
        std::fs::read(env.state.join(format!("runs/{max}/run.json"))).unwrap(),
        planted,
        "root wrote it"
    );
    let third = work.commit(&env, &[("n", "3")], "third");
    work.publish(&env);
    env.ok(&["deploy"]);
    assert_eq!(env.run_record(4)["commit"], third.as_str());

    // Status tells root's truth, and names what others recorded; so does the published state.
    let status = env.status_json();
    assert!(status["running"].is_null(), "{status}");
    assert_eq!(status["last_run"]["id"], 4, "{status}");
    assert_eq!(status["fleet"]["run"]["id"], 4, "{status}");
    assert_eq!(status["next"]["state"], "idle", "{status}");
    let others: Vec<u64> =
        status["others_runs"].as_array().unwrap().iter().map(|o| o["id"].as_u64().unwrap()).collect();
    assert_eq!(others, [2, max], "{status}");
    assert!(status["others_runs"].as_array().unwrap().iter().all(|o| o["uid"] == 4242), "{status}");
    let said = env.ok(&["status"]);
    assert!(
        said.contains(&format!("others    runs 2, {max} recorded by uid {MEMBER}, not gone by")),
        "{said}"
    );
}

#[test]
fn a_deployed_ref_a_member_moves_is_not_what_scope_all_verifies_from() {
    if !require_root(AS_MEMBER) {
        return;
    }
    let group = format!("admin_group = \"{GROUP}\"\n");
    let (env, gpg, trusted, work, base) = signed_node(&group);
    env.write_config(&format!("{}scope = \"all\"\n", signed_config(&env, &group)));

    // A signed tip carrying an unsigned commit; the member points refs/troops/deployed (the
    // group's to write) at the unsigned one and the branch at the tip.
    let unsigned = work.commit(&env, &[("x", "unsigned")], "unsigned");
    let tip = gpg.commit(&env, &work, &trusted, &[("y", "signed")], "signed, on unsigned history");
    update_ref(&env, &work, &tip);
    let git = "git -c safe.directory='*' --git-dir repo/main.git";
    let out = as_member(&env, &env.state, &format!("{git} update-ref refs/troops/deployed {unsigned}"));
    assert!(out.status.success(), "{}", combined(&out));

    // scope = "all" checks from what root verified, the base: the unsigned commit is found.
    for args in [&["deploy"][..], &["pull"]] {
        let out = run_within(&env, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", combined(&out));
        let said = format!("refusing to run {}: commit {} is not signed", &tip[..12], &unsigned[..12]);
        assert!(text(&out.stderr).contains(&said), "{args:?}: {}", combined(&out));
        assert_eq!(env.run_ids(), [1], "{args:?}: something ran");
    }
    let status = env.status_json();
    assert_eq!(status["deployed"], base.as_str(), "{status}");
    assert_eq!(status["deployed_ref"], unsigned.as_str(), "{status}");
    let said = env.ok(&["status"]);
    assert!(said.contains(&format!("refs/troops/deployed says {}", &unsigned[..12])), "{said}");
}

#[test]
fn quarantine_refs_a_member_removes_or_plants_do_not_change_what_root_runs() {
    if !require_root(AS_MEMBER) {
        return;
    }
    let env = shared_node("interval = \"1h\"\n");
    let work = env.deploy_repo("work");
    let plan = |exit: u8| {
        format!("[health]\non_failure = \"rollback\"\n[[step]]\nname = \"apply\"\nrun = \"exit {exit}\"\n")
    };
    let good = work.commit(&env, &[("troops.toml", &plan(0))], "good");
    work.publish(&env);
    env.ok(&["deploy"]);
    let bad = work.commit(&env, &[("troops.toml", &plan(1))], "bad");
    work.publish(&env);
    // Under the strictest umask: what root adds to the repo is the group's to write all the same.
    let mut command = Command::new("sh");
    env.hermetic(&mut command);
    let out = command.args(["-c", "umask 077; exec troops deploy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert_eq!((env.deployed().as_deref(), env.run_ids()), (Some(good.as_str()), vec![1, 2, 3]));

    // The member lifts the quarantine (refs/troops is the group's): root still never runs it.
    let git = "git -c safe.directory='*' --git-dir repo/main.git";
    let out = as_member(&env, &env.state, &format!("{git} update-ref -d refs/troops/bad/{bad}"));
    assert!(out.status.success(), "{}", combined(&out));
    let out = run_within(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains("is quarantined"), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2, 3]);
    assert_eq!(env.status_json()["quarantined"][0]["commit"], bad.as_str());

    // And a quarantine the member plants for a newer commit does not keep root from running it.
    let fixed = work.commit(&env, &[("troops.toml", &plan(0))], "fixed");
    smuggle(&env, &work);
    let plant = format!(
        "{git} update-ref refs/troops/bad/{fixed} {fixed} && {git} update-ref refs/heads/main {fixed}"
    );
    let out = as_member(&env, &env.state, &plant);
    assert!(out.status.success(), "{}", combined(&out));
    let out = run_within(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(fixed.as_str()), "{}", combined(&out));
}
