//! Disruption slots on the status remote: fetching a group's slot refs into the node's status repo,
//! reading each slot's document, and the compare-and-swap that takes, renews and gives back a
//! slot. The swap is one `git push --force-with-lease=<ref>:<old>`: the remote's receive-pack
//! updates the ref only if it still holds `old` (nothing, for a slot never taken), under the ref's
//! lock, so of nodes racing for one slot exactly one wins. What a slot is worth (free, held,
//! expired) is `policy::slots`'; when a node takes one is `node::slots`'.
//!
//! Every slot document this node writes is made by [`commit_doc`], signed with the node's own key
//! as its status is, and every one it reads is believed by [`believe`] only when its holder's
//! `keys/<host>.pub` of the commit the reader trusts verifies it (slots are signed node documents,
//! SPEC "Believed documents"): whoever can write the status remote can block a slot for a lease,
//! never free one that is held nor take one in another node's name.

use std::time::Instant;

use git2::{Oid, Repository};

use crate::mech::believe::Keys;
use crate::mech::statusrefs::{self, Lock};
use crate::model::node::Node;
use crate::model::slot::{self, SlotDoc, FILE, MAX_DOC, SCHEMA};

/// A slot ref as read: the commit it names, and its document or why there is none to believe.
#[derive(Debug, Clone)]
pub struct Read {
    pub commit: Option<Oid>,
    pub doc: Result<SlotDoc, String>,
}

/// Fetches every slot ref of `group` from `remote` of the node repo into the node's status repo,
/// replacing what it held of them (a slot ref the remote no longer has is gone here too), giving
/// up at `deadline`. The error is git's words, escaped.
pub fn fetch(node: &Node, remote: &str, group: &str, deadline: Instant) -> Result<(), String> {
    let git = statusrefs::open(&node.status_repo_path()).map_err(|e| e.to_string())?;
    let _lock = statusrefs::lock(git.path(), Lock::Writer)?;
    statusrefs::clear_leftovers(git.path());
    let prefix = format!("{}{group}/", slot::REF_PREFIX);
    if let Ok(refs) = git.references_glob(&format!("{prefix}*")) {
        for mut reference in refs.flatten() {
            let _ = reference.delete();
        }
    }
    let url = statusrefs::url_of(&node.repo_path(), remote)?;
    let mut command = statusrefs::quiet_git(git.path());
    command.args(["-c", "protocol.file.allow=always"]);
    command.args(["-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1"]);
    let refspec = format!("+{prefix}*:{prefix}*");
    command.args(statusrefs::FETCH_ARGS).args([url.as_str(), &refspec]);
    let fetched =
        statusrefs::git_with_key(statusrefs::capped(command), &url, &node.ssh_dir(), deadline, "fetch");
    statusrefs::clear_leftovers(git.path());
    fetched.map_err(|e| crate::model::shown::escape(&e).into_owned())
}

/// Slot `n` of `group` as the node's status repo holds it (after [`fetch`]), believed by the
/// hosts' `keys`.
pub fn read(node: &Node, keys: &Keys, group: &str, n: u32) -> Result<Read, String> {
    let git = statusrefs::open(&node.status_repo_path()).map_err(|e| e.to_string())?;
    let commit = git.refname_to_id(&slot::reference(group, n)).ok();
    let doc = match commit {
        None => Err("no such ref".to_owned()),
        Some(commit) => believe(&git, keys, commit, group, n),
    };
    Ok(Read { commit, doc: doc.map_err(|e| crate::model::shown::escape(&e).into_owned()) })
}

