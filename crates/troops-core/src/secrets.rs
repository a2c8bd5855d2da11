//! Secrets, encrypted to each node. A `[[secret]]` of the plan is an age file in the deploy repo
//! whose recipients are the SSH keys of the nodes it is for (`keys/<hostname>.pub`, the key
//! `troops init` prints) and the admins' (`keys/admins/*.pub`). A node decrypts its own secrets
//! with its key into a root-only directory on tmpfs for the length of one run, and masks their
//! values in the run's output. The operator's side (encrypt, edit, rekey, check) works in a clone
//! of the deploy repo and needs no node.
//!
//! What must stay true: plaintext is written only to a run's secrets directory (removed when the
//! run ends, or under the node lock at the next run after a crash) and to the operator's private
//! temp dir during `edit`; never to `work/`, the run's log or the pusher.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::mask::{Masker, MIN_MASKED};
use crate::plan::{Plan, Secret};

/// Where a deploy repo keeps node keys, one `<hostname>.pub` each.
pub const KEYS_DIR: &str = "keys";
/// Where a deploy repo keeps the keys of admins, who can decrypt every secret.
pub const ADMIN_KEYS_DIR: &str = "keys/admins";

/// An SSH public key a secret can be encrypted to.
pub struct Key {
    /// The file it came from, to name it (`keys/web-1.pub`).
    pub source: PathBuf,
    pub owner: KeyOwner,
    /// `SHA256:...`, as `ssh-keygen -l` shows it.
    pub fingerprint: String,
    /// What age writes in the header stanza for this key: the start of its SHA-256, base64.
    tag: String,
    recipient: age::ssh::Recipient,
}

#[derive(Clone, PartialEq, Eq)]
pub enum KeyOwner {
    Host(String),
    Admin(String),
}

impl std::fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOwner::Host(host) => write!(f, "host {host}"),
            KeyOwner::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

impl Key {
    /// Parses the first key line of `text` (an OpenSSH `.pub` file); `source` names it in errors.
    fn parse(text: &str, source: PathBuf, owner: KeyOwner) -> Result<Key> {
        let bad = |why: String| Error::Input(format!("{}: {why}", source.display()));
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| bad("holds no SSH public key".into()))?;
        let recipient: age::ssh::Recipient = line.parse().map_err(|e| {
            bad(format!("not an SSH public key age can encrypt to (ssh-ed25519 or ssh-rsa): {e:?}"))
        })?;
        let digest = key_digest(line).ok_or_else(|| bad("the key is not base64".into()))?;
        Ok(Key {
            fingerprint: fingerprint(&digest),
            tag: STANDARD_NO_PAD.encode(&digest[..4]),
            source,
            owner,
            recipient,
        })
    }

    fn read(path: &Path, source: PathBuf, owner: KeyOwner) -> Result<Key> {
        let text = std::fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
        Key::parse(&text, source, owner)
    }
}

/// The SHA-256 of the key in an OpenSSH public key line (`ssh-ed25519 AAAA... comment`): what
/// its fingerprint shows, and what age's stanza tag starts with.
fn key_digest(line: &str) -> Option<[u8; 32]> {
    let wire = STANDARD.decode(line.split_whitespace().nth(1)?).ok()?;
    Some(Sha256::digest(&wire).into())
}

/// `SHA256:...`, as `ssh-keygen -l` shows a key of `digest`.
fn fingerprint(digest: &[u8; 32]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
}

/// The keys of a deploy repo: node keys by hostname, and the admins'.
pub struct RepoKeys {
    pub hosts: BTreeMap<String, Key>,
    pub admins: Vec<Key>,
}

impl RepoKeys {
    pub fn load(repo: &Path) -> Result<RepoKeys> {
        let read = |dir: &str, owner: fn(String) -> KeyOwner| -> Result<Vec<(String, Key)>> {
            let mut keys = Vec::new();
            let entries = match std::fs::read_dir(repo.join(dir)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
                entries => entries.ctx(|| format!("listing {}", repo.join(dir).display()))?,
            };
            for entry in entries {
                let path = entry.ctx(|| format!("listing {}", repo.join(dir).display()))?.path();
                let Some(name) =
                    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pub"))
                else {
                    continue;
                };
                let source = Path::new(dir).join(format!("{name}.pub"));
                keys.push((name.to_owned(), Key::read(&path, source, owner(name.to_owned()))?));
            }
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(keys)
        };
        Ok(RepoKeys {
            hosts: read(KEYS_DIR, KeyOwner::Host)?.into_iter().collect(),
            admins: read(ADMIN_KEYS_DIR, KeyOwner::Admin)?.into_iter().map(|(_, k)| k).collect(),
        })
    }

