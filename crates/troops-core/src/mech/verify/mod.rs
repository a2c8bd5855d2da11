//! Signed commits (`[verify]` of the node config): whether a commit carries an OpenPGP signature,
//! as `git commit -S` with GnuPG makes it, by a key in the node's keyring, so that a compromised
//! mirror or a stolen push key cannot make the fleet run code nobody trusted signed.
//!
//! What must stay true: only [`Verification::Good`] (and `GoodSsh`) passes; every other outcome
//! is a refusal with its own reason. An OpenPGP signature is good when it matches the commit
//! exactly as git hashes it for `git verify-commit` ([`split_commit`]), was made by a
//! signing-capable key of a certificate in the keyring, and that key was valid both when the commit was signed and now: a key that has
//! expired or been revoked since (with any reason, as gpg's EXPKEYSIG and REVKEYSIG do) no longer
//! vouches for anything, even for commits it signed while it was good. The commits an update adds
//! are checked by [`check_update`]; pull, push and `troops deploy --commit` all come through it.
//!
//! Commits signed with SSH keys (`gpg.format=ssh`) are checked against `[verify] allowed_signers`
//! instead ([`ssh`]); [`TrustPolicy`] holds both and lets each commit's signature block decide
//! which applies. An SSH key's validity window is judged at the time the node first accepted the
//! commit ([`seen`]), not at the committer date, which the signer writes.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use git2::{Oid, Repository};
use openpgp::cert::prelude::*;
use openpgp::packet::Signature;
use openpgp::parse::Parse;
use openpgp::policy::{HashAlgoSecurity, Policy, StandardPolicy};
use openpgp::types::RevocationStatus;
use openpgp::{Cert, Packet, PacketPile};
use sequoia_openpgp as openpgp;
use serde::{Deserialize, Serialize};

use crate::mech::state_file::{self, StateFile};
use crate::model::config::{Scope, Verify};
use crate::model::error::{Context, Error, Result};
use crate::model::names::short;

pub mod seen;
pub mod ssh;

pub use seen::FirstSeen;
pub use ssh::AllowedSigners;

/// What checking one commit's signature found. Only `Good` and `GoodSsh` pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// OpenPGP: signed by a valid signing key of the certificate `fingerprint` (its primary key).
    Good { fingerprint: String, user_id: Option<String> },
    /// SSH: signed, for namespace `git`, by the key `fingerprint` (`SHA256:...`) that the allowed
    /// signers list for `principal`, within its validity window.
    GoodSsh { fingerprint: String, principal: String },
    /// The commit has no `gpgsig` header.
    Unsigned,
    /// Signed by a key that the trusted list `list` (keyring or allowed signers) does not have.
    UnknownKey { issuer: String, list: PathBuf },
    /// SSH: signed by an allowed key, but not for namespace `git` (`detail` says how).
    WrongNamespace { fingerprint: String, detail: String },
    /// SSH: signed by the key of `principal`, whose validity window (`window`) did not hold at
    /// `seen`, when the node first saw the commit.
    OutsideWindow { fingerprint: String, principal: String, window: String, seen: String },
    /// The signature does not verify, cannot be read, or is not acceptable (weak algorithm, a
    /// key that may not sign, dated in the future...).
    Bad { reason: String },
    /// The signing key (or its certificate), `fingerprint`, has expired, or had when it signed.
    Expired { fingerprint: String },
    /// The signing key (or its certificate), `fingerprint`, is revoked.
    Revoked { fingerprint: String },
}

impl Verification {
    pub fn is_good(&self) -> bool {
        matches!(self, Verification::Good { .. } | Verification::GoodSsh { .. })
    }

