//! SSH for fetching, through OpenSSH (which the `git` command runs): the node's own key, never an
//! agent of whoever started troops (`env`), and host keys checked against `<state>/ssh/known_hosts`
//! alone, never trusted on first use. OpenSSH rather than libgit2's libssh2 keeps OpenSSL out of the daemon and
//! gives operators the SSH they know: their `ssh_config`, jump hosts, every key type.

use std::path::Path;
use std::time::Duration;

/// Whether `url` is fetched over SSH: `ssh://`, `git+ssh://`, `ssh+git://`, or scp-like `[user@]host:path`.
pub fn is_ssh(url: &str) -> bool {
    match url.split_once("://") {
        Some((scheme, _)) => matches!(scheme, "ssh" | "git+ssh" | "ssh+git"),
        // scp-like when a colon comes before any slash (a local path has none there).
        None => url.split('/').next().is_some_and(|first| first.contains(':')),
    }
}

/// Where a remote URL points: `host` for port 22, else `[host]:port`, as known_hosts writes it.
pub fn known_hosts_name(url: &str) -> Option<String> {
    let (host, port) = if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next()?;
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                (host.trim_matches(['[', ']']), port.parse().ok()?)
            }
            _ => (hostport.trim_matches(['[', ']']), 22),
        }
    } else {
        let (hostpart, _) = url.split_once(':')?;
        (hostpart.rsplit_once('@').map_or(hostpart, |(_, h)| h), 22)
    };
    Some(if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") })
}

/// The `GIT_SSH_COMMAND` for fetching with the key in `ssh_dir`: no prompts, host keys from
/// `ssh_dir/known_hosts` only, and a connection that gives up after `timeout`.
pub fn command(ssh_dir: &Path, timeout: Duration) -> String {
    format!(
        "ssh -i {} -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
         -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout={}",
        quote(&ssh_dir.join("id_ed25519")),
        quote(&ssh_dir.join("known_hosts")),
        timeout.as_secs().max(1)
    )
}

/// Our sentence for a host key that OpenSSH refused (its `stderr` says so), naming the host and
/// what to do; `None` when the failure was something else.
pub fn host_key_refusal(url: &str, stderr: &str, ssh_dir: &Path) -> Option<String> {
    if !stderr.contains("Host key verification failed") {
        return None;
    }
    let host = known_hosts_name(url).unwrap_or_else(|| url.to_owned());
    let known_hosts = ssh_dir.join("known_hosts");
    Some(if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        format!(
            "the host key of {host} does not match {}; refusing to fetch (was the server replaced?)",
            known_hosts.display()
        )
    } else {
        let scan = match host.strip_prefix('[').and_then(|h| h.split_once("]:")) {
            Some((name, port)) => format!("ssh-keyscan -p {port} {name}"),
            None => format!("ssh-keyscan {host}"),
        };
        format!(
            "unknown host {host}: its key is not in {}; check it and add it, e.g. `{scan} >> {}`",
            known_hosts.display(),
            known_hosts.display()
        )
    })
}

/// `path` single-quoted for the shell that git runs `GIT_SSH_COMMAND` with.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_are_told_from_local_paths() {
        for url in ["ssh://h/r.git", "git+ssh://h/r", "git@example.com:r.git", "h:r"] {
            assert!(is_ssh(url), "{url}");
        }
        for url in ["/srv/r.git", "./a:b", "file:///srv/r", "git://h/r", "https://h/r"] {
            assert!(!is_ssh(url), "{url}");
        }
    }

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
    fn the_command_quotes_its_paths() {
        let command = command(Path::new("/var/it's"), Duration::from_millis(10));
        assert!(command.starts_with(r"ssh -i '/var/it'\''s/id_ed25519' "), "{command}");
        assert!(command.ends_with("ConnectTimeout=1"), "{command}");
    }

    #[test]
    fn refused_host_keys_are_named() {
        let dir = Path::new("/s/ssh");
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict \
                       checking.\nHost key verification failed.\nfatal: Could not read from remote repository.";
        let said = host_key_refusal("ssh://u@127.0.0.1:2222/r", unknown, dir).unwrap();
        assert!(
            said.starts_with("unknown host [127.0.0.1]:2222: its key is not in /s/ssh/known_hosts"),
            "{said}"
        );
        assert!(said.contains("`ssh-keyscan -p 2222 127.0.0.1 >> /s/ssh/known_hosts`"), "{said}");
        let changed = "@@@\nWARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!\nHost key verification failed.";
        assert!(host_key_refusal("git@h:r", changed, dir).unwrap().contains("host key of h does not match"));
        assert_eq!(host_key_refusal("git@h:r", "Permission denied (publickey).", dir), None);
    }
}