    fn all(&self) -> impl Iterator<Item = &Key> {
        self.hosts.values().chain(&self.admins)
    }
}

/// Whether a node named `host` with `roles` gets `secret`.
pub fn receives(secret: &Secret, host: &str, roles: &BTreeSet<String>) -> bool {
    secret.hosts.iter().any(|h| h == host) || secret.roles.iter().any(|r| roles.contains(r))
}

/// The keys `secret` must be encrypted to: every host of `keys/` that gets it (by the plan's
/// roles) and every admin. A host the plan names for it without a key is an error.
pub fn recipients<'a>(plan: &Plan, keys: &'a RepoKeys, secret: &Secret) -> Result<Vec<&'a Key>> {
    let named = plan
        .roles
        .iter()
        .filter(|r| secret.roles.contains(&r.name))
        .flat_map(|r| &r.hosts)
        .chain(&secret.hosts);
    if let Some(host) = named.into_iter().find(|h| !keys.hosts.contains_key(*h)) {
        return Err(Error::Input(format!(
            "secret `{}` is for host {host}, but {KEYS_DIR}/{host}.pub does not exist (the key `troops init` printed on {host})",
            secret.name
        )));
    }
    let hosts = keys
        .hosts
        .iter()
        .filter(|(host, _)| receives(secret, host, &crate::roles::resolve(host, &[], Some(plan))))
        .map(|(_, key)| key);
    let all: Vec<&Key> = hosts.chain(&keys.admins).collect();
    if all.is_empty() {
        return Err(Error::Input(format!(
            "secret `{}` has no recipients: no key in {KEYS_DIR}/ is of a host it is for, and {ADMIN_KEYS_DIR}/ holds none",
            secret.name
        )));
    }
    Ok(all)
}

/// Encrypts `plaintext` to `keys` (a binary age file).
pub fn encrypt(plaintext: &[u8], keys: &[&Key]) -> Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(keys.iter().map(|k| &k.recipient as &dyn age::Recipient))
        .map_err(|e| Error::Input(format!("cannot encrypt to {} keys: {e}", keys.len())))?;
    let mut out = Vec::new();
    let io = |e: std::io::Error| Error::io("encrypting a secret", e);
    let mut writer = encryptor.wrap_output(&mut out).map_err(io)?;
    writer.write_all(plaintext).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(out)
}

/// An SSH private key that decrypts secrets: the node's, or an admin's.
pub struct Identity {
    pub path: PathBuf,
    pub fingerprint: String,
    key: age::ssh::Identity,
}

impl Identity {
    /// Reads an unencrypted OpenSSH private key.
    pub fn load(path: &Path) -> Result<Identity> {
        let file = std::fs::File::open(path).ctx(|| format!("reading the key {}", path.display()))?;
        let key = age::ssh::Identity::from_buffer(std::io::BufReader::new(file), None)
            .map_err(|e| Error::Input(format!("{}: not an SSH private key: {e}", path.display())))?;
        let public = match &key {
            age::ssh::Identity::Unencrypted(_) => age::ssh::Recipient::try_from(key.clone())
                .map_err(|e| Error::Input(format!("{}: unsupported key: {e:?}", path.display())))?,
            age::ssh::Identity::Encrypted(_) => {
                return Err(Error::Input(format!(
                    "{} is passphrase-protected; troops reads only unencrypted keys (give another with --identity)",
                    path.display()
                )))
            }
            age::ssh::Identity::Unsupported(_) => {
                return Err(Error::Input(format!("{}: unsupported SSH key type", path.display())))
            }
        };
        let digest = key_digest(&public.to_string()).expect("age writes a base64 key");
        Ok(Identity { path: path.to_owned(), fingerprint: fingerprint(&digest), key })
    }

    /// Decrypts the age file `bytes`; the error says why in words.
    pub fn decrypt(&self, bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let decryptor = age::Decryptor::new_buffered(bytes).map_err(|e| format!("not an age file: {e}"))?;
        let mut reader =
            decryptor.decrypt(std::iter::once(&self.key as &dyn age::Identity)).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => "it is not encrypted to this key".to_owned(),
                e => e.to_string(),
            })?;
        let mut plaintext = Vec::new();
        reader.read_to_end(&mut plaintext).map_err(|e| format!("the file is damaged: {e}"))?;
        Ok(plaintext)
    }
}

