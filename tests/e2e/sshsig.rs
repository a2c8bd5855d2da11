//! SSH-signed commits: a node with `require_signed` and `[verify] allowed_signers` deploys, by
//! pull and by push, commits that `git -c gpg.format=ssh commit -S` signed with a key the file
//! lists, made by real `ssh-keygen`. An unknown key, a wrong namespace (either side: the
//! signature's, or the file's `namespaces`), a key outside its validity window and a tampered
//! commit are each refused with their own reason; the window is judged when the node first
//! accepted the commit; OpenPGP and SSH signatures mix under one policy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::gpg::{tamper, Gpg};
use crate::support::{
    assert_only_reason, assert_untouched, combined, publish_to_a, pull_deploys, push_is_refused, ssh_keygen,
    text, wait_until, DeployRepo, Env,
};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// An SSH key made by ssh-keygen: its private key file and its fingerprint (`SHA256:...`).
struct SshKey {
    path: PathBuf,
    public: String,
    fingerprint: String,
}

fn new_key(env: &Env, name: &str) -> SshKey {
    let dir = env.path("ssh-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    ssh_keygen(&path, name);
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned();
    let out = Command::new("ssh-keygen").args(["-l", "-E", "sha256", "-f"]).arg(&path).output().unwrap();
    let fingerprint = text(&out.stdout).split_whitespace().nth(1).unwrap().to_owned();
    SshKey { path, public, fingerprint }
}

/// Writes `files` and commits everything signed by `key` with `gpg.format=ssh`; `program`
/// replaces ssh-keygen (to sign in another namespace). Returns the commit id.
fn ssh_commit(
    env: &Env,
    work: &DeployRepo,
    key: &SshKey,
    program: Option<&Path>,
    files: &[(&str, &str)],
    message: &str,
) -> String {
    for (name, content) in files {
        std::fs::write(work.path.join(name), content).unwrap();
    }
    env.git(&work.path, &["add", "-A"]);
    let signing_key = format!("user.signingkey={}", key.path.display());
    let program =
        format!("gpg.ssh.program={}", program.map_or("ssh-keygen".into(), |p| p.display().to_string()));
    env.git(
        &work.path,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing_key,
            "-c",
            &program,
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            message,
        ],
    );
    let raw = env.git(&work.path, &["cat-file", "commit", "HEAD"]);
    assert!(raw.contains("-----BEGIN SSH SIGNATURE-----"), "not SSH-signed:\n{raw}");
    env.git(&work.path, &["rev-parse", "HEAD"])
}

/// A wrapper of ssh-keygen that signs in namespace "other" whatever git asks for.
fn other_namespace_program(env: &Env) -> PathBuf {
    let path = env.path("sign-other-namespace");
    let script = "#!/bin/sh\nn=$#\nprev=\nfor a in \"$@\"; do\n  b=$a\n  [ \"$prev\" = -n ] && b=other\n  prev=$a\n  set -- \"$@\" \"$b\"\ndone\nshift $n\nexec ssh-keygen \"$@\"\n";
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The keys of a test: `alice` is allowed; `stranger` is not listed; `filer` is listed for
/// namespace "file" only; `retired` had a window that ended in 2020, `future` one that starts
/// in 2099.
struct Keys {
    alice: SshKey,
    stranger: SshKey,
    filer: SshKey,
    retired: SshKey,
    future: SshKey,
}

/// A node `web-1` with `require_signed`, `scope` and allowed signers for `keys` (and `extra`
/// lines, and `[verify]` lines), with bare remote `a.git`; and a work repo to commit in.
fn ssh_node(scope: &str, extra_verify: &str) -> (Env, Keys, DeployRepo) {
    let env = Env::new();
    let keys = Keys {
        alice: new_key(&env, "alice"),
        stranger: new_key(&env, "stranger"),
        filer: new_key(&env, "filer"),
        retired: new_key(&env, "retired"),
        future: new_key(&env, "future"),
    };
    let signers = format!(
        "# who may sign deploys\nalice@example.com {}\nfiler@example.com namespaces=\"file\" {}\nretired@example.com valid-after=\"20100101\",valid-before=\"20200101Z\" {}\nfuture@example.com valid-after=\"20990101Z\" {}\n",
        keys.alice.public, keys.filer.public, keys.retired.public, keys.future.public
    );
    std::fs::write(env.path("allowed_signers"), signers).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\n[verify]\nrequire_signed = true\nallowed_signers = \"{}\"\nscope = \"{scope}\"\n{extra_verify}",
        env.path("allowed_signers").display()
    ));
    let work = env.init_following_a();
    (env, keys, work)
}

