//! Secrets, encrypted to each node. A `[[secret]]` of the plan is an age file in the deploy repo
//! whose recipients are the SSH keys of the nodes it is for (`keys/<hostname>.pub`, the key
//! `troops init` prints) and the admins' (`keys/admins/*.pub`). A node decrypts its own secrets
//! with its key into a root-only directory on tmpfs (or ramfs; never anything else) for the
//! length of one run, and masks their values in the run's output. The operator's side (encrypt,
//! edit, rekey, check) works in a clone of the deploy repo and needs no node: it is
//! `troops_operator::secrets`, and shares the keys' reading with this one.
//!
//! What must stay true: plaintext is written only to a run's secrets directory (removed when the
//! run ends, or under the node lock at the next run after a crash) and to the operator's private
//! temp dir during `edit`; never to `work/`, the run's log or the pusher. The operator's side
//! reads and writes the clone through `fs_safe`: only regular files of a bounded size, never
//! through a symlink, a secret's file replaced by rename, so a committed symlink, FIFO or huge
//! file is refused by name rather than followed, waited on or read without end.

use std::collections::BTreeSet;
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
/// The largest key file read (`keys/*.pub`, an identity): a 16384-bit RSA key is under 4 KiB.
pub const MAX_KEY_FILE: u64 = 64 << 10;

/// The SHA-256 of the key in an OpenSSH public key line (`ssh-ed25519 AAAA... comment`): what
/// its fingerprint shows, and what age's stanza tag starts with.
pub fn key_digest(line: &str) -> Option<[u8; 32]> {
    let wire = STANDARD.decode(line.split_whitespace().nth(1)?).ok()?;
    Some(Sha256::digest(&wire).into())
}

/// `SHA256:...`, as `ssh-keygen -l` shows a key of `digest`.
pub fn fingerprint(digest: &[u8; 32]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
}

/// Whether a node named `host` with `roles` gets `secret`.
pub fn receives(secret: &Secret, host: &str, roles: &BTreeSet<String>) -> bool {
    secret.hosts.iter().any(|h| h == host) || secret.roles.iter().any(|r| roles.contains(r))
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
pub fn read_key_file(path: &Path) -> Result<Vec<u8>> {
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

/// Removes what runs of this node left in its secrets dir (`Node::secrets_dir`) (a troops that died mid-run). Call under
/// the node lock.
pub fn remove_leftovers(node: &Node) -> Result<()> {
    let dir = node.secrets_dir();
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
    let key = node.ssh_key_path();
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

    let node_dir = node.secrets_dir();
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
}
