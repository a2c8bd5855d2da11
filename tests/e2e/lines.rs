//! troops' own lines start a line, whatever a step printed last: a step whose output ends without
//! a newline leaves troops' summary on a line of its own, in the pusher's output, output.log and
//! `troops deploy`'s, whether the hook runs the plan, the daemon does, or the CLI; and `troops
//! push` reads a run's result from troops' real summary, never from a step's imitation of one.

use std::process::Output;

use crate::support::daemon::Daemon;
use crate::support::{combined, text, DeployRepo, Env};

/// Two steps that end without a newline, then one that prints a whole line.
const STEPS: &str = "[[step]]\nname = \"build\"\nrun = \"printf built\"\n\
                     [[step]]\nname = \"test\"\nrun = \"printf 'tested; no newline'\"\n\
                     [[step]]\nname = \"tell\"\nrun = \"echo told\"\n";

/// What output.log of run `id` of the plan above must hold, each of troops' lines on its own.
fn steps_on_their_lines(id: u64) -> String {
    format!(
        "==> build\nbuilt\n==> test\ntested; no newline\n==> tell\ntold\ntroops: run {id} succeeded: 3 of 3 steps ran in"
    )
}

/// The operator's repo with `steps` for role `web`, whose host `web-1` is `node`'s repo.
fn operator(op: &Env, node: &Env, steps: &str) -> DeployRepo {
    let repo = op.deploy_repo("deploy");
    let plan = format!(
        "[roles.web]\nhosts = [\"web-1\"]\n{steps}\n[hosts]\nweb-1 = \"{}\"\n",
        node.repo().display()
    );
    repo.commit(op, &[("troops.toml", &plan)], "plan");
    repo
}

fn troops_push(op: &Env, repo: &DeployRepo) -> Output {
    op.troops(&["push"]).current_dir(&repo.path).output().expect("running troops push")
}

fn node() -> Env {
    let node = Env::new();
    node.init();
    node
}

#[test]
fn a_step_without_a_trailing_newline_leaves_the_summary_on_its_own_line_hook_daemon_and_cli() {
    let (op, node) = (Env::new(), node());
    let repo = operator(&op, &node, STEPS);

    // The hook runs the plan: troops push reads the summary and calls it a success.
    let out = troops_push(&op, &repo);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(stdout.contains("web-1 | remote: built\n"), "{stdout}");
    assert!(stdout.contains("web-1 | remote: troops: run 1 succeeded: 3 of 3 steps"), "{stdout}");
    assert!(stdout.ends_with("1 hosts: 1 ok, 0 failed, 0 not pushed\n"), "{stdout}");
    assert!(node.run_log(1).contains(&steps_on_their_lines(1)), "{}", node.run_log(1));

    // The daemon runs it: the same lines reach the pusher through the socket and the hook.
    let daemon = Daemon::start(&node);
    repo.commit(&op, &[("again", "2")], "again");
    let out = troops_push(&op, &repo);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(stdout.contains("web-1 | remote: troops: run 2 succeeded: 3 of 3 steps"), "{stdout}");
    assert!(daemon.log().contains("request=Run(Push)"), "not through the daemon: {}", daemon.log());
    assert!(node.run_log(2).contains(&steps_on_their_lines(2)), "{}", node.run_log(2));
    drop(daemon);

    // In-process, as `troops deploy` runs it: its stdout and the log.
    let out = node.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(text(&out.stdout).contains(&steps_on_their_lines(3)), "{}", text(&out.stdout));
    assert!(node.run_log(3).contains(&steps_on_their_lines(3)), "{}", node.run_log(3));
}

#[test]
fn a_step_that_imitates_a_success_line_and_fails_is_reported_failed() {
    let (op, node) = (Env::new(), node());
    // The imitation names the run's own id, on a line of its own and glued to no newline.
    let fake = "troops: run $TROOPS_RUN_ID succeeded: 1 of 1 steps ran in 0.1s (troops log $TROOPS_RUN_ID)";
    let steps =
        format!("[[step]]\nname = \"liar\"\nrun = '''echo \"{fake}\"; printf \"{fake}\"; exit 3'''\n");
    let repo = operator(&op, &node, &steps);

    let out = troops_push(&op, &repo);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", combined(&out));
    assert!(stdout.contains("web-1 | remote: troops: run 1 succeeded: 1 of 1 steps ran in 0.1s"), "{stdout}");
    let row = stdout.lines().rev().find(|l| l.starts_with("web-1 ")).unwrap();
    let row = row.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        row.starts_with("web-1 failed 1 ")
            && row.contains(" step `liar` failed (exit 3); 1 of 1 steps ran in"),
        "{row}\n{stdout}"
    );
    assert!(stdout.ends_with("1 hosts: 0 ok, 1 failed, 0 not pushed\n"), "{stdout}");
    assert_eq!(node.deployed(), None);
}
