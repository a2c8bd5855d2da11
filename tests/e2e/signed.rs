//! Signed commits: a node with `require_signed` deploys, by pull and by push, only commits that
//! `git commit -S` signed with a key of its keyring, as made by real GnuPG in a temp GNUPGHOME.
//! Unsigned commits, unknown keys, tampered commits, expired and revoked keys are each refused
//! with their own reason, and nothing moves: not the branch, not the deployed commit, no run.

use crate::support::gpg::{tamper, Gpg, Key};
use crate::support::{
    assert_only_reason, assert_untouched, combined, publish_to_a, pull_deploys, push_is_refused, text,
    DeployRepo, Env,
};

const PLAN: &str = "[[step]]\nname = \"hello\"\nrun = \"echo hello from $TROOPS_COMMIT\"\n";

/// The keys of a test: the node trusts `trusted`, `old` (expired since it signed) and `gone`
/// (revoked); it has never heard of `stranger`.
struct Keys {
    trusted: Key,
    stranger: Key,
    old: Key,
    gone: Key,
}

/// A node `web-1` with `require_signed` and `scope`, whose keyring (armored or binary) holds the
/// certificates of `trusted`, `old` and `gone` (revoked), with bare remote `a.git`; and a work
/// repo to commit in.
fn signed_node(scope: &str, armor: bool) -> (Env, Gpg, Keys, DeployRepo) {
    let env = Env::new();
    let gpg = Gpg::new();
    let keys = Keys {
        trusted: gpg.generate("Trusted"),
        stranger: gpg.generate("Stranger"),
        old: gpg.generate_expired("Old"),
        gone: gpg.generate("Gone"),
    };
    let mut keyring = gpg.export(&[&keys.trusted, &keys.old], armor);
    keyring.extend(gpg.export_revoked(&keys.gone, armor));
    let keyring_path = env.path("trusted.pgp");
    std::fs::write(&keyring_path, keyring).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\n[verify]\nrequire_signed = true\nkeyring = \"{}\"\nscope = \"{scope}\"\n",
        keyring_path.display()
    ));
    let work = env.init_following_a();
    (env, gpg, keys, work)
}

/// Commits the plan signed by `trusted`, deploys it by pull, and returns it.
fn deploy_base(env: &Env, gpg: &Gpg, keys: &Keys, work: &DeployRepo) -> String {
    let base = gpg.commit(env, work, &keys.trusted, &[("troops.toml", PLAN)], "base");
    publish_to_a(env, work);
    pull_deploys(env, &base);
    base
}

/// Each way a commit can fail verification: its name, how to make it on top of the work repo's
/// HEAD, and what only its refusal says.
type Case = (&'static str, fn(&Env, &Gpg, &Keys, &DeployRepo) -> String, &'static str);

const REASONS: [&str; 5] =
    ["is not signed", "unknown key", "bad signature", "a key that has expired", "a key that is revoked"];

fn cases() -> Vec<Case> {
    vec![
        ("unsigned", |env, _, _, work| work.commit(env, &[("x", "unsigned")], "unsigned"), REASONS[0]),
        (
            "unknown key",
            |env, gpg, keys, work| {
                gpg.commit(env, work, &keys.stranger, &[("x", "stranger")], "by a stranger")
            },
            REASONS[1],
        ),
        (
            "tampered",
            |env, gpg, keys, work| {
                gpg.commit(env, work, &keys.trusted, &[("x", "tampered")], "the message is altered");
                tamper(env, work)
            },
            REASONS[2],
        ),
        (
            "expired",
            |env, gpg, keys, work| gpg.commit(env, work, &keys.old, &[("x", "old")], "by an expired key"),
            REASONS[3],
        ),
        (
            "revoked",
            |env, gpg, keys, work| gpg.commit(env, work, &keys.gone, &[("x", "gone")], "by a revoked key"),
            REASONS[4],
        ),
    ]
}

#[test]
fn a_commit_signed_by_a_trusted_key_deploys_by_pull_and_by_push() {
    let (env, gpg, keys, work) = signed_node("tip", true);
    let base = deploy_base(&env, &gpg, &keys, &work);
    assert_eq!(env.run_record(1)["trigger"], "pull");

    let verified = env.ok(&["verify"]);
    assert_eq!(
        verified.trim(),
        format!(
            "commit {base} is signed by {fpr} ({})\nformat openpgp, key {fpr}",
            keys.trusted.user_id,
            fpr = keys.trusted.fingerprint
        )
    );
    let shown = env.ok(&["status"]);
    assert!(
        shown.contains(&format!("verify    on (scope tip, keyring {})", env.path("trusted.pgp").display())),
        "{shown}"
    );
    assert_eq!(env.status_json()["verify"]["require_signed"], true);

    let pushed = gpg.commit(&env, &work, &keys.trusted, &[("x", "pushed")], "pushed");
    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("run 2 succeeded"), "{}", text(&out.stderr));
    assert_eq!(env.deployed().as_deref(), Some(pushed.as_str()));
    assert_eq!(env.run_record(2)["trigger"], "push");
}

