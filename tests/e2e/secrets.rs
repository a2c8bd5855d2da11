//! Secrets encrypted to each node: a secret reaches only the nodes it is for, only for the length
//! of a run, never in output or on disk outside the run's secrets dir; a file the node cannot
//! decrypt fails the run before any step; `secrets check` catches recipients that drifted from
//! the plan, and `rekey` fixes them all or changes nothing. Real nodes, real age files, real
//! ssh-keygen keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{output_within, ssh_keygen, text, DeployRepo, Env, BUDGET};

const VALUE: &str = "s3cret-db-password-4711";

/// A node named `host`, initialised (it has its SSH key), whose runs decrypt into a tmpfs
/// directory of its own (`secrets_dir`): root's default, in `/run`, is not tmpfs in every place
/// the tests run (a container's `/run` may be on its disk, and troops refuses it then).
fn node(host: &str) -> Node {
    let env = Env::new();
    let secrets = tempfile::Builder::new().prefix("troops-e2e-").tempdir_in("/dev/shm").unwrap();
    env.write_config(&format!(
        "hostname = \"{host}\"\nsecrets_dir = \"{}\"\n",
        secrets.path().join("secrets").display()
    ));
    env.init();
    Node { env, _secrets: secrets }
}

/// A node (`Env`) and the tmpfs directory its runs decrypt into, removed with it.
struct Node {
    env: Env,
    _secrets: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.env
    }
}

/// A new unencrypted ed25519 key at `env`'s `name` (and `name.pub`).
fn ssh_key(env: &Env, name: &str) -> PathBuf {
    let path = env.path(name);
    ssh_keygen(&path, name);
    path
}

/// The `SHA256:...` fingerprint ssh-keygen gives the public key `pub_path`.
fn fingerprint(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pub_path).output().unwrap();
    text(&out.stdout).split_whitespace().nth(1).unwrap().to_owned()
}

/// `troops secrets ARGS` in the deploy repo, whatever its outcome.
fn secrets(env: &Env, repo: &DeployRepo, args: &[&str]) -> Output {
    let mut all = vec!["secrets"];
    all.extend_from_slice(args);
    env.troops(&all).current_dir(&repo.path).output().unwrap()
}

fn secrets_ok(env: &Env, repo: &DeployRepo, args: &[&str]) -> String {
    let out = secrets(env, repo, args);
    assert!(out.status.success(), "secrets {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Copies a key into the deploy repo at `name` (e.g. `keys/db-1.pub`).
fn add_key(repo: &DeployRepo, name: &str, pub_path: &Path) {
    let path = repo.path.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(pub_path, path).unwrap();
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file()
            && std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path);
        }
    }
    found
}

/// A step script that records what it sees of secrets in `$OUT/<host>.*` and prints the value.
const USE_SECRET: &str = r#"#!/bin/sh
set -eu
echo "${TROOPS_SECRETS-unset}" > "$OUT/$TROOPS_HOST.dir"
[ -n "${TROOPS_SECRETS-}" ] || exit 0
cat "$TROOPS_SECRETS/db_password" > "$OUT/$TROOPS_HOST.seen"
stat -c '%a %U' "$TROOPS_SECRETS" "$TROOPS_SECRETS/db_password" > "$OUT/$TROOPS_HOST.modes"
stat -f -c %T "$TROOPS_SECRETS" > "$OUT/$TROOPS_HOST.fs"
echo "the password is $(cat "$TROOPS_SECRETS/db_password")"
"#;

fn plan(out: &Path) -> String {
    format!(
        "[roles.db]\nhosts = [\"db-1\"]\n[roles.web]\nhosts = [\"web-1\"]\n\n\
         [[secret]]\nname = \"db_password\"\nfile = \"secrets/db.age\"\nroles = [\"db\"]\n\n\
         [[step]]\nname = \"use\"\nscript = \"steps/use.sh\"\nenv = {{ OUT = \"{}\" }}\n",
        out.display()
    )
}

/// A deploy repo in `env` with the plan, the keys of `hosts` (host, its public key file) and an
/// admin key, and the secret encrypted; returns it and the admin's private key.
fn deploy_repo(env: &Env, hosts: &[(&str, PathBuf)]) -> (DeployRepo, PathBuf) {
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let repo = env.deploy_repo("deploy");
    repo.commit(env, &[("troops.toml", &plan(&out)), ("steps/use.sh", USE_SECRET)], "plan");
    for (host, key) in hosts {
        add_key(&repo, &format!("keys/{host}.pub"), key);
    }
    let admin = ssh_key(env, "admin");
    add_key(&repo, "keys/admins/ops.pub", &admin.with_extension("pub"));
    let plaintext = env.path("plain");
    std::fs::write(&plaintext, format!("{VALUE}\n")).unwrap();
    secrets_ok(env, &repo, &["encrypt", "db_password", &plaintext.display().to_string()]);
    std::fs::remove_file(&plaintext).unwrap();
    repo.commit(env, &[], "keys and secret");
    (repo, admin)
}

