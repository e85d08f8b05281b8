use arrow_array::{Array, Float64Array};
use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits, DecodedBatch};

use super::*;
use crate::config::ScoringSettings;

fn router() -> Router {
    Router::new(&ScoringSettings {
        model_dir: crate::test_models("novelty"),
        records_model_dir: Some("".into()),
        ..ScoringSettings::default()
    })
    .unwrap()
}

/// 100 readings of three series, a daily-ish cycle with noise.
fn batch(seq: u64) -> DecodedBatch {
    let mut rng = fastrand::Rng::with_seed(seq);
    let mut cols = ReadingColumns::default();
    for device in ["a", "b", "c"] {
        for i in 0..100u64 {
            let t = seq * 100 + i;
            let v = 20.0 + 5.0 * (t as f64 / 30.0).sin() + rng.f64();
            cols.push(
                device,
                "temp",
                1_700_000_000_000_000 + t as i64 * 1_000_000,
                v,
            );
        }
    }
    let (_, bytes) = envelope::encode("gw", 1, seq + 1, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

fn anomaly_scores(router: &mut Router, b: &DecodedBatch) -> Vec<Option<f64>> {
    let out = router.score(b, 0);
    let col = out
        .live
        .scored
        .column_by_name(schemas::tables::ANOMALY_SCORE)
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone();
    (0..col.len())
        .map(|i| (!col.is_null(i)).then(|| col.value(i)))
        .collect()
}

#[test]
fn a_committed_snapshot_restores_state_that_scores_exactly_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), 1 << 30).unwrap();
    let mut original = router();
    for seq in 0..8 {
        original.score(&batch(seq), 0);
    }
    store.write_pending(7, &original).unwrap();
    // Not covered by the archive yet: nothing to restore.
    assert_eq!(store.promote(7).unwrap(), None);
    assert!(store.load(|_, e| panic!("{e}")).unwrap().is_none());
    assert_eq!(store.promote(8).unwrap(), Some(7));
    let snapshot = store.load(|_, e| panic!("{e}")).unwrap().unwrap();
    assert_eq!(snapshot.position, 7);
    let mut restored = router();
    let summary = restored.restore_state(&snapshot.payload).unwrap();
    assert_eq!((summary.routes, summary.skipped.len()), (1, 0));
    assert_eq!(restored.series_count(), 3);
    for seq in 8..12 {
        let b = batch(seq);
        assert_eq!(
            anomaly_scores(&mut original, &b),
            anomaly_scores(&mut restored, &b)
        );
    }
    // A fresh router scores differently: the state is what carries over.
    let mut fresh = router();
    assert_ne!(
        anomaly_scores(&mut fresh, &batch(12)),
        anomaly_scores(&mut original, &batch(12))
    );
}

#[test]
fn a_damaged_byte_anywhere_is_refused_and_kept_for_inspection() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), 1 << 30).unwrap();
    let mut r = router();
    for seq in 0..3 {
        r.score(&batch(seq), 0);
    }
    store.write_pending(2, &r).unwrap();
    store.promote(3).unwrap();
    let path = dir.path().join(name(2, "bin"));
    let good = std::fs::read(&path).unwrap();
    // Every byte of the header, then a stride through the payload.
    let positions: Vec<usize> = (0..HEADER_BYTES)
        .chain((HEADER_BYTES..good.len()).step_by(good.len() / 97 + 1))
        .chain([good.len() - 1])
        .collect();
    for at in positions {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let mut refusals = 0;
        assert!(
            store.load(|_, _| refusals += 1).unwrap().is_none(),
            "byte {at}"
        );
        assert_eq!(refusals, 1, "byte {at}");
        let damaged = path.with_extension("damaged");
        assert_eq!(std::fs::read(&damaged).unwrap(), bad, "kept as it was");
        std::fs::remove_file(damaged).unwrap();
    }
    // Cut short.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(store.load(|_, _| {}).unwrap().is_none());
}

#[test]
fn the_newest_covered_snapshot_wins_and_older_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), 1 << 30).unwrap();
    let mut r = router();
    for seq in 0..6 {
        r.score(&batch(seq), 0);
        store.write_pending(seq, &r).unwrap();
    }
    // The archive has passed 3: snapshot 2 is the newest it covers.
    assert_eq!(store.promote(3).unwrap(), Some(2));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            name(2, "bin"),
            name(3, "pending"),
            name(4, "pending"),
            name(5, "pending")
        ]
    );
    // A restart drops the pending ones (a crash left them uncovered).
    let reopened = StateStore::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(
        reopened
            .load(|_, e| panic!("{e}"))
            .unwrap()
            .unwrap()
            .position,
        2
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_state_over_the_size_limit_is_neither_written_nor_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = router();
    r.score(&batch(0), 0);
    let small = StateStore::open(dir.path(), 64).unwrap();
    assert!(small.write_pending(0, &r).is_err());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temporary file left"
    );
    let large = StateStore::open(dir.path(), 1 << 30).unwrap();
    large.write_pending(0, &r).unwrap();
    large.promote(1).unwrap();
    let mut refused = Vec::new();
    assert!(
        small
            .load(|_, e| refused.push(e.to_string()))
            .unwrap()
            .is_none()
    );
    assert!(refused[0].contains("state-max-bytes"), "{refused:?}");
}