#[test]
fn pull_refuses_each_bad_commit_with_its_own_reason_and_nothing_moves() {
    let (env, gpg, keys, work) = signed_node("tip", false);
    let base = deploy_base(&env, &gpg, &keys, &work);
    for (case, make, reason) in cases() {
        env.git(&work.path, &["reset", "-q", "--hard", &base]);
        let commit = make(&env, &gpg, &keys, &work);
        publish_to_a(&env, &work);

        let out = env.run(&["pull"]);
        let said = combined(&out);
        assert_eq!(out.status.code(), Some(0), "{case}: {said}");
        assert!(
            said.contains(&format!("troops: remote a: {} refused: commit {}", &commit[..12], &commit[..12])),
            "{case}: {said}"
        );
        assert_only_reason(&said, reason, &REASONS, case);
        assert_untouched(&env, &base, case);

        // The refusal is kept for status: by the remote, and as the node's last refusal.
        let status = env.status_json();
        assert!(
            status["remotes"][0]["last_fetch"]["refused"].as_str().unwrap().contains(reason),
            "{case}: {status}"
        );
        let last = &status["verify"]["last_refusal"];
        assert_eq!(
            (last["commit"].as_str(), last["source"].as_str()),
            (Some(commit.as_str()), Some("remote a")),
            "{case}: {status}"
        );
        let shown = env.ok(&["status"]);
        assert!(
            shown.contains(&format!("refused   {} from remote a", &commit[..12])) && shown.contains(reason),
            "{case}: {shown}"
        );

        // `troops verify` says the same, with exit 1.
        let out = env.run(&["verify", &commit]);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", combined(&out));
        assert_only_reason(&text(&out.stdout), reason, &REASONS, case);

        // And `deploy --commit` will not run it either.
        let out = env.run(&["deploy", "--commit", "refs/remotes/a/main"]);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", combined(&out));
        assert!(
            text(&out.stderr).contains(&format!("refusing to run {}", &commit[..12])),
            "{case}: {}",
            combined(&out)
        );
        assert_only_reason(&text(&out.stderr), reason, &REASONS, case);
        assert_untouched(&env, &base, case);
    }

    // A trusted commit after all that moves the branch as usual.
    env.git(&work.path, &["reset", "-q", "--hard", &base]);
    let good = gpg.commit(&env, &work, &keys.trusted, &[("x", "good")], "good");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(good.as_str()), "{}", combined(&out));
}

#[test]
fn push_refuses_each_bad_commit_with_its_own_reason_and_nothing_moves() {
    let (env, gpg, keys, work) = signed_node("tip", true);
    let base = deploy_base(&env, &gpg, &keys, &work);
    for (case, make, reason) in cases() {
        env.git(&work.path, &["reset", "-q", "--hard", &base]);
        let commit = make(&env, &gpg, &keys, &work);
        let stderr = push_is_refused(&env, &work, &commit, case);
        assert_only_reason(&stderr, reason, &REASONS, case);
        assert_untouched(&env, &base, case);
        let last = &env.status_json()["verify"]["last_refusal"];
        assert_eq!(
            (last["commit"].as_str(), last["source"].as_str()),
            (Some(commit.as_str()), Some("push to refs/heads/main")),
            "{case}"
        );
    }
}

#[test]
fn scope_all_refuses_an_unsigned_commit_under_a_signed_tip() {
    let (env, gpg, keys, work) = signed_node("all", true);
    let base = deploy_base(&env, &gpg, &keys, &work);
    let unsigned = work.commit(&env, &[("x", "unsigned")], "unsigned");
    let tip = gpg.commit(&env, &work, &keys.trusted, &[("x", "signed")], "signed on top");
    let refused = format!("commit {} is not signed", &unsigned[..12]);

    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(
        combined(&out).contains(&format!("troops: remote a: {} refused: {refused}", &tip[..12])),
        "{}",
        combined(&out)
    );
    assert_untouched(&env, &base, "pull");

    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(!out.status.success(), "the push was accepted:\n{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("refusing refs/heads/main at {}: {refused}", &tip[..12])),
        "{}",
        text(&out.stderr)
    );
    assert_untouched(&env, &base, "push");

    // The same history passes with scope = "tip": the tip alone is checked.
    let config = std::fs::read_to_string(&env.config).unwrap().replace("scope = \"all\"", "scope = \"tip\"");
    env.write_config(&config);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert_eq!(env.deployed().as_deref(), Some(tip.as_str()), "{}", combined(&out));
}

#[test]
fn a_missing_keyring_refuses_everything_and_names_the_file() {
    let (env, gpg, keys, work) = signed_node("tip", true);
    let base = deploy_base(&env, &gpg, &keys, &work);
    std::fs::remove_file(env.path("trusted.pgp")).unwrap();
    gpg.commit(&env, &work, &keys.trusted, &[("x", "good")], "good");
    let keyring = env.path("trusted.pgp").display().to_string();

    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(3), "{}", combined(&out));
    assert!(text(&out.stderr).contains(&format!("reading the keyring {keyring}")), "{}", combined(&out));
    assert_untouched(&env, &base, "pull");

    let out = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(!out.status.success(), "the push was accepted:\n{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&keyring), "{}", text(&out.stderr));
    assert_untouched(&env, &base, "push");

    let shown = env.ok(&["status"]);
    assert!(
        shown.contains("verify    on (scope tip), but nothing can be verified: reading the keyring"),
        "{shown}"
    );
}