#[test]
fn a_role_secret_reaches_its_nodes_only_and_never_the_output() {
    let db = node("db-1");
    let web = node("web-1");
    let node_key = |env: &Env| env.state.join("ssh/id_ed25519.pub");
    let (repo, _) = deploy_repo(&db, &[("db-1", node_key(&db)), ("web-1", node_key(&web))]);
    let out = db.path("out");
    repo.publish(&db);
    repo.publish(&web);

    // The db node: its step reads the value from a root-only dir; the output has it masked.
    let run = db.run(&["deploy"]);
    let shown = text(&run.stdout) + &text(&run.stderr);
    assert!(run.status.success(), "{shown}");
    assert!(shown.contains("the password is [secret:db_password]"), "{shown}");
    assert!(!shown.contains(VALUE), "{shown}");
    assert_eq!(std::fs::read_to_string(out.join("db-1.seen")).unwrap(), format!("{VALUE}\n"));
    assert_eq!(std::fs::read_to_string(out.join("db-1.modes")).unwrap(), "700 root\n400 root\n");
    assert_eq!(std::fs::read_to_string(out.join("db-1.fs")).unwrap(), "tmpfs\n");
    let dir = std::fs::read_to_string(out.join("db-1.dir")).unwrap();
    assert!(!Path::new(dir.trim()).exists(), "{dir} is left after the run");

    // A push: the pusher's output is masked too (the hook runs the plan in-process).
    repo.commit(&db, &[("again", "1")], "again");
    let push = repo.push(&db, &db.repo().display().to_string(), &["main"]);
    let pushed = text(&push.stderr);
    assert!(push.status.success(), "{pushed}");
    assert!(pushed.contains("[secret:db_password]") && !pushed.contains(VALUE), "{pushed}");
    // Through the daemon: the caller's output and the daemon's log are masked as well.
    let daemon = crate::support::daemon::Daemon::start(&db);
    let run = db.run(&["deploy"]);
    let shown = text(&run.stdout) + &text(&run.stderr);
    assert!(run.status.success(), "{shown}");
    assert!(shown.contains("[secret:db_password]") && !shown.contains(VALUE), "{shown}");
    assert!(daemon.log().contains("request=Run(Deploy"), "not through the daemon: {}", daemon.log());
    assert!(!daemon.log().contains(VALUE));
    drop(daemon);
    assert!(files_containing(&db.state, VALUE).is_empty(), "plaintext in the state dir");
    for id in 1..=3 {
        assert!(db.run_log(id).contains("the password is [secret:db_password]"), "run {id}");
    }

    // The web node: no TROOPS_SECRETS, no file; and its key cannot decrypt the secret.
    let run = web.run(&["deploy"]);
    assert!(run.status.success(), "{}", text(&run.stdout));
    assert_eq!(std::fs::read_to_string(out.join("web-1.dir")).unwrap(), "unset\n");
    assert!(!out.join("web-1.seen").exists());
    let web_key = web.state.join("ssh/id_ed25519").display().to_string();
    let tried = secrets(&db, &repo, &["rekey", "--identity", &web_key]);
    assert_eq!(tried.status.code(), Some(2), "{}", text(&tried.stderr));
    assert!(
        text(&tried.stderr).contains("secret `db_password` (secrets/db.age) cannot be decrypted with")
            && text(&tried.stderr).contains("it is not encrypted to this key"),
        "{}",
        text(&tried.stderr)
    );
}

#[test]
fn a_secret_the_node_cannot_decrypt_fails_the_run_before_any_step() {
    let db = node("db-1");
    // keys/db-1.pub is some other key: the file is encrypted to the wrong keys.
    let other = ssh_key(&db, "other");
    let (repo, _) = deploy_repo(&db, &[("db-1", other.with_extension("pub"))]);
    repo.publish(&db);
    let node_fp = fingerprint(&db.state.join("ssh/id_ed25519.pub"));

    let run = db.run(&["deploy"]);
    let shown = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "secret `db_password` (secrets/db.age) cannot be decrypted by this node's key {node_fp}"
        )),
        "{shown}"
    );
    let record = db.run_record(1);
    assert_eq!(record["status"], "failed");
    assert_eq!(record["steps"][0]["status"], "not_run");
    assert!(!db.path("out/db-1.dir").exists(), "a step ran");

    // A file that is no age file at all, pushed: the pusher reads why, and no step runs.
    repo.commit(&db, &[("secrets/db.age", "not an age file\n")], "garbage");
    let push = repo.push(&db, &db.repo().display().to_string(), &["main"]);
    let pushed = text(&push.stderr);
    assert!(pushed.contains("secret `db_password` (secrets/db.age) cannot be decrypted"), "{pushed}");
    assert_eq!(db.run_record(2)["steps"][0]["status"], "not_run");
    assert!(!db.path("out/db-1.dir").exists(), "a step ran");
}

