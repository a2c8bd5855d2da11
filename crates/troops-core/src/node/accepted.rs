//! Property tests of the rule "nothing accepted can panic": whatever `Config::parse` and
//! `Plan::parse` accept, every use the node makes of it (deadlines on both clocks, the daemon's
//! period, retry backoff, formatting, role selection) goes through without panicking, and every
//! accepted name is free of control characters.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use proptest::collection::vec;
use proptest::prelude::*;

use crate::model::config::Config;
use crate::model::plan::Plan;

/// A humantime-looking duration: any number with any unit, now and then plain garbage.
fn duration() -> impl Strategy<Value = String> {
    let units = ["ns", "ms", "s", "m", "h", "d", "w", "M", "y", "years", ""];
    prop_oneof![
        4 => (any::<u64>(), 0..units.len()).prop_map(move |(n, u)| format!("{n}{}", units[u])),
        2 => (0u64..1000, 0..units.len()).prop_map(move |(n, u)| format!("{n}{}", units[u])),
        1 => any::<String>(),
    ]
}

/// A name as an operator or a hostile pusher might write it: mostly plain, sometimes anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9.*-]{0,10}", 1 => any::<String>(), 1 => "[a-z]{1,4}[\n\r\t\u{0}\u{1b}\u{7f}][a-z]{0,4}"]
}

/// `text` as a TOML string (quoted and escaped as TOML wants it).
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn line(key: &str, value: Option<String>) -> String {
    value.map_or(String::new(), |v| format!("{key} = {v}\n"))
}

fn config_text() -> impl Strategy<Value = String> {
    let q = |s: Option<String>| s.map(|s| quoted(&s));
    (
        (
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
        ),
        (
            proptest::option::of(name()),
            proptest::option::of(vec(name(), 0..3)),
            proptest::option::of(any::<i64>()),
            proptest::option::of(name()),
        ),
    )
        .prop_map(
            move |((interval, jitter, fetch_timeout, initial, max), (host, roles, keep, group))| {
                let roles = roles
                    .map(|r| format!("[{}]", r.iter().map(|r| quoted(r)).collect::<Vec<_>>().join(", ")));
                [
                    line("interval", q(interval)),
                    line("jitter", q(jitter)),
                    line("fetch_timeout", q(fetch_timeout)),
                    line("hostname", q(host)),
                    line("roles", roles),
                    line("keep_runs", keep.map(|k| k.to_string())),
                    line("admin_group", q(group)),
                    "[retry]\n".to_owned(),
                    line("initial", q(initial)),
                    line("max", q(max)),
                ]
                .concat()
            },
        )
}

fn plan_text() -> impl Strategy<Value = String> {
    let role = (name(), vec(name(), 0..3), vec("[a-z*?-]{1,6}", 0..2));
    let step = (name(), proptest::option::of(vec(name(), 0..3)), proptest::option::of(duration()));
    let check = (
        name(),
        proptest::option::of(vec(name(), 0..3)),
        vec(proptest::option::of(duration()), 3),
        proptest::option::of(any::<i64>()),
    );
    let soak = proptest::option::of(duration());
    (vec(role, 0..3), vec(step, 0..4), vec(check, 0..3), soak).prop_map(|(roles, steps, checks, soak)| {
        let list = |items: &[String]| {
            format!("[{}]", items.iter().map(|i| quoted(i)).collect::<Vec<_>>().join(", "))
        };
        let mut text = String::new();
        for (name, hosts, patterns) in roles {
            text += &format!(
                "[roles.{}]\nhosts = {}\nmatch = {}\n",
                quoted(&name),
                list(&hosts),
                list(&patterns)
            );
        }
        for (name, roles, timeout) in steps {
            text += &format!("[[step]]\nname = {}\nrun = \"true\"\n", quoted(&name));
            text += &line("roles", roles.map(|r| list(&r)));
            text += &line("timeout", timeout.map(|t| quoted(&t)));
        }
        for (name, roles, durations, retries) in checks {
            text += &format!("[[check]]\nname = {}\nrun = \"true\"\n", quoted(&name));
            text += &line("roles", roles.map(|r| list(&r)));
            for (key, value) in ["start_period", "interval", "timeout"].into_iter().zip(durations) {
                text += &line(key, value.map(|d| quoted(&d)));
            }
            text += &line("retries", retries.map(|r| r.to_string()));
        }
        text + &format!("[health]\n{}", line("soak", soak.map(|s| quoted(&s))))
    })
}

