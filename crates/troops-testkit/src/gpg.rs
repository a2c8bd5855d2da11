//! A GnuPG home for one test (`GNUPGHOME` in a short temp dir under /tmp, since gpg-agent's socket
//! paths must stay short), keys made in it, the node keyring exported from it, and commits signed
//! with it by `git commit -S`, as a developer's machine makes them. The agent it starts is killed
//! when the fixture is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{text, DeployRepo, Env};

pub struct Gpg {
    dir: tempfile::TempDir,
    /// Other homes made here (for revocations), whose agents are killed on drop too.
    scratch: std::cell::RefCell<Vec<PathBuf>>,
}

/// A key made in a [`Gpg`] home.
#[derive(Clone)]
pub struct Key {
    pub fingerprint: String,
    pub user_id: String,
    /// What git runs as `gpg.program` to sign with it.
    program: String,
}

/// The faked time expired keys are made and sign at (gpg will not sign with an expired key).
const PAST: &str = "20200101T000000!";
const PAST_SIGNING: &str = "20200101T120000!";

impl Gpg {
    // A fixture makes a temp dir and starts an agent: `new` says so, where a Default would not.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Gpg {
        let dir = tempfile::Builder::new().prefix("tg").tempdir_in("/tmp").expect("GNUPGHOME temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { dir, scratch: Default::default() }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    fn command(program: &str, home: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GNUPGHOME", home)
            .env("HOME", home)
            .stdin(Stdio::null());
        command
    }

    /// Runs gpg in `home` with `args`, asserts success, returns stdout.
    fn run(home: &Path, args: &[&str]) -> Vec<u8> {
        let out = Gpg::command("gpg", home).arg("--batch").args(args).output().expect("running gpg");
        assert!(out.status.success(), "gpg {args:?} failed:\n{}", text(&out.stderr));
        out.stdout
    }

    fn gpg(&self, args: &[&str]) -> Vec<u8> {
        Gpg::run(self.home(), args)
    }

    /// A new ed25519 signing key for `name <name@example.com>`, valid for a year.
    pub fn generate(&self, name: &str) -> Key {
        self.make_key(name, &[], "1y", "gpg".into())
    }

    /// A key made on 2020-01-01 that expired a day later, and that signs as if it were
    /// 2020-01-01 12:00: its signatures were good when made, and its key has expired since.
    pub fn generate_expired(&self, name: &str) -> Key {
        let wrapper = self.home().join(format!("gpg-{name}"));
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec gpg --faked-system-time {PAST_SIGNING} \"$@\"\n"))
            .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.make_key(name, &["--faked-system-time", PAST], "1d", wrapper.display().to_string())
    }

    fn make_key(&self, name: &str, extra: &[&str], expiry: &str, program: String) -> Key {
        let user_id = format!("{name} <{}@example.com>", name.to_lowercase());
        let mut args = vec!["--passphrase", ""];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--quick-gen-key", &user_id, "ed25519", "sign", expiry]);
        self.gpg(&args);
        let listing = text(&self.gpg(&[
            "--with-colons",
            "--list-keys",
            &format!("<{}@example.com>", name.to_lowercase()),
        ]));
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .expect("a fingerprint")
            .to_owned();
        Key { fingerprint, user_id, program }
    }

    /// The public certificates of `keys`, concatenated, armored or binary.
    pub fn export(&self, keys: &[&Key], armor: bool) -> Vec<u8> {
        let mut args = vec!["--export"];
        if armor {
            args.push("--armor");
        }
        let mut out = Vec::new();
        for key in keys {
            let mut args = args.clone();
            args.push(&key.fingerprint);
            out.extend(self.gpg(&args));
        }
        out
    }

    /// `key`'s certificate with its revocation (the one gpg stored when it made the key) applied,
    /// armored or binary. The revocation is applied in another home, so this one can still sign
    /// with `key`.
    pub fn export_revoked(&self, key: &Key, armor: bool) -> Vec<u8> {
        let other = self.home().join(format!("r{}", self.scratch.borrow().len()));
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        self.scratch.borrow_mut().push(other.clone());
        let public = other.join("public.pgp");
        std::fs::write(&public, self.export(&[key], false)).unwrap();
        let stored = self.home().join(format!("openpgp-revocs.d/{}.rev", key.fingerprint));
        // gpg prefixes the armor line with ':' so that the file is not imported by accident.
        let revocation =
            std::fs::read_to_string(&stored).unwrap().replace(":-----BEGIN PGP", "-----BEGIN PGP");
        std::fs::write(other.join("revocation.asc"), revocation).unwrap();
        Gpg::run(&other, &["--import", &public.display().to_string()]);
        Gpg::run(&other, &["--import", &other.join("revocation.asc").display().to_string()]);
        let listing = text(&Gpg::run(&other, &["--with-colons", "--list-keys", &key.fingerprint]));
        assert!(listing.lines().any(|l| l.starts_with("pub:r:")), "the key is not revoked:\n{listing}");
        Gpg::run(&other, &["--export", if armor { "--armor" } else { "--no-armor" }, &key.fingerprint])
    }

    /// Writes `files`, and commits everything with `git commit -S` signed by `key`; returns the
    /// commit id.
    pub fn commit(
        &self,
        env: &Env,
        repo: &DeployRepo,
        key: &Key,
        files: &[(&str, &str)],
        message: &str,
    ) -> String {
        for (name, content) in files {
            std::fs::write(repo.path.join(name), content).unwrap();
        }
        env.git(&repo.path, &["add", "-A"]);
        let program = format!("gpg.program={}", key.program);
        let signing_key = format!("user.signingkey={}", key.fingerprint);
        self.git(
            env,
            &repo.path,
            &["-c", &program, "-c", &signing_key, "commit", "-q", "-S", "--allow-empty", "-m", message],
        );
        env.git(&repo.path, &["rev-parse", "HEAD"])
    }

    /// git in `dir` with this home as `GNUPGHOME`, otherwise as hermetic as `Env::git`.
    pub fn git(&self, env: &Env, dir: &Path, args: &[&str]) -> String {
        env.git_with(dir, args, &[("GNUPGHOME", self.home())])
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        for home in std::iter::once(self.home().to_owned()).chain(self.scratch.borrow().iter().cloned()) {
            let _ = Gpg::command("gpgconf", &home)
                .args(["--kill", "gpg-agent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Makes `repo`'s HEAD a copy of its signed HEAD commit with one byte of the message changed
/// (the signature kept): what a mirror that altered a commit would serve. Returns the new id.
pub fn tamper(env: &Env, repo: &DeployRepo) -> String {
    let raw = env.git(&repo.path, &["cat-file", "commit", "HEAD"]);
    assert!(raw.contains("\ngpgsig "), "HEAD is not signed:\n{raw}");
    let (headers, message) = raw.split_once("\n\n").unwrap();
    let altered = format!("{headers}\n\n{}\n", message.replacen('e', "E", 1));
    assert_ne!(altered.trim_end(), raw);
    let path = repo.path.join(".git/tampered");
    std::fs::write(&path, altered).unwrap();
    let id = env.git(&repo.path, &["hash-object", "-t", "commit", "-w", &path.display().to_string()]);
    env.git(&repo.path, &["update-ref", "refs/heads/main", &id]);
    id
}
