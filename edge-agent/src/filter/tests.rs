use super::*;

fn r(device: &str, metric: &str, ts_s: i64, value: f64) -> Reading {
    Reading {
        unit: None,
        device: device.into(),
        metric: metric.into(),
        ts_us: ts_s * 1_000_000,
        value,
    }
}

const NOW: i64 = 1_700_000_000_000_000;

fn rule(name: &str) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        ..RuleConfig::default()
    }
}

#[test]
fn globs() {
    assert!(glob_match("pump-*", "pump-7"));
    assert!(glob_match("*", ""));
    assert!(glob_match("p?mp-*-x", "pump-1-x"));
    assert!(!glob_match("pump-*", "valve-1"));
    assert!(glob_match("*a*b", "xxaxxb"));
    assert!(!glob_match("*a*b", "xxaxxc"));
}

#[test]
fn first_matching_rule_decides_and_range_is_checked() {
    let mut f = Filter::new(vec![
        RuleConfig {
            device: Some("pump-*".into()),
            min: Some(0.0),
            max: Some(100.0),
            ..rule("pumps")
        },
        RuleConfig {
            max: Some(1.0),
            ..rule("others")
        },
    ]);
    let mut rs = vec![
        r("pump-1", "t", 1, 50.0),
        r("pump-1", "t", 2, 150.0),
        r("pump-1", "t", 3, -1.0),
        r("valve", "t", 4, 50.0),
    ];
    let drops = f.apply(&mut rs, NOW);
    assert_eq!(rs.len(), 1);
    assert_eq!(
        drops,
        vec![
            (0, DropReason::AboveMax),
            (0, DropReason::BelowMin),
            (1, DropReason::AboveMax)
        ]
    );
    assert_eq!(f.counts()[0].kept, 1);
}

#[test]
fn timestamps_too_far_in_the_future_or_past_are_invalid() {
    let mut f = Filter::new(vec![RuleConfig {
        max_future: Some(Duration::from_secs(60)),
        max_past: Some(Duration::from_secs(3600)),
        ..rule("time")
    }]);
    let now_s = NOW / 1_000_000;
    let mut rs = vec![
        r("d", "m", now_s + 120, 1.0),
        r("d", "m", now_s - 7200, 1.0),
        r("d", "m", now_s, 1.0),
    ];
    let drops = f.apply(&mut rs, NOW);
    assert_eq!(
        drops.iter().map(|d| d.1).collect::<Vec<_>>(),
        vec![DropReason::FutureTimestamp, DropReason::StaleTimestamp]
    );
    assert_eq!(rs.len(), 1);
    assert!(DropReason::FutureTimestamp.is_invalid() && !DropReason::Duplicate.is_invalid());
}

#[test]
fn duplicates_of_the_same_series_and_timestamp_are_dropped() {
    let mut f = Filter::new(vec![RuleConfig {
        dedup: true,
        ..rule("dedup")
    }]);
    let mut rs = vec![
        r("d", "m", 1, 1.0),
        r("d", "m", 1, 1.0),
        r("d", "n", 1, 1.0),
        r("d", "m", 2, 1.0),
    ];
    f.apply(&mut rs, NOW);
    assert_eq!(rs.len(), 3);
}

#[test]
fn deadband_forwards_changes_and_heartbeats() {
    let mut f = Filter::new(vec![RuleConfig {
        deadband: Some(0.5),
        max_silence: Some(Duration::from_secs(60)),
        ..rule("cov")
    }]);
    let mut rs: Vec<Reading> = [
        (0, 10.0),
        (10, 10.2),
        (20, 10.6),
        (30, 10.7),
        (90, 10.7),
        (100, 10.1),
    ]
    .iter()
    .map(|&(t, v)| r("d", "m", t, v))
    .collect();
    f.apply(&mut rs, NOW);
    // 10.0 first; 10.6 changed by 0.6; 10.7 at t=90 is the heartbeat; 10.1 changed by 0.6.
    assert_eq!(
        rs.iter().map(|x| x.ts_us / 1_000_000).collect::<Vec<_>>(),
        vec![0, 20, 90, 100]
    );
}

#[test]
fn rate_limit_is_per_device_and_refills_with_time() {
    let mut f = Filter::new(vec![RuleConfig {
        rate_limit: Some(2.0),
        ..rule("rate")
    }]);
    let mut burst: Vec<Reading> = (0..5).map(|i| r("d", "m", i, 1.0)).collect();
    f.apply(&mut burst, NOW);
    assert_eq!(burst.len(), 2);
    let mut same_device: Vec<Reading> = (0..3).map(|i| r("d", "other-metric", i, 1.0)).collect();
    f.apply(&mut same_device, NOW);
    assert!(
        same_device.is_empty(),
        "all metrics of a device share its bucket"
    );
    let mut other: Vec<Reading> = (0..5).map(|i| r("e", "m", i, 1.0)).collect();
    f.apply(&mut other, NOW);
    assert_eq!(other.len(), 2, "another device has its own bucket");
    let mut later = vec![
        r("d", "m", 10, 1.0),
        r("d", "m", 11, 1.0),
        r("d", "m", 12, 1.0),
    ];
    f.apply(&mut later, NOW + 1_000_000);
    assert_eq!(later.len(), 2);
}

