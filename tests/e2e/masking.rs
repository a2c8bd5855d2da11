//! A secret value never leaks through troops' own words: a failed health check quotes what a
//! service answered and shows the end of what a command printed, and those go to the pusher,
//! output.log, run.json, the notify command and the published status document. A value holding
//! `"` and `\`, answered raw and JSON-escaped, or cut across by the 4 KiB a `run` check shows, is
//! masked in all five.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::http::HttpServer;
use crate::support::{text, wait_until, DeployRepo, Env, BUDGET};

/// The secret: quotes, a backslash and a non-ASCII letter, so that escaping it changes it; its
/// words appear nowhere else, so that any of them showing, in any encoding or cut, is a leak.
const VALUE: &str = r#"K9"quux\Zebra-Kumquat"7ü"#;
const WORDS: [&str; 3] = ["quux", "Zebra", "Kumquat"];

/// A node `web-1` that publishes its status to a bare repo and saves what its notify command
/// hears in `notified/<run>.json`; and the deploy repo, with the node's key and the secret.
struct Node {
    env: Env,
    repo: DeployRepo,
    status: PathBuf,
    /// Where its runs decrypt: a tmpfs (`/run` is not one everywhere).
    _secrets: tempfile::TempDir,
}

fn node() -> Node {
    let env = Env::new();
    let notified = env.path("notified");
    std::fs::create_dir_all(&notified).unwrap();
    let notify = format!("cat > {}/$TROOPS_RUN_ID.json", notified.display());
    let secrets = tempfile::Builder::new().prefix("troops-e2e-").tempdir_in("/dev/shm").unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\nstatus_remote = \"status\"\nsecrets_dir = \"{}\"\n[notify]\ncommand = {notify:?}\ntimeout = \"10s\"\n",
        secrets.path().join("secrets").display()
    ));
    env.init();
    let status = env.path("status.git");
    env.git(env.tmp.path(), &["init", "-q", "--bare", &status.display().to_string()]);
    env.git(&env.repo(), &["remote", "add", "status", &status.display().to_string()]);

    let repo = env.deploy_repo("deploy");
    let key = env.state.join("ssh/id_ed25519.pub");
    std::fs::create_dir_all(repo.path.join("keys")).unwrap();
    std::fs::copy(key, repo.path.join("keys/web-1.pub")).unwrap();
    repo.commit(&env, &[("troops.toml", &plan(""))], "keys");
    let plaintext = env.path("plain");
    std::fs::write(&plaintext, VALUE).unwrap();
    let out = env
        .troops(&["secrets", "encrypt", "--allow-no-admin", "db", &plaintext.display().to_string()])
        .current_dir(&repo.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::remove_file(&plaintext).unwrap();
    Node { env, repo, status, _secrets: secrets }
}

fn plan(check: &str) -> String {
    format!(
        "[[secret]]\nname = \"db\"\nfile = \"secrets/db.age\"\nhosts = [\"web-1\"]\n\n\
         [[step]]\nname = \"build\"\nrun = \"echo built\"\n\n{check}"
    )
}

impl Node {
    /// Pushes `check` as the plan's check; returns what the pusher saw.
    fn push(&self, check: &str, message: &str) -> String {
        self.repo.commit(&self.env, &[("troops.toml", &plan(check))], message);
        let out = self.repo.push(&self.env, &self.env.repo().display().to_string(), &["HEAD:main"]);
        let said = text(&out.stderr);
        assert!(out.status.success(), "{said}");
        said
    }

    /// The status document published after run `id`, as its JSON text.
    fn published(&self, id: u64) -> String {
        let mut doc = String::new();
        wait_until(&format!("the status of run {id} published"), Duration::from_secs(20), || {
            let mut command = std::process::Command::new("git");
            self.env.hermetic(&mut command);
            let out = command
                .arg("--git-dir")
                .arg(&self.status)
                .args(["show", "refs/troops/status/web-1:status.json"])
                .output()
                .unwrap();
            doc = text(&out.stdout);
            serde_json::from_str::<serde_json::Value>(&doc).is_ok_and(|d| d["run"]["id"] == id)
        });
        doc
    }

