use super::*;
use crate::mech::statusrefs::{self, test_key};
use crate::model::status::{FILE, MAX_DOC};

fn doc(host: &str, updated_at: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": 1, "host": host, "version": "0.2.0", "roles": [], "wave": null, "tip": null,
        "deployed": null, "state": "idle", "since": null, "run": null, "hold": null,
        "quarantined": [], "heartbeat_seconds": 60, "updated_at": updated_at
    })
}

/// Points `refs/troops/status/<host>` of `git` at a new commit holding `bytes` as its document,
/// signed by `key` (none: unsigned); `tamper` changes the commit after it was signed.
fn put(git: &Repository, host: &str, bytes: &[u8], key: Option<&ssh_key::PrivateKey>, tamper: bool) -> Oid {
    let mut tree = git.treebuilder(None).unwrap();
    tree.insert(FILE, git.blob(bytes).unwrap(), 0o100644).unwrap();
    let tree = git.find_tree(tree.write().unwrap()).unwrap();
    let who = git2::Signature::now("troops", "troops@localhost").unwrap();
    let buffer = git.commit_create_buffer(&who, &who, "status", &tree, &[]).unwrap();
    let text = std::str::from_utf8(&buffer).unwrap().to_owned();
    let commit = match key {
        None => git.odb().unwrap().write(git2::ObjectType::Commit, text.as_bytes()).unwrap(),
        Some(key) => {
            let signature = statusrefs::sign(key, text.as_bytes()).unwrap();
            let text = if tamper { text.replace("status", "healthy") } else { text };
            git.commit_signed(&text, &signature, Some("gpgsig")).unwrap()
        }
    };
    git.reference(&format!("{REF_PREFIX}{host}"), commit, true, "").unwrap();
    commit
}

/// The reader's clock: just after the documents' dates.
fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-12-06T10:01:00Z").unwrap()
}