    /// One word for scripts: good, unsigned, unknown_key, wrong_namespace, outside_window, bad,
    /// expired, revoked.
    pub fn kind(&self) -> &'static str {
        match self {
            Verification::Good { .. } | Verification::GoodSsh { .. } => "good",
            Verification::Unsigned => "unsigned",
            Verification::UnknownKey { .. } => "unknown_key",
            Verification::WrongNamespace { .. } => "wrong_namespace",
            Verification::OutsideWindow { .. } => "outside_window",
            Verification::Bad { .. } => "bad",
            Verification::Expired { .. } => "expired",
            Verification::Revoked { .. } => "revoked",
        }
    }

    /// Who a good signature is by, for a person: the key's user id or principal, and the key.
    pub fn signer(&self) -> Option<String> {
        match self {
            Verification::Good { fingerprint, user_id: Some(user_id) } => {
                Some(format!("{user_id} ({fingerprint})"))
            }
            Verification::Good { fingerprint, user_id: None } => Some(fingerprint.clone()),
            Verification::GoodSsh { fingerprint, principal } => Some(format!("{principal} ({fingerprint})")),
            _ => None,
        }
    }

    /// The key a good signature is by (the certificate's fingerprint, or the SSH key's): one
    /// signer, however many names it has.
    pub fn key(&self) -> Option<&str> {
        match self {
            Verification::Good { fingerprint, .. } | Verification::GoodSsh { fingerprint, .. } => {
                Some(fingerprint)
            }
            _ => None,
        }
    }

    /// Of two refusals, which one to report: the most serious.
    fn severity(&self) -> u8 {
        match self {
            Verification::Good { .. } | Verification::GoodSsh { .. } => 0,
            Verification::Unsigned => 1,
            Verification::UnknownKey { .. } => 2,
            Verification::WrongNamespace { .. } | Verification::OutsideWindow { .. } => 3,
            Verification::Expired { .. } => 3,
            Verification::Revoked { .. } => 4,
            Verification::Bad { .. } => 5,
        }
    }
}

/// The predicate of a sentence whose subject is the commit: "commit 1a2b3c4d5e6f is not signed".
impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verification::Good { fingerprint, user_id: Some(user_id) } => {
                write!(f, "is signed by {fingerprint} ({user_id})")
            }
            Verification::Good { fingerprint, user_id: None } => write!(f, "is signed by {fingerprint}"),
            Verification::GoodSsh { fingerprint, principal } => {
                write!(f, "is signed by SSH key {fingerprint} ({principal})")
            }
            Verification::Unsigned => write!(f, "is not signed"),
            Verification::UnknownKey { issuer, list } => {
                write!(f, "is signed by an unknown key {issuer}, which is not in {}", list.display())
            }
            Verification::WrongNamespace { fingerprint, detail } => {
                write!(f, "is signed by SSH key {fingerprint} in the wrong namespace: {detail}")
            }
            Verification::OutsideWindow { fingerprint, principal, window, seen } => write!(
                f,
                "is signed by SSH key {fingerprint} ({principal}) outside its validity window ({window}): \
                 the node first saw it at {seen}"
            ),
            Verification::Bad { reason } => write!(f, "has a bad signature: {reason}"),
            Verification::Expired { fingerprint } => {
                write!(f, "is signed by {fingerprint}, a key that has expired")
            }
            Verification::Revoked { fingerprint } => {
                write!(f, "is signed by {fingerprint}, a key that is revoked")
            }
        }
    }
}

/// Verifies a commit's signature over its payload. The real one is [`TrustPolicy`] (or a
/// [`Keyring`] alone); unit tests use fakes.
pub trait Verifier {
    /// `signature` is the `gpgsig` header's value (`None`: the commit has none) and `payload` the
    /// bytes it must sign (see [`split_commit`]) of the commit `commit`.
    fn verify(&self, commit: Oid, payload: &[u8], signature: Option<&[u8]>) -> Verification;

    /// Keeps what the checks so far learnt (first-seen times); called once a check is over.
    fn remember(&self) {}
}