/// One recipient stanza of an age header: its type, and for SSH keys their tag.
#[derive(Debug, PartialEq, Eq)]
struct Stanza {
    kind: String,
    tag: Option<String>,
}

/// The recipient stanzas of age file `bytes` (grease, which age adds at random, left out).
fn header_recipients(bytes: &[u8]) -> std::result::Result<Vec<Stanza>, String> {
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next() != Some(b"age-encryption.org/v1") {
        return Err("not a binary age file (no age-encryption.org/v1 header)".into());
    }
    let mut stanzas = Vec::new();
    for line in lines {
        if line.starts_with(b"---") {
            return Ok(stanzas);
        }
        let Some(args) = line.strip_prefix(b"-> ") else { continue };
        let args = String::from_utf8_lossy(args);
        let mut args = args.split(' ');
        let kind = args.next().unwrap_or_default().to_owned();
        if kind.ends_with("-grease") {
            continue;
        }
        let tag = matches!(kind.as_str(), "ssh-ed25519" | "ssh-rsa")
            .then(|| args.next().unwrap_or_default().to_owned());
        stanzas.push(Stanza { kind, tag });
    }
    Err("the age header has no end".into())
}

/// What `troops secrets check` finds wrong in the deploy repo at `repo`: one sentence per
/// problem, naming the file and the host; empty when every file's recipients are what the plan
/// and `keys/` require.
pub fn check(repo: &Path, plan: &Plan) -> Result<Vec<String>> {
    let keys = RepoKeys::load(repo)?;
    let mut problems = Vec::new();
    for secret in &plan.secrets {
        let file = secret.file.display();
        let wanted = match recipients(plan, &keys, secret) {
            Ok(wanted) => wanted,
            Err(e) => {
                problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        let bytes = match std::fs::read(repo.join(&secret.file)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!(
                    "{file}: no such file for secret `{}`; create it with `troops secrets encrypt {} FILE`",
                    secret.name, secret.name
                ));
                continue;
            }
            Err(e) => return Err(Error::path("reading", &repo.join(&secret.file), e)),
        };
        let stanzas = match header_recipients(&bytes) {
            Ok(stanzas) => stanzas,
            Err(e) => {
                problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        for key in &wanted {
            if !stanzas.iter().any(|s| s.tag.as_deref() == Some(&key.tag)) {
                problems.push(format!(
                    "{file}: {} ({}) cannot decrypt secret `{}`, which is for it; run `troops secrets rekey`",
                    key.owner,
                    key.source.display(),
                    secret.name
                ));
            }
        }
        for stanza in &stanzas {
            if stanza.tag.as_ref().is_some_and(|t| wanted.iter().any(|k| &k.tag == t)) {
                continue;
            }
            let known = keys.all().find(|k| stanza.tag.as_ref() == Some(&k.tag));
            problems.push(match known {
                Some(key) => format!(
                    "{file}: {} ({}) can decrypt secret `{}`, which is not for it; run `troops secrets rekey`",
                    key.owner,
                    key.source.display(),
                    secret.name
                ),
                None => format!(
                    "{file}: a {} key that is in no file of {KEYS_DIR}/ can decrypt secret `{}`; run `troops secrets rekey`",
                    stanza.kind, secret.name
                ),
            });
        }
    }
    Ok(problems)
}

/// The secret of `plan` called `name`.
pub fn find<'a>(plan: &'a Plan, name: &str) -> Result<&'a Secret> {
    plan.secrets
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Input(format!("the plan has no [[secret]] named `{name}`")))
}

/// Encrypts `plaintext` as secret `name` of the deploy repo at `repo` to its recipients, and
/// writes its file; returns the file (relative to `repo`).
pub fn encrypt_into(repo: &Path, plan: &Plan, name: &str, plaintext: &[u8]) -> Result<PathBuf> {
    let secret = find(plan, name)?;
    let keys = RepoKeys::load(repo)?;
    let bytes = encrypt(plaintext, &recipients(plan, &keys, secret)?)?;
    let path = repo.join(&secret.file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    crate::atomic::write_mode(&path, &bytes, 0o644)?;
    Ok(secret.file.clone())
}

/// Reads and decrypts secret `secret` of the repo at `repo` with `identity`.
fn open(repo: &Path, secret: &Secret, identity: &Identity) -> Result<Vec<u8>> {
    let path = repo.join(&secret.file);
    let bytes = std::fs::read(&path)
        .ctx(|| format!("reading secret `{}` ({})", secret.name, secret.file.display()))?;
    identity.decrypt(&bytes).map_err(|why| {
        Error::Input(format!(
            "secret `{}` ({}) cannot be decrypted with {} ({}): {why}",
            secret.name,
            secret.file.display(),
            identity.path.display(),
            identity.fingerprint
        ))
    })
}

/// Whether `edit` changed the secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Edited {
    Changed,
    Unchanged,
}

