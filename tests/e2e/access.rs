//! Who may use a node, as a user who may not finds out: a command refused by the permission model
//! says which rule refused it and what to do (ask for the group, log in again, run it as root,
//! create the group), never a bare "Permission denied" or "did you run `troops init`?".

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::{combined, text, Env};

/// A uid no account has, and the group that stands for `admin_group` (as in trust.rs).
const STRANGER: u32 = 4242;
const GROUP: &str = "users";

fn gid(name: &str) -> u32 {
    nix::unistd::Group::from_name(name).unwrap().unwrap_or_else(|| panic!("no group {name}")).gid.as_raw()
}

/// A node (initialised by root, reachable through the test's temp dir) whose config says
/// `admin_group = group`, with one deployed commit; and what init said.
fn node(group: &str) -> (Env, String) {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\nadmin_group = \"{group}\"\n"));
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let said = env.init();
    let work = env.deploy_repo("work");
    work.commit(&env, &[("troops.toml", "[[step]]\nname = \"a\"\nrun = \"true\"\n")], "plan");
    work.publish(&env);
    env.ok(&["deploy"]);
    (env, said)
}

/// `troops ARGS` as uid `uid` with group `gid` and the supplementary `groups` only.
fn troops_as(env: &Env, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    let mut command = std::process::Command::new("setpriv");
    env.hermetic(&mut command);
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = if groups.is_empty() {
        vec!["--clear-groups".into()]
    } else {
        vec!["--groups".into(), groups.join(",")]
    };
    command
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args(&groups)
        .arg("--")
        .arg(crate::support::bin("troops"))
        .args(args)
        .current_dir("/")
        .output()
        .unwrap()
}

/// Asserts that `out` failed with exit 3 and one line of stderr holding each of `says`, and none of
/// what misleads.
fn refused(out: &Output, says: &[&str], case: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{case}: {}", combined(out));
    assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
    for words in says {
        assert!(stderr.contains(words), "{case}: no {words:?} in: {stderr}");
    }
    assert!(!stderr.contains("did you run `troops init`"), "{case}: {stderr}");
}

#[test]
fn a_user_outside_the_admin_group_is_told_who_may_and_how_to_become_one() {
    if !crate::support::require_root("giving the node to a group and acting as another user") {
        return;
    }
    let (env, said) = node(GROUP);
    assert!(said.contains(&format!("who       root and group {GROUP} (admin_group)")), "{said}");
    let state = env.state.display().to_string();
    for args in [&["status"][..], &["deploy"], &["runs"], &["log"], &["pull"], &["wait"], &["roles"]] {
        let out = troops_as(&env, STRANGER, STRANGER, &[], args);
        refused(
            &out,
            &[
                &format!("troops: cannot use the node at {state}: you (uid {STRANGER}) are not root or in group {GROUP} (admin_group)"),
                &format!("ask an admin to add you: usermod -aG {GROUP} USER"),
            ],
            &format!("{args:?}"),
        );
    }

    // A member may read and wait, but what is root's says so.
    let member = |args: &[&str]| troops_as(&env, STRANGER, STRANGER, &[gid(GROUP)], args);
    for args in [&["status"][..], &["runs"], &["wait"]] {
        let out = member(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", combined(&out));
    }
    for args in [&["pull"][..], &["init"]] {
        refused(
            &member(args),
            &[&format!(
                "you (uid {STRANGER}) are in group {GROUP} (admin_group), whose members may push, use the daemon"
            ), "the rest is root's: run it as root"],
            &format!("member {args:?}"),
        );
    }
}

#[test]
fn a_member_whose_login_predates_the_group_or_a_node_not_shared_is_told_what_to_do() {
    if !crate::support::require_root("giving the node to a group and acting as another user") {
        return;
    }
    // `daemon` is in group daemon by its passwd entry; a session without that group is stale.
    let daemon = nix::unistd::User::from_name("daemon").unwrap().expect("the daemon account");
    let (env, _) = node("daemon");
    let out = troops_as(&env, daemon.uid.as_raw(), STRANGER, &[], &["status"]);
    refused(
        &out,
        &["you (daemon) are in group daemon (admin_group), but this login session is not yet: log in again (or run `newgrp daemon`)"],
        "stale login",
    );

    // The config names another group than the node was shared with (init not run again since).
    env.write_config(&format!("hostname = \"web-1\"\nadmin_group = \"{GROUP}\"\n"));
    let out = troops_as(&env, STRANGER, STRANGER, &[gid(GROUP)], &["status"]);
    refused(
        &out,
        &[&format!("are in group {GROUP} (admin_group), but the node is not shared with it; an admin runs `troops init` again as root")],
        "not shared",
    );
    env.init();
    let out = troops_as(&env, STRANGER, STRANGER, &[gid(GROUP)], &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
}

#[test]
fn an_admin_group_that_does_not_exist_is_warned_of_by_init_and_named_to_users() {
    if !crate::support::require_root("giving the node to a group and acting as another user") {
        return;
    }
    let (env, said) = node("troops-e2e-no-such-group");
    assert!(said.contains("who       root alone\n"), "{said}");
    assert!(
        said.contains(
            "warning   group troops-e2e-no-such-group (admin_group) does not exist, so nobody but root may push to this node or use it; create it (groupadd --system troops-e2e-no-such-group)"
        ),
        "{said}"
    );
    refused(
        &troops_as(&env, STRANGER, STRANGER, &[gid(GROUP)], &["deploy"]),
        &["only root may use it, since group troops-e2e-no-such-group (admin_group) does not exist on this host"],
        "no group",
    );
}