#[test]
fn check_fails_after_a_host_joins_a_role_until_rekey() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let db2 = ssh_key(&env, "db-2");
    let (repo, admin) =
        deploy_repo(&env, &[("db-1", db1.with_extension("pub")), ("db-2", db2.with_extension("pub"))]);
    let admin = admin.display().to_string();
    assert!(secrets_ok(&env, &repo, &["check"]).contains("1 secrets: ok"));

    // db-2 joins role db: its key is missing from the file until rekey.
    let plan = std::fs::read_to_string(repo.path.join("troops.toml")).unwrap();
    let joined = plan.replace("hosts = [\"db-1\"]", "hosts = [\"db-1\", \"db-2\"]");
    std::fs::write(repo.path.join("troops.toml"), &joined).unwrap();
    let check = secrets(&env, &repo, &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        text(&check.stdout),
        "secrets/db.age: host db-2 (keys/db-2.pub) cannot decrypt secret `db_password`, which is for it; \
         run `troops secrets rekey`\n"
    );
    secrets_ok(&env, &repo, &["rekey", "--identity", &admin]);
    assert!(secrets_ok(&env, &repo, &["check"]).contains("ok"));

    // db-1 leaves the role: it can still decrypt the file until rekey.
    std::fs::write(repo.path.join("troops.toml"), plan.replace("hosts = [\"db-1\"]", "hosts = [\"db-2\"]"))
        .unwrap();
    let check = secrets(&env, &repo, &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check.stdout).contains(
            "secrets/db.age: host db-1 (keys/db-1.pub) can decrypt secret `db_password`, which is not for it"
        ),
        "{}",
        text(&check.stdout)
    );
    // A host the plan names without a key: named too.
    std::fs::write(repo.path.join("troops.toml"), plan.replace("hosts = [\"db-1\"]", "hosts = [\"db-3\"]"))
        .unwrap();
    let check = secrets(&env, &repo, &["check"]);
    assert!(text(&check.stdout).contains("keys/db-3.pub does not exist"), "{}", text(&check.stdout));
}

