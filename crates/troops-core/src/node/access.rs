//! Who may use a node, said in one place: root may do everything; members of `admin_group` may
//! push, use the daemon's socket and read run records, logs and checkouts (the permission model of
//! `init::share_with_group`); nobody else may even enter the state dir. A command these rules
//! refuse says which rule and what to do about it (ask for the group, log in again, run it as
//! root), never a bare "Permission denied" or a "did you run `troops init`?" that misleads.

use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::model::error::{Error, Result};
use crate::model::node::Node;

/// Fails, saying who may and how to become one, when this process may not enter the node's state
/// dir. A state dir that is not there is no refusal: the command goes on to say `troops init`.
pub fn check(node: &Node) -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    match access(&node.state_dir, AccessFlags::R_OK | AccessFlags::X_OK) {
        Err(nix::errno::Errno::EACCES) => match denied(node) {
            Some(why) => {
                Err(Error::Env(format!("cannot use the node at {}: {why}", node.state_dir.display())))
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Why the node's permission model refuses this process, and what to do about it; `None` for
/// root, whom it never refuses (what refuses root is no rule of troops).
pub fn denied(node: &Node) -> Option<String> {
    if Uid::effective().is_root() {
        return None;
    }
    let name = &node.config.admin_group;
    let user = User::from_uid(Uid::current()).ok().flatten();
    let (you, login) = match &user {
        Some(user) => (format!("you ({})", user.name), user.name.clone()),
        None => (format!("you (uid {})", Uid::current()), "USER".to_owned()),
    };
    let Some(group) = Group::from_name(name).ok().flatten() else {
        return Some(format!(
            "only root may use it, since group {name} (admin_group) does not exist on this host; an \
             admin creates it (groupadd --system {name}), runs `troops init` again as root and adds \
             you (usermod -aG {name} {login})"
        ));
    };
    Some(if in_process(group.gid) {
        if shared_with(&node.state_dir, group.gid) {
            format!(
                "{you} are in group {name} (admin_group), whose members may push, use the daemon \
                 (troops deploy, pull and rollback, when it runs) and read runs and logs; the rest is \
                 root's: run it as root"
            )
        } else {
            format!(
                "{you} are in group {name} (admin_group), but the node is not shared with it; an \
                 admin runs `troops init` again as root, which shares it"
            )
        }
    } else if user.as_ref().is_some_and(|u| u.gid == group.gid || group.mem.contains(&u.name)) {
        format!(
            "{you} are in group {name} (admin_group), but this login session is not yet: log in \
             again (or run `newgrp {name}`)"
        )
    } else {
        format!(
            "{you} are not root or in group {name} (admin_group), who may use this node; ask an \
             admin to add you: usermod -aG {name} {login} (it applies at your next login)"
        )
    })
}

/// Who may use the node as `troops init` left it, for the person who ran it, and a warning when
/// nobody but root can.
pub fn sharing(node: &Node) -> (String, Option<String>) {
    let name = &node.config.admin_group;
    if !Uid::effective().is_root() {
        return (
            "this user alone: troops init did not run as root, so admin_group does not apply".into(),
            None,
        );
    }
    match Group::from_name(name).ok().flatten() {
        None => (
            "root alone".into(),
            Some(format!(
                "group {name} (admin_group) does not exist, so nobody but root may push to this node \
                 or use it; create it (groupadd --system {name}), run `troops init` again, then add \
                 each admin (usermod -aG {name} USER)"
            )),
        ),
        Some(_) => (
            format!(
                "root and group {name} (admin_group), whose members may push, use the daemon and read \
                 runs and logs; add an admin with usermod -aG {name} USER (it applies at their next login)"
            ),
            None,
        ),
    }
}

/// Whether this process has `gid`, as its group or one of its supplementary groups.
fn in_process(gid: Gid) -> bool {
    Gid::effective() == gid || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid))
}

/// Whether `dir` belongs to group `gid` (as `troops init`, run by root, leaves it).
fn shared_with(dir: &Path, gid: Gid) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid.as_raw())
}