/// Lets `editor` change secret `name`: its plaintext (empty for a new one) is in a file of a
/// private temp dir, removed afterwards; a changed text is encrypted to the current recipients.
pub fn edit(
    repo: &Path,
    plan: &Plan,
    name: &str,
    identity: &Identity,
    editor: impl FnOnce(&Path) -> Result<()>,
) -> Result<Edited> {
    let secret = find(plan, name)?;
    let old = if repo.join(&secret.file).exists() { open(repo, secret, identity)? } else { Vec::new() };
    let tmp = tempfile::Builder::new()
        .prefix("troops-secret-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .ctx(|| format!("creating a private directory in {}", std::env::temp_dir().display()))?;
    let path = tmp.path().join(&secret.name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&old))
        .ctx(|| format!("writing {}", path.display()))?;
    editor(&path)?;
    let new = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    drop(tmp);
    if new == old {
        return Ok(Edited::Unchanged);
    }
    encrypt_into(repo, plan, name, &new)?;
    Ok(Edited::Changed)
}

/// Re-encrypts every secret of the repo at `repo` to its current recipients, all or nothing:
/// every file is decrypted and its new version written to a temp file first; only when all are
/// written are they renamed into place. Returns the files rekeyed.
pub fn rekey(repo: &Path, plan: &Plan, identity: &Identity) -> Result<Vec<PathBuf>> {
    let keys = RepoKeys::load(repo)?;
    let mut staged = Vec::new();
    for secret in &plan.secrets {
        let plaintext = open(repo, secret, identity)?;
        let bytes = encrypt(&plaintext, &recipients(plan, &keys, secret)?)?;
        let path = repo.join(&secret.file);
        let dir = path.parent().unwrap_or(repo);
        let mut tmp = tempfile::Builder::new()
            .prefix(".troops-rekey-")
            .tempfile_in(dir)
            .ctx(|| format!("creating a temp file in {} for secret `{}`", dir.display(), secret.name))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| tmp.write_all(&bytes))
            .and_then(|()| tmp.as_file().sync_all())
            .ctx(|| format!("writing {}", tmp.path().display()))?;
        staged.push((tmp, path, secret.file.clone()));
    }
    // Every new file is written; a failure before here dropped the temp files and left all as it was.
    let mut done = Vec::new();
    for (tmp, path, file) in staged {
        tmp.persist(&path).map_err(|e| Error::path("replacing", &path, e.error))?;
        done.push(file);
    }
    Ok(done)
}

/// The directory under which this node's runs keep their secrets, on tmpfs: as root
/// `/run/troops/secrets/<node>`, else `/dev/shm/troops-<uid>/<node>`, where `<node>` is the start
/// of the SHA-256 of the state dir's path (several nodes, as in tests, never share one).
pub fn node_dir(state_dir: &Path) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let base = if uid.is_root() {
        PathBuf::from("/run/troops/secrets")
    } else {
        PathBuf::from(format!("/dev/shm/troops-{uid}"))
    };
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    base.join(digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Removes what runs of this node left in `node_dir` (a troops that died mid-run). Call under
/// the node lock.
pub fn remove_leftovers(state_dir: &Path) -> Result<()> {
    let dir = node_dir(state_dir);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))
        }
        _ => std::fs::remove_file(&dir).ctx(|| format!("removing {}", dir.display())),
    }
}

/// The decrypted secrets of one run, in `dir`; the directory is removed when this is dropped.
pub struct RunSecrets {
    pub dir: PathBuf,
    values: Vec<(String, Vec<u8>)>,
}

impl Drop for RunSecrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // The node's dir too, when no other run of it is there (it never is, under the lock).
        if let Some(node) = self.dir.parent() {
            let _ = std::fs::remove_dir(node);
        }
    }
}