/// Commits the plan signed by alice, deploys it by pull, and returns it.
fn deploy_base(env: &Env, keys: &Keys, work: &DeployRepo) -> String {
    let base = ssh_commit(env, work, &keys.alice, None, &[("troops.toml", PLAN)], "base");
    publish_to_a(env, work);
    pull_deploys(env, &base);
    base
}

const REASONS: [&str; 4] =
    ["unknown key", "in the wrong namespace", "outside its validity window", "bad signature"];

/// Each way an SSH-signed commit can be refused: its name, the commit made on the work repo's
/// HEAD, and what only its refusal says (and its kind for scripts).
fn make_case(env: &Env, keys: &Keys, work: &DeployRepo, case: &str) -> String {
    let file = [("x", case)];
    match case {
        "unknown key" => ssh_commit(env, work, &keys.stranger, None, &file, "by a stranger"),
        "namespace of the signature" => {
            ssh_commit(env, work, &keys.alice, Some(&other_namespace_program(env)), &file, "namespace other")
        }
        "namespace of the file" => ssh_commit(env, work, &keys.filer, None, &file, "by a file signer"),
        "retired" => ssh_commit(env, work, &keys.retired, None, &file, "by a retired key"),
        "not yet valid" => ssh_commit(env, work, &keys.future, None, &file, "by a future key"),
        "tampered" => {
            ssh_commit(env, work, &keys.alice, None, &file, "the message is altered");
            tamper(env, work)
        }
        other => panic!("no case {other}"),
    }
}

const CASES: [(&str, &str, &str); 6] = [
    ("unknown key", REASONS[0], "unknown_key"),
    ("namespace of the signature", REASONS[1], "wrong_namespace"),
    ("namespace of the file", REASONS[1], "wrong_namespace"),
    ("retired", REASONS[2], "outside_window"),
    ("not yet valid", REASONS[2], "outside_window"),
    ("tampered", REASONS[3], "bad"),
];

#[test]
fn a_commit_signed_by_an_allowed_ssh_key_deploys_by_pull_and_by_push() {
    let (env, keys, work) = ssh_node("tip", "");
    let base = deploy_base(&env, &keys, &work);
    assert_eq!(env.run_record(1)["trigger"], "pull");

    let verified = env.ok(&["verify"]);
    assert_eq!(
        verified.trim(),
        format!(
            "commit {base} is signed by SSH key {fp} (alice@example.com)\nformat ssh, principal alice@example.com, key {fp}",
            fp = keys.alice.fingerprint
        )
    );
    let shown = env.ok(&["status"]);
    let lists =
        format!("verify    on (scope tip, allowed signers {})", env.path("allowed_signers").display());
    assert!(shown.contains(&lists), "{shown}");

    let pushed = ssh_commit(&env, &work, &keys.alice, None, &[("x", "pushed")], "pushed");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("run 2 succeeded"), "{}", text(&out.stderr));
    assert_eq!(env.deployed().as_deref(), Some(pushed.as_str()));

    // An OpenPGP-signed commit has no keyring to check it against here: refused, by name.
    let gpg = Gpg::new();
    let key = gpg.generate("Pgp");
    let pgp = gpg.commit(&env, &work, &key, &[("x", "pgp")], "openpgp");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("this node has no OpenPGP keyring"), "{}", text(&out.stderr));
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(pushed.as_str()), "{pgp}");
}