/// The document of slot commit `commit`, if it is to be believed as slot `n` of `group`: small
/// enough, of a schema known here, about that slot, and signed by its holder's node key
/// (`keys/<holder>.pub` of the commit the reader trusts, in `keys`). A slot whose document is not
/// believed is no free slot: `policy::slots` counts it held for a lease by the reader's clock.
pub fn believe(git: &Repository, keys: &Keys, commit: Oid, group: &str, n: u32) -> Result<SlotDoc, String> {
    let commit = git.find_commit(commit).map_err(|e| e.message().to_owned())?;
    let entry = commit.tree().map_err(|e| e.message().to_owned())?.get_name(FILE).map(|e| e.id());
    let id = entry.ok_or(format!("no {FILE} in {}", commit.id()))?;
    let (size, _) = git.odb().and_then(|odb| odb.read_header(id)).map_err(|e| e.message().to_owned())?;
    if size > MAX_DOC {
        return Err(format!(
            "{FILE} of {} is {size} bytes, over the {MAX_DOC} a slot document may have",
            commit.id()
        ));
    }
    let blob = git.find_blob(id).map_err(|e| e.message().to_owned())?;
    let doc: SlotDoc =
        serde_json::from_slice(blob.content()).map_err(|e| format!("{FILE} of {}: {e}", commit.id()))?;
    if doc.schema != SCHEMA {
        return Err(format!(
            "{FILE} of {} has schema {}; this troops reads {SCHEMA}",
            commit.id(),
            doc.schema
        ));
    }
    if doc.group != group || doc.slot != n {
        return Err(format!("{FILE} of {} speaks for slot {}/{}", commit.id(), doc.group, doc.slot));
    }
    crate::mech::believe::signed_by(git, commit.id(), &doc.holder, keys)
        .map_err(|(reason, detail)| format!("not believed ({reason}): {detail}"))?;
    Ok(doc)
}

/// Commits `doc` in the status repo `git` as a root commit (a slot's history is of no use to
/// anyone, and readers fetch one commit) that no ref names yet, signed with the node's `key`: the
/// one place a slot document is made.
pub fn commit_doc(git: &Repository, doc: &SlotDoc, key: &ssh_key::PrivateKey) -> Result<Oid, String> {
    let json = serde_json::to_vec_pretty(doc).expect("a slot doc serializes");
    let write = || -> Result<Oid, git2::Error> {
        let blob = git.blob(&json)?;
        let mut tree = git.treebuilder(None)?;
        tree.insert(FILE, blob, 0o100644)?;
        let tree = git.find_tree(tree.write()?)?;
        let state = if doc.released { "given back" } else { "held" };
        let message = format!("slot {}/{}: {state} by {} (run {})", doc.group, doc.slot, doc.holder, doc.run);
        statusrefs::signed_commit(git, key, &doc.holder, &message, &tree, &[])
    };
    write().map_err(|e| {
        format!("committing slot {}/{} in {}: {}", doc.group, doc.slot, git.path().display(), e.message())
    })
}

