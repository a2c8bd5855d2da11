//! SSH for fetching: the node's own key (and an agent, if one is set up) as credentials, and
//! host keys checked against `<state>/ssh/known_hosts`, never trusted on first use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{Cred, CredentialType, RemoteCallbacks};

/// Where a remote URL points: `host` for port 22, else `[host]:port`, as known_hosts writes it.
pub fn known_hosts_name(url: &str) -> Option<String> {
    let (host, port) =
        if let Some(rest) = url.strip_prefix("ssh://").or_else(|| url.strip_prefix("git+ssh://")) {
            let authority = rest.split('/').next()?;
            let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match hostport.rsplit_once(':') {
                Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    (host.trim_matches(['[', ']']), port.parse().ok()?)
                }
                _ => (hostport.trim_matches(['[', ']']), 22),
            }
        } else {
            // scp-like: [user@]host:path
            let (hostpart, _) = url.split_once(':')?;
            (hostpart.rsplit_once('@').map_or(hostpart, |(_, h)| h), 22)
        };
    Some(if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") })
}

/// Sets the credential and host key callbacks for fetching `url` with the keys in `ssh_dir`.
/// libgit2 replaces a refused host key's reason with a generic message; the returned cell keeps
/// ours, for the caller to report instead.
pub fn callbacks(
    callbacks: &mut RemoteCallbacks<'_>,
    url: &str,
    ssh_dir: &Path,
) -> Arc<Mutex<Option<String>>> {
    let refusal = Arc::new(Mutex::new(None));
    let refused = refusal.clone();
    let key = ssh_dir.join("id_ed25519");
    let known_hosts = ssh_dir.join("known_hosts");
    let host = known_hosts_name(url);
    let mut attempts = 0;
    callbacks.credentials(move |_url, username, allowed| {
        let user = username.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        attempts += 1;
        match attempts {
            1 if key.is_file() => Cred::ssh_key(user, None, &key, None),
            1 | 2 if std::env::var_os("SSH_AUTH_SOCK").is_some() => Cred::ssh_key_from_agent(user),
            _ => Err(git2::Error::from_str(&format!(
                "{} and the SSH agent were refused as user {user}",
                key.display()
            ))),
        }
    });
    callbacks.certificate_check(move |cert, _| {
        let Some(hostkey) = cert.as_hostkey() else {
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
        };
        let (Some(kind), Some(blob), Some(host)) =
            (hostkey.hostkey_type(), hostkey.hostkey(), host.as_deref())
        else {
            return Err(git2::Error::from_str("the SSH server sent no usable host key"));
        };
        check_host_key(&known_hosts, host, kind.name(), blob)
            .map(|()| git2::CertificateCheckStatus::CertificateOk)
            .map_err(|m| {
                *refused.lock().unwrap() = Some(m.clone());
                git2::Error::from_str(&m)
            })
    });
    refusal
}

/// Accepts `key` for `host` only if `known_hosts` lists exactly that key for it.
fn check_host_key(known_hosts: &PathBuf, host: &str, kind: &str, key: &[u8]) -> Result<(), String> {
    let text = std::fs::read_to_string(known_hosts).unwrap_or_default();
    let encoded = base64(key);
    let mut listed = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(line_kind), Some(line_key)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !hosts.split(',').any(|h| h == host) {
            continue;
        }
        if line_kind == kind && line_key == encoded {
            return Ok(());
        }
        listed = true;
    }
    let scan = match host.strip_prefix('[').and_then(|h| h.split_once("]:")) {
        Some((name, port)) => format!("ssh-keyscan -p {port} {name}"),
        None => format!("ssh-keyscan {host}"),
    };
    Err(if listed {
        format!(
            "the {kind} host key of {host} does not match {}; refusing to fetch (was the server replaced?)",
            known_hosts.display()
        )
    } else {
        format!(
            "unknown host {host}: its {kind} key is not in {}; check it and add it, e.g. `{scan} >> {}`",
            known_hosts.display(),
            known_hosts.display()
        )
    })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_names_follow_openssh() {
        assert_eq!(
            known_hosts_name("ssh://git@127.0.0.1:2222/srv/r.git").as_deref(),
            Some("[127.0.0.1]:2222")
        );
        assert_eq!(known_hosts_name("ssh://example.com/r.git").as_deref(), Some("example.com"));
        assert_eq!(known_hosts_name("git@example.com:r.git").as_deref(), Some("example.com"));
        assert_eq!(known_hosts_name("ssh://u@[::1]:22/r").as_deref(), Some("::1"));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn host_keys_must_be_listed_and_match() {
        let dir = std::env::temp_dir().join(format!("troops-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("known_hosts");
        std::fs::write(
            &path,
            format!("# c\nother ssh-ed25519 AAAA\n[h]:2,h2 ssh-ed25519 {}\n", base64(b"key")),
        )
        .unwrap();
        assert_eq!(check_host_key(&path, "[h]:2", "ssh-ed25519", b"key"), Ok(()));
        assert!(check_host_key(&path, "h2", "ssh-ed25519", b"bad").unwrap_err().contains("does not match"));
        assert!(check_host_key(&path, "nope", "ssh-ed25519", b"key")
            .unwrap_err()
            .contains("unknown host nope"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
