//! SSH signatures on commits (`gpg.format=ssh`), checked against an allowed-signers file in git's
//! format (`[verify] allowed_signers`), so teams that sign with SSH keys get the same guarantee
//! as with OpenPGP: only a key the node lists, for namespace `git`, within its validity window.
//!
//! A line is `principals [options] keytype base64 [comment]`; the options understood are
//! `namespaces="a,b"`, `valid-after="YYYYMMDD[HHMM[SS]][Z]"` and `valid-before=...` (without `Z`,
//! local time, as ssh-keygen reads them). Any other option (`cert-authority` included: keys
//! signed by a CA are not supported) is refused with the file and line, so a file that means more
//! than troops understands never verifies less than its author intended.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::mech::verify::Verification;
use crate::model::error::{Context, Error, Result};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
pub const NAMESPACE: &str = "git";

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
struct Entry {
    /// The principals as written (comma-separated patterns), reported as who signed.
    principals: String,
    /// `None`: every namespace.
    namespaces: Option<Vec<String>>,
    valid_after: Option<SystemTime>,
    valid_before: Option<SystemTime>,
    key: PublicKey,
}

impl Entry {
    fn allows(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|list| list.iter().any(|n| n == namespace))
    }

    fn valid_at(&self, at: SystemTime) -> bool {
        self.valid_after.is_none_or(|after| at >= after)
            && self.valid_before.is_none_or(|before| at <= before)
    }

    fn window(&self) -> String {
        let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        match (time(self.valid_after), time(self.valid_before)) {
            (Some(a), Some(b)) => format!("from {a} to {b}"),
            (Some(a), None) => format!("from {a}"),
            (None, Some(b)) => format!("until {b}"),
            (None, None) => "always".into(),
        }
    }
}

/// The keys a node trusts for SSH signatures (`[verify] allowed_signers`).
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Reads the file at `path`: unreadable is the environment's fault (exit 3); a line troops
    /// cannot read or an option it does not know is the configuration's (exit 2, file and line).
    pub fn load(path: &Path) -> Result<AllowedSigners> {
        let text = std::fs::read_to_string(path)
            .ctx(|| format!("reading the allowed signers {} ([verify] allowed_signers)", path.display()))?;
        AllowedSigners::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AllowedSigners> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line).map_err(|message| Error::Config {
                path: path.to_owned(),
                line: index + 1,
                column: 1,
                message,
            })?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(Error::Input(format!("the allowed signers file {} lists no keys", path.display())));
        }
        Ok(AllowedSigners { path: path.to_owned(), entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks an armored SSH signature over `payload`, the key's validity judged at `seen`.
    pub fn verify(&self, payload: &[u8], signature: &[u8], seen: SystemTime) -> Verification {
        let bad = |reason: String| Verification::Bad { reason };
        let sig = match read_signature(signature) {
            Ok(sig) => sig,
            Err(e) => return bad(e),
        };
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let listed: Vec<&Entry> =
            self.entries.iter().filter(|e| e.key.key_data() == sig.public_key()).collect();
        if listed.is_empty() {
            return Verification::UnknownKey { issuer: fingerprint, list: self.path.clone() };
        }
        if sig.namespace() != NAMESPACE {
            let detail = format!("it was made for namespace {:?}, not {NAMESPACE:?}", sig.namespace());
            return Verification::WrongNamespace { fingerprint, detail };
        }
        let Some(entry) = listed.iter().find(|e| e.allows(NAMESPACE)) else {
            let detail = format!(
                "{} allows this key only for other namespaces than {NAMESPACE:?}",
                self.path.display()
            );
            return Verification::WrongNamespace { fingerprint, detail };
        };
        if let Err(e) = check(&entry.key, payload, &sig) {
            return bad(e);
        }
        let Some(entry) = listed.iter().find(|e| e.allows(NAMESPACE) && e.valid_at(seen)) else {
            return Verification::OutsideWindow {
                fingerprint,
                principal: entry.principals.clone(),
                window: entry.window(),
                seen: humantime::format_rfc3339_seconds(seen).to_string(),
            };
        };
        Verification::GoodSsh { fingerprint, principal: entry.principals.clone() }
    }
}

/// The armored SSH signature `signature` (a `gpgsig` header's), read; or why it cannot be.
pub fn read_signature(signature: &[u8]) -> std::result::Result<SshSig, String> {
    SshSig::from_pem(signature).map_err(|e| format!("it is not a readable SSH signature ({e})"))
}

/// Whether `sig`, made by `key` for namespace `git`, verifies over `payload`; the error says so.
pub fn check(key: &PublicKey, payload: &[u8], sig: &SshSig) -> std::result::Result<(), String> {
    key.verify(NAMESPACE, payload, sig).map_err(|e| {
        format!(
            "it does not verify with key {} ({e}): the commit or its signature was altered",
            key.fingerprint(HashAlg::Sha256)
        )
    })
}

/// One non-empty, non-comment line, or what is wrong with it.
fn parse_line(line: &str) -> std::result::Result<Entry, String> {
    let (principals, rest) = split_field(line);
    let rest = rest.trim_start();
    let (options, key_text) = if looks_like_key_type(rest) {
        ("", rest)
    } else {
        let (options, rest) = split_field(rest);
        (options, rest.trim_start())
    };
    if principals.is_empty() || key_text.is_empty() {
        return Err("expected `principals [options] keytype base64-key`".into());
    }
    let key = PublicKey::from_openssh(key_text).map_err(|e| format!("the key cannot be read ({e})"))?;
    let mut entry = Entry {
        principals: principals.to_owned(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key,
    };
    for option in split_options(options)? {
        let (name, value) = option.split_once('=').unwrap_or((option.as_str(), ""));
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => entry.namespaces = Some(value.split(',').map(|n| n.trim().to_owned()).collect()),
            "valid-after" => entry.valid_after = Some(parse_time(value)?),
            "valid-before" => entry.valid_before = Some(parse_time(value)?),
            _ => {
                return Err(format!(
                    "unknown option `{name}` (troops understands namespaces, valid-after and valid-before)"
                ))
            }
        }
    }
    Ok(entry)
}

/// The first whitespace-separated field (double quotes group) and the rest of the line.
fn split_field(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], &text[i..]),
            _ => {}
        }
    }
    (text, "")
}