/// Writes `doc` as slot `doc.slot` of `doc.group` on `remote`, if and only if the remote's ref is
/// still `expect` (`None`: no ref at all). Returns the commit now there. Fails when anyone moved
/// the ref first (git's "stale info"), when the remote cannot be reached, or at `deadline`.
pub fn swap(
    node: &Node,
    remote: &str,
    doc: &SlotDoc,
    expect: Option<Oid>,
    deadline: Instant,
) -> Result<Oid, String> {
    let git = statusrefs::open(&node.status_repo_path()).map_err(|e| e.to_string())?;
    // Under the writers' lock from commit to push: a status fetch's `gc` would prune the new
    // commit, which no ref names here.
    let _lock = statusrefs::lock(git.path(), Lock::Writer)?;
    let key = statusrefs::signing_key(&node.ssh_key_path()).map_err(|e| e.to_string())?;
    let commit = commit_doc(&git, doc, &key)?;
    let reference = slot::reference(&doc.group, doc.slot);
    let url = statusrefs::url_of(&node.repo_path(), remote)?;
    let lease =
        format!("--force-with-lease={reference}:{}", expect.map(|e| e.to_string()).unwrap_or_default());
    let mut command = statusrefs::quiet_git(git.path());
    command.args(["-c", "protocol.file.allow=always"]);
    command.args([
        "push",
        "--quiet",
        "--porcelain",
        &lease,
        "--end-of-options",
        &url,
        &format!("{commit}:{reference}"),
    ]);
    statusrefs::git_with_key(command, &url, &node.ssh_dir(), deadline, "push")
        .map_err(|e| crate::model::shown::escape(&e).into_owned())?;
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// A node (`host`) of its own in `dir`, whose remote `status` is the bare repo `remote`, with
    /// its own key ([`key_of`]).
    fn node(dir: &Path, host: &str, remote: &Path) -> Node {
        let state_dir = dir.join(host);
        let repo = Repository::init_bare(Node::repo_path_in(&state_dir)).unwrap();
        repo.remote("status", &remote.display().to_string()).unwrap();
        let text = format!("hostname = \"{host}\"\nstatus_remote = \"status\"\n");
        let config = crate::model::config::Config::parse(Path::new("troops.toml"), &text).unwrap();
        let node = Node { state_dir, config };
        std::fs::create_dir_all(node.ssh_dir()).unwrap();
        let key = key_of(host).to_openssh(ssh_key::LineEnding::LF).unwrap();
        std::fs::write(node.ssh_key_path(), key.as_bytes()).unwrap();
        node
    }

    /// `host`'s node key: the same host, the same key.
    fn key_of(host: &str) -> ssh_key::PrivateKey {
        statusrefs::test_key(host.bytes().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b)))
    }

    /// The keys of `hosts`, as a deploy repo's `keys/` would hold them.
    fn keys(hosts: &[&str]) -> Keys {
        Keys::of_hosts(hosts.iter().map(|h| (h.to_string(), key_of(h).public_key().clone())))
    }

    fn doc(holder: &str, slot: u32) -> SlotDoc {
        SlotDoc {
            schema: SCHEMA,
            group: "fleet".into(),
            slot,
            holder: holder.into(),
            run: 1,
            since: "2026-12-06T12:00:00Z".into(),
            lease_seconds: 60,
            renewals: 0,
            released: false,
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn of_many_nodes_racing_for_one_slot_exactly_one_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("status.git");
        Repository::init_bare(&remote).unwrap();
        for round in 0..3 {
            let nodes: Vec<Node> =
                (0..8).map(|i| node(dir.path(), &format!("r{round}-web-{i}"), &remote)).collect();
            // Every racer read the slot as it was before any of them moved it.
            let before =
                Repository::open_bare(&remote).unwrap().refname_to_id(&slot::reference("fleet", 0)).ok();
            let won: Vec<bool> = std::thread::scope(|scope| {
                let racers: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        let holder = n.config.hostname();
                        scope.spawn(move || swap(n, "status", &doc(&holder, 0), before, deadline()).is_ok())
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}: {won:?}");
            let winner = nodes.iter().zip(&won).find(|(_, w)| **w).unwrap().0;
            fetch(&nodes[0], "status", "fleet", deadline()).unwrap();
            let hosts: Vec<String> = nodes.iter().map(|n| n.config.hostname()).collect();
            let read =
                read(&nodes[0], &keys(&hosts.iter().map(String::as_str).collect::<Vec<_>>()), "fleet", 0)
                    .unwrap();
            assert_eq!(read.doc.unwrap().holder, winner.config.hostname(), "round {round}");
        }
    }

    #[test]
    fn a_swap_that_names_an_old_value_the_ref_no_longer_has_fails_and_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("status.git");
        let bare = Repository::init_bare(&remote).unwrap();
        let (a, b) = (node(dir.path(), "web-1", &remote), node(dir.path(), "web-2", &remote));
        let first = swap(&a, "status", &doc("web-1", 0), None, deadline()).unwrap();
        // "Never taken" is an old value too: the slot is taken now.
        let e = swap(&b, "status", &doc("web-2", 0), None, deadline()).unwrap_err();
        assert!(e.contains("stale info"), "{e}");
        // A renewal from the holder's own last commit works; a rewind to a value older than that fails.
        let renewed =
            swap(&a, "status", &SlotDoc { renewals: 1, ..doc("web-1", 0) }, Some(first), deadline()).unwrap();
        let e = swap(&b, "status", &doc("web-2", 0), Some(first), deadline()).unwrap_err();
        assert!(e.contains("stale info"), "{e}");
        assert_eq!(bare.refname_to_id(&slot::reference("fleet", 0)).unwrap(), renewed);
        // A remote that rejects pushes (a hook, a full disk) takes no slot, and is no lost race.
        let hook = remote.join("hooks/pre-receive");
        std::fs::write(&hook, "#!/bin/sh\necho no room >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = swap(&b, "status", &doc("web-2", 0), Some(renewed), deadline()).unwrap_err();
        assert!(!e.contains("stale info") && e.contains("pre-receive hook declined"), "{e}");
        assert_eq!(bare.refname_to_id(&slot::reference("fleet", 0)).unwrap(), renewed);
        std::fs::remove_file(&hook).unwrap();
        // A remote that is gone is an error too, not a slot.
        std::fs::rename(&remote, dir.path().join("gone.git")).unwrap();
        assert!(swap(&b, "status", &doc("web-2", 0), Some(renewed), deadline()).is_err());
        assert!(fetch(&b, "status", "fleet", deadline()).is_err());
    }

    #[test]
    fn only_a_small_document_of_this_slot_and_schema_is_believed() {
        let dir = tempfile::tempdir().unwrap();
        let git = Repository::init_bare(dir.path()).unwrap();
        let put = |bytes: &[u8]| -> Oid {
            let mut tree = git.treebuilder(None).unwrap();
            tree.insert(FILE, git.blob(bytes).unwrap(), 0o100644).unwrap();
            let tree = git.find_tree(tree.write().unwrap()).unwrap();
            let who = git2::Signature::now("hostile", "h@example.com").unwrap();
            git.commit(None, &who, &who, "x", &tree, &[]).unwrap()
        };
        let json = |d: &SlotDoc| serde_json::to_vec(d).unwrap();
        let good = commit_doc(&git, &doc("web-1", 1), &key_of("web-1")).unwrap();
        let known = keys(&["web-1", "web-2"]);
        assert_eq!(believe(&git, &known, good, "fleet", 1).unwrap(), doc("web-1", 1));
        // Signed by another node's key, or by a key no trusted commit names: not believed.
        let forged = commit_doc(&git, &doc("web-1", 0), &key_of("web-2")).unwrap();
        let e = believe(&git, &known, forged, "fleet", 0).unwrap_err();
        assert!(e.contains("not believed (wrong_key)"), "{e}");
        let stranger = commit_doc(&git, &doc("web-3", 0), &key_of("web-3")).unwrap();
        let e = believe(&git, &known, stranger, "fleet", 0).unwrap_err();
        assert!(e.contains("not believed (no_key)"), "{e}");
        let cases: Vec<(Oid, &str)> = vec![
            (good, "speaks for slot fleet/1"),
            (put(&json(&SlotDoc { group: "db".into(), ..doc("web-1", 0) })), "speaks for slot db/0"),
            (put(&json(&SlotDoc { schema: 2, ..doc("web-1", 0) })), "has schema 2; this troops reads 1"),
            (put(b"{ not json"), "slot.json of"),
            (put(&json(&doc("web-1", 0))), "not believed (unsigned)"),
            (put(&[b' '; MAX_DOC + 1]), "over the 4096 a slot document may have"),
            (
                git.commit(
                    None,
                    &git2::Signature::now("a", "b").unwrap(),
                    &git2::Signature::now("a", "b").unwrap(),
                    "empty",
                    &git.find_tree(git.treebuilder(None).unwrap().write().unwrap()).unwrap(),
                    &[],
                )
                .unwrap(),
                "no slot.json in",
            ),
        ];
        for (commit, want) in cases {
            let e = believe(&git, &known, commit, "fleet", 0).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