#[test]
fn encrypt_refuses_a_secret_no_admin_could_open_and_check_never_advises_a_rekey_that_cannot_work() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let out = env.path("out");
    let repo = env.deploy_repo("deploy");
    repo.commit(&env, &[("troops.toml", &plan(&out)), ("steps/use.sh", USE_SECRET)], "plan");
    add_key(&repo, "keys/db-1.pub", &db1.with_extension("pub"));
    let plaintext = env.path("plain");
    std::fs::write(&plaintext, format!("{VALUE}\n")).unwrap();
    let plaintext = plaintext.display().to_string();
    let file = repo.path.join("secrets/db.age");

    // No keys/admins/, then one holding no key: refused, saying why and the way out; nothing written.
    for case in ["no keys/admins/", "keys/admins/ without a key"] {
        let tried = secrets(&env, &repo, &["encrypt", "db_password", &plaintext]);
        let said = text(&tried.stderr);
        assert_eq!(tried.status.code(), Some(2), "{case}: {said}");
        assert!(
            said.contains("secret `db_password` would be encrypted to no admin: keys/admins/ holds no key")
                && said.contains("`troops secrets encrypt --allow-no-admin db_password FILE`"),
            "{case}: {said}"
        );
        assert!(!file.exists(), "{case}: a secret no admin can open was written");
        std::fs::create_dir_all(repo.path.join("keys/admins")).unwrap();
        std::fs::write(repo.path.join("keys/admins/README"), "admins' keys go here, as NAME.pub\n").unwrap();
    }

    // Asked for by name: for its host alone. check passes and says so; rekey still refuses.
    secrets_ok(&env, &repo, &["encrypt", "--allow-no-admin", "db_password", &plaintext]);
    assert_eq!(
        secrets_ok(&env, &repo, &["check"]),
        "1 secrets: ok (keys/admins/ holds no key: only their hosts can decrypt them)\n"
    );
    let host_key = db1.display().to_string();
    let tried = secrets(&env, &repo, &["rekey", "--identity", &host_key]);
    assert_eq!(tried.status.code(), Some(2), "{}", text(&tried.stderr));
    assert!(text(&tried.stderr).contains("would be encrypted to no admin"), "{}", text(&tried.stderr));

    // An admin joins. No admin can open the file, so rekey cannot work: check says to encrypt it
    // again, and so does the rekey that fails.
    let admin = ssh_key(&env, "admin");
    add_key(&repo, "keys/admins/ops.pub", &admin.with_extension("pub"));
    let encrypt_again = "no admin key in keys/admins/ can decrypt it, so `rekey` cannot: encrypt it again \
                         from its plaintext with `troops secrets encrypt db_password FILE`";
    let check = secrets(&env, &repo, &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        text(&check.stdout),
        format!(
            "secrets/db.age: admin ops (keys/admins/ops.pub) cannot decrypt secret `db_password`, which is \
             for it; {encrypt_again}\n"
        )
    );
    let admin_key = admin.display().to_string();
    let tried = secrets(&env, &repo, &["rekey", "--identity", &admin_key]);
    assert_eq!(tried.status.code(), Some(2), "{}", text(&tried.stderr));
    assert!(
        text(&tried.stderr).contains("it is not encrypted to this key")
            && text(&tried.stderr).contains(
                "encrypt it again from its plaintext with `troops secrets encrypt db_password FILE`"
            ),
        "{}",
        text(&tried.stderr)
    );
    // The advice works.
    secrets_ok(&env, &repo, &["encrypt", "db_password", &plaintext]);
    assert_eq!(secrets_ok(&env, &repo, &["check"]), "1 secrets: ok\n");

    // The only admin leaves and another joins: the old admin's stanza is a stranger's now, and
    // the new admin cannot open the file either; every line says to encrypt it again.
    std::fs::remove_file(repo.path.join("keys/admins/ops.pub")).unwrap();
    let other = ssh_key(&env, "other");
    add_key(&repo, "keys/admins/other.pub", &other.with_extension("pub"));
    let check = secrets(&env, &repo, &["check"]);
    let said = text(&check.stdout);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(said.lines().count(), 2, "{said}");
    assert!(said.lines().all(|line| line.ends_with(encrypt_again)), "{said}");
    assert!(said.contains("admin other (keys/admins/other.pub) cannot decrypt"), "{said}");
    assert!(said.contains("a ssh-ed25519 key that is in no file of keys/ can decrypt"), "{said}");
    secrets_ok(&env, &repo, &["encrypt", "db_password", &plaintext]);
    assert_eq!(secrets_ok(&env, &repo, &["check"]), "1 secrets: ok\n");
}

