//! The operator's side of secrets, in a clone of the deploy repo (no node needed): encrypt a
//! secret to the keys the plan and `keys/` require (the nodes that get it, and the admins), edit
//! and rekey it with an admin's key, and check, for the repo's CI, that every file's recipients
//! are what they must be. The clone is read and written through `fs_safe`: only regular files of
//! a bounded size, never through a symlink, a secret's file replaced by rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use troops_core::mech::secrets::{fingerprint, key_digest, receives, Identity, KEYS_DIR, MAX_KEY_FILE};
use troops_core::model::error::{Context, Error, Result};
use troops_core::model::plan::{Plan, Secret};

/// Where a deploy repo keeps the keys of admins, who can decrypt every secret.
pub const ADMIN_KEYS_DIR: &str = "keys/admins";

/// The largest secret file (an age file) the operator's side reads or writes.
pub const MAX_SECRET_FILE: u64 = 16 << 20;

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
        let bytes = troops_core::mech::fs_safe::read(repo, &source, MAX_KEY_FILE)?.ok_or_else(|| {
            Error::Input(format!("{} went away while troops read {KEYS_DIR}/", source.display()))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Input(format!("{}: not text, so no SSH public key", source.display())))?;
        Key::parse(&text, source, owner)
    }
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
            for file in troops_core::mech::fs_safe::list(repo, Path::new(dir))? {
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
        .filter(|(host, _)| {
            receives(secret, host, &troops_core::model::roles::resolve(host, &[], Some(plan)))
        })
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
        let Some(bytes) = troops_core::mech::fs_safe::read(repo, &secret.file, MAX_SECRET_FILE)? else {
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
    troops_core::mech::fs_safe::write(repo, &secret.file, &bytes, 0o644)?;
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
    let Some(bytes) = troops_core::mech::fs_safe::read(repo, &secret.file, MAX_SECRET_FILE)? else {
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
    let new = troops_core::mech::fs_safe::read(tmp.path(), Path::new(&secret.name), MAX_SECRET_FILE)?
        .ok_or_else(|| {
            Error::Input(format!("{} is gone after the editor; the secret is left as it was", path.display()))
        })?;
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
        staged.push((
            troops_core::mech::fs_safe::stage(repo, &secret.file, &bytes, 0o644)?,
            secret.file.clone(),
        ));
    }
    // Every new file is written; a failure before here dropped the temp files and left all as it was.
    let mut done = Vec::new();
    for (file, path) in staged {
        file.commit()?;
        done.push(path);
    }
    Ok(done)
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
