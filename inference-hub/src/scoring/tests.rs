use std::path::PathBuf;

use arrow_array::{Array, Float64Array};
use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits};

use super::*;
use schemas::tables;

fn model() -> Model {
    Model::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/univariate-forecast"))
        .unwrap()
}

/// A noisy sine for `device` with one large spike at `spike_at`.
fn batch(device: &str, scale: f64, n: usize, spike_at: Option<usize>, seq: u64) -> DecodedBatch {
    let mut rng = fastrand::Rng::with_seed(seq);
    let mut cols = ReadingColumns::default();
    for i in 0..n {
        let mut v = scale * (10.0 + (i as f64 / 20.0).sin() + 0.1 * (rng.f64() - 0.5));
        if Some(i) == spike_at {
            v += scale * 12.0;
        }
        cols.push(
            device,
            "temp",
            1_700_000_000_000_000 + (seq as i64 * 10_000 + i as i64) * 1_000_000,
            v,
        );
    }
    let (_, bytes) = envelope::encode("gw", 1, seq, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

/// A float column of a scored batch.
fn floats(b: &RecordBatch, name: &str) -> Float64Array {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone()
}

/// A string column's values, whether it comes plain or keyed.
fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let col = crate::names::StrColumn::of(b.column_by_name(name).unwrap().as_ref())
        .expect("a string column without nulls");
    (0..col.len()).map(|i| col.value(i).to_owned()).collect()
}

fn statuses(b: &RecordBatch) -> Vec<String> {
    strings(b, "status")
}

#[test]
fn warming_up_series_are_never_anomalous_and_have_no_score() {
    let mut scorer = Scorer::new(model(), 100, None);
    // A spike inside the warm-up must not be flagged.
    let out = scorer.score(&batch("d1", 1.0, 100, Some(50), 1), 0);
    assert!(
        statuses(&out.scored)
            .iter()
            .all(|s| s == status::WARMING_UP)
    );
    assert_eq!(
        out.scored.column_by_name("score").unwrap().null_count(),
        100
    );
    assert_eq!(out.anomalies.num_rows(), 0);
}

#[test]
fn an_injected_spike_is_flagged_once_warm_at_any_scale() {
    for scale in [0.01, 1.0, 5_000.0] {
        let mut scorer = Scorer::new(model(), 100, None);
        scorer.score(&batch("d1", scale, 200, None, 1), 0);
        let out = scorer.score(&batch("d1", scale, 200, Some(120), 2), 0);
        let st = statuses(&out.scored);
        assert_eq!(st[120], status::ANOMALOUS, "scale {scale}");
        let before_spike = st[..120].iter().filter(|s| *s == status::ANOMALOUS).count();
        assert!(
            before_spike <= 2,
            "scale {scale}: {before_spike} false alarms on a clean sine"
        );
        assert_eq!(out.events.len(), 1, "scale {scale}: one spike is one event");
        assert_eq!(out.anomalies.num_rows(), 1);
        let event = &out.events[0];
        assert_eq!(
            event.ts_us,
            1_700_000_000_000_000 + (2 * 10_000 + 120) * 1_000_000
        );
        assert_eq!(
            (event.device.as_str(), event.metric.as_str()),
            ("d1", "temp")
        );
        assert!(event.severity > 1.0);
        assert_eq!(event.model_id, "univariate-forecast");
    }
}

#[test]
fn series_are_scored_independently() {
    let mut scorer = Scorer::new(model(), 50, None);
    scorer.score(&batch("small", 1.0, 100, None, 1), 0);
    scorer.score(&batch("large", 1000.0, 100, None, 2), 0);
    let out = scorer.score(&batch("small", 1.0, 60, None, 3), 0);
    let scores = floats(&out.scored, "score");
    assert_eq!(scores.null_count(), 0);
    assert!(
        statuses(&out.scored).iter().all(|s| s == status::OK),
        "the large device's scale leaked into the small one"
    );
    assert_eq!(scorer.series_count(), 2);
}

#[test]
fn every_row_keeps_its_identity_and_model_version() {
    let mut scorer = Scorer::new(model(), 10, None);
    let input = batch("d9", 1.0, 30, None, 7);
    let out = scorer.score(&input, 123);
    assert_eq!(out.scored.num_rows(), 30);
    assert!(
        strings(&out.scored, "model_version")
            .iter()
            .all(|v| v == "1.0.0")
    );
    let seq = out
        .scored
        .column_by_name("seq")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::UInt64Array>()
        .unwrap();
    assert!(seq.iter().all(|s| s == Some(7)));
}

fn multivariate_model() -> Model {
    Model::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/multivariate-forecast"))
        .unwrap()
}

/// `records` records of a pump-like device (all 8 metrics of the model, each
/// a noisy sine at its own level), one batch per record; `fault` adds a step
/// to one metric from a given record on.
fn rig(
    scorer: &mut MultivariateScorer,
    records: std::ops::Range<usize>,
    fault: Option<(&str, usize, f64)>,
) -> Vec<ScoredBatch> {
    let metrics: Vec<String> = scorer.model().metrics().unwrap().to_vec();
    let mut rng = fastrand::Rng::with_seed(7);
    records
        .map(|r| {
            let mut cols = ReadingColumns::default();
            for (m, metric) in metrics.iter().enumerate() {
                let level = 10.0 * (m + 1) as f64;
                let mut v = level + (r as f64 / 30.0 + m as f64).sin() + 0.05 * (rng.f64() - 0.5);
                if let Some((name, from, step)) = fault
                    && name == metric
                    && r >= from
                {
                    v += step;
                }
                cols.push(
                    "pump-1",
                    metric,
                    1_700_000_000_000_000 + r as i64 * 1_000_000,
                    v,
                );
            }
            let (_, bytes) = envelope::encode("gw", 1, r as u64 + 1, &cols.finish()).unwrap();
            let batch = envelope::decode(&bytes, &DecodeLimits::default()).unwrap();
            scorer.score(&batch, 0)
        })
        .collect()
}

#[test]
fn multivariate_records_warm_up_then_a_fault_names_its_metric_with_contributions_and_bounds() {
    let mut scorer = MultivariateScorer::new(multivariate_model(), 200, None);
    let normal = rig(&mut scorer, 0..400, None);
    assert!(
        statuses(&normal[0].scored)
            .iter()
            .all(|s| s == "warming_up"),
        "every reading of a record shares its status"
    );
    assert!(
        normal.iter().all(|b| b.events.is_empty()),
        "no event on normal data"
    );
    assert!(statuses(&normal[399].scored).iter().all(|s| s == "ok"));

    let mut scorer_fault = MultivariateScorer::new(multivariate_model(), 200, None);
    let out = rig(&mut scorer_fault, 0..420, Some(("Pressure", 400, 25.0)));
    let events: Vec<&AnomalyEvent> = out.iter().flat_map(|b| &b.events).collect();
    assert_eq!(events.len(), 1, "one event for the fault: {events:?}");
    let e = events[0];
    assert_eq!(e.metric, "Pressure");
    assert_eq!(e.ts_us, 1_700_000_000_000_000 + 400 * 1_000_000);
    let shares = e.contributions.as_ref().expect("contributions");
    assert_eq!(shares.len(), 8);
    assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(shares["Pressure"] > 0.5, "{shares:?}");
    let (low, high) = (e.expected_low.unwrap(), e.expected_high.unwrap());
    assert!(low < e.expected.unwrap() && e.expected.unwrap() < high);
    assert!(
        e.value > high,
        "the faulty value lies above the expected range"
    );
    let anomalies = &out[400].anomalies;
    assert_eq!(anomalies.num_rows(), 1);
    assert!(
        anomalies
            .column_by_name("contributions")
            .unwrap()
            .is_valid(0),
        "the archived event carries the contributions"
    );
}

#[test]
fn an_incomplete_record_is_archived_unscored_and_scored_when_it_completes() {
    let mut scorer = MultivariateScorer::new(multivariate_model(), 200, None);
    let metrics: Vec<String> = scorer.model().metrics().unwrap().to_vec();
    let half = |range: std::ops::Range<usize>, seq: u64| {
        let mut cols = ReadingColumns::default();
        for m in &metrics[range] {
            cols.push("pump-2", m, 1_700_000_000_000_000, 1.0);
        }
        let (_, bytes) = envelope::encode("gw", 1, seq, &cols.finish()).unwrap();
        envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
    };
    let first = scorer.score(&half(0..4, 1), 0);
    assert!(statuses(&first.scored).iter().all(|s| s == "unscored"));
    let second = scorer.score(&half(4..8, 2), 0);
    assert!(
        statuses(&second.scored).iter().all(|s| s == "warming_up"),
        "the completed record entered the warm-up"
    );
}

#[test]
fn readings_are_taken_in_time_order_and_older_ones_than_the_series_has_seen_are_late() {
    let mut s = Scorer::new(model(), 20, None);
    let mk = |ts_list: &[i64], seq: u64| {
        let mut cols = ReadingColumns::default();
        for &t in ts_list {
            cols.push(
                "d",
                "m",
                1_700_000_000_000_000 + t * 1_000_000,
                (t as f64 / 5.0).sin(),
            );
        }
        let (_, bytes) = envelope::encode("gw", 1, seq, &cols.finish()).unwrap();
        envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
    };
    // Out of order within a batch: taken in time order, nothing is late.
    let first: Vec<i64> = (0..100).rev().collect();
    let out = s.score(&mk(&first, 1), 0);
    assert!(!statuses(&out.scored).iter().any(|st| st == "late"));
    // A later batch with older readings (a backlog behind live data).
    let out = s.score(&mk(&[150, 40, 41], 2), 0);
    let st = statuses(&out.scored);
    assert_eq!(st.iter().filter(|x| *x == "late").count(), 2, "{st:?}");
    let scores = floats(&out.scored, "score");
    assert_eq!(scores.null_count(), 2, "late readings carry no score");
}

#[test]
fn a_non_finite_value_is_archived_unscored_and_does_not_poison_its_series() {
    let mut scorer = Scorer::new(model(), 100, None);
    scorer.score(&batch("d1", 1.0, 200, None, 1), 0);
    let mut cols = ReadingColumns::default();
    let t0 = 1_700_000_000_000_000 + 50_000 * 1_000_000;
    for i in 0..200 {
        let v = match i {
            50 => f64::NAN,
            60 => f64::INFINITY,
            _ => 10.0 + (i as f64 / 20.0).sin(),
        };
        cols.push("d1", "temp", t0 + i * 1_000_000, v);
    }
    let (_, bytes) = envelope::encode("gw", 1, 2, &cols.finish()).unwrap();
    let out = scorer.score(
        &envelope::decode(&bytes, &DecodeLimits::default()).unwrap(),
        0,
    );
    let st = statuses(&out.scored);
    assert_eq!(st[50], status::UNSCORED);
    assert_eq!(st[60], status::UNSCORED);
    let values = floats(&out.scored, "value");
    assert!(values.value(50).is_nan(), "archived as sent");
    // The series goes on being scored normally around and after them.
    let scores = floats(&out.scored, "score");
    assert_eq!(scores.null_count(), 2);
    assert!(scores.iter().flatten().all(f64::is_finite));
    let after = scorer.score(&batch("d1", 1.0, 100, None, 9), 0);
    assert!(
        statuses(&after.scored).iter().all(|s| s == status::OK),
        "the series was poisoned: {:?}",
        statuses(&after.scored)
    );
}

#[test]
fn scored_rows_come_grouped_by_device_then_series_each_in_time_order() {
    let mut scorer = Scorer::new(model(), 10, None);
    let mut cols = ReadingColumns::default();
    let mut sent = Vec::new();
    // Devices and metrics interleaved, times shuffled.
    let mut rng = fastrand::Rng::with_seed(3);
    for k in 0..120 {
        let (device, metric) = (["d2", "d1", "d3"][k % 3], ["b", "a"][k % 2]);
        let ts = 1_700_000_000_000_000 + rng.i64(0..1_000) * 1_000_000;
        let value = k as f64;
        cols.push(device, metric, ts, value);
        sent.push((device.to_owned(), metric.to_owned(), ts, value.to_bits()));
    }
    let (_, bytes) = envelope::encode("gw", 1, 1, &cols.finish()).unwrap();
    let out = scorer.score(
        &envelope::decode(&bytes, &DecodeLimits::default()).unwrap(),
        0,
    );
    let view = crate::state::ScoredView::new(&out.scored).unwrap();
    let rows: Vec<(String, String, i64, u64)> = (0..out.scored.num_rows())
        .map(|i| {
            (
                view.device.value(i).to_owned(),
                view.metric.value(i).to_owned(),
                view.ts.value(i),
                view.value.value(i).to_bits(),
            )
        })
        .collect();
    // Every reading once, as sent.
    let (mut a, mut b) = (rows.clone(), sent);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // A device's rows together, a series' rows together and in time order.
    let mut devices_done = std::collections::HashSet::new();
    let mut series_done = std::collections::HashSet::new();
    for (i, r) in rows.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &rows[p]);
        if previous.is_none_or(|p| p.0 != r.0) {
            assert!(devices_done.insert(r.0.clone()), "{} split", r.0);
        }
        if previous.is_none_or(|p| (&p.0, &p.1) != (&r.0, &r.1)) {
            assert!(
                series_done.insert((r.0.clone(), r.1.clone())),
                "{r:?} split"
            );
        } else {
            assert!(previous.unwrap().2 <= r.2, "out of time order at {i}");
        }
    }
    assert_eq!(series_done.len(), 6);
}

