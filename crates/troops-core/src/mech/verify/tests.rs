//! Unit tests of signature checks: the commit splitter (with property tests: it must never panic
//! and must give back exactly what was signed), the range check with a fake verifier, and the
//! OpenPGP verifier with certificates and signatures made here by sequoia.

use crate::mech::verify::*;

use proptest::collection::vec;
use proptest::prelude::*;

// ---- split_commit ---------------------------------------------------------------------------

const SIGNED: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author Test <test@example.com> 1700000000 +0000\n\
committer Test <test@example.com> 1700000000 +0000\n\
gpgsig -----BEGIN PGP SIGNATURE-----\n \n iHUEABYKAB0WIQ\n =abcd\n -----END PGP SIGNATURE-----\n\
\n\
message\ngpgsig in the message is message\n";

#[test]
fn splits_a_signed_commit_as_git_verify_commit_does() {
    let (signature, payload) = split_commit(SIGNED.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(signature).unwrap(),
        "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQ\n=abcd\n-----END PGP SIGNATURE-----\n"
    );
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor Test <test@example.com> 1700000000 +0000\n\
         committer Test <test@example.com> 1700000000 +0000\n\nmessage\ngpgsig in the message is message\n"
    );
}

#[test]
fn unsigned_commits_and_signatures_in_messages_are_not_signatures() {
    assert_eq!(split_commit(b"tree 1\nauthor a\n\ngpgsig not a header\n"), None);
    assert_eq!(split_commit(b""), None);
    assert_eq!(split_commit(b"\n"), None);
}

#[test]
fn other_signature_headers_leave_the_payload_but_are_not_the_signature() {
    let raw = b"tree 1\ngpgsig-sha256 sha256 sig\n more\ngpgsig sha1 sig\n line\nauthor a\n\nm";
    let (signature, payload) = split_commit(raw).unwrap();
    assert_eq!(signature, b"sha1 sig\nline\n");
    assert_eq!(payload, b"tree 1\nauthor a\n\nm");
}

#[test]
fn matches_what_libgit2_signs() {
    let dir = TempRepo::new("split");
    let content = dir.content(&[], "message\n\nbody\n");
    let oid = dir
        .repo
        .commit_signed(&content, "-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----", None)
        .unwrap();
    let raw = dir.repo.odb().unwrap().read(oid).unwrap().data().to_vec();
    let (signature, payload) = split_commit(&raw).unwrap();
    assert_eq!(payload, content.as_bytes());
    assert_eq!(signature, b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n");
    let (theirs, signed) = dir.repo.extract_signature(&oid, None).unwrap();
    assert_eq!((&theirs[..], &signed[..]), (&signature[..signature.len() - 1], &payload[..]));
}

/// A header line (with continuation lines) that is not a signature: its name never starts with
/// "gpgsig" nor with a space.
fn header() -> impl Strategy<Value = Vec<u8>> {
    ("[a-fh-z][a-z-]{0,8}", vec(line_bytes(), 1..3)).prop_map(|(name, lines)| {
        let mut out = name.into_bytes();
        out.push(b' ');
        out.extend(lines.join(&b"\n "[..]));
        out.push(b'\n');
        out
    })
}

/// Bytes of one line: anything but a newline.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>().prop_filter("not a newline", |b| *b != b'\n'), 0..40)
}

