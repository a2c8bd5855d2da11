//! Issue 2: a node, its plan and its runner, driven through `troops init` and `troops deploy`.

use crate::support::Env;

#[test]
fn deploy_runs_the_plan_and_records_it() {
    let env = Env::new();
    env.init();
    let repo = env.deploy_repo("deploy");
    let commit = repo.publish_plan(&env, "[[step]]\nname = \"hello\"\nrun = \"echo hello\"\n");
    let out = env.ok(&["deploy"]);
    assert!(out.contains("hello\n"), "{out}");
    assert_eq!(env.deployed().as_deref(), Some(commit.as_str()));
    let record = env.run_record(1);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["commit"], commit.as_str());
}