#[test]
fn normalisation_clips_like_min_max_and_never_feeds_the_model_a_nan() {
    let mut rng = fastrand::Rng::with_seed(3);
    let clip = 10.0;
    for _ in 0..200 {
        let (mean, std) = (rng.f64() * 200.0 - 100.0, rng.f64() * 5.0 + 1e-3);
        let values: Vec<f64> = (0..16)
            .map(|i| match i % 4 {
                0 => mean + clip * std, // exactly on the bound
                1 => rng.f64() * 2e6 - 1e6,
                _ => mean + (rng.f64() - 0.5) * 30.0 * std,
            })
            .collect();
        let mut out = vec![0f32; 16];
        normalise_into(&mut out, &values, mean, std, clip);
        for (o, v) in out.iter().zip(&values) {
            let expected = ((v - mean) * (1.0 / std)).max(-clip).min(clip) as f32;
            assert_eq!(*o, expected, "value {v}, mean {mean}, std {std}");
        }
    }
    let mut out = vec![0f32; 2];
    normalise_into(&mut out, &[1.0, f64::MAX], f64::NAN, 1.0, clip);
    assert!(out.iter().all(|x| x.abs() <= clip as f32), "{out:?}");
}

fn novelty_model() -> Model {
    Model::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/novelty")).unwrap()
}

