//! `troops pause` and `troops resume`: a paused node fetches but runs no pulled commit, and says
//! why in `troops status`, its status document and `troops_paused`; a person's push still runs,
//! saying the node is paused; the pulled commit runs after `resume`, and by itself once `--until`
//! has passed; a pause survives as a file, and bad input is refused.

use crate::support::{combined, publish_to_a, pull_deploys, wait_until, Env, BUDGET};

const PLAN: &str = "[[step]]\nname = \"apply\"\nrun = \"true\"\n";

/// A node following `a` with `PLAN` deployed by a pull, its metrics in a textfile.
fn deployed() -> (Env, crate::support::DeployRepo, String) {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\n[metrics]\ntextfile = {:?}\n", env.path("troops.prom")));
    let work = env.init_following_a();
    let first = work.commit(&env, &[("troops.toml", PLAN)], "first");
    publish_to_a(&env, &work);
    pull_deploys(&env, &first);
    (env, work, first)
}

fn textfile(env: &Env) -> String {
    std::fs::read_to_string(env.path("troops.prom")).unwrap_or_default()
}

#[test]
fn a_paused_node_runs_no_pulled_commit_until_it_resumes_but_a_push_runs() {
    let (env, work, first) = deployed();
    let said = env.ok(&["pause", "--reason", "kernel upgrade"]);
    assert!(said.contains("paused by ") && said.contains("until troops resume: kernel upgrade"), "{said}");

    let second = work.commit(&env, &[("v", "2")], "second");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    let told = combined(&out);
    assert!(told.contains(&format!("{} is not run yet: the node is paused by ", &second[..12])), "{told}");
    assert_eq!(env.node_ref("refs/heads/main").as_deref(), Some(second.as_str()), "fetching goes on");
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()), "nothing ran");

    let status = env.ok(&["status"]);
    assert!(status.contains("state     paused since "), "{status}");
    assert!(status.contains("paused    paused by "), "{status}");
    assert!(status.contains("next      held: "), "{status}");
    let json = env.status_json();
    assert_eq!(json["state"], "paused");
    assert!(json["fleet"]["paused"].as_str().unwrap().ends_with("kernel upgrade"), "{json}");
    assert!(textfile(&env).contains("troops_paused 1\n"), "{}", textfile(&env));

    // A person's push runs, and says the node is paused.
    let third = work.commit(&env, &[("v", "3")], "third");
    let pushed = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    let pushed = combined(&pushed);
    assert!(pushed.contains("troops: the node is paused by "), "{pushed}");
    assert!(pushed.contains("; a person's push runs anyway"), "{pushed}");
    assert_eq!(env.deployed().as_deref(), Some(third.as_str()), "{pushed}");

    // After resume, the pulled commit runs.
    let fourth = work.commit(&env, &[("v", "4")], "fourth");
    publish_to_a(&env, &work);
    assert_eq!(env.run(&["pull"]).status.code(), Some(0));
    assert_eq!(env.deployed().as_deref(), Some(third.as_str()), "still paused");
    assert!(env.ok(&["resume"]).contains("troops: resumed (was paused by "));
    pull_deploys(&env, &fourth);
    assert_eq!(env.status_json()["state"], "healthy");
    assert!(textfile(&env).contains("troops_paused 0\n"), "{}", textfile(&env));
    assert_eq!(env.ok(&["resume"]), "troops: not paused; nothing to resume\n");
}

#[test]
fn a_pause_with_until_ends_by_itself_and_bad_input_is_refused() {
    let (env, work, first) = deployed();
    for (until, why) in
        [("2001-01-01T00:00:00Z", "has passed already"), ("soon", "is neither a time nor a duration")]
    {
        let out = env.run(&["pause", "--until", until]);
        assert_eq!(out.status.code(), Some(2), "{}", combined(&out));
        assert!(combined(&out).contains(why), "{}", combined(&out));
    }
    assert_eq!(env.run(&["pause", "--reason", "two\nlines"]).status.code(), Some(2));
    assert!(!env.state.join("pause.json").exists(), "nothing was paused");

    // The pause must outlast the pull and status below on a loaded machine (BUDGET), or the
    // pull runs the commit and the test sees no pause at all.
    let second = work.commit(&env, &[("v", "2")], "second");
    publish_to_a(&env, &work);
    let said = env.ok(&["pause", "--until", &format!("{}s", BUDGET.as_secs())]);
    assert!(said.contains(" until 20"), "{said}");
    env.run(&["pull"]);
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()), "held while the pause stands");
    let status = env.status_json();
    assert_eq!(status["state"], "paused", "{status}");
    // Once it has passed, the next pull runs the commit.
    wait_until("the pause to end and a pull to deploy", BUDGET + BUDGET, || {
        env.run(&["pull"]);
        env.deployed().as_deref() == Some(second.as_str())
    });
}