impl RunSecrets {
    /// A masker of every value of these secrets.
    pub fn masker(&self) -> Result<Masker> {
        Masker::new(&self.values)
    }

    /// The secrets too short to be masked.
    pub fn unmasked(&self) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(_, v)| v.trim_ascii().len() < MIN_MASKED)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Decrypts the secrets of `plan` that node `host` with `roles` gets, from `checkout`, with the
/// node's key, into a fresh root-only directory for run `run`; `None` when it gets none. A secret
/// that cannot be decrypted fails it, naming the secret and the node key's fingerprint.
pub fn decrypt_for_run(
    state_dir: &Path,
    checkout: &Path,
    plan: &Plan,
    host: &str,
    roles: &BTreeSet<String>,
    run: u64,
) -> Result<Option<RunSecrets>> {
    let wanted: Vec<&Secret> = plan.secrets.iter().filter(|s| receives(s, host, roles)).collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let key = state_dir.join("ssh/id_ed25519");
    let identity = Identity::load(&key).map_err(|e| Error::Env(format!("the node's key: {e}")))?;
    let root = checkout.canonicalize().ctx(|| format!("resolving {}", checkout.display()))?;
    let mut values = Vec::new();
    for secret in wanted {
        let file = secret.file.display();
        let path = root.join(&secret.file);
        let inside = path.canonicalize().ok().filter(|p| p.starts_with(&root) && p.is_file());
        let bytes = inside.map(std::fs::read).transpose().ctx(|| format!("reading {}", path.display()))?;
        let bytes = bytes.ok_or_else(|| {
            Error::Input(format!("secret `{}`: {file} is not a file in the repo", secret.name))
        })?;
        let plaintext = identity.decrypt(&bytes).map_err(|why| {
            Error::Input(format!(
                "secret `{}` ({file}) cannot be decrypted by this node's key {} ({}.pub): {why}; \
                 put that key in {KEYS_DIR}/{host}.pub of the deploy repo and run `troops secrets rekey`",
                secret.name,
                identity.fingerprint,
                key.display()
            ))
        })?;
        values.push((secret, plaintext));
    }

    let node = node_dir(state_dir);
    let base = node.parent().expect("the node's secrets dir has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&node)
        .ctx(|| format!("creating {}", node.display()))?;
    // Nobody else may own or enter a directory on the way: they could swap what comes below it.
    private(base)?;
    private(&node)?;
    let dir = node.join(run.to_string());
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut run_secrets = RunSecrets { dir, values: Vec::new() };
    for (secret, plaintext) in values {
        let path = run_secrets.dir.join(&secret.name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        file.write_all(&plaintext).ctx(|| format!("writing {}", path.display()))?;
        if let Some(owner) = &secret.owner {
            let (uid, gid) = owner_ids(owner)
                .map_err(|why| Error::Input(format!("secret `{}`: owner {owner:?}: {why}", secret.name)))?;
            nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&file), Some(uid), gid)
                .ctx(|| format!("giving {} to {owner}", path.display()))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(secret.mode))
            .ctx(|| format!("setting the mode of {}", path.display()))?;
        run_secrets.values.push((secret.name.clone(), plaintext));
    }
    Ok(Some(run_secrets))
}

/// Fails unless `dir` is a directory (not a symlink) of this process's user that nobody else can
/// enter.
fn private(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).ctx(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(Error::Env(format!(
            "{} is not a directory private to troops (owner {}, mode {:o}); secrets are not written there",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The user and group of `user` or `user:group`.
fn owner_ids(owner: &str) -> std::result::Result<(nix::unistd::Uid, Option<nix::unistd::Gid>), String> {
    let (user, group) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner, None),
    };
    let uid = nix::unistd::User::from_name(user)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user {user} on this node"))?
        .uid;
    let gid = match group {
        None => None,
        Some(group) => Some(
            nix::unistd::Group::from_name(group)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no group {group} on this node"))?
                .gid,
        ),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_stanzas_name_the_keys_and_skip_grease() {
        let header = b"age-encryption.org/v1\n-> ssh-ed25519 AbCdEf xyz\nbody\n-> a!-grease q\n\n-> X25519 e\nb\n--- mac\n";
        assert_eq!(
            header_recipients(header).unwrap(),
            [
                Stanza { kind: "ssh-ed25519".into(), tag: Some("AbCdEf".into()) },
                Stanza { kind: "X25519".into(), tag: None }
            ]
        );
        assert!(header_recipients(b"hello").is_err());
    }
}