/// Splits a raw commit object into `(signature, payload)` as git does for `git verify-commit`
/// (`parse_buffer_signed_by_header`): the signature is the value of the `gpgsig` header with its
/// continuation lines' leading space removed; the payload is the commit without any `gpgsig*`
/// header (nor `gpgsig-sha256`, the signature over the SHA-256 form) and their continuation lines.
/// `None` when the commit has no `gpgsig` header. Headers end at the first empty line; a
/// `gpgsig` line in the message is message. Total: any bytes in, never a panic.
pub fn split_commit(raw: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature = Vec::new();
    let (mut signed, mut in_signature, mut other_signature) = (false, false, false);
    let mut rest = raw;
    while let Some(&first) = rest.first() {
        let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |nl| nl + 1);
        let (line, next) = rest.split_at(end);
        let value = if in_signature && first == b' ' {
            Some(&line[1..])
        } else if let Some(value) = line.strip_prefix(b"gpgsig ") {
            other_signature = false;
            Some(value)
        } else {
            if line.starts_with(b"gpgsig") {
                other_signature = true;
            } else if other_signature && first != b' ' {
                other_signature = false;
            }
            None
        };
        match value {
            Some(value) => {
                signature.extend_from_slice(value);
                signed = true;
                in_signature = true;
            }
            None if first == b'\n' => {
                // The end of the headers: the rest is the message, signed as it is.
                payload.extend_from_slice(rest);
                break;
            }
            None => {
                if !other_signature {
                    payload.extend_from_slice(line);
                }
                in_signature = false;
            }
        }
        rest = next;
    }
    signed.then_some((signature, payload))
}

/// The certificates a node trusts (`[verify] keyring`): OpenPGP certificates, armored or binary,
/// any number in one file. Loaded once; verifies against the time of each check.
pub struct Keyring {
    path: PathBuf,
    certs: Vec<Cert>,
    policy: StandardPolicy<'static>,
    /// The time to judge expiry and revocation at; `None`: now, at each check.
    at: Option<SystemTime>,
}

/// How far in the future a signature may be dated (clocks of signers drift).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

impl Keyring {
    /// Reads the keyring at `path`: an unreadable file is the environment's fault (exit 3), one
    /// that holds no certificates, or something else, the configuration's (exit 2).
    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes = std::fs::read(path)
            .ctx(|| format!("reading the keyring {} ([verify] keyring)", path.display()))?;
        Keyring::parse(path, &bytes)
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Keyring> {
        let bad = |e: &dyn fmt::Display| {
            Error::Input(format!("the keyring {} is not a list of OpenPGP certificates: {e}", path.display()))
        };
        let certs = CertParser::from_bytes(bytes)
            .map_err(|e| bad(&e))?
            .collect::<openpgp::Result<Vec<Cert>>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(Error::Input(format!(
                "the keyring {} holds no OpenPGP certificates",
                path.display()
            )));
        }
        Ok(Keyring { path: path.to_owned(), certs, policy: StandardPolicy::new(), at: None })
    }

    /// Judges expiry and revocation at `time` instead of now (for tests).
    pub fn at(mut self, time: SystemTime) -> Keyring {
        self.at = Some(time);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprints of the certificates in the keyring.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| c.fingerprint().to_hex()).collect()
    }

    /// Checks one signature packet over `payload`.
    fn verify_one(&self, sig: &Signature, payload: &[u8], now: SystemTime) -> Verification {
        let bad = |reason: String| Verification::Bad { reason };
        let issuers = sig.get_issuers();
        let Some(first_issuer) = issuers.first() else {
            return bad("the signature names no key".into());
        };
        let mut candidates = self
            .certs
            .iter()
            .flat_map(|cert| cert.keys().key_handles(issuers.iter()).map(move |ka| (cert, ka.key().clone())))
            .peekable();
        if candidates.peek().is_none() {
            return Verification::UnknownKey { issuer: first_issuer.to_hex(), list: self.path.clone() };
        }
        // The key that made it: of the keys the signature names (a short key id may name
        // several), the one under which it verifies.
        let mut mismatch = None;
        let Some((cert, key)) = candidates.find(|(_, key)| match sig.verify_message(key, payload) {
            Ok(()) => true,
            Err(e) => {
                mismatch.get_or_insert_with(|| {
                    format!(
                        "it does not verify with key {} ({e}): the commit or its signature was altered",
                        key.fingerprint()
                    )
                });
                false
            }
        }) else {
            return bad(mismatch.unwrap_or_default());
        };
        let (cert_fpr, key_fpr) = (cert.fingerprint(), key.fingerprint());
        if let Err(e) = self.policy.signature(sig, HashAlgoSecurity::CollisionResistance) {
            return bad(format!("its algorithms are not accepted ({e})"));
        }
        let Some(signed_at) = sig.signature_creation_time() else {
            return bad("the signature has no creation time".into());
        };
        if signed_at > now + CLOCK_SKEW {
            return bad(format!(
                "it is dated {}, in the future",
                humantime::format_rfc3339_seconds(signed_at)
            ));
        }
        if sig.signature_alive(now, CLOCK_SKEW).is_err() {
            return bad("the signature itself has expired".into());
        }

        // The key's standing now: a key revoked or expired since signing vouches for nothing.
        let cert_now = match cert.with_policy(&self.policy, now) {
            Ok(valid) => valid,
            Err(e) => return bad(format!("the certificate {cert_fpr} is not valid ({e})")),
        };
        if let RevocationStatus::Revoked(_) = cert_now.revocation_status() {
            return Verification::Revoked { fingerprint: cert_fpr.to_hex() };
        }
        let Some(key_now) = cert_now.keys().key_handle(key_fpr.clone()).next() else {
            return bad(format!("key {key_fpr} is not validly bound to its certificate {cert_fpr}"));
        };
        if let RevocationStatus::Revoked(_) = key_now.revocation_status() {
            return Verification::Revoked { fingerprint: key_fpr.to_hex() };
        }
        if cert_now.alive().is_err() {
            return Verification::Expired { fingerprint: cert_fpr.to_hex() };
        }
        if key_now.alive().is_err() {
            return Verification::Expired { fingerprint: key_fpr.to_hex() };
        }
        if !key_now.for_signing() {
            return bad(format!("key {key_fpr} is not a signing key"));
        }

        // And when it signed: the key existed, could sign, and had not expired.
        let Ok(cert_then) = cert.with_policy(&self.policy, signed_at) else {
            return bad(format!("the certificate {cert_fpr} was not valid when the commit was signed"));
        };
        let Some(key_then) = cert_then.keys().key_handle(key_fpr.clone()).next() else {
            return bad(format!("key {key_fpr} was not valid when the commit was signed"));
        };
        if cert_then.alive().is_err() || key_then.alive().is_err() {
            return Verification::Expired { fingerprint: key_fpr.to_hex() };
        }
        if !key_then.for_signing() {
            return bad(format!("key {key_fpr} was not a signing key when the commit was signed"));
        }
        let user_id =
            cert_now.primary_userid().ok().map(|u| String::from_utf8_lossy(u.userid().value()).into_owned());
        Verification::Good { fingerprint: cert_fpr.to_hex(), user_id }
    }
}