/// A signed commit: (raw object, the signature git reads from it, the payload it verifies).
fn signed_commit() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
    (vec(header(), 0..5), vec(header(), 0..3), vec(line_bytes(), 1..6), vec(any::<u8>(), 0..200)).prop_map(
        |(before, after, sig, message)| {
            let mut raw = before.concat();
            raw.extend_from_slice(b"gpgsig ");
            raw.extend(sig.join(&b"\n "[..]));
            raw.push(b'\n');
            raw.extend(after.concat());
            raw.push(b'\n');
            raw.extend(&message);
            let mut signature = sig.join(&b"\n"[..]);
            signature.push(b'\n');
            let mut payload = [before.concat(), after.concat()].concat();
            payload.push(b'\n');
            payload.extend(&message);
            (raw, signature, payload)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_split_without_panic(raw in vec(any::<u8>(), 0..4096)) {
        if let Some((signature, payload)) = split_commit(&raw) {
            prop_assert!(signature.len() + payload.len() <= raw.len());
        }
    }

    #[test]
    fn header_soup_splits_without_panic(lines in vec(prop_oneof![
        Just(b"gpgsig ".to_vec()), Just(b"gpgsig".to_vec()), Just(b"gpgsig-sha256 x".to_vec()),
        Just(b" ".to_vec()), Just(b"".to_vec()), Just(b"\n".to_vec()), line_bytes(),
    ], 0..40), newlines in vec(any::<bool>(), 40)) {
        let mut raw = Vec::new();
        for (line, newline) in lines.iter().zip(&newlines) {
            raw.extend(line);
            if *newline {
                raw.push(b'\n');
            }
        }
        if let Some((signature, payload)) = split_commit(&raw) {
            prop_assert!(signature.len() + payload.len() <= raw.len());
        }
    }

    #[test]
    fn a_signed_commit_splits_into_exactly_its_signature_and_payload((raw, signature, payload) in signed_commit()) {
        prop_assert_eq!(split_commit(&raw), Some((signature, payload)));
    }

    #[test]
    fn a_truncated_commit_splits_without_panic_and_into_prefixes_at_line_ends(
        (raw, signature, payload) in signed_commit(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(raw.len() + 1);
        let prefix = &raw[..cut];
        let split = split_commit(prefix);
        if let Some((sig, pay)) = &split {
            prop_assert!(sig.len() + pay.len() <= prefix.len());
        }
        if cut == 0 || raw[cut - 1] == b'\n' {
            let (sig, pay) = split.unwrap_or_default();
            prop_assert!(signature.starts_with(&sig), "signature of the prefix is not a prefix");
            prop_assert!(payload.starts_with(&pay), "payload of the prefix is not a prefix");
        }
    }

    #[test]
    fn a_commit_without_gpgsig_header_is_unsigned(headers in vec(header(), 0..6), message in vec(any::<u8>(), 0..200)) {
        let mut raw = headers.concat();
        raw.push(b'\n');
        raw.extend(message);
        prop_assert_eq!(split_commit(&raw), None);
    }

    /// What the keyring makes of any `gpgsig` value: a refusal, never a panic.
    #[test]
    fn arbitrary_signatures_are_refused_without_panic(signature in vec(any::<u8>(), 0..512), armored in any::<bool>()) {
        let signature = if armored {
            let mut text = b"-----BEGIN PGP SIGNATURE-----\n\n".to_vec();
            text.extend(signature);
            text.extend(b"\n-----END PGP SIGNATURE-----\n");
            text
        } else {
            signature
        };
        let verification = keyring().verify(Oid::zero(), b"payload", Some(&signature));
        prop_assert!(!verification.is_good());
    }
}

// ---- check_update, with a fake verifier ---------------------------------------------------------

/// A bare repo in a temp dir, removed on drop.
struct TempRepo {
    dir: PathBuf,
    repo: Repository,
}

impl TempRepo {
    fn new(name: &str) -> TempRepo {
        let dir = std::env::temp_dir().join(format!("troops-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let repo = Repository::init_bare(&dir).unwrap();
        TempRepo { dir, repo }
    }

    /// The text of a commit (not written) with `parents`.
    fn content(&self, parents: &[Oid], message: &str) -> String {
        let tree = self.repo.find_tree(self.repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let sig = git2::Signature::new("t", "t@t", &git2::Time::new(1_700_000_000, 0)).unwrap();
        let parents: Vec<_> = parents.iter().map(|p| self.repo.find_commit(*p).unwrap()).collect();
        let parents: Vec<_> = parents.iter().collect();
        let buf = self.repo.commit_create_buffer(&sig, &sig, message, &tree, &parents).unwrap();
        String::from_utf8(buf.to_vec()).unwrap()
    }

    /// A commit "signed" for the fake verifier with `outcome` (`None`: unsigned).
    fn commit(&self, parents: &[Oid], message: &str, outcome: Option<&str>) -> Oid {
        let content = self.content(parents, message);
        match outcome {
            Some(outcome) => self
                .repo
                .commit_signed(&content, &format!("{outcome} {}", digest(content.as_bytes())), None)
                .unwrap(),
            None => self.repo.odb().unwrap().write(git2::ObjectType::Commit, content.as_bytes()).unwrap(),
        }
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// Signatures are `<outcome> <digest of the payload>`: a payload that does not match is "bad".
struct Fake;

impl Verifier for Fake {
    fn verify(&self, _commit: Oid, payload: &[u8], signature: Option<&[u8]>) -> Verification {
        let Some(signature) = signature else {
            return Verification::Unsigned;
        };
        let text = String::from_utf8_lossy(signature);
        let (outcome, sum) = text.trim_end().split_once(' ').unwrap_or_default();
        if sum != digest(payload).to_string() {
            return Verification::Bad { reason: "the payload was altered".into() };
        }
        match outcome {
            "good" => Verification::Good {
                fingerprint: "F00D".into(),
                user_id: Some("Fake <fake@example.com>".into()),
            },
            "unknown" => Verification::UnknownKey { issuer: "BEEF".into(), list: "fake".into() },
            "expired" => Verification::Expired { fingerprint: "DEAD".into() },
            other => Verification::Bad { reason: format!("fake outcome {other:?}") },
        }
    }
}

#[test]
fn tip_scope_checks_only_the_new_tip_and_all_scope_every_new_commit() {
    let r = TempRepo::new("range");
    let a = r.commit(&[], "a", None);
    let b = r.commit(&[a], "b", Some("good"));
    let c = r.commit(&[b], "c", None);
    let d = r.commit(&[c], "d", Some("good"));
    let check = |old, new, scope| check_update(&r.repo, &Fake, old, new, scope).unwrap();

    assert_eq!(check(None, d, Scope::Tip), None);
    assert_eq!(
        check(Some(b), c, Scope::Tip),
        Some(Refusal { commit: c, verification: Verification::Unsigned })
    );
    assert_eq!(
        check(Some(b), d, Scope::All),
        Some(Refusal { commit: c, verification: Verification::Unsigned })
    );
    assert_eq!(check(Some(c), d, Scope::All), None);
    // From nothing, all of the history: the oldest refusal is reported.
    assert_eq!(check(None, b, Scope::All).map(|r| r.commit), Some(a));

    let refusal = check(Some(b), c, Scope::Tip).unwrap();
    assert_eq!(refusal.to_string(), format!("commit {} is not signed", &c.to_string()[..12]));
}

#[test]
fn each_outcome_is_its_own_refusal_and_an_altered_commit_is_bad() {
    let r = TempRepo::new("outcomes");
    let a = r.commit(&[], "a", Some("good"));
    assert!(verify_commit(&r.repo, &Fake, a).unwrap().is_good());
    let unknown = r.commit(&[a], "u", Some("unknown"));
    assert_eq!(verify_commit(&r.repo, &Fake, unknown).unwrap().kind(), "unknown_key");
    let expired = r.commit(&[a], "e", Some("expired"));
    assert_eq!(verify_commit(&r.repo, &Fake, expired).unwrap().kind(), "expired");

    // The signature of `a` over another message: what a tampered commit looks like.
    let raw = r.repo.odb().unwrap().read(a).unwrap().data().to_vec();
    let text = String::from_utf8(raw).unwrap();
    let altered = r
        .repo
        .odb()
        .unwrap()
        .write(git2::ObjectType::Commit, format!("{}A", text.strip_suffix('a').unwrap()).as_bytes())
        .unwrap();
    assert_ne!(altered, a);
    assert_eq!(
        verify_commit(&r.repo, &Fake, altered).unwrap(),
        Verification::Bad { reason: "the payload was altered".into() }
    );

    let blob = r.repo.blob(b"x").unwrap();
    assert!(matches!(verify_commit(&r.repo, &Fake, blob), Err(Error::Input(_))));
}

#[test]
fn refusals_are_recorded_for_status() {
    let r = TempRepo::new("record");
    let path = r.dir.join("refused.json");
    assert_eq!(last_refusal(&path).unwrap(), None);
    let commit = r.commit(&[], "a", None);
    record_refusal(&path, "remote a", &Refusal { commit, verification: Verification::Unsigned }).unwrap();
    let last = last_refusal(&path).unwrap().unwrap();
    assert_eq!((last.source.as_str(), last.outcome.as_str()), ("remote a", "unsigned"));
    assert_eq!(last.commit, commit.to_string());
    assert!(last.reason.ends_with("is not signed"), "{}", last.reason);
}

// ---- the OpenPGP verifier ------------------------------------------------------------------------

use openpgp::cert::CipherSuite;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::types::SignatureType;

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A certificate created `age` ago (before `now()`), valid for `validity`, with a signing subkey.
fn cert(user_id: &str, age: Duration, validity: Option<Duration>) -> (Cert, Signature) {
    CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .add_userid(user_id)
        .add_signing_subkey()
        .set_creation_time(now() - age)
        .set_validity_period(validity)
        .generate()
        .unwrap()
}

/// Signs `payload` at `at` with the cert's signing subkey (or its primary key), armored.
fn sign(cert: &Cert, payload: &[u8], at: SystemTime, primary: bool) -> Vec<u8> {
    let key = if primary {
        cert.primary_key().key().clone().parts_into_secret().unwrap().role_into_unspecified()
    } else {
        cert.keys().subkeys().secret().next().unwrap().key().clone().role_into_unspecified()
    };
    let mut signer = key.into_keypair().unwrap();
    let sig = SignatureBuilder::new(SignatureType::Binary)
        .set_signature_creation_time(at)
        .unwrap()
        .sign_message(&mut signer, payload)
        .unwrap();
    let mut writer = openpgp::armor::Writer::new(Vec::new(), openpgp::armor::Kind::Signature).unwrap();
    Packet::from(sig).serialize(&mut writer).unwrap();
    writer.finalize().unwrap()
}

fn keyring_of(certs: &[&Cert]) -> Keyring {
    let mut bytes = Vec::new();
    for cert in certs {
        bytes.extend(cert.armored().to_vec().unwrap());
    }
    Keyring::parse(Path::new("/etc/troops/trusted.pgp"), &bytes).unwrap().at(now())
}

/// A keyring with one certificate nothing here signs with.
fn keyring() -> Keyring {
    use std::sync::OnceLock;
    static CERT: OnceLock<Cert> = OnceLock::new();
    keyring_of(&[CERT.get_or_init(|| cert("Nobody <nobody@example.com>", DAY, None).0)])
}

const PAYLOAD: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmessage\n";

#[test]
fn a_good_signature_names_the_certificate_and_its_user_id() {
    let (alice, _) = cert("Alice <alice@example.com>", 10 * DAY, Some(365 * DAY));
    let (bob, _) = cert("Bob <bob@example.com>", DAY, None);
    let keyring = keyring_of(&[&bob, &alice]);
    let verification = keyring.verify(Oid::zero(), PAYLOAD, Some(&sign(&alice, PAYLOAD, now() - DAY, false)));
    assert_eq!(
        verification,
        Verification::Good {
            fingerprint: alice.fingerprint().to_hex(),
            user_id: Some("Alice <alice@example.com>".into())
        }
    );
    assert_eq!(
        verification.to_string(),
        format!("is signed by {} (Alice <alice@example.com>)", alice.fingerprint().to_hex())
    );

    // Binary (not armored) signatures and keyrings are read too.
    let armored = sign(&alice, PAYLOAD, now() - DAY, false);
    let binary = PacketPile::from_bytes(&armored).unwrap().to_vec().unwrap();
    assert!(keyring.verify(Oid::zero(), PAYLOAD, Some(&binary)).is_good());
    let binary_ring = [alice.to_vec().unwrap(), bob.to_vec().unwrap()].concat();
    let keyring = Keyring::parse(Path::new("k"), &binary_ring).unwrap().at(now());
    assert_eq!(keyring.fingerprints().len(), 2);
    assert!(keyring.verify(Oid::zero(), PAYLOAD, Some(&armored)).is_good());
}

#[test]
fn every_other_outcome_is_refused_with_its_own_reason() {
    let (alice, alice_revocation) = cert("Alice <alice@example.com>", 10 * DAY, None);
    let (stranger, _) = cert("Stranger <s@example.com>", DAY, None);
    let (old, _) = cert("Old <old@example.com>", 10 * DAY, Some(DAY));
    let keyring = keyring_of(&[&alice, &old]);
    let signed = sign(&alice, PAYLOAD, now() - DAY, false);

    assert_eq!(keyring.verify(Oid::zero(), PAYLOAD, None), Verification::Unsigned);

    let unknown = keyring.verify(Oid::zero(), PAYLOAD, Some(&sign(&stranger, PAYLOAD, now() - DAY, false)));
    let stranger_key = stranger.keys().subkeys().next().unwrap().key().fingerprint().to_hex();
    assert_eq!(
        unknown,
        Verification::UnknownKey { issuer: stranger_key, list: "/etc/troops/trusted.pgp".into() }
    );

    let tampered = keyring.verify(
        Oid::zero(),
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmessagE\n",
        Some(&signed),
    );
    assert!(matches!(&tampered, Verification::Bad { reason } if reason.contains("altered")), "{tampered:?}");

    // Signed while it was good; it has expired since.
    let expired = keyring.verify(
        Oid::zero(),
        PAYLOAD,
        Some(&sign(&old, PAYLOAD, now() - 10 * DAY + 3600 * Duration::from_secs(1), false)),
    );
    assert_eq!(expired, Verification::Expired { fingerprint: old.fingerprint().to_hex() });

    let revoked_keyring = keyring_of(&[&alice.clone().insert_packets(alice_revocation).unwrap().0]);
    assert_eq!(
        revoked_keyring.verify(Oid::zero(), PAYLOAD, Some(&signed)),
        Verification::Revoked { fingerprint: alice.fingerprint().to_hex() }
    );

    // The primary key of these certificates only certifies.
    let by_primary = keyring.verify(Oid::zero(), PAYLOAD, Some(&sign(&alice, PAYLOAD, now() - DAY, true)));
    assert!(
        matches!(&by_primary, Verification::Bad { reason } if reason.contains("not a signing key")),
        "{by_primary:?}"
    );

    let future = keyring.verify(Oid::zero(), PAYLOAD, Some(&sign(&alice, PAYLOAD, now() + DAY, false)));
    assert!(
        matches!(&future, Verification::Bad { reason } if reason.contains("in the future")),
        "{future:?}"
    );

    let ssh = keyring.verify(
        Oid::zero(),
        PAYLOAD,
        Some(b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"),
    );
    assert!(matches!(&ssh, Verification::Bad { reason } if reason.contains("SSH signature")), "{ssh:?}");
    assert_eq!(keyring.verify(Oid::zero(), PAYLOAD, Some(b"")).kind(), "bad");

    let kinds: std::collections::BTreeSet<_> = [
        Verification::Unsigned,
        unknown,
        tampered,
        expired,
        Verification::Revoked { fingerprint: String::new() },
    ]
    .iter()
    .map(|v| v.to_string())
    .collect();
    assert_eq!(kinds.len(), 5, "each refusal reads differently: {kinds:?}");
}

#[test]
fn keyring_errors_name_the_file() {
    let missing = Keyring::load(Path::new("/nonexistent/trusted.pgp")).err().unwrap();
    assert_eq!(missing.exit(), crate::model::error::Exit::Environment);
    assert!(missing.to_string().contains("/nonexistent/trusted.pgp"), "{missing}");

    let garbage = Keyring::parse(Path::new("/etc/k.pgp"), b"\x99\x01garbage").err().unwrap();
    assert_eq!(garbage.exit(), crate::model::error::Exit::Input);
    assert!(garbage.to_string().contains("/etc/k.pgp"), "{garbage}");

    let empty = Keyring::parse(Path::new("/etc/k.pgp"), b"").err().unwrap();
    assert!(empty.to_string().contains("holds no OpenPGP certificates"), "{empty}");
}

#[test]
fn the_claimed_key_of_a_signature_is_its_issuer_and_fits_in_a_ref_name() {
    let (alice, _) = cert("Alice <alice@example.com>", 10 * DAY, Some(365 * DAY));
    let by_subkey = claimed_key(&sign(&alice, PAYLOAD, now() - DAY, false)).unwrap();
    let by_primary = claimed_key(&sign(&alice, PAYLOAD, now() - DAY, true)).unwrap();
    let keys: Vec<String> = alice.keys().map(|k| k.key().fingerprint().to_hex()).collect();
    assert!(keys.contains(&by_subkey) && keys.contains(&by_primary), "{by_subkey} {by_primary} {keys:?}");
    assert_eq!(by_primary, alice.fingerprint().to_hex());
    for garbage in
        [&b""[..], b"not a signature", b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"]
    {
        assert_eq!(claimed_key(garbage), None);
    }
}
