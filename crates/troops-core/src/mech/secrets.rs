//! Secrets, encrypted to each node. A `[[secret]]` of the plan is an age file in the deploy repo
//! whose recipients are the SSH keys of the nodes it is for (`keys/<hostname>.pub`, the key
//! `troops init` prints) and the admins' (`keys/admins/*.pub`). A node decrypts its own secrets
//! with its key into a root-only directory on tmpfs (or ramfs; never anything else) for the
//! length of one run, and masks their values in the run's output. The operator's side (encrypt,
//! edit, rekey, check) works in a clone of the deploy repo and needs no node.
//!
//! What must stay true: plaintext is written only to a run's secrets directory (removed when the
//! run ends, or under the node lock at the next run after a crash) and to the operator's private
//! temp dir during `edit`; never to `work/`, the run's log or the pusher. The operator's side
//! reads and writes the clone through `fs_safe`: only regular files of a bounded size, never
//! through a symlink, a secret's file replaced by rename, so a committed symlink, FIFO or huge
//! file is refused by name rather than followed, waited on or read without end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::mech::mask::{Masker, MIN_MASKED};
use crate::model::error::{Context, Error, Result};
use crate::model::node::Node;
use crate::model::plan::{Plan, Secret};

/// Where a deploy repo keeps node keys, one `<hostname>.pub` each.
pub const KEYS_DIR: &str = "keys";
/// Where a deploy repo keeps the keys of admins, who can decrypt every secret.
pub const ADMIN_KEYS_DIR: &str = "keys/admins";
/// The largest secret file (an age file) the operator's side reads or writes.
pub const MAX_SECRET_FILE: u64 = 16 << 20;
/// The largest key file read (`keys/*.pub`, an identity): a 16384-bit RSA key is under 4 KiB.
const MAX_KEY_FILE: u64 = 64 << 10;

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

    /// Reads the key at `source` in the deploy repo at `repo`, which lists it.
    fn read(repo: &Path, source: PathBuf, owner: KeyOwner) -> Result<Key> {
        let bytes = crate::mech::fs_safe::read(repo, &source, MAX_KEY_FILE)?.ok_or_else(|| {
            Error::Input(format!("{} went away while troops read {KEYS_DIR}/", source.display()))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Input(format!("{}: not text, so no SSH public key", source.display())))?;
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
            for file in crate::mech::fs_safe::list(repo, Path::new(dir))? {
                let Some(name) = file.to_str().and_then(|n| n.strip_suffix(".pub")) else { continue };
                let source = Path::new(dir).join(&file);
                keys.push((name.to_owned(), Key::read(repo, source, owner(name.to_owned()))?));
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
        .filter(|(host, _)| receives(secret, host, &crate::model::roles::resolve(host, &[], Some(plan))))
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
    /// Reads an unencrypted OpenSSH private key: a regular file of at most 64 KiB (the path,
    /// which the node or the operator names, may be a symlink).
    pub fn load(path: &Path) -> Result<Identity> {
        let bytes = read_key_file(path)?;
        let key = age::ssh::Identity::from_buffer(&bytes[..], None)
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

/// The bytes of the key file at `path`, refused when it is not a regular file (opened without
/// waiting, so a FIFO is refused rather than waited on) or larger than [`MAX_KEY_FILE`].
fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    let what = || format!("reading the key {}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ctx(what)?;
    if !file.metadata().ctx(what)?.is_file() {
        return Err(Error::Input(format!("{} is not a regular file, so no SSH key", path.display())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes).ctx(what)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(Error::Input(format!(
            "{} is larger than {MAX_KEY_FILE} bytes, so no SSH key",
            path.display()
        )));
    }
    Ok(bytes)
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
        let Some(bytes) = crate::mech::fs_safe::read(repo, &secret.file, MAX_SECRET_FILE)? else {
            problems.push(format!(
                "{file}: no such file for secret `{}`; create it with `troops secrets encrypt {} FILE`",
                secret.name, secret.name
            ));
            continue;
        };
        let stanzas = match header_recipients(&bytes) {
            Ok(stanzas) => stanzas,
            Err(e) => {
                problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        let opens = |key: &Key| stanzas.iter().any(|s| s.tag.as_deref() == Some(&key.tag));
        // `rekey` decrypts with an admin's key: without one that opens the file, only its plaintext
        // can make it again.
        let fix = if keys.admins.iter().any(opens) {
            "run `troops secrets rekey`".to_owned()
        } else {
            format!(
                "no admin key in {ADMIN_KEYS_DIR}/ can decrypt it, so `rekey` cannot: encrypt it again \
                 from its plaintext with `troops secrets encrypt {} FILE`",
                secret.name
            )
        };
        for key in wanted.iter().filter(|key| !opens(key)) {
            problems.push(format!(
                "{file}: {} ({}) cannot decrypt secret `{}`, which is for it; {fix}",
                key.owner,
                key.source.display(),
                secret.name
            ));
        }
        for stanza in &stanzas {
            if stanza.tag.as_ref().is_some_and(|t| wanted.iter().any(|k| &k.tag == t)) {
                continue;
            }
            let known = keys.all().find(|k| stanza.tag.as_ref() == Some(&k.tag));
            problems.push(match known {
                Some(key) => format!(
                    "{file}: {} ({}) can decrypt secret `{}`, which is not for it; {fix}",
                    key.owner,
                    key.source.display(),
                    secret.name
                ),
                None => format!(
                    "{file}: a {} key that is in no file of {KEYS_DIR}/ can decrypt secret `{}`; {fix}",
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
/// writes its file (see `fs_safe::write`); returns the file (relative to `repo`).
pub fn encrypt_into(
    repo: &Path,
    plan: &Plan,
    name: &str,
    plaintext: &[u8],
    no_admin: NoAdmin,
) -> Result<PathBuf> {
    let secret = find(plan, name)?;
    let keys = RepoKeys::load(repo)?;
    let bytes = sealed(secret, plaintext, &recipients(plan, &keys, secret)?, no_admin)?;
    crate::mech::fs_safe::write(repo, &secret.file, &bytes, 0o644)?;
    Ok(secret.file.clone())
}

/// Whether a secret may be encrypted with no admin among its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAdmin {
    /// Refused: nobody could `edit` or `rekey` it, and with its hosts' keys it would be lost.
    Refuse,
    /// Encrypted for its hosts alone, as the operator asked (`encrypt --allow-no-admin`).
    Allow,
}

/// `plaintext` encrypted to `keys` as the file of `secret`, refused when no admin is among them
/// (unless `no_admin` allows it) and when that file would be larger than the tooling reads back.
fn sealed(secret: &Secret, plaintext: &[u8], keys: &[&Key], no_admin: NoAdmin) -> Result<Vec<u8>> {
    if no_admin == NoAdmin::Refuse && !keys.iter().any(|k| matches!(k.owner, KeyOwner::Admin(_))) {
        return Err(Error::Input(format!(
            "secret `{}` would be encrypted to no admin: {ADMIN_KEYS_DIR}/ holds no key. Only its hosts \
             could decrypt it: nobody could `edit` or `rekey` it, and if their keys were lost, so would \
             it be. Put your SSH public key in {ADMIN_KEYS_DIR}/<you>.pub and run this again, or encrypt \
             it for its hosts alone with `troops secrets encrypt --allow-no-admin {} FILE`",
            secret.name, secret.name
        )));
    }
    let bytes = encrypt(plaintext, keys)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(Error::Input(format!(
            "secret `{}` would be a file of {} bytes ({}), more than the {MAX_SECRET_FILE} troops reads",
            secret.name,
            bytes.len(),
            secret.file.display()
        )));
    }
    Ok(bytes)
}

/// Reads and decrypts secret `secret` of the repo at `repo` with `identity`; `None` when its file
/// does not exist.
fn open(repo: &Path, secret: &Secret, identity: &Identity) -> Result<Option<Vec<u8>>> {
    let Some(bytes) = crate::mech::fs_safe::read(repo, &secret.file, MAX_SECRET_FILE)? else {
        return Ok(None);
    };
    identity.decrypt(&bytes).map(Some).map_err(|why| {
        Error::Input(format!(
            "secret `{}` ({}) cannot be decrypted with {} ({}): {why}; decrypt with the key of an \
             admin it is encrypted to (--identity), or, if no admin's key can, encrypt it again from \
             its plaintext with `troops secrets encrypt {} FILE`",
            secret.name,
            secret.file.display(),
            identity.path.display(),
            identity.fingerprint,
            secret.name
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
    let old = open(repo, secret, identity)?.unwrap_or_default();
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
    let new = crate::mech::fs_safe::read(tmp.path(), Path::new(&secret.name), MAX_SECRET_FILE)?.ok_or_else(
        || Error::Input(format!("{} is gone after the editor; the secret is left as it was", path.display())),
    )?;
    drop(tmp);
    if new == old {
        return Ok(Edited::Unchanged);
    }
    encrypt_into(repo, plan, name, &new, NoAdmin::Refuse)?;
    Ok(Edited::Changed)
}

/// Re-encrypts every secret of the repo at `repo` to its current recipients, all or nothing:
/// every file is decrypted and its new version written to a temp file beside it first
/// (`fs_safe::stage`); only when all are written are they renamed into place. Returns the files
/// rekeyed.
pub fn rekey(repo: &Path, plan: &Plan, identity: &Identity) -> Result<Vec<PathBuf>> {
    let keys = RepoKeys::load(repo)?;
    let mut staged = Vec::new();
    for secret in &plan.secrets {
        let plaintext = open(repo, secret, identity)?.ok_or_else(|| {
            Error::Input(format!(
                "secret `{}`: no such file {}; create it with `troops secrets encrypt {} FILE`",
                secret.name,
                secret.file.display(),
                secret.name
            ))
        })?;
        let bytes = sealed(secret, &plaintext, &recipients(plan, &keys, secret)?, NoAdmin::Refuse)?;
        staged.push((crate::mech::fs_safe::stage(repo, &secret.file, &bytes, 0o644)?, secret.file.clone()));
    }
    // Every new file is written; a failure before here dropped the temp files and left all as it was.
    let mut done = Vec::new();
    for (file, path) in staged {
        file.commit()?;
        done.push(path);
    }
    Ok(done)
}

/// The directory under which this node's runs keep their secrets, on tmpfs: `<base>/<node>`, the
/// base being the node config's `secrets_dir`, else as root `/run/troops/secrets`, else
/// `/dev/shm/troops-<uid>`, and `<node>` the start of the SHA-256 of the state dir's path
/// (several nodes, as in tests, never share one).
pub fn node_dir(node: &Node) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let base = match &node.config.secrets_dir {
        Some(dir) => dir.clone(),
        None if uid.is_root() => PathBuf::from("/run/troops/secrets"),
        None => PathBuf::from(format!("/dev/shm/troops-{uid}")),
    };
    let digest = Sha256::digest(node.state_dir.as_os_str().as_encoded_bytes());
    base.join(digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Removes what runs of this node left in `node_dir` (a troops that died mid-run). Call under
/// the node lock.
pub fn remove_leftovers(node: &Node) -> Result<()> {
    let dir = node_dir(node);
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
/// node's key, into a fresh root-only directory for run `run` on tmpfs or ramfs; `None` when it
/// gets none. A secret that cannot be decrypted fails it, naming the secret and the node key's
/// fingerprint; a directory that is not in memory fails it before any plaintext is written.
pub fn decrypt_for_run(
    node: &Node,
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
    let key = node.state_dir.join("ssh/id_ed25519");
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
                 put that key in {KEYS_DIR}/{host}.pub of the deploy repo and run `troops secrets check` \
                 there, which says how to encrypt the secret to it",
                secret.name,
                identity.fingerprint,
                key.display()
            ))
        })?;
        values.push((secret, plaintext));
    }

    let node_dir = node_dir(node);
    let base = node_dir.parent().expect("the node's secrets dir has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&node_dir)
        .ctx(|| format!("creating {}", node_dir.display()))?;
    // Nobody else may own or enter a directory on the way: they could swap what comes below it.
    private(base)?;
    private(&node_dir)?;
    let dir = node_dir.join(run.to_string());
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ctx(|| format!("creating {}", dir.display()))?;
    // Dropped on an error, this removes what was made.
    let mut run_secrets = RunSecrets { dir, values: Vec::new() };
    in_memory(&run_secrets.dir, base, &node.config.path)?;
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

/// Fails unless `dir` is on tmpfs or ramfs, so that plaintext written there never reaches a disk
/// (`/run` is not tmpfs everywhere: in many containers it is on the image's disk).
fn in_memory(dir: &Path, base: &Path, config: &Path) -> Result<()> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6_u32 as _);
    let kind = statfs(dir).ctx(|| format!("reading the filesystem of {}", dir.display()))?.filesystem_type();
    if kind == TMPFS_MAGIC || kind == RAMFS_MAGIC {
        return Ok(());
    }
    Err(Error::Env(format!(
        "{} is not on tmpfs or ramfs (its filesystem's type is {:#x}): decrypted there, secrets \
         could reach a disk, so none is. Mount a tmpfs at {}, or set `secrets_dir` in {} to a \
         directory on one",
        dir.display(),
        kind.0,
        base.display(),
        config.display()
    )))
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
    fn plaintext_goes_only_onto_tmpfs_or_ramfs() {
        let config = Path::new("/etc/troops/troops.toml");
        in_memory(Path::new("/dev/shm"), Path::new("/dev"), config).unwrap();
        // procfs is no tmpfs (nor a disk, but troops knows only these two): refused, naming the dir
        // and the ways out.
        let e = in_memory(Path::new("/proc"), Path::new("/"), config).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Environment);
        let e = e.to_string();
        assert!(e.starts_with("/proc is not on tmpfs or ramfs (its filesystem's type is 0x9fa0)"), "{e}");
        assert!(
            e.ends_with(
                "Mount a tmpfs at /, or set `secrets_dir` in /etc/troops/troops.toml to a directory on one"
            ),
            "{e}"
        );
    }

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