impl Verifier for Keyring {
    fn verify(&self, _commit: Oid, payload: &[u8], signature: Option<&[u8]>) -> Verification {
        let Some(signature) = signature else {
            return Verification::Unsigned;
        };
        let signatures = match parse_signatures(signature) {
            Ok(signatures) => signatures,
            Err(reason) => return Verification::Bad { reason },
        };
        let now = self.at.unwrap_or_else(SystemTime::now);
        // gpg signs with one key unless told otherwise; with several, one good one suffices.
        let mut worst: Option<Verification> = None;
        for sig in &signatures {
            let verification = self.verify_one(sig, payload, now);
            if verification.is_good() {
                return verification;
            }
            if worst.as_ref().is_none_or(|w| verification.severity() > w.severity()) {
                worst = Some(verification);
            }
        }
        worst.unwrap_or(Verification::Bad { reason: "it holds no OpenPGP signature".into() })
    }
}

/// The OpenPGP signature packets in a `gpgsig` value (armored, as git stores it, or binary), or
/// why there are none.
fn parse_signatures(bytes: &[u8]) -> std::result::Result<Vec<Signature>, String> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
    if text.trim_start().starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err("it is an SSH signature; this node verifies OpenPGP signatures only".into());
    }
    if text.trim_start().starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return Err("it is an X.509 (gpgsm) signature; this node verifies OpenPGP signatures only".into());
    }
    let pile = PacketPile::from_bytes(bytes).map_err(|e| format!("it is not an OpenPGP signature ({e})"))?;
    let signatures: Vec<Signature> = pile
        .into_children()
        .filter_map(|packet| match packet {
            Packet::Signature(sig) => Some(sig),
            _ => None,
        })
        .collect();
    if signatures.is_empty() {
        return Err("it holds no OpenPGP signature".into());
    }
    Ok(signatures)
}