/// Every use the node makes of a config's durations and counts.
fn use_config(config: &Config) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    // The daemon's next cycle, at the largest jitter it can draw.
    let period = config.interval + Duration::from_millis(config.jitter.as_millis() as u64);
    let _ = (now + period, wall + period);
    // A fetch's deadline and its timeouts for libgit2 and ssh.
    let _ = now + config.fetch_timeout;
    let _ = crate::mech::ssh::command(Path::new("/var/lib/troops/ssh"), config.fetch_timeout);
    for failures in [1, 2, 3, 20, 21, 64, u32::MAX] {
        let wait = config.retry.backoff(failures);
        assert!(wait <= config.retry.max && wait >= config.retry.initial.min(config.retry.max));
        let _ = (now + wait, wall + wait, humantime::format_duration(wait).to_string());
    }
    let ids: Vec<u64> = (1..=5).collect();
    let _ = &ids[..ids.len().saturating_sub(config.keep_runs)];
    let _ = format!("{config:?}");
    for name in config.hostname.iter().chain(&config.roles).chain([&config.admin_group]) {
        assert!(!name.chars().any(char::is_control) && !name.trim().is_empty(), "{name:?} was accepted");
    }
}

/// Every use the node makes of a plan's names and timeouts.
fn use_plan(plan: &Plan) {
    for step in &plan.steps {
        let _ = Instant::now() + step.timeout;
        let _ = humantime::format_duration(step.timeout).to_string();
        assert!(!step.name.chars().any(char::is_control) && !step.name.trim().is_empty(), "{:?}", step.name);
        for role in step.roles.iter().flatten() {
            assert!(crate::model::names::role_name_problem(role).is_none(), "{role:?} was accepted");
        }
    }
    for role in &plan.roles {
        assert!(crate::model::names::role_name_problem(&role.name).is_none(), "{:?} was accepted", role.name);
        assert!(
            role.hosts.iter().all(|h| crate::model::names::name_problem(h).is_none()),
            "{:?}",
            role.hosts
        );
    }
    let roles = crate::model::roles::resolve("web-1", &["web".into()], Some(plan));
    for step in &plan.steps {
        let _ = crate::model::roles::selects(step, &roles);
    }
    // The probe loop's deadlines: a start period, then an interval after a probe that took its
    // whole timeout, within a soak.
    let now = Instant::now();
    let _ = now + plan.health.soak;
    for check in &plan.checks {
        let _ = now + check.start_period + check.timeout + check.interval;
        let _ = humantime::format_duration(check.start_period).to_string();
        assert!(check.retries >= 1, "{check:?}");
        assert!(
            !check.name.chars().any(char::is_control) && !check.name.trim().is_empty(),
            "{:?}",
            check.name
        );
        let _ = crate::model::roles::selects_check(check, &roles);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_accepted_config_can_be_used(text in config_text()) {
        if let Ok(config) = Config::parse(Path::new("/etc/troops/troops.toml"), &text) {
            use_config(&config);
        }
    }

    #[test]
    fn any_text_as_config_is_refused_or_usable(text in any::<String>()) {
        if let Ok(config) = Config::parse(Path::new("/etc/troops/troops.toml"), &text) {
            use_config(&config);
        }
    }

    #[test]
    fn any_accepted_plan_can_be_used(text in plan_text()) {
        if let Ok(plan) = Plan::parse(Path::new("troops.toml"), &text, None) {
            use_plan(&plan);
        }
    }

    #[test]
    fn any_text_as_plan_is_refused_or_usable(text in any::<String>()) {
        if let Ok(plan) = Plan::parse(Path::new("troops.toml"), &text, None) {
            use_plan(&plan);
        }
    }
}