fn looks_like_key_type(text: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"].iter().any(|prefix| text.starts_with(prefix))
}

/// The comma-separated options, commas inside double quotes kept.
fn split_options(text: &str) -> std::result::Result<Vec<String>, String> {
    let (mut options, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quote in the options `{text}`"));
    }
    if !text.is_empty() {
        options.push(current);
    }
    Ok(options)
}

/// `YYYYMMDD[HHMM[SS]][Z]`: with `Z` UTC, without it the node's local time.
fn parse_time(text: &str) -> std::result::Result<SystemTime, String> {
    let bad = || format!("`{text}` is not a time of the form YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field =
        |range: std::ops::Range<usize>| digits.get(range).map_or(0, |d| d.parse::<i32>().unwrap_or(0));
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
    let rfc3339 = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z");
    let as_utc = humantime::parse_rfc3339(&rfc3339).map_err(|_| bad())?;
    if utc {
        return Ok(as_utc);
    }
    // Local time: the same wall clock, shifted by the zone's offset at that time.
    let secs = as_utc.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return Err(bad());
    }
    let offset = tm.tm_gmtoff;
    let local = if offset >= 0 {
        as_utc.checked_sub(Duration::from_secs(offset as u64))
    } else {
        as_utc.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    local.ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxhyCUgTmgjp1bD7ctoKHvuDOPw3TWJfYGQLORSq0uS";

    fn parse(text: &str) -> Result<AllowedSigners> {
        AllowedSigners::parse(Path::new("/etc/troops/allowed_signers"), text)
    }

    #[test]
    fn reads_git_lines_with_and_without_options() {
        let text = format!(
            "# team\n\nalice@example.com {KEY} alice\nbob@example.com,carol@example.com namespaces=\"git,file\",valid-after=\"20240101\",valid-before=\"20300101Z\" {KEY}\n"
        );
        let signers = parse(&text).unwrap();
        assert_eq!(signers.entries.len(), 2);
        let bob = &signers.entries[1];
        assert_eq!(bob.namespaces.as_deref(), Some(&["git".to_owned(), "file".to_owned()][..]));
        assert_eq!(bob.valid_before, Some(humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap()));
        assert!(bob.valid_after.is_some() && bob.allows("git") && !bob.allows("other"));
    }

    #[test]
    fn unknown_options_and_bad_lines_name_file_and_line() {
        for (text, expect) in [
            (format!("a {KEY}\nb cert-authority {KEY}\n"), "2:1: unknown option `cert-authority`"),
            (format!("a valid-after=\"2024\" {KEY}\n"), "1:1: `2024` is not a time"),
            ("a ssh-ed25519 notbase64\n".to_owned(), "1:1: the key cannot be read"),
            ("justaprincipal\n".to_owned(), "1:1: expected"),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.exit(), crate::model::error::Exit::Input, "{text}");
            let message = e.to_string();
            assert!(message.starts_with("/etc/troops/allowed_signers:"), "{message}");
            assert!(message.contains(expect), "{message} lacks {expect}");
        }
        assert!(parse("# nothing\n").unwrap_err().to_string().contains("lists no keys"));
    }

    /// Signs `payload` with a new key of `kind` (ssh-keygen -t/-b) in `namespace`, as git does;
    /// returns the public key line and the armored signature.
    fn ssh_keygen_sign(dir: &Path, kind: &[&str], namespace: &str, payload: &[u8]) -> (String, Vec<u8>) {
        let key = dir.join(format!("{}-{namespace}", kind.join("")));
        let run = |command: &mut std::process::Command| {
            let out = command.output().unwrap();
            assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(std::process::Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t"])
            .args(kind)
            .arg("-f")
            .arg(&key));
        let file = key.with_extension("payload");
        std::fs::write(&file, payload).unwrap();
        run(std::process::Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(&key)
            .arg(&file));
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        (public, std::fs::read(format!("{}.sig", file.display())).unwrap())
    }

    #[test]
    fn ed25519_rsa_and_ecdsa_signatures_of_ssh_keygen_verify() {
        let dir = tempfile::tempdir().unwrap();
        let payload = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmessage\n";
        let now = SystemTime::now();
        for kind in
            [&["ed25519"][..], &["rsa", "-b", "3072"], &["ecdsa", "-b", "256"], &["ecdsa", "-b", "384"]]
        {
            let (public, signature) = ssh_keygen_sign(dir.path(), kind, NAMESPACE, payload);
            let signers = parse(&format!("dev@example.com {public}")).unwrap();
            let good = signers.verify(payload, &signature, now);
            assert!(
                matches!(&good, Verification::GoodSsh { principal, .. } if principal == "dev@example.com"),
                "{kind:?}: {good:?}"
            );
            assert_eq!(signers.verify(b"tampered", &signature, now).kind(), "bad", "{kind:?}");
            let (_, other) = ssh_keygen_sign(dir.path(), kind, "file", payload);
            assert_eq!(signers.verify(payload, &other, now).kind(), "unknown_key", "{kind:?}: a new key");
        }
        let (public, signature) = ssh_keygen_sign(dir.path(), &["ed25519"], "other", payload);
        let signers = parse(&format!("dev@example.com {public}")).unwrap();
        assert_eq!(signers.verify(payload, &signature, now).kind(), "wrong_namespace");
    }

    #[test]
    fn the_claimed_key_of_an_ssh_signature_is_its_fingerprint_as_a_ref_name_holds_it() {
        for _ in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let (public, signature) = ssh_keygen_sign(dir.path(), &["ed25519"], NAMESPACE, b"payload");
            let key: PublicKey = public.trim().parse().unwrap();
            let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
            let claimed = crate::mech::verify::claimed_key(&signature).unwrap();
            let want = fingerprint.replace("SHA256:", "SHA256-").replace('/', "_").replace('+', "-");
            assert_eq!(claimed, want);
            assert!(
                git2::Reference::is_valid_name(&format!("refs/troops/approve/c/w/{claimed}")),
                "{claimed}"
            );
        }
    }

    #[test]
    fn the_window_is_judged_at_the_time_given_not_now() {
        let dir = tempfile::tempdir().unwrap();
        let (public, signature) = ssh_keygen_sign(dir.path(), &["ed25519"], NAMESPACE, b"payload");
        let line =
            format!("dev@example.com valid-after=\"20200101Z\",valid-before=\"20300101000000Z\" {public}");
        let signers = parse(&line).unwrap();
        let at = |t: &str| humantime::parse_rfc3339(t).unwrap();
        assert!(signers.verify(b"payload", &signature, at("2025-06-01T00:00:00Z")).is_good());
        for outside in ["2019-12-31T23:59:59Z", "2030-01-01T00:00:01Z"] {
            let verification = signers.verify(b"payload", &signature, at(outside));
            assert_eq!(verification.kind(), "outside_window", "{outside}");
            let said = verification.to_string();
            assert!(said.contains("from 2020-01-01T00:00:00Z to 2030-01-01T00:00:00Z"), "{said}");
            assert!(said.contains(&format!("first saw it at {outside}")), "{said}");
        }
    }
}