    /// Run `id` failed on check `name`, and not one word of the value is in any place troops
    /// writes what the check said: the pusher's output `said`, output.log, run.json, what the
    /// notify command read, the status document. Where troops quoted the value, `[secret:db]`
    /// stands in its place: in the first two, or with `quoted_everywhere` in all.
    fn assert_masked(&self, id: u64, name: &str, said: &str, quoted_everywhere: bool) {
        let record_path = self.env.state.join(format!("runs/{id}/run.json"));
        let record = std::fs::read_to_string(&record_path).unwrap();
        let error = self.env.run_record(id)["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.starts_with(&format!("check `{name}` failed: ")), "{error}");
        // Nobody waits for the notify command: it comes when it comes, whole once it parses.
        let path = self.env.path(&format!("notified/{id}.json"));
        let mut notified = String::new();
        wait_until("the notify command's record", BUDGET, || {
            notified = std::fs::read_to_string(&path).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&notified).is_ok()
        });
        let places = [
            ("the pusher's output", said.to_owned()),
            ("output.log", self.env.run_log(id)),
            ("run.json", record),
            ("the notify command's stdin", notified),
            ("the status document", self.published(id)),
        ];
        for (i, (place, shown)) in places.iter().enumerate() {
            for word in WORDS {
                assert!(!shown.contains(word), "{word:?} of the secret is in {place}:\n{shown}");
            }
            if i < 2 || quoted_everywhere {
                assert!(shown.contains("[secret:db]"), "{place} does not say where the secret was:\n{shown}");
            }
        }
    }
}

#[test]
fn a_failed_http_check_quoting_a_secret_raw_and_json_escaped_leaks_it_nowhere() {
    let node = node();
    // The service echoes its config: the value raw, and in JSON as serde_json writes it and as
    // Python's json.dumps does (ensure_ascii: `ü` as `\u00fc`).
    let minimal = serde_json::to_string(VALUE).unwrap();
    let ascii = minimal.replace('ü', "\\u00fc");
    let body = format!("password={VALUE}\n{{\"password\": {minimal}}}\n{{\"password\": {ascii}}}");
    let server = HttpServer::answering(500, &body);
    let check = format!("[[check]]\nname = \"web\"\nhttp = \"{}\"\nretries = 1\n", server.url("/health"));
    let said = node.push(&check, "web check");
    assert!(said.contains("remote: ==> check web failed: GET "), "{said}");
    assert!(
        said.contains("answered 500: \"password=[secret:db]\\n{\\\"password\\\": \\\"[secret:db]\\\"}"),
        "{said}"
    );
    node.assert_masked(1, "web", &said, true);
}

#[test]
fn a_failed_run_check_cut_across_a_secret_at_4_kib_leaks_no_part_of_it() {
    let node = node();
    // The value, then so much that the last 4 KiB of the output begin 11 bytes into it.
    let filler = 4096 - 12;
    let check = format!(
        "[[check]]\nname = \"leaky\"\nrun = '''cat \"$TROOPS_SECRETS/db\"; head -c {filler} /dev/zero | tr '\\0' x; exit 1'''\nretries = 1\n"
    );
    let said = node.push(&check, "run check");
    assert!(said.contains("remote: ==> check leaky failed: `cat"), "{said}");
    assert!(said.contains("remote: [secret:db]xxxx"), "{said}");
    node.assert_masked(1, "leaky", &said, false);
    // What the check printed is in the log, masked, after the line of the probe that failed; it
    // ends without a newline, troops' next line does not.
    let log = node.env.run_log(1);
    assert!(log.contains("==> check leaky: probe 1 failed: `cat"), "{log}");
    assert!(log.contains(&format!("\n[secret:db]{}\n==> check leaky failed", "x".repeat(filler))), "{log}");
}