/// The key a `gpgsig` value says made it, unverified, in a form a ref name can hold: an OpenPGP
/// signature's first issuer (hex), or an SSH signature's key (`SHA256-` and its URL-safe base64).
/// What names an operator's approval ref (`troops approve`); no reader trusts it.
pub fn claimed_key(signature: &[u8]) -> Option<String> {
    if let Ok(sig) = ssh_key::SshSig::from_pem(signature) {
        let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let base64 = fingerprint.strip_prefix("SHA256:")?;
        return Some(format!("SHA256-{}", base64.replace('/', "_").replace('+', "-")));
    }
    let signatures = parse_signatures(signature).ok()?;
    signatures.first()?.get_issuers().first().map(|issuer| issuer.to_hex())
}

/// Verifies the commit `oid` of `repo` with `verifier`.
pub fn verify_commit(repo: &Repository, verifier: &dyn Verifier, oid: Oid) -> Result<Verification> {
    let odb = repo.odb().ctx(|| format!("opening the object store to verify commit {oid}"))?;
    let object = odb.read(oid).ctx(|| format!("reading commit {oid}"))?;
    if object.kind() != git2::ObjectType::Commit {
        return Err(Error::Input(format!("{oid} is a {}, not a commit", object.kind())));
    }
    Ok(match split_commit(object.data()) {
        Some((signature, payload)) => verifier.verify(oid, &payload, Some(&signature)),
        None => verifier.verify(oid, object.data(), None),
    })
}

/// A commit an update may not bring, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub commit: Oid,
    pub verification: Verification,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commit {} {}", short(self.commit), self.verification)
    }
}

/// Checks what moving a branch from `old` to `new` would add: with `Scope::Tip`, `new` alone;
/// with `Scope::All`, every commit reachable from `new` and not from `old` (all of `new`'s history
/// when `old` is `None`), oldest first. The first commit refused, or `None`: the update may go.
/// The commits are then seen (`verifier.remember`): a check that moves a branch, or runs a commit.
pub fn check_update(
    repo: &Repository,
    verifier: &dyn Verifier,
    old: Option<Oid>,
    new: Oid,
    scope: Scope,
) -> Result<Option<Refusal>> {
    let refusal = judge(repo, verifier, old, new, scope);
    verifier.remember();
    refusal
}

/// [`check_update`] for a look only (a preview): when the commits were first seen stays as it was.
pub fn judge(
    repo: &Repository,
    verifier: &dyn Verifier,
    old: Option<Oid>,
    new: Oid,
    scope: Scope,
) -> Result<Option<Refusal>> {
    let commits = match scope {
        Scope::Tip => vec![new],
        Scope::All => {
            let context = || {
                format!(
                    "listing the commits between {} and {new}",
                    old.map_or("the root".into(), |o| o.to_string())
                )
            };
            let mut walk = repo.revwalk().ctx(context)?;
            walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE).ctx(context)?;
            walk.push(new).ctx(context)?;
            if let Some(old) = old {
                walk.hide(old).ctx(context)?;
            }
            walk.collect::<std::result::Result<Vec<Oid>, _>>().ctx(context)?
        }
    };
    first_refusal(repo, verifier, &commits)
}

fn first_refusal(repo: &Repository, verifier: &dyn Verifier, commits: &[Oid]) -> Result<Option<Refusal>> {
    for &commit in commits {
        let verification = verify_commit(repo, verifier, commit)?;
        if !verification.is_good() {
            return Ok(Some(Refusal { commit, verification }));
        }
    }
    Ok(None)
}

/// What a node trusts: OpenPGP certificates (`[verify] keyring`), SSH keys (`allowed_signers`),
/// or both. Each commit's signature block picks the list it is checked against; a signature of
/// a kind the node has no list for is refused.
pub struct TrustPolicy {
    /// `None` only when `allowed_signers` is set and the keyring file does not exist.
    keyring: Option<Keyring>,
    keyring_path: PathBuf,
    signers: Option<AllowedSigners>,
    seen: RefCell<FirstSeen>,
}