fn json(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A deploy repo whose one commit has `keys/<host>.pub` for each of `hosts` (key seed, host).
fn deploy_repo(dir: &Path, hosts: &[(u8, &str)]) -> (Repository, Oid) {
    let git = Repository::init_bare(dir).unwrap();
    let commit = {
        let mut keys = git.treebuilder(None).unwrap();
        for (seed, host) in hosts {
            let line = test_key(*seed).public_key().to_openssh().unwrap();
            keys.insert(format!("{host}.pub"), git.blob(line.as_bytes()).unwrap(), 0o100644).unwrap();
        }
        keys.insert("junk.pub", git.blob(b"not a key").unwrap(), 0o100644).unwrap();
        let keys = keys.write().unwrap();
        let mut root = git.treebuilder(None).unwrap();
        root.insert("keys", keys, 0o040000).unwrap();
        let root = git.find_tree(root.write().unwrap()).unwrap();
        let who = git2::Signature::now("dev", "dev@example.com").unwrap();
        git.commit(Some("HEAD"), &who, &who, "keys", &root, &[]).unwrap()
    };
    (git, commit)
}

#[test]
fn each_status_ref_is_believed_or_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (deploy, trusted) = deploy_repo(
        &dir.path().join("deploy"),
        &[
            (1, "web-1"),
            (3, "web-3"),
            (5, "web-5"),
            (6, "web-6"),
            (7, "web-7"),
            (8, "web-8"),
            (9, "junk"),
            (10, "web-9"),
        ],
    );
    let status = Repository::init_bare(dir.path().join("status")).unwrap();
    let t = "2026-12-06T10:00:00.000Z";
    let (k1, k3, k4, k5, k6, k7, k8) =
        (test_key(1), test_key(3), test_key(4), test_key(5), test_key(6), test_key(7), test_key(8));
    let good = put(&status, "web-1", &json(&doc("web-1", t)), Some(&k1), false);
    put(&status, "web-2", &json(&doc("web-2", t)), None, false);
    // web-3's document, signed by web-1's key: one node writing for another.
    put(&status, "web-3", &json(&doc("web-3", t)), Some(&k1), false);
    put(&status, "web-4", &json(&doc("web-4", t)), Some(&k4), false);
    // web-5's key, web-5's ref, but it speaks for web-1, with a name that would drive a terminal.
    put(&status, "web-5", &json(&doc("web-1\u{1b}[2J", t)), Some(&k5), false);
    put(&status, "web-6", &json(&doc("web-6", t)), Some(&k6), true);
    put(&status, "web-7", &json(&doc("web-7", "2026-12-06T09:00:00.000Z")), Some(&k7), false);
    let mut huge = json(&doc("web-8", t));
    huge.extend(std::iter::repeat_n(b' ', MAX_DOC));
    put(&status, "web-8", &huge, Some(&k8), false);
    put(&status, "junk", &json(&doc("junk", t)), Some(&test_key(9)), false);
    put(&status, "web-3x", &json(&doc("web-3x", t)), Some(&k3), false);
    put(&status, "web-9", &json(&doc("web-9", "2026-12-06T10:06:01.000Z")), Some(&test_key(10)), false);
    let newest = Newest {
        hosts: [(
            "web-7".to_owned(),
            Seen {
                commit: "a".repeat(40),
                updated_at: "2026-12-06T09:30:00.000Z".to_owned(),
                key: String::new(),
            },
        )]
        .into(),
        refused: BTreeMap::new(),
    };

    let belief = believe(&status, &Keys::at(&deploy, Some(trusted)), &newest, now());
    let believed: Vec<(&str, Oid)> =
        belief.believed.iter().map(|b| (b.doc.host.as_str(), b.commit)).collect();
    assert_eq!(believed, [("web-1", good)]);
    let refused: Vec<(&str, Reason, &str)> =
        belief.refused.iter().map(|r| (r.host.as_str(), r.reason, r.detail.as_str())).collect();
    #[rustfmt::skip]
    let expected: Vec<(&str, Reason, &str)> = vec![
        ("junk", Reason::NoKey, "keys/junk.pub at "),
        ("web-2", Reason::Unsigned, "is not signed"),
        ("web-3", Reason::WrongKey, "not by keys/web-3.pub"),
        ("web-3x", Reason::NoKey, "the deploy repo has no keys/web-3x.pub at "),
        ("web-4", Reason::NoKey, "the deploy repo has no keys/web-4.pub at "),
        ("web-5", Reason::Misnamed, "it speaks for another host, \"web-1\\u{1b}[2J\""),
        ("web-6", Reason::BadSignature, "does not verify with key"),
        ("web-7", Reason::Rewound, "not newer than 2026-12-06T09:30:00.000Z of aaaaaaaaaaaa, believed here before"),
        ("web-8", Reason::Unreadable, "over the 262144 a status document may have"),
        ("web-9", Reason::Unreadable, "more than 5m ahead of this reader's clock"),
    ];
    assert_eq!(refused.len(), expected.len(), "{refused:?}");
    for ((host, reason, detail), (want_host, want_reason, says)) in refused.iter().zip(&expected) {
        assert_eq!((host, reason), (want_host, want_reason), "{detail}");
        assert!(detail.contains(says), "{host}: {detail:?} does not say {says:?}");
        assert!(!detail.chars().any(char::is_control), "a peer's words, escaped: {detail:?}");
    }
    assert_eq!(belief.refused_by_reason()[&Reason::NoKey], 3);

    // A reader that trusts no commit yet believes nothing.
    let blind = believe(&status, &Keys::at(&deploy, None), &Newest::default(), now());
    assert!(blind.believed.is_empty());
    assert!(blind.refused.iter().filter(|r| r.reason == Reason::NoKey).count() >= 7, "{:?}", blind.refused);
}

#[test]
fn a_ref_set_back_to_an_older_signed_document_is_refused_and_stays_so() {
    let dir = tempfile::tempdir().unwrap();
    let (deploy, trusted) = deploy_repo(&dir.path().join("deploy"), &[(1, "web-1")]);
    let status = Repository::init_bare(dir.path().join("status")).unwrap();
    let keys = Keys::at(&deploy, Some(trusted));
    let key = test_key(1);
    let old = put(&status, "web-1", &json(&doc("web-1", "2026-12-06T09:00:00.000Z")), Some(&key), false);
    let first = believe(&status, &keys, &Newest::default(), now());
    assert_eq!(first.believed[0].commit, old);
    let newest = Newest::default().with(&first);
    // Believed again as long as it is the same.
    assert_eq!(believe(&status, &keys, &newest, now()).believed.len(), 1);
    let new = put(&status, "web-1", &json(&doc("web-1", "2026-12-06T10:00:00.000Z")), Some(&key), false);
    let second = believe(&status, &keys, &newest, now());
    assert_eq!(second.believed[0].commit, new);
    let newest = newest.with(&second);
    // The writer of the status remote sets the ref back to the old, genuinely signed document.
    status.reference("refs/troops/status/web-1", old, true, "").unwrap();
    let replayed = believe(&status, &keys, &newest, now());
    assert!(replayed.believed.is_empty());
    assert_eq!(replayed.refused[0].reason, Reason::Rewound);
    // Taking the refusal in forgets nothing; deleting the ref first does not help either.
    let newest = newest.with(&replayed);
    assert_eq!(newest.hosts["web-1"].commit, new.to_string());
    assert_eq!(newest.refused, [(Reason::Rewound, 1)].into());
    status.find_reference("refs/troops/status/web-1").unwrap().delete().unwrap();
    let newest = newest.with(&believe(&status, &keys, &newest, now()));
    status.reference("refs/troops/status/web-1", old, true, "").unwrap();
    assert_eq!(believe(&status, &keys, &newest, now()).refused[0].reason, Reason::Rewound);
}

