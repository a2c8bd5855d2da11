//! Operators' signed orders, end to end: `troops freeze` in a clone, signed with a real SSH key by
//! git, holds three nodes that pull from one remote (status, status document, metrics say who
//! froze it and why), a person's deploy still runs, `troops unfreeze` lets them go, and the old
//! freeze pushed again is refused as a replay; unsigned, untrusted and unverifiable freezes are
//! ignored and said so; a wave with `approve = true` waits for a trusted approval (an untrusted
//! one does not count) and then runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{combined, pull_deploys, ssh_keygen, text, wait_until, DeployRepo, Env};

const PLAN: &str = "[[step]]\nname = \"apply\"\nrun = \"true\"\n";

/// An SSH key made by ssh-keygen, and its allowed-signers line.
struct Key {
    path: PathBuf,
    line: String,
}

fn key(env: &Env, name: &str) -> Key {
    let path = env.path(name);
    ssh_keygen(&path, name);
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    Key { line: format!("{name}@example.com {}", public.trim()), path }
}

/// The operator's clone, pushing to the shared remote `a`, signing with `key`.
fn clone(env: &Env, key: &Key) -> DeployRepo {
    let work = env.deploy_repo("work");
    env.git(&work.path, &["remote", "add", "a", &env.path("a.git").display().to_string()]);
    sign_with(env, &work, key);
    env.git(&work.path, &["config", "user.name", "Alice"]);
    work
}

fn sign_with(env: &Env, work: &DeployRepo, key: &Key) {
    env.git(&work.path, &["config", "gpg.format", "ssh"]);
    env.git(&work.path, &["config", "user.signingkey", &key.path.display().to_string()]);
}

/// `troops ARGS` in the clone `work`.
fn in_clone(env: &Env, work: &DeployRepo, args: &[&str]) -> std::process::Output {
    let mut command = env.troops(args);
    command.current_dir(&work.path);
    command.output().unwrap()
}

/// Nodes `web-1`.. following the remote `a.git` of `hub`, trusting `signers` (an allowed-signers
/// file's text; `None`: no trusted keys at all), metrics in a textfile, publishing their status
/// to `a.git` too.
fn nodes(hub: &Env, count: usize, signers: Option<&str>) -> Vec<Env> {
    let a = hub.bare("a.git");
    (1..=count)
        .map(|n| {
            let env = Env::new();
            let verify = match signers {
                Some(text) => {
                    std::fs::write(env.path("allowed_signers"), text).unwrap();
                    format!("[verify]\nallowed_signers = {:?}\n", env.path("allowed_signers"))
                }
                None => String::new(),
            };
            env.write_config(&format!(
                "hostname = \"web-{n}\"\nstatus_remote = \"a\"\n{verify}[metrics]\ntextfile = {:?}\n",
                env.path("troops.prom")
            ));
            env.ok(&["init", &format!("--remote=a={}", a.display())]);
            env
        })
        .collect()
}

/// The clone gets each node's key at `keys/<host>.pub`, as an operator adds a node: what the
/// fleet's readers check a node's status against.
fn add_keys(hub: &Env, work: &DeployRepo, fleet: &[Env]) {
    let keys: Vec<(String, String)> = fleet
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let key = std::fs::read_to_string(node.state.join("ssh/id_ed25519.pub")).unwrap();
            (format!("keys/web-{}.pub", i + 1), key)
        })
        .collect();
    let files: Vec<(&str, &str)> = keys.iter().map(|(p, k)| (p.as_str(), k.as_str())).collect();
    work.commit(hub, &files, "the nodes' keys");
}