impl TrustPolicy {
    /// Loads the lists `verify` names, with the first-seen times kept at `seen`. The
    /// keyring must exist unless `allowed_signers` is set (then OpenPGP signatures are refused
    /// without it); anything that exists and cannot be read fails, so nothing is verified by a
    /// list that is only partly understood.
    pub fn load(verify: &Verify, seen: &Path) -> Result<TrustPolicy> {
        let keyring_missing = std::fs::symlink_metadata(&verify.keyring)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        let keyring = if verify.allowed_signers.is_some() && keyring_missing {
            None
        } else {
            Some(Keyring::load(&verify.keyring)?)
        };
        let signers = verify.allowed_signers.as_deref().map(AllowedSigners::load).transpose()?;
        Ok(TrustPolicy {
            keyring,
            keyring_path: verify.keyring.clone(),
            signers,
            seen: RefCell::new(FirstSeen::load(seen)),
        })
    }

    /// The OpenPGP keyring, when the node has one.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// The SSH allowed signers, when the node has them.
    pub fn allowed_signers(&self) -> Option<&AllowedSigners> {
        self.signers.as_ref()
    }
}

impl Verifier for TrustPolicy {
    fn verify(&self, commit: Oid, payload: &[u8], signature: Option<&[u8]>) -> Verification {
        let Some(signature) = signature else {
            return Verification::Unsigned;
        };
        if !String::from_utf8_lossy(&signature[..signature.len().min(64)])
            .trim_start()
            .starts_with("-----BEGIN SSH SIGNATURE-----")
        {
            return match &self.keyring {
                Some(keyring) => keyring.verify(commit, payload, Some(signature)),
                None => Verification::Bad {
                    reason: format!(
                        "it is not an SSH signature, and this node has no OpenPGP keyring ({} does not exist)",
                        self.keyring_path.display()
                    ),
                },
            };
        }
        let Some(signers) = &self.signers else {
            return Verification::Bad {
                reason: "it is an SSH signature, and this node has no [verify] allowed_signers".into(),
            };
        };
        let seen_at = self.seen.borrow().time_of(commit);
        let verification = signers.verify(payload, signature, seen_at);
        if verification.is_good() {
            self.seen.borrow_mut().mark(commit);
        }
        verification
    }

    fn remember(&self) {
        // Best effort: a pusher who may not write the state dir leaves the time to the next check.
        let _ = self.seen.borrow_mut().save();
    }
}

/// The trust policy of a node's `[verify]`, with first-seen times at `seen`, when it requires
/// signed commits; `None` when it does not.
pub fn enforced(verify: &Verify, seen: &Path) -> Result<Option<TrustPolicy>> {
    verify.require_signed.then(|| TrustPolicy::load(verify, seen)).transpose()
}

/// The last commit refused for its signature, for `troops status` (`Node::refused_path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRefusal {
    pub at: String,
    /// Where it came from: "remote NAME", "push to refs/heads/main", "troops deploy".
    pub source: String,
    pub commit: String,
    /// good, unsigned, unknown_key, wrong_namespace, outside_window, bad, expired or revoked.
    pub outcome: String,
    pub reason: String,
}

impl StateFile for LastRefusal {
    const WHAT: &'static str = "a refused commit";
    const SCHEMA: u32 = 1;
    /// Far more than one refusal's reason.
    const MAX_BYTES: u64 = 1 << 20;
    const MODE: u32 = 0o640;
}

/// Records `refusal` as the node's last, atomically, at `path`.
pub fn record_refusal(path: &Path, source: &str, refusal: &Refusal) -> Result<()> {
    let record = LastRefusal {
        at: crate::model::records::now(),
        source: source.to_owned(),
        commit: refusal.commit.to_string(),
        outcome: refusal.verification.kind().to_owned(),
        reason: refusal.to_string(),
    };
    state_file::save(path, &record)
}

/// The last commit refused for its signature, recorded at `path`, if any was.
pub fn last_refusal(path: &Path) -> Result<Option<LastRefusal>> {
    state_file::load(path)
}

#[cfg(test)]
mod tests;