#[test]
fn pull_refuses_each_bad_ssh_commit_with_its_own_reason() {
    let (env, keys, work) = ssh_node("tip", "");
    let base = deploy_base(&env, &keys, &work);
    for (case, reason, kind) in CASES {
        env.git(&work.path, &["reset", "-q", "--hard", &base]);
        let commit = make_case(&env, &keys, &work, case);
        publish_to_a(&env, &work);

        let out = env.run(&["pull"]);
        let said = combined(&out);
        assert_eq!(out.status.code(), Some(0), "{case}: {said}");
        assert!(said.contains(&format!("refused: commit {}", &commit[..12])), "{case}: {said}");
        assert_only_reason(&said, reason, &REASONS, case);
        assert_untouched(&env, &base, case);
        let last = &env.status_json()["verify"]["last_refusal"];
        assert_eq!(
            (last["commit"].as_str(), last["outcome"].as_str()),
            (Some(commit.as_str()), Some(kind)),
            "{case}"
        );

        let out = env.run(&["verify", &commit]);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", combined(&out));
        assert_only_reason(&text(&out.stdout), reason, &REASONS, case);

        let out = env.run(&["deploy", "--commit", "refs/remotes/a/main"]);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", combined(&out));
        assert_only_reason(&text(&out.stderr), reason, &REASONS, case);
        assert_untouched(&env, &base, case);
    }
}

#[test]
fn push_refuses_each_bad_ssh_commit_with_its_own_reason() {
    let (env, keys, work) = ssh_node("tip", "");
    let base = deploy_base(&env, &keys, &work);
    for (case, reason, kind) in CASES {
        env.git(&work.path, &["reset", "-q", "--hard", &base]);
        let commit = make_case(&env, &keys, &work, case);
        let stderr = push_is_refused(&env, &work, &commit, case);
        assert_only_reason(&stderr, reason, &REASONS, case);
        assert_untouched(&env, &base, case);
        assert_eq!(env.status_json()["verify"]["last_refusal"]["outcome"], kind, "{case}");
    }
}

#[test]
fn the_validity_window_is_judged_when_the_node_first_accepted_the_commit() {
    let window_end = SystemTime::now() + Duration::from_secs(4);
    let until = humantime::format_rfc3339_seconds(window_end).to_string();
    // 2026-12-02T02:30:00Z as allowed_signers writes it: 20261202023000Z.
    let stamp: String = until.chars().filter(|c| c.is_ascii_digit()).collect::<String>() + "Z";
    let (env, keys, work) = ssh_node("tip", "");
    let brief = new_key(&env, "brief");
    let mut signers = std::fs::read_to_string(env.path("allowed_signers")).unwrap();
    signers.push_str(&format!("brief@example.com valid-before=\"{stamp}\" {}\n", brief.public));
    std::fs::write(env.path("allowed_signers"), signers).unwrap();
    deploy_base(&env, &keys, &work);

    let early = ssh_commit(&env, &work, &brief, None, &[("x", "early")], "while brief is valid");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert!(SystemTime::now() < window_end, "the test machine is too slow for a 4s window");
    assert_eq!(env.deployed().as_deref(), Some(early.as_str()), "{}", combined(&out));
    wait_until("brief's window ends", Duration::from_secs(10), || {
        SystemTime::now() > window_end + Duration::from_secs(1)
    });

    // Accepted while valid: it still runs later, judged at the time the node first saw it.
    let out = env.run(&["deploy", "--commit", &early]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.run_ids(), [1, 2, 3]);

    // A commit the node sees only now is outside the window, whatever its committer date says.
    let late = ssh_commit(&env, &work, &brief, None, &[("x", "late")], "after brief's window");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert!(combined(&out).contains("outside its validity window"), "{}", combined(&out));
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(early.as_str()));

    // A first-seen time that is not root's (a member of the admin group wrote it) is not
    // believed: backdating the late commit does not get it run.
    let seen = env.state.join("seen.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(file["schema"], 2, "{file}");
    let times = file["first_seen"].as_object_mut().unwrap();
    assert!(times.contains_key(&early), "{times:?}");
    times.insert(late.clone(), Value::from("2020-01-01T00:00:00Z"));
    std::fs::write(&seen, serde_json::to_vec(&file).unwrap()).unwrap();
    if crate::support::require_root("a seen.json another user wrote") {
        std::os::unix::fs::chown(&seen, Some(65534), Some(65534)).unwrap();
        let out = env.run(&["deploy", "--commit", &late]);
        assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
        assert!(text(&out.stderr).contains("outside its validity window"), "{}", combined(&out));
        // And the same run of the early commit, now with no trusted record, is judged now.
        let out = env.run(&["deploy", "--commit", &early]);
        assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    }
}