/// The status document `host` published on `a.git`, if any.
fn published(hub: &Env, host: &str) -> Option<Value> {
    let mut command = Command::new("git");
    hub.hermetic(&mut command);
    let out = command
        .arg("--git-dir")
        .arg(hub.path("a.git"))
        .args(["show", &format!("refs/troops/status/{host}:status.json")])
        .output()
        .unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// One node, `web-1`, trusting alice's key and not mallory's.
fn one_node() -> (Env, Key, Key, Vec<Env>) {
    let hub = Env::new();
    let (alice, mallory) = (key(&hub, "alice"), key(&hub, "mallory"));
    let fleet = nodes(&hub, 1, Some(&format!("{}\n", alice.line)));
    (hub, alice, mallory, fleet)
}

fn publish(hub: &Env, work: &DeployRepo) {
    let out = work.push(hub, &hub.path("a.git").display().to_string(), &["--force", "HEAD:main"]);
    assert!(out.status.success(), "{}", combined(&out));
}

fn pull(env: &Env) -> String {
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    combined(&out)
}

fn textfile(env: &Env) -> String {
    std::fs::read_to_string(env.path("troops.prom")).unwrap_or_default()
}

#[test]
fn a_signed_freeze_holds_the_fleet_until_its_lift_and_its_replay_is_refused() {
    let hub = Env::new();
    let alice = key(&hub, "alice");
    let fleet = nodes(&hub, 3, Some(&format!("{}\n", alice.line)));
    let work = clone(&hub, &alice);
    add_keys(&hub, &work, &fleet);
    let first = work.commit(&hub, &[("troops.toml", PLAN)], "first");
    publish(&hub, &work);
    for node in &fleet {
        pull_deploys(node, &first);
    }

    let out = in_clone(&hub, &work, &["freeze", "--until", "2h", "--reason", "year-end freeze"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(combined(&out).contains("troops: froze the fleet until "), "{}", combined(&out));
    let freeze = hub.git(&work.path, &["rev-parse", "refs/troops/freeze"]);
    assert!(hub.git(&work.path, &["cat-file", "commit", &freeze]).contains("-----BEGIN SSH SIGNATURE-----"));

    let second = work.commit(&hub, &[("v", "2")], "second");
    publish(&hub, &work);
    for node in &fleet {
        let said = pull(node);
        assert!(said.contains(&format!("believed the freeze {}", &freeze[..12])), "{said}");
        assert!(
            said.contains(&format!(
                "{} is not run yet: the fleet is frozen by alice@example.com",
                &second[..12]
            )),
            "{said}"
        );
        assert_eq!(node.node_ref("refs/heads/main").as_deref(), Some(second.as_str()), "fetching goes on");
        assert_eq!(node.deployed().as_deref(), Some(first.as_str()), "nothing ran");
        let status = node.ok(&["status"]);
        assert!(status.contains("state     frozen"), "{status}");
        assert!(status.contains("frozen    the fleet is frozen by alice@example.com"), "{status}");
        assert!(status.contains(": year-end freeze"), "{status}");
        let json = node.status_json();
        assert_eq!(json["state"], "frozen");
        assert!(json["fleet"]["frozen"].as_str().unwrap().ends_with("year-end freeze"), "{json}");
        assert!(textfile(node).contains("troops_frozen 1\n"), "{}", textfile(node));
        let preview = node.ok(&["deploy", "--dry-run"]);
        assert!(preview.contains("held: the fleet is frozen by alice@example.com"), "{preview}");
    }

    // The fleet hears it from each node, with the same reason.
    wait_until("web-1's frozen status on the remote", Duration::from_secs(20), || {
        published(&hub, "web-1").is_some_and(|doc| doc["state"] == "frozen")
    });
    let seen = fleet[1].ok(&["fleet"]);
    assert!(seen.contains("web-1: the fleet is frozen by alice@example.com"), "{seen}");

    // A person's deploy is not held.
    let out = fleet[2].run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let said = combined(&out);
    assert!(said.contains("troops: the fleet is frozen by alice@example.com"), "{said}");
    assert!(said.contains(": year-end freeze; a person's deploy runs anyway"), "{said}");
    assert_eq!(fleet[2].deployed().as_deref(), Some(second.as_str()));

    let out = in_clone(&hub, &work, &["unfreeze", "--reason", "all clear"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let lift = hub.git(&work.path, &["rev-parse", "refs/troops/freeze"]);
    assert_eq!(
        hub.git(&work.path, &["rev-parse", &format!("{lift}^")]),
        freeze,
        "the lift continues the chain"
    );
    for node in &fleet {
        let said = pull(node);
        assert!(said.contains(&format!("believed the lift {}", &lift[..12])), "{said}");
        assert_eq!(node.deployed().as_deref(), Some(second.as_str()), "{said}");
        assert!(textfile(node).contains("troops_frozen 0\n"), "{}", textfile(node));
    }

    // Whoever can write the remote puts the old freeze back: every node refuses it.
    let a = hub.path("a.git").display().to_string();
    hub.git(&work.path, &["push", "-q", &a, &format!("+{freeze}:refs/troops/freeze")]);
    let third = work.commit(&hub, &[("v", "3")], "third");
    publish(&hub, &work);
    for node in &fleet {
        let said = pull(node);
        assert!(
            said.contains(&format!("the freeze document {} is refused: it was made at", &freeze[..12])),
            "{said}"
        );
        assert!(said.contains("an older document replayed is refused"), "{said}");
        assert_eq!(node.deployed().as_deref(), Some(third.as_str()), "{said}");
        assert!(node.ok(&["status"]).contains("refused   "), "the refusal is in troops status");
    }
}

/// Makes a freeze commit in `work` that git does not sign (or signs with the clone's key when
/// `signed`), pushes it to `a.git`'s freeze ref, and returns it.
fn plant_freeze(hub: &Env, work: &DeployRepo, signed: bool) -> String {
    let order = "{\n  \"order\": \"freeze\",\n  \"until\": \"2099-01-01T00:00:00Z\",\n  \"reason\": \"planted\",\n  \"by\": \"mallory\",\n  \"at\": \"2098-01-01T00:00:00Z\"\n}\n";
    std::fs::write(hub.path("order.json"), order).unwrap();
    let blob = hub.git(&work.path, &["hash-object", "-w", &hub.path("order.json").display().to_string()]);
    let mut mktree = Command::new("git");
    hub.hermetic(&mut mktree);
    let mut child = mktree
        .current_dir(&work.path)
        .arg("mktree")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("100644 blob {blob}\torder.json\n").as_bytes()).unwrap();
    let tree = text(&child.wait_with_output().unwrap().stdout).trim().to_owned();
    let mut args = vec!["commit-tree", &tree, "-m", "planted"];
    if signed {
        args.insert(1, "-S");
    }
    let commit = hub.git(&work.path, &args);
    let a = hub.path("a.git").display().to_string();
    hub.git(&work.path, &["push", "-q", &a, &format!("+{commit}:refs/troops/freeze")]);
    commit
}

#[test]
fn unsigned_untrusted_and_unverifiable_freezes_are_ignored_and_said_so() {
    let (hub, alice, mallory, fleet) = one_node();
    let node = &fleet[0];
    let work = clone(&hub, &mallory);
    let first = work.commit(&hub, &[("troops.toml", PLAN)], "first");
    publish(&hub, &work);
    pull_deploys(node, &first);

    for (signed, why) in [(false, "is not signed"), (true, "is signed by an unknown key")] {
        let planted = plant_freeze(&hub, &work, signed);
        let next = work.commit(&hub, &[("v", &planted)], "next");
        publish(&hub, &work);
        let said = pull(node);
        let refused =
            format!("the freeze document {} is refused: commit {} {why}", &planted[..12], &planted[..12]);
        assert!(said.contains(&refused), "{said}");
        assert_eq!(node.deployed().as_deref(), Some(next.as_str()), "nothing held: {said}");
        assert!(node.status_json()["fleet"]["frozen"].is_null());
        let status = node.ok(&["status"]);
        assert!(status.contains(&format!("refused   remote a: {refused}")), "{status}");
        assert!(!pull(node).contains("refused"), "a refused document is not checked again at every poll");
    }
    assert!(
        textfile(node).contains("troops_verify_refusals_total{reason=\"order\"} 2\n"),
        "{}",
        textfile(node)
    );

    // A node with no trusted keys at all believes no freeze, and says why.
    let blind = Env::new();
    blind.write_config("hostname = \"web-9\"\n");
    blind.ok(&["init", &format!("--remote=a={}", hub.path("a.git").display())]);
    sign_with(&hub, &work, &alice);
    let signed = in_clone(&hub, &work, &["freeze", "--until", "1h", "--reason", "r"]);
    assert_eq!(signed.status.code(), Some(0), "{}", combined(&signed));
    let said = pull(&blind);
    assert!(said.contains("this node has no trusted keys"), "{said}");
    assert!(said.contains("cannot be verified and are ignored"), "{said}");
    assert!(blind.deployed().is_some(), "{said}");
}

#[test]
fn a_wave_that_wants_approval_runs_a_commit_once_a_trusted_key_approved_it() {
    let (hub, alice, mallory, fleet) = one_node();
    let node = &fleet[0];
    let work = clone(&hub, &alice);
    add_keys(&hub, &work, &fleet);
    let plan =
        format!("{PLAN}[rollout]\nwaves = [{{ name = \"canary\", hosts = [\"web-1\"], approve = true }}]\n");
    let first = work.commit(&hub, &[("troops.toml", &plan)], "first");
    publish(&hub, &work);
    let said = pull(node);
    assert!(said.contains("wave canary waits for 1 more trusted approval(s) of it"), "{said}");
    assert!(said.contains(&format!("troops approve {} --wave canary", &first[..12])), "{said}");
    assert_eq!(node.deployed(), None);
    let status = node.ok(&["status"]);
    assert!(status.contains("approval  wave canary waits for 1 more"), "{status}");
    let preview = node.ok(&["deploy", "--dry-run"]);
    assert!(preview.contains("held: wave canary waits for 1 more trusted approval(s) of it"), "{preview}");
    assert!(node.status_json()["fleet"]["approval"].as_str().unwrap().contains("wave canary waits"));
    assert!(textfile(node).contains("troops_awaiting_approval 1\n"), "{}", textfile(node));
    wait_until("web-1's waiting status on the remote", Duration::from_secs(20), || {
        published(&hub, "web-1").is_some_and(|doc| doc["approval"].is_string())
    });
    let seen = node.ok(&["fleet"]);
    assert!(
        seen.contains("web-1: the tip waits: wave canary waits for 1 more trusted approval(s)"),
        "{seen}"
    );

    // A wave the plan does not have is bad input; an untrusted key's approval does not count.
    let out = in_clone(&hub, &work, &["approve", "HEAD", "--wave", "rest"]);
    assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
    assert!(combined(&out).contains("has no wave \"rest\" (its waves: canary)"), "{}", combined(&out));
    sign_with(&hub, &work, &mallory);
    let out = in_clone(&hub, &work, &["approve", "HEAD", "--wave", "canary"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let said = pull(node);
    assert!(said.contains("1 approval(s) refused, first: commit "), "{said}");
    assert!(said.contains("is signed by an unknown key"), "{said}");
    assert_eq!(node.deployed(), None);

    sign_with(&hub, &work, &alice);
    let out = in_clone(&hub, &work, &["approve", "HEAD", "--wave", "canary"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(
        combined(&out).contains(&format!("approved {} for wave canary", &first[..12])),
        "{}",
        combined(&out)
    );
    let refs = hub.git(&hub.path("a.git"), &["for-each-ref", "--format=%(refname)", "refs/troops/approve/"]);
    assert_eq!(refs.lines().count(), 2, "one ref per signer: {refs}");
    pull(node);
    assert_eq!(node.deployed().as_deref(), Some(first.as_str()));
    assert!(textfile(node).contains("troops_awaiting_approval 0\n"), "{}", textfile(node));
}

#[test]
fn a_freeze_holds_a_reboot_the_host_needs_until_it_is_lifted() {
    let (hub, alice, _, fleet) = one_node();
    let node = &fleet[0];
    let work = clone(&hub, &alice);
    add_keys(&hub, &work, &fleet);
    // A reboot whose command returns and a host that stays up a second: the pull ends by itself.
    let plan = "[disruption]\nmax = 1\npoll = \"200ms\"\n\
                [reboot]\ncheck = 'test -e \"$TROOPS_STATE_DIR/reboot-required\"'\ncommand = \"true\"\ntimeout = \"1s\"\n\
                [[step]]\nname = \"apply\"\nrun = \"true\"\n\
                [[step]]\nname = \"drain\"\nphase = \"pre_reboot\"\nrun = \"true\"\n";
    let first = work.commit(&hub, &[("troops.toml", plan)], "first");
    publish(&hub, &work);
    pull_deploys(node, &first);
    let out = in_clone(&hub, &work, &["freeze", "--until", "2h", "--reason", "year-end freeze"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    std::fs::write(node.state.join("reboot-required"), "").unwrap();

    let said = pull(node);
    assert!(said.contains("it waits: the fleet is frozen by alice@example.com"), "{said}");
    assert!(!said.contains("pre_reboot step"), "{said}");
    assert!(!node.state.join("reboot.json").exists(), "a reboot began during a freeze");

    let out = in_clone(&hub, &work, &["unfreeze"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let said = pull(node);
    assert!(said.contains("troops: pre_reboot step `drain`"), "{said}");
    assert!(
        said.contains("troops: gave back disruption slot fleet/0 (the checks after the reboot passed)"),
        "{said}"
    );
}
