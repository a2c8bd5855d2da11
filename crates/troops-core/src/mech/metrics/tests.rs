use crate::mech::metrics::*;

fn gauges() -> Gauges {
    Gauges {
        deployed: Some("d".repeat(40)),
        tip: Some("e".repeat(40)),
        state: "idle".into(),
        quarantined: 2,
        ..Gauges::default()
    }
}

fn snapshot(counters: Counters) -> Snapshot {
    Snapshot { gauges: gauges(), counters }
}

#[test]
fn every_metric_of_the_spec_is_rendered_with_help_and_type() {
    let text = render(&snapshot(Counters::default()));
    for name in [
        "troops_build_info",
        "troops_deployed_info",
        "troops_tip_info",
        "troops_last_run_success",
        "troops_last_run_timestamp_seconds",
        "troops_last_success_timestamp_seconds",
        "troops_runs_total",
        "troops_run_duration_seconds",
        "troops_fetch_total",
        "troops_last_fetch_success_timestamp_seconds",
        "troops_verify_refusals_total",
        "troops_check_up",
        "troops_rollbacks_total",
        "troops_quarantined_commits",
        "troops_rollout_held",
        "troops_state",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name} in\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name} in\n{text}");
    }
    assert!(text.contains(&format!("troops_deployed_info{{commit=\"{}\"}} 1\n", "d".repeat(40))), "{text}");
    assert!(text.contains("troops_quarantined_commits 2\n"), "{text}");
    assert!(text.contains("troops_state{state=\"idle\"} 1\n"), "{text}");
    assert!(!text.contains("# EOF"), "OpenMetrics, not the text format node_exporter reads:\n{text}");
}

#[test]
fn counters_and_histogram_render_from_what_was_counted() {
    let mut c = Counters::default();
    *c.runs.entry("failed".into()).or_default().entry("push".into()).or_default() += 3;
    for seconds in [0.5, 3.0, 7200.0] {
        c.run_duration.observe(seconds);
    }
    c.fetches.entry("a\"b".into()).or_default().insert("failed".into(), 2);
    let mut g = gauges();
    g.checks.insert("web".into(), false);
    g.rollout_held = true;
    let text = render(&Snapshot { gauges: g, counters: c });
    assert!(text.contains("troops_runs_total{result=\"failed\",trigger=\"push\"} 3\n"), "{text}");
    assert!(text.contains("troops_run_duration_seconds_bucket{le=\"1\"} 1\n"), "{text}");
    assert!(text.contains("troops_run_duration_seconds_bucket{le=\"5\"} 2\n"), "{text}");
    assert!(text.contains("troops_run_duration_seconds_bucket{le=\"3600\"} 2\n"), "{text}");
    assert!(text.contains("troops_run_duration_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
    assert!(text.contains("troops_run_duration_seconds_count 3\n"), "{text}");
    // A remote name is a label value: escaped, never able to end the label set.
    assert!(text.contains("troops_fetch_total{remote=\"a\\\"b\",result=\"failed\"} 2\n"), "{text}");
    assert!(text.contains("troops_check_up{check=\"web\"} 0\n"), "{text}");
    assert!(text.contains("troops_rollout_held 1\n"), "{text}");
}

#[test]
fn a_corrupt_or_planted_counters_file_starts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.json");
    assert_eq!(load(&path), Counters::default());
    std::fs::write(&path, "{\"runs\": 7").unwrap();
    assert_eq!(load(&path), Counters::default());
    std::fs::remove_file(&path).unwrap();
    // A symlink to something endless is not followed.
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    assert_eq!(load(&path), Counters::default());
    std::fs::remove_file(&path).unwrap();
    let c = Counters { rollbacks: 4, ..Counters::default() };
    std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    assert_eq!(load(&path).rollbacks, 4);
}

#[test]
fn a_fifo_for_counters_or_a_held_lock_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.json");
    // Nobody ever writes to it: a blocking open would never return.
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o660)).unwrap();
    assert_eq!(load(&path), Counters::default());

    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(dir.path()).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let Err(e) = lock(dir.path()) else { panic!("locked what another holds") };
    let e = e.to_string();
    assert!(e.contains("stayed locked by another process"), "{e}");
    // It waited LOCK_WAIT, not for the lock, which is held until after this.
    assert!(started.elapsed() < troops_testkit::BUDGET, "waited {:?}", started.elapsed());
    drop(held);
    lock(dir.path()).unwrap();
}

#[test]
fn forged_huge_counts_neither_overflow_nor_break_the_histogram() {
    let mut c = Counters {
        run_duration: Histogram { buckets: vec![u64::MAX; DURATION_BUCKETS.len()], sum: 1.0, count: 5 },
        rollbacks: u64::MAX,
        ..Counters::default()
    };
    c.run_duration.observe(1.0);
    let text = render(&snapshot(c));
    assert!(text.contains("troops_run_duration_seconds_bucket{le=\"+Inf\"} 6\n"), "{text}");
}