#[test]
fn state_saved_for_another_detector_configuration_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), 1 << 30).unwrap();
    let mut r = router();
    r.score(&batch(0), 0);
    store.write_pending(0, &r).unwrap();
    store.promote(1).unwrap();
    let payload = store.load(|_, e| panic!("{e}")).unwrap().unwrap().payload;
    let mut forecaster = Router::new(&ScoringSettings {
        model_dir: crate::test_models("univariate-forecast"),
        records_model_dir: Some("".into()),
        ..ScoringSettings::default()
    })
    .unwrap();
    let summary = forecaster.restore_state(&payload).unwrap();
    assert_eq!(
        (summary.routes, summary.skipped),
        (0, vec!["default".to_string()])
    );
    assert_eq!(forecaster.series_count(), 0);
}

const RIG_METRICS: [&str; 8] = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
];

/// A rig of eight metrics (SKAB's pump rig's names), 100 records per
/// batch; from record `fault_from` on, the flow falls and the rig heats.
fn rig_batch(seq: u64, fault_from: u64) -> DecodedBatch {
    let metrics = RIG_METRICS;
    let mut rng = fastrand::Rng::with_seed(seq);
    let mut cols = ReadingColumns::default();
    for i in 0..100u64 {
        let t = seq * 100 + i;
        let fault = t.saturating_sub(fault_from) as f64;
        let faulty = t >= fault_from;
        for (k, metric) in metrics.iter().enumerate() {
            let base = 10.0 * (k + 1) as f64;
            let v = match k {
                // Thermal: slow, warming.
                4 | 5 => {
                    base + 0.002 * t as f64
                        + 0.01 * rng.f64()
                        + if faulty { 0.01 * fault } else { 0.0 }
                }
                // Flow.
                7 => base + rng.f64() - if faulty { (0.05 * fault).min(5.0) } else { 0.0 },
                _ => base + rng.f64(),
            };
            cols.push(
                "rig-1",
                metric,
                1_700_000_000_000_000 + t as i64 * 1_000_000,
                v,
            );
        }
    }
    let (_, bytes) = envelope::encode("gw", 1, seq + 1, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

/// Each output row's status and anomaly score (bits).
fn judgements(router: &mut Router, b: &DecodedBatch) -> Vec<(String, Option<u64>)> {
    let out = router.score(b, 0);
    let scored = &out.live.scored;
    let status = crate::names::StrColumn::of(
        scored
            .column_by_name(schemas::tables::STATUS)
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let score = scored
        .column_by_name(schemas::tables::ANOMALY_SCORE)
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    (0..score.len())
        .map(|i| {
            (
                status.value(i).to_owned(),
                (!score.is_null(i)).then(|| score.value(i).to_bits()),
            )
        })
        .collect()
}

/// A copy of the shipped state monitor that lists the rig's metrics.
fn state_monitor_listing(metrics: &[&str], dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = crate::test_models("state-monitor").join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped).unwrap()).unwrap();
    manifest["input"] = serde_json::json!({ "metrics": metrics });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn a_state_monitor_is_restored_and_judges_the_next_fault_exactly_as_the_original() {
    let listing = tempfile::tempdir().unwrap();
    let metrics = RIG_METRICS;
    // The default: the records route finds the rig by its readings.
    let found = ScoringSettings {
        model_dir: crate::test_models("novelty"),
        records_model_dir: Some(crate::test_models("state-monitor")),
        ..ScoringSettings::default()
    };
    // A route to a model that lists the rig's metrics.
    let listed = ScoringSettings {
        routes: vec![crate::config::RouteConfig {
            name: "rig".into(),
            device: Some("rig-*".into()),
            metric: None,
            model_dir: state_monitor_listing(&metrics, listing.path()),
            shadow: false,
            threshold: None,
        }],
        model_dir: crate::test_models("novelty"),
        records_model_dir: Some("".into()),
        ..ScoringSettings::default()
    };
    for settings in [found, listed] {
        restored_and_judged_the_same(&settings);
    }
}

fn restored_and_judged_the_same(settings: &ScoringSettings) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), 1 << 30).unwrap();
    let fault_from = 700;
    let mut original = Router::new(settings).unwrap();
    // 600 records: past the 400-record warm-up.
    for seq in 0..6 {
        original.score(&rig_batch(seq, fault_from), 0);
    }
    store.write_pending(5, &original).unwrap();
    store.promote(6).unwrap();
    let payload = store.load(|_, e| panic!("{e}")).unwrap().unwrap().payload;
    let mut restored = Router::new(settings).unwrap();
    let summary = restored.restore_state(&payload).unwrap();
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    let mut fresh = Router::new(settings).unwrap();
    let mut anomalous = 0;
    for seq in 6..10 {
        let b = rig_batch(seq, fault_from);
        let expected = judgements(&mut original, &b);
        let got = judgements(&mut restored, &b);
        let differing = expected.iter().zip(&got).filter(|(a, b)| a != b).count();
        assert_eq!((got.len(), differing), (expected.len(), 0), "batch {seq}");
        anomalous += expected.iter().filter(|(s, _)| s == "anomalous").count();
        // Without the state the rig is warming up again.
        assert!(
            judgements(&mut fresh, &b)
                .iter()
                .all(|(s, _)| s != "anomalous")
        );
    }
    assert!(anomalous > 0, "the fault is found");
}
