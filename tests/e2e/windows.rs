//! Deploy windows (`[[window]]`): outside them a pulled commit is held, naming the windows and
//! when the next opens, in the pull's output, `troops status`, the preview and `troops_window_open`;
//! a person's push still runs; inside one, the pull runs it.

use std::time::{Duration, SystemTime};

use crate::support::{combined, publish_to_a, pull_deploys, Env};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Today's weekday in UTC, Monday 0 (1970-01-01 was a Thursday).
fn today() -> usize {
    let days = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    ((days + 3) % 7) as usize
}

fn plan(window: &str) -> String {
    format!("{window}\n[[step]]\nname = \"apply\"\nrun = \"true\"\n")
}

#[test]
fn a_closed_window_holds_a_pulled_commit_and_names_the_next_opening() {
    let env = Env::new();
    env.write_config(&format!("hostname = \"web-1\"\n[metrics]\ntextfile = {:?}\n", env.path("troops.prom")));
    let work = env.init_following_a();
    let first = work.commit(&env, &[("troops.toml", &plan(""))], "first");
    publish_to_a(&env, &work);
    pull_deploys(&env, &first);

    // A window three days from now, all that day (UTC): closed now, for some days yet.
    let day = DAYS[(today() + 3) % 7];
    let closed = format!("[[window]]\ndays = [\"{day}\"]\ntime = \"00:00-24:00\"\n");
    let second = work.commit(&env, &[("troops.toml", &plan(&closed))], "closed window");
    publish_to_a(&env, &work);
    let out = env.run(&["pull"]);
    let said = combined(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let opens = SystemTime::now() + Duration::from_secs(86_400 * 3);
    let date = humantime::format_rfc3339(opens).to_string();
    let why = format!("{} is not run yet: outside its deploy windows ({day} 00:00-24:00 UTC); the next opens at {}T00:00:00.000Z", &second[..12], &date[..10]);
    assert!(said.contains(&why), "{why:?} not in:\n{said}");
    assert_eq!(env.deployed().as_deref(), Some(first.as_str()));
    let status = env.ok(&["status"]);
    assert!(status.contains("next      held: ") && status.contains("outside its deploy windows"), "{status}");
    assert!(env.status_json()["fleet"]["window"].as_str().unwrap().starts_with("outside its deploy windows"));
    assert!(env.ok(&["preview"]).contains("held: outside its deploy windows"));
    let textfile = std::fs::read_to_string(env.path("troops.prom")).unwrap();
    assert!(textfile.contains("troops_window_open 0\n"), "{textfile}");

    // A person's push is not held.
    let third = work.commit(&env, &[("v", "3")], "pushed");
    let pushed = work.push(&env, &env.repo().display().to_string(), &["HEAD:main"]);
    assert!(pushed.status.success(), "{}", combined(&pushed));
    assert_eq!(env.deployed().as_deref(), Some(third.as_str()), "{}", combined(&pushed));

    // A window open now: the pull runs the new commit.
    let open = "[[window]]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\ntime = \"00:00-24:00\"\n";
    let fourth = work.commit(&env, &[("troops.toml", &plan(open))], "open window");
    publish_to_a(&env, &work);
    pull_deploys(&env, &fourth);
}