/// The novelty route: a score for every reading (warming up too), nothing
/// anomalous before reading 201, a planted spike flagged as one event with
/// the forecaster's expected value, and the per-reading scores exactly the
/// detector's own.
#[test]
fn the_novelty_route_scores_every_reading_and_flags_a_planted_spike_once() {
    let mut scorer = Scorer::new(novelty_model(), 200, None);
    let threshold = scorer.model().manifest.threshold;
    let mut reference = detect::Novelty::new(&detect::NoveltyConfig::full());
    let mut flagged = Vec::new();
    for seq in 1..=6u64 {
        let spike = (seq == 6).then_some(50);
        let b = batch("d1", 1.0, 100, spike, seq);
        let out = scorer.score(&b, 0);
        let anomaly = floats(&out.scored, tables::ANOMALY_SCORE);
        let score = floats(&out.scored, tables::SCORE);
        let values = floats(&out.scored, tables::VALUE);
        for (i, st) in statuses(&out.scored).iter().enumerate() {
            let expected = reference.update(&detect::NoveltyConfig::full(), values.value(i));
            assert_eq!(anomaly.value(i), expected.score, "the detector's own score");
            let reading = (seq - 1) * 100 + i as u64 + 1;
            if reading <= 200 {
                assert_eq!(st, status::WARMING_UP);
                assert!(score.is_null(i));
            } else {
                assert_eq!(score.value(i), expected.score);
                assert_eq!(st == status::ANOMALOUS, expected.score >= threshold);
            }
            if st == status::ANOMALOUS {
                flagged.push(reading);
            }
        }
        if seq == 6 {
            assert_eq!(
                out.events.len(),
                1,
                "one event for the spike: {:?}",
                out.events
            );
            let e = &out.events[0];
            assert_eq!(
                e.ts_us,
                b.readings
                    .column(2)
                    .as_any()
                    .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                    .unwrap()
                    .value(50)
            );
            assert!(e.expected.is_some(), "the forecaster explains the event");
            assert!(e.expected_low < e.expected && e.expected < e.expected_high);
        }
    }
    // The spike, and at most the return from it (a run: one event).
    assert_eq!(flagged.first(), Some(&551), "{flagged:?}");
    assert!(
        flagged.windows(2).all(|w| w[1] == w[0] + 1) && flagged.len() <= 3,
        "{flagged:?}"
    );
}