#[test]
fn an_unknown_option_in_allowed_signers_is_a_config_error_naming_file_and_line() {
    let (env, keys, work) = ssh_node("tip", "");
    let base = deploy_base(&env, &keys, &work);
    let path = env.path("allowed_signers");
    let mut signers = std::fs::read_to_string(&path).unwrap();
    signers.push_str(&format!("ops@example.com cert-authority {}\n", keys.stranger.public));
    std::fs::write(&path, signers).unwrap();
    let expected = format!("{}:6:1: unknown option `cert-authority`", path.display());

    ssh_commit(&env, &work, &keys.alice, None, &[("x", "good")], "good");
    publish_to_a(&env, &work);
    for args in [&["pull"][..], &["verify"][..]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", combined(&out));
        assert!(combined(&out).contains(&expected), "{args:?}: {}", combined(&out));
    }
    // A push is refused as well: the node cannot tell what the file allows.
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(!out.status.success() && text(&out.stderr).contains(&expected), "{}", text(&out.stderr));
    assert_untouched(&env, &base, "bad option");
    assert!(env.ok(&["status"]).contains("nothing can be verified"));
}

#[test]
fn a_lost_config_keeps_the_recorded_allowed_signers() {
    let (env, keys, work) = ssh_node("tip", "");
    let base = deploy_base(&env, &keys, &work);
    env.write_config("hostname = \"web-1\"\n");
    let stranger = ssh_commit(&env, &work, &keys.stranger, None, &[("x", "stranger")], "stranger");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert!(combined(&out).contains("unknown key"), "{}", combined(&out));
    assert_untouched(&env, &base, "lost config");
    env.git(&work.path, &["reset", "-q", "--hard", &base]);
    let good = ssh_commit(&env, &work, &keys.alice, None, &[("x", "alice")], "alice");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "{stranger}: {}", combined(&out));
}

#[test]
fn openpgp_and_ssh_signatures_mix_under_scope_all() {
    let gpg = Gpg::new();
    let (env, keys, work) = ssh_node("all", "");
    let pgp = gpg.generate("Trusted");
    let keyring = env.path("trusted.pgp");
    std::fs::write(&keyring, gpg.export(&[&pgp], true)).unwrap();
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!("keyring = \"{}\"\n", keyring.display()));
    env.write_config(&config);

    let base = deploy_base(&env, &keys, &work);
    let by_pgp = gpg.commit(&env, &work, &pgp, &[("x", "pgp")], "openpgp");
    let tip = ssh_commit(&env, &work, &keys.alice, None, &[("x", "ssh")], "ssh on top");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()), "{}", combined(&out));
    assert!(env.ok(&["verify", &by_pgp]).contains("format openpgp"));
    assert!(env.ok(&["verify", &tip]).contains("format ssh"));

    // Under scope all, one commit by a stranger in the middle refuses the whole push.
    let stranger = ssh_commit(&env, &work, &keys.stranger, None, &[("x", "stranger")], "stranger");
    gpg.commit(&env, &work, &pgp, &[("x", "pgp again")], "openpgp on top");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    let refused =
        format!("commit {} is signed by an unknown key {}", &stranger[..12], keys.stranger.fingerprint);
    assert!(text(&out.stderr).contains(&refused), "{}", text(&out.stderr));
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()), "{base}");
}
