use std::path::PathBuf;

use arrow_array::{Array, Float64Array, StringArray};
use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits};

use super::*;

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

fn statuses(b: &RecordBatch) -> Vec<String> {
    let col = b
        .column_by_name("status")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    col.iter().map(|s| s.unwrap().to_owned()).collect()
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
    let scores = out
        .scored
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
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
    let version = out
        .scored
        .column_by_name("model_version")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(version.iter().all(|v| v == Some("1.0.0")));
    let seq = out
        .scored
        .column_by_name("seq")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::UInt64Array>()
        .unwrap();
    assert!(seq.iter().all(|s| s == Some(7)));
}