fn downsample(window_s: u64, aggregate: Aggregate) -> RuleConfig {
    RuleConfig {
        downsample: Some(Downsample {
            window: Duration::from_secs(window_s),
            aggregate,
        }),
        ..rule("ds")
    }
}

#[test]
fn downsampling_emits_one_aggregate_per_window_when_the_next_window_starts() {
    for (aggregate, expected) in [
        (Aggregate::Mean, [2.5, 20.0]),
        (Aggregate::Min, [1.0, 20.0]),
        (Aggregate::Max, [4.0, 20.0]),
        (Aggregate::Last, [3.0, 20.0]),
        (Aggregate::Count, [4.0, 1.0]),
    ] {
        let mut f = Filter::new(vec![downsample(10, aggregate)]);
        // Window [0, 10): values 1, 4, 2 (out of order), 3 (latest ts 9).
        let mut first = vec![
            r("d", "m", 0, 1.0),
            r("d", "m", 5, 4.0),
            r("d", "m", 2, 2.0),
            r("d", "m", 9, 3.0),
        ];
        assert!(f.apply(&mut first, NOW).is_empty());
        assert!(first.is_empty(), "absorbed, nothing forwarded yet");
        let mut second = vec![r("d", "m", 12, 20.0), r("d", "m", 25, 7.0)];
        f.apply(&mut second, NOW);
        assert_eq!(
            second
                .iter()
                .map(|x| (x.ts_us / 1_000_000, x.value))
                .collect::<Vec<_>>(),
            vec![(0, expected[0]), (10, expected[1])],
            "{aggregate:?}"
        );
        assert_eq!(f.counts()[0].absorbed, 6);
        assert_eq!(f.counts()[0].aggregates, 2);
    }
}

#[test]
fn downsampling_windows_close_by_the_clock_and_late_readings_are_dropped() {
    let mut f = Filter::new(vec![downsample(10, Aggregate::Count)]);
    let mut rs = vec![r("d", "m", 100, 1.0), r("e", "m", 100, 1.0)];
    f.apply(&mut rs, NOW);
    assert!(f.flush(NOW + 19_000_000).is_empty(), "not yet");
    let mut closed = f.flush(NOW + 20_000_000);
    closed.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(closed.len(), 2);
    assert_eq!((closed[0].ts_us, closed[0].value), (100_000_000, 1.0));
    let mut late = vec![r("d", "m", 105, 1.0), r("d", "m", 95, 1.0)];
    let drops = f.apply(&mut late, NOW + 21_000_000);
    assert_eq!(drops, vec![(0, DropReason::Late), (0, DropReason::Late)]);
    assert!(f.flush(i64::MAX).is_empty());
    let mut next = vec![r("d", "m", 110, 1.0)];
    f.apply(&mut next, NOW);
    assert_eq!(
        f.flush(i64::MAX).len(),
        1,
        "a dry run's end closes everything"
    );
}

#[test]
fn series_state_is_bounded() {
    let mut f = Filter::new(vec![RuleConfig {
        dedup: true,
        ..rule("dedup")
    }]);
    for i in 0..(MAX_SERIES + 10) {
        let mut rs = vec![r(&format!("d{i}"), "m", 1, 1.0)];
        f.apply(&mut rs, NOW);
    }
    assert!(f.series.len() <= MAX_SERIES);
}

#[test]
fn invalid_rules_are_reported_with_their_keys() {
    let mut problems = Vec::new();
    validate_rules(
        &[RuleConfig {
            min: Some(5.0),
            max: Some(1.0),
            deadband: Some(-1.0),
            max_silence: Some(Duration::from_secs(1)),
            ..rule("")
        }],
        &mut problems,
    );
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"rules[0].name")
            && paths.contains(&"rules[0].min")
            && paths.contains(&"rules[0].deadband")
    );
}

/// The per-rule counters reach `/metrics` under their rule's name, escaped
/// (names come from the configuration).
#[test]
fn per_rule_counters_are_in_the_metrics_text_with_escaped_names() {
    let stats = crate::stats::EdgeStats::default();
    let counts = RuleCounts {
        kept: 5,
        absorbed: 2,
        ..RuleCounts::default()
    };
    stats.set_filter_counts(vec![("pumps \"east\"".to_owned(), counts)]);
    let text = stats.render_prometheus();
    assert!(
        text.contains("edge_filter_kept_total{rule=\"pumps \\\"east\\\"\"} 5\n"),
        "{text}"
    );
    assert!(text.contains("edge_filter_downsampled_total{rule=\"pumps \\\"east\\\"\"} 2\n"));
    assert_eq!(
        text.matches("# TYPE edge_filter_dropped counter").count(),
        1
    );
    assert!(text.ends_with("# EOF\n"));
}