/// Scoring a batch's series on several threads gives exactly what one
/// thread gives: rows, statuses, scores and events.
#[test]
fn novelty_scoring_on_threads_matches_one_thread() {
    let mut one = Scorer::new(novelty_model(), 200, None);
    let mut three = Scorer::new(novelty_model(), 200, None);
    three.set_threads(3);
    let mut events = 0;
    for seq in 1..=8u64 {
        let mut rng = fastrand::Rng::with_seed(seq);
        let mut cols = ReadingColumns::default();
        // 40 series x 100 readings, interleaved, with spikes and a NaN.
        for i in 0..100u64 {
            for d in 0..40u64 {
                let t = (seq - 1) * 100 + i;
                let mut v = 10.0 * d as f64 + (t as f64 / 15.0).sin() + rng.f64();
                if (t + d * 37) % 251 == 0 {
                    v += 50.0;
                }
                if t == 450 && d == 3 {
                    v = f64::NAN;
                }
                cols.push(
                    &format!("d{d}"),
                    "m",
                    1_700_000_000_000_000 + t as i64 * 1_000_000,
                    v,
                );
            }
        }
        let (_, bytes) = envelope::encode("gw", 1, seq, &cols.finish()).unwrap();
        let b = envelope::decode(&bytes, &DecodeLimits::default()).unwrap();
        let (a, c) = (one.score(&b, 0), three.score(&b, 0));
        assert_eq!(a.scored, c.scored, "batch {seq}");
        assert_eq!(a.anomalies, c.anomalies, "batch {seq}");
        assert_eq!(
            a.events
                .iter()
                .map(|e| (&e.device, e.ts_us, e.expected))
                .collect::<Vec<_>>(),
            c.events
                .iter()
                .map(|e| (&e.device, e.ts_us, e.expected))
                .collect::<Vec<_>>()
        );
        events += a.events.len();
    }
    assert!(events > 0, "the spikes raise events");
}
