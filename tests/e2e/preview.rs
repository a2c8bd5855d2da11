//! Previews (`troops preview`, `troops deploy --dry-run`, `troops push --preview`, `troops preview
//! --host` in a clone): the steps a preview says run are the steps the run then runs, each running
//! step's `preview` command shows its output, run in a private copy that leaves nothing behind
//! (no record, no deployed commit, nothing in the state dir); a commit the node's [verify] policy
//! refuses gets the plan's answer and no command; a push preview moves no host's branch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::support::gpg::Gpg;
use crate::support::{combined, text, DeployRepo, Env};

/// A plan with steps by path; nginx's `preview` says what it would do, where it runs, and leaves a
/// file in its working directory and a marker at `seen` (outside the checkout: the test's own).
fn plan(log: &Path, seen: &Path) -> String {
    format!(
        "[roles.web]\nhosts = [\"web-1\", \"web-2\"]\n\n\
         [[step]]\nname = \"nginx\"\nrun = \"echo nginx >> {log}\"\npaths = [\"nginx\"]\n\
         preview = \"echo would reload nginx for $TROOPS_HOST on $TROOPS_TRIGGER; pwd > {seen}; touch left-by-preview\"\n\n\
         [[step]]\nname = \"app\"\nrun = \"echo app >> {log}\"\npaths = [\"app\"]\npreview = \"echo app preview\"\n\n\
         [[step]]\nname = \"db\"\nroles = [\"db\"]\nrun = \"echo db >> {log}\"\n\n\
         [[check]]\nname = \"up\"\nrun = \"true\"\n",
        log = log.display(),
        seen = seen.display()
    )
}

/// Every path under `dir` with its size and modification time: what a preview must not change.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            all.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    all
}

fn ran(log: &Path) -> Vec<String> {
    let lines = std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect();
    let _ = std::fs::remove_file(log);
    lines
}

/// The names a preview says run (steps only).
fn runs(preview: &str) -> Vec<String> {
    preview
        .lines()
        .filter_map(|l| l.strip_prefix("run  "))
        .filter(|l| !l.starts_with("check "))
        .map(|l| l.split_once(':').unwrap().0.to_owned())
        .collect()
}

#[test]
fn a_preview_lists_the_steps_the_run_then_runs_with_what_their_preview_commands_print() {
    let env = Env::new();
    env.write_config("hostname = \"web-1\"\n");
    env.init();
    let (log, seen) = (env.path("ran"), env.path("preview-ran-in"));
    let work = env.deploy_repo("work");
    work.commit(
        &env,
        &[("troops.toml", &plan(&log, &seen)), ("nginx/site.conf", "a"), ("app/v", "1")],
        "first",
    );
    work.publish(&env);
    env.ok(&["deploy"]);
    assert_eq!(ran(&log), ["nginx", "app"]);
    let deployed = env.deployed();

    let next = work.commit(&env, &[("nginx/site.conf", "b")], "nginx");
    work.publish(&env);
    let before = listing(&env.state);
    let preview = env.ok(&["preview"]);
    assert!(
        preview.starts_with(&format!("commit {next} on web-1 [web]: 1 file changed since ")),
        "{preview}"
    );
    assert_eq!(runs(&preview), ["nginx"], "{preview}");
    assert!(
        preview.contains("  | would reload nginx for web-1 on preview\n  preview of nginx: exit 0\n"),
        "{preview}"
    );
    assert!(preview.contains("skip app: every host; no change under app since"), "{preview}");
    assert!(preview.contains("skip db: needs role db\n"), "{preview}");
    assert!(preview.contains("run  check up: every host\n"), "{preview}");
    assert!(!preview.contains("app preview"), "a skipped step's preview does not run:\n{preview}");
    // The preview command ran in a private checkout, gone now, with what it left there.
    let private = std::fs::read_to_string(&seen).unwrap();
    assert!(private.trim().ends_with("/checkout") && private.contains("troops-preview-"), "{private}");
    assert!(!Path::new(private.trim()).exists(), "the private checkout is removed");
    assert_eq!(listing(&env.state), before, "a preview changes nothing in the state dir");
    assert_eq!(env.deployed(), deployed);
    assert_eq!(env.run_ids(), [1]);
    assert!(ran(&log).is_empty(), "no step ran");

    // deploy --dry-run is the same preview.
    assert_eq!(env.ok(&["deploy", "--dry-run"]), preview);

    // The run does what the preview said.
    env.ok(&["deploy"]);
    assert_eq!(ran(&log), runs(&preview));
}