#[test]
fn rewound_as_a_table() {
    let at = |t: &str| humantime::parse_rfc3339(t).unwrap();
    let (a, b) = (Oid::from_bytes(&[1; 20]).unwrap(), Oid::from_bytes(&[2; 20]).unwrap());
    let seen = |commit: Oid, t: &str| Seen {
        commit: commit.to_string(),
        updated_at: t.to_owned(),
        key: String::new(),
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Oid, &str, Option<Seen>, bool)> = vec![
        ("nothing believed before", a, "2026-01-01T00:00:00Z", None, false),
        ("the one believed before", a, "2026-01-01T00:00:00Z", Some(seen(a, "2026-01-01T00:00:00.000Z")), false),
        ("newer", b, "2026-01-01T00:00:01Z", Some(seen(a, "2026-01-01T00:00:00.000Z")), false),
        ("older", b, "2025-12-31T23:59:59Z", Some(seen(a, "2026-01-01T00:00:00.000Z")), true),
        ("the same date, another commit: no newer", b, "2026-01-01T00:00:00Z", Some(seen(a, "2026-01-01T00:00:00.000Z")), true),
        ("a memory that is no date holds nothing back", b, "2026-01-01T00:00:00Z", Some(seen(a, "yesterday")), false),
    ];
    for (case, commit, updated, newest, want) in cases {
        assert_eq!(rewound(commit, at(updated), newest.as_ref()).is_some(), want, "{case}");
    }
}

#[test]
fn git_verify_commit_accepts_a_published_status_commit() {
    let dir = tempfile::tempdir().unwrap();
    let git = Repository::init_bare(dir.path().join("status")).unwrap();
    let key = test_key(1);
    let doc: StatusDoc = serde_json::from_value(doc("web-1", "2026-12-06T10:00:00.000Z")).unwrap();
    let (_, commit) = statusrefs::commit(&git, &doc, &key).unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(&signers, format!("web-1 {}\n", key.public_key().to_openssh().unwrap())).unwrap();
    let verify = |signers: &Path| {
        std::process::Command::new("git")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .arg("--git-dir")
            .arg(git.path())
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
            .args(["verify-commit", "--raw", &commit.to_string()])
            .output()
            .unwrap()
    };
    let out = verify(&signers);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Good \"git\" signature for web-1"), "{said}");
    // Another key in the list: git refuses it too.
    std::fs::write(&signers, format!("web-1 {}\n", test_key(2).public_key().to_openssh().unwrap())).unwrap();
    assert!(!verify(&signers).status.success());
}

#[test]
fn a_believed_commit_is_verified_again_once_its_hosts_key_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (deploy, trusted) = deploy_repo(&dir.path().join("deploy"), &[(1, "web-1")]);
    let (rekeyed, retrusted) = deploy_repo(&dir.path().join("rekeyed"), &[(2, "web-1")]);
    let status = Repository::init_bare(dir.path().join("status")).unwrap();
    put(&status, "web-1", &json(&doc("web-1", "2026-12-06T09:00:00.000Z")), Some(&test_key(1)), false);
    let first = believe(&status, &Keys::at(&deploy, Some(trusted)), &Newest::default(), now());
    let newest = Newest::default().with(&first);
    assert_eq!(newest.hosts["web-1"].key, test_key(1).public_key().fingerprint(HashAlg::Sha256).to_string());
    // The same commit, known here, under the key the repo names now: not web-1's any more.
    let after = believe(&status, &Keys::at(&rekeyed, Some(retrusted)), &newest, now());
    assert_eq!(after.refused[0].reason, Reason::WrongKey, "{:?}", after.refused);
}