#[test]
fn rekey_changes_every_file_or_none() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let (repo, admin) = deploy_repo(&env, &[("db-1", db1.with_extension("pub"))]);
    let admin = admin.display().to_string();
    // A second secret, listed after the first.
    let plan = std::fs::read_to_string(repo.path.join("troops.toml")).unwrap()
        + "\n[[secret]]\nname = \"token\"\nfile = \"secrets/token.age\"\nhosts = [\"db-1\"]\n";
    std::fs::write(repo.path.join("troops.toml"), plan).unwrap();
    let token = env.path("token");
    std::fs::write(&token, "a-long-api-token").unwrap();
    secrets_ok(&env, &repo, &["encrypt", "token", &token.display().to_string()]);
    let db_file = repo.path.join("secrets/db.age");
    let before = std::fs::read(&db_file).unwrap();

    // The second file cannot be decrypted: nothing is rewritten, not even the first.
    std::fs::write(repo.path.join("secrets/token.age"), "damaged\n").unwrap();
    let out = secrets(&env, &repo, &["rekey", "--identity", &admin]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("secret `token` (secrets/token.age) cannot be decrypted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&db_file).unwrap(), before, "the first file was rewritten");

    // The second file cannot be read (a directory): the same.
    std::fs::remove_file(repo.path.join("secrets/token.age")).unwrap();
    std::fs::create_dir(repo.path.join("secrets/token.age")).unwrap();
    let out = secrets(&env, &repo, &["rekey", "--identity", &admin]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("troops: secrets/token.age is a directory; troops reads only regular files there"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&db_file).unwrap(), before, "the first file was rewritten");
    let leftovers: Vec<_> = std::fs::read_dir(repo.path.join("secrets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 2, "temp files left: {leftovers:?}");

    // Repaired: both are rewritten.
    std::fs::remove_dir(repo.path.join("secrets/token.age")).unwrap();
    secrets_ok(&env, &repo, &["encrypt", "token", &token.display().to_string()]);
    let done = secrets_ok(&env, &repo, &["rekey", "--identity", &admin]);
    assert_eq!(done, "secrets/db.age: rekeyed\nsecrets/token.age: rekeyed\n");
    assert_ne!(std::fs::read(&db_file).unwrap(), before);
}

/// `troops secrets ARGS` in the deploy repo, which must end within the budget (it is killed, and
/// the test fails, if it does not).
fn secrets_ending(env: &Env, repo: &DeployRepo, args: &[&str]) -> Output {
    let mut all = vec!["secrets"];
    all.extend_from_slice(args);
    let what = format!("`troops secrets {}`", args.join(" "));
    output_within(&what, env.troops(&all).current_dir(&repo.path), BUDGET)
}

/// The outcome refuses `file` as `what` (exit 2, naming it).
fn refused(out: &Output, file: &str, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{file}: {}{stderr}", text(&out.stdout));
    assert!(stderr.starts_with(&format!("troops: {file} is {what}")), "{file}: {stderr}");
}

#[test]
fn check_refuses_a_key_or_secret_that_is_a_symlink_a_fifo_or_huge_and_ends_at_once() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let (repo, admin) = deploy_repo(&env, &[("db-1", db1.with_extension("pub"))]);
    let admin = admin.display().to_string();
    let keys = repo.path.join("keys");
    let clean = |name: &str| {
        let path = repo.path.join(name);
        let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
    };

    // keys/evil.pub -> /dev/zero had check read without end; a FIFO had it wait for ever.
    std::os::unix::fs::symlink("/dev/zero", keys.join("evil.pub")).unwrap();
    repo.commit(&env, &[], "a key that is a symlink");
    refused(&secrets_ending(&env, &repo, &["check"]), "keys/evil.pub", "a symlink");
    refused(&secrets_ending(&env, &repo, &["rekey", "--identity", &admin]), "keys/evil.pub", "a symlink");
    clean("keys/evil.pub");
    nix::unistd::mkfifo(&keys.join("fifo.pub"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    refused(&secrets_ending(&env, &repo, &["check"]), "keys/fifo.pub", "a FIFO");
    clean("keys/fifo.pub");
    // A symlink to a good key in the repo is refused too: the rule is no symlink, not no bad target.
    std::os::unix::fs::symlink("db-1.pub", keys.join("db-2.pub")).unwrap();
    refused(&secrets_ending(&env, &repo, &["check"]), "keys/db-2.pub", "a symlink");
    clean("keys/db-2.pub");
    std::fs::write(keys.join("big.pub"), vec![b'a'; 1 << 20]).unwrap();
    let out = secrets_ending(&env, &repo, &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("keys/big.pub is larger than 65536 bytes"), "{}", text(&out.stderr));
    clean("keys/big.pub");
    // The admins' directory a symlink (to the node keys, which look harmless): refused.
    std::fs::rename(keys.join("admins"), repo.path.join("admins")).unwrap();
    std::os::unix::fs::symlink("../admins", keys.join("admins")).unwrap();
    refused(&secrets_ending(&env, &repo, &["check"]), "keys/admins", "a symlink, not a directory");
    clean("keys/admins");
    std::fs::rename(repo.path.join("admins"), keys.join("admins")).unwrap();

    // The secret's file: a symlink to /dev/zero, then a FIFO.
    let db = repo.path.join("secrets/db.age");
    let saved = std::fs::read(&db).unwrap();
    clean("secrets/db.age");
    std::os::unix::fs::symlink("/dev/zero", &db).unwrap();
    refused(&secrets_ending(&env, &repo, &["check"]), "secrets/db.age", "a symlink");
    refused(&secrets_ending(&env, &repo, &["rekey", "--identity", &admin]), "secrets/db.age", "a symlink");
    clean("secrets/db.age");
    nix::unistd::mkfifo(&db, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    refused(&secrets_ending(&env, &repo, &["check"]), "secrets/db.age", "a FIFO");
    clean("secrets/db.age");
    std::fs::write(&db, saved).unwrap();
    assert_eq!(secrets_ok(&env, &repo, &["check"]), "1 secrets: ok\n");

    // What the operator names is theirs (a symlink may lead to it), but is still bounded: an
    // identity that is no regular file, and a plaintext without end.
    let out = secrets_ending(&env, &repo, &["rekey", "--identity", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/dev/zero is not a regular file, so no SSH key"),
        "{}",
        text(&out.stderr)
    );
    let out = env
        .troops(&["secrets", "encrypt", "db_password", "-"])
        .current_dir(&repo.path)
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("stdin holds more than 16777216 bytes"), "{}", text(&out.stderr));
    assert_eq!(secrets_ok(&env, &repo, &["check"]), "1 secrets: ok\n");
}

#[test]
fn encrypt_edit_and_rekey_never_write_through_a_committed_symlink() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let (repo, admin) = deploy_repo(&env, &[("db-1", db1.with_extension("pub"))]);
    let admin = admin.display().to_string();
    let plaintext = env.path("new-value");
    std::fs::write(&plaintext, "another-long-value").unwrap();
    let plaintext = plaintext.display().to_string();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("db.age"), "theirs").unwrap();
    let untouched = || {
        let names: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["db.age"], "something was written outside the repo");
        assert_eq!(std::fs::read_to_string(outside.join("db.age")).unwrap(), "theirs");
    };

    // The secret's file is a committed symlink out of the repo: to a file, and dangling.
    let db = repo.path.join("secrets/db.age");
    std::fs::remove_file(&db).unwrap();
    for target in [outside.join("db.age"), outside.join("planted.age")] {
        std::os::unix::fs::symlink(&target, &db).unwrap();
        repo.commit(&env, &[], "the secret is a symlink");
        let out = secrets_ending(&env, &repo, &["encrypt", "db_password", &plaintext]);
        refused(&out, "secrets/db.age", "a symlink; troops writes it only onto a regular file or nothing");
        refused(
            &secrets_ending(&env, &repo, &["rekey", "--identity", &admin]),
            "secrets/db.age",
            "a symlink",
        );
        let mut edit = env.troops(&["secrets", "edit", "db_password", "--identity", &admin]);
        let out = edit.current_dir(&repo.path).env("EDITOR", "true").output().unwrap();
        refused(&out, "secrets/db.age", "a symlink");
        assert!(std::fs::symlink_metadata(&db).unwrap().is_symlink(), "the committed symlink was replaced");
        untouched();
        std::fs::remove_file(&db).unwrap();
    }

    // The secrets directory is a symlink out of the repo.
    std::fs::remove_dir(repo.path.join("secrets")).unwrap();
    std::os::unix::fs::symlink(&outside, repo.path.join("secrets")).unwrap();
    repo.commit(&env, &[], "the secrets directory is a symlink");
    let out = secrets_ending(&env, &repo, &["encrypt", "db_password", &plaintext]);
    refused(&out, "secrets", "a symlink, not a directory");
    untouched();
    std::fs::remove_file(repo.path.join("secrets")).unwrap();

    // With the way clear, encrypt writes a regular file in the repo, and nothing beside it.
    secrets_ok(&env, &repo, &["encrypt", "db_password", &plaintext]);
    assert!(std::fs::symlink_metadata(&db).unwrap().is_file());
    let names: Vec<_> =
        std::fs::read_dir(repo.path.join("secrets")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["db.age"]);
    untouched();
}

#[test]
fn edit_keeps_the_plaintext_in_a_private_temp_dir_only() {
    let env = Env::new();
    let db1 = ssh_key(&env, "db-1");
    let (repo, admin) = deploy_repo(&env, &[("db-1", db1.with_extension("pub"))]);
    let admin = admin.display().to_string();
    let seen = env.path("seen");
    let editor = env.path("editor.sh");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nset -eu\ncat \"$1\" > {seen}/text\necho \"$1\" > {seen}/path\nstat -c %a \"$(dirname \"$1\")\" \"$1\" > {seen}/modes\n\
             [ -z \"${{NEW-}}\" ] || printf '%s' \"$NEW\" > \"$1\"\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    let edit = |new: Option<&str>| {
        let mut command = env.troops(&["secrets", "edit", "db_password", "--identity", &admin]);
        command.current_dir(&repo.path).env("EDITOR", format!("sh {}", editor.display()));
        if let Some(new) = new {
            command.env("NEW", new);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let file = repo.path.join("secrets/db.age");
    let before = std::fs::read(&file).unwrap();
    assert!(edit(None).contains("unchanged"));
    assert_eq!(std::fs::read(&file).unwrap(), before, "an unchanged secret was rewritten");
    assert_eq!(std::fs::read_to_string(seen.join("text")).unwrap(), format!("{VALUE}\n"));
    assert_eq!(std::fs::read_to_string(seen.join("modes")).unwrap(), "700\n600\n");
    let path = std::fs::read_to_string(seen.join("path")).unwrap();
    assert!(!Path::new(path.trim()).exists(), "{path} is left");

    assert!(edit(Some("new-password-value")).contains("changed"));
    edit(None);
    assert_eq!(std::fs::read_to_string(seen.join("text")).unwrap(), "new-password-value");
    assert!(files_containing(&repo.path, "new-password-value").is_empty());
    assert!(secrets_ok(&env, &repo, &["check"]).contains("ok"));
}

/// examples/app-with-secrets, as an operator would use it: keys, an encrypted env file, a deploy.
#[test]
fn the_app_example_writes_its_env_file_backs_up_migrates_and_restarts() {
    let app = node("app-1");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/app-with-secrets");
    let repo = app.deploy_repo("deploy");
    let app_root = app.path("srv-app");
    let copy = Command::new("cp").arg("-a").arg(example.join(".")).arg(&repo.path).status().unwrap();
    assert!(copy.success());
    let plan = std::fs::read_to_string(repo.path.join("troops.toml")).unwrap();
    std::fs::write(
        repo.path.join("troops.toml"),
        plan.replace("\"/srv/app\"", &format!("\"{}\"", app_root.display())),
    )
    .unwrap();
    add_key(&repo, "keys/app-1.pub", &app.state.join("ssh/id_ed25519.pub"));
    let admin = ssh_key(&app, "admin");
    add_key(&repo, "keys/admins/ops.pub", &admin.with_extension("pub"));
    let plaintext = app.path("app.env");
    std::fs::write(&plaintext, format!("DB_USER=app\nDB_PASSWORD=\"{VALUE}\"\n")).unwrap();
    secrets_ok(&app, &repo, &["encrypt", "app_env", &plaintext.display().to_string()]);
    assert!(secrets_ok(&app, &repo, &["check"]).contains("ok"));
    repo.commit(&app, &[], "the example");
    let commit = repo.publish(&app);

    let run = app.run(&["deploy"]);
    let shown = text(&run.stdout);
    assert!(run.status.success(), "{shown}");
    assert!(shown.contains("with password [secret:app_env]") && !shown.contains(VALUE), "{shown}");
    assert_eq!(
        std::fs::read_to_string(app_root.join("app.env")).unwrap(),
        std::fs::read_to_string(&plaintext).unwrap()
    );
    assert_eq!(std::fs::read_to_string(app_root.join("restarted")).unwrap().trim(), commit);
    assert_eq!(std::fs::read_to_string(app_root.join("data/schema_version")).unwrap(), "2\n");
    let backups = std::fs::read_dir(app_root.join("backups")).unwrap().count();
    assert_eq!(backups, 1);
    assert!(files_containing(&app.state, VALUE).is_empty(), "plaintext in the state dir");
}

#[test]
fn secrets_a_killed_run_left_are_removed_when_the_next_run_starts() {
    let db = node("db-1");
    let (repo, _) = deploy_repo(&db, &[("db-1", db.state.join("ssh/id_ed25519.pub"))]);
    let out = db.path("out");
    let go = db.path("go");
    let plan = std::fs::read_to_string(repo.path.join("troops.toml")).unwrap();
    let hold = format!(
        "[[step]]\nname = \"hold\"\nrun = 'echo \"$TROOPS_SECRETS\" > {out}/held; {go}'\n",
        out = out.display(),
        go = crate::support::block_until(&go)
    );
    let holding = plan.replace("[[step]]\nname = \"use\"", &format!("{hold}\n[[step]]\nname = \"use\""));
    repo.commit(&db, &[("troops.toml", &holding)], "hold");
    repo.publish(&db);

    let mut deploy = db.troops(&["deploy"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let held = out.join("held");
    crate::support::wait_until("the step to hold", std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&held).is_ok_and(|t| t.ends_with('\n'))
    });
    deploy.kill().unwrap(); // SIGKILL: nothing of troops cleans up
    deploy.wait().unwrap();
    let left = PathBuf::from(std::fs::read_to_string(&held).unwrap().trim());
    assert!(left.join("db_password").exists(), "the killed run's secrets are not there to clean up");
    std::fs::write(&go, "").unwrap();

    let look = format!(
        "[[step]]\nname = \"look\"\nrun = 'if [ -e {left} ]; then echo present; else echo gone; fi > {out}/look'\n",
        left = left.display(),
        out = out.display()
    );
    repo.commit(&db, &[("troops.toml", &format!("{plan}\n{look}"))], "look");
    repo.publish(&db);
    let run = db.run(&["deploy"]);
    assert!(run.status.success(), "{}", text(&run.stdout));
    assert_eq!(std::fs::read_to_string(out.join("look")).unwrap(), "gone\n");
    assert!(!left.exists());
}

/// The name of a node's directory under the secrets base: the start of the SHA-256 of its state
/// dir's path, as `sha256sum` gives it.
fn node_dir_name(state: &Path) -> String {
    let mut sha = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sha.stdin.take().unwrap(), state.as_os_str().as_encoded_bytes()).unwrap();
    text(&sha.wait_with_output().unwrap().stdout)[..16].to_owned()
}

/// Whether `path` is on tmpfs, as `stat -f` says.
fn on_tmpfs(path: &Path) -> bool {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().unwrap();
    assert!(out.status.success(), "stat -f {}: {}", path.display(), text(&out.stderr));
    text(&out.stdout).trim() == "tmpfs"
}

#[test]
fn secrets_are_never_decrypted_onto_a_disk() {
    let db = node("db-1");
    let (repo, _) = deploy_repo(&db, &[("db-1", db.state.join("ssh/id_ed25519.pub"))]);
    repo.publish(&db);
    let out = db.path("out");
    let config = db.config.display().to_string();
    let refused = |id: u64, base: &Path| {
        let run = db.run(&["deploy"]);
        let shown = text(&run.stdout);
        assert_eq!(run.status.code(), Some(3), "{shown}{}", text(&run.stderr));
        let node_dir = base.join(node_dir_name(&db.state));
        let why = format!(
            "{} is not on tmpfs or ramfs (its filesystem's type is 0x",
            node_dir.join(id.to_string()).display()
        );
        assert!(shown.contains(&why), "no {why:?} in:\n{shown}");
        let fix = format!(
            "Mount a tmpfs at {}, or set `secrets_dir` in {config} to a directory on one",
            base.display()
        );
        assert!(shown.contains(&fix), "no {fix:?} in:\n{shown}");
        // The run failed before any step, and left no plaintext and no run directory behind.
        let record = db.run_record(id);
        assert_eq!(
            (record["status"].as_str(), record["steps"][0]["status"].as_str()),
            (Some("failed"), Some("not_run"))
        );
        assert!(!out.join("db-1.dir").exists(), "a step ran");
        assert!(files_containing(base, VALUE).is_empty(), "plaintext on the disk");
        assert!(!node_dir.join(id.to_string()).exists(), "the run's directory is left");
    };

    // A secrets_dir on a disk: the tests' target dir (the build's own disk, not a tmpfs).
    let disk = tempfile::Builder::new().prefix("secrets-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(
        !on_tmpfs(disk.path()),
        "{} is on tmpfs; this test needs a directory on a disk",
        disk.path().display()
    );
    let base = disk.path().join("secrets");
    db.write_config(&format!("hostname = \"db-1\"\nsecrets_dir = \"{}\"\n", base.display()));
    refused(1, &base);

    // The default (as root, /run/troops/secrets): refused the same way where /run is not tmpfs
    // (many containers), used where it is.
    db.write_config("hostname = \"db-1\"\n");
    let default = Path::new("/run/troops/secrets");
    if on_tmpfs(default.ancestors().find(|dir| dir.exists()).unwrap()) {
        let run = db.run(&["deploy"]);
        assert!(run.status.success(), "{}", text(&run.stdout));
        assert_eq!(std::fs::read_to_string(out.join("db-1.fs")).unwrap(), "tmpfs\n");
    } else {
        refused(2, default);
    }
}

#[test]
fn a_secret_gets_its_mode_and_owner_and_an_unknown_owner_fails_the_run_before_any_step() {
    let db = node("db-1");
    let (repo, _) = deploy_repo(&db, &[("db-1", db.state.join("ssh/id_ed25519.pub"))]);
    let out = db.path("out");
    let plan = std::fs::read_to_string(repo.path.join("troops.toml")).unwrap();
    let owned =
        plan.replace("roles = [\"db\"]\n\n", "roles = [\"db\"]\nmode = \"0440\"\nowner = \"nobody\"\n\n");
    repo.commit(&db, &[("troops.toml", &owned)], "owned");
    repo.publish(&db);
    let run = db.run(&["deploy"]);
    assert!(run.status.success(), "{}", text(&run.stdout));
    assert_eq!(std::fs::read_to_string(out.join("db-1.modes")).unwrap(), "700 root\n440 nobody\n");

    std::fs::remove_file(out.join("db-1.dir")).unwrap();
    let unknown = plan.replace("roles = [\"db\"]\n\n", "roles = [\"db\"]\nowner = \"no-such-user-here\"\n\n");
    repo.commit(&db, &[("troops.toml", &unknown)], "unknown owner");
    repo.publish(&db);
    let run = db.run(&["deploy"]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stdout).contains(
            "secret `db_password`: owner \"no-such-user-here\": no user no-such-user-here on this node"
        ),
        "{}",
        text(&run.stdout)
    );
    assert_eq!(db.run_record(2)["steps"][0]["status"], "not_run");
    assert!(!out.join("db-1.dir").exists(), "a step ran");
}