#[test]
fn a_commit_the_verify_policy_refuses_gets_the_plans_answer_and_no_command() {
    let env = Env::new();
    let gpg = Gpg::new();
    let key = gpg.generate("Trusted Signer");
    let keyring = env.path("trusted.pgp");
    std::fs::write(&keyring, gpg.export(&[&key], false)).unwrap();
    env.write_config(&format!(
        "hostname = \"web-1\"\n[verify]\nrequire_signed = true\nkeyring = {keyring:?}\n"
    ));
    env.init();
    let (log, seen) = (env.path("ran"), env.path("preview-ran-in"));
    let work = env.deploy_repo("work");
    let unsigned = work.commit(&env, &[("troops.toml", &plan(&log, &seen)), ("nginx/a", "a")], "unsigned");
    work.publish(&env);
    let before = listing(&env.state);
    let preview = env.ok(&["preview"]);
    assert_eq!(runs(&preview), ["nginx", "app"], "{preview}");
    let refusal = format!("the node's [verify] policy refuses it: commit {}", &unsigned[..12]);
    assert!(preview.contains(&refusal) && preview.ends_with("; no preview command ran\n"), "{preview}");
    assert!(!preview.contains("  | "), "{preview}");
    assert!(!seen.exists(), "no preview command ran");
    // Not even when the node first saw the commit is remembered: a look is no sighting.
    assert_eq!(listing(&env.state), before);
}

/// Two nodes, web-1 and web-2, each with the first commit deployed, and the operator's clone.
fn two_nodes() -> (Env, DeployRepo, Vec<Env>, PathBuf) {
    let op = Env::new();
    let log = op.path("ran");
    let seen = op.path("seen");
    let nodes: Vec<Env> = (1..=2)
        .map(|n| {
            let node = Env::new();
            node.write_config(&format!("hostname = \"web-{n}\"\n"));
            node.init();
            node
        })
        .collect();
    let hosts: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("web-{} = \"{}\"\n", i + 1, n.repo().display()))
        .collect();
    let plan = format!("{}\n[hosts]\n{hosts}", plan(&log, &seen));
    let repo = op.deploy_repo("deploy");
    repo.commit(&op, &[("troops.toml", &plan), ("nginx/a", "a"), ("app/v", "1")], "first");
    let pushed = op.troops(&["push"]).current_dir(&repo.path).output().unwrap();
    assert!(pushed.status.success(), "{}", combined(&pushed));
    (op, repo, nodes, log)
}

#[test]
fn push_preview_gathers_every_hosts_preview_as_markdown_and_moves_no_branch() {
    let (op, repo, nodes, log) = two_nodes();
    let _ = ran(&log);
    let tips: Vec<Option<String>> = nodes.iter().map(|n| n.node_ref("refs/heads/main")).collect();
    let next = repo.commit(&op, &[("app/v", "2")], "app 2");
    let out = op.troops(&["push", "--preview"]).current_dir(&repo.path).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", combined(&out));
    assert!(
        stdout
            .contains("### troops preview of main\n\n| host | runs | skipped | held |\n|---|---|---|---|\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| web-1 | app | nginx, db | - |\n| web-2 | app | nginx, db | - |\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("<details><summary>web-2</summary>\n\n```\ncommit {next} on web-2 [web]")),
        "{stdout}"
    );
    assert!(stdout.contains("  | app preview\n"), "{stdout}");
    let after: Vec<Option<String>> = nodes.iter().map(|n| n.node_ref("refs/heads/main")).collect();
    assert_eq!(after, tips, "no branch moved");
    assert!(nodes.iter().all(|n| n.run_ids() == [1] && n.node_ref("refs/troops/preview").is_none()));
    assert!(ran(&log).is_empty(), "no step ran");

    // In the clone, for a named host: the plan's answer, no command.
    let clone = op.troops(&["preview", "--host", "web-2"]).current_dir(&repo.path).output().unwrap();
    let said = text(&clone.stdout);
    assert!(clone.status.success(), "{}", combined(&clone));
    assert!(said.starts_with(&format!("commit {next} on web-2 [web]: the plan alone")), "{said}");
    assert_eq!(runs(&said), ["nginx", "app"], "{said}");
    assert!(
        said.ends_with(
            "preview commands run on the node only (troops preview there, or troops push --preview)\n"
        ),
        "{said}"
    );
}
