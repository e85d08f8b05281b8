use std::path::{Path, PathBuf};

use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits};

use super::*;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn settings(default: &Path, routes: Vec<RouteConfig>) -> ScoringSettings {
    ScoringSettings {
        model_dir: default.to_owned(),
        warmup_readings: 20,
        routes,
        // These tests are about the routes; the records route has its own.
        records_model_dir: Some("".into()),
        ..ScoringSettings::default()
    }
}

fn route(name: &str, device: &str, model: &str, shadow: bool) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        device: Some(device.into()),
        metric: None,
        model_dir: models().join(model),
        shadow,
        threshold: None,
    }
}

const SKAB_METRICS: [&str; 8] = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
];

/// One record of pump-1 (the 8 rig metrics) plus one fan reading.
fn batch(seq: u64) -> DecodedBatch {
    let mut cols = ReadingColumns::default();
    let ts = 1_700_000_000_000_000 + seq as i64 * 1_000_000;
    for (m, metric) in SKAB_METRICS.iter().enumerate() {
        cols.push(
            "pump-1",
            metric,
            ts,
            10.0 * (m + 1) as f64 + (seq as f64 / 7.0).sin(),
        );
    }
    cols.push("fan-1", "temp", ts, 40.0 + (seq as f64 / 5.0).sin());
    let (_, bytes) = envelope::encode("gw", 1, seq, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

/// A string column's values, plain or keyed.
fn column(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = crate::names::StrColumn::of(b.column_by_name(name).unwrap().as_ref())
        .expect("a string column without nulls");
    (0..c.len()).map(|i| c.value(i).to_owned()).collect()
}

#[test]
fn the_first_matching_route_scores_and_shadows_score_alongside() {
    let mut router = Router::new(&settings(
        &models().join("univariate-forecast"),
        vec![
            route("pumps", "pump-*", "multivariate-autoencoder", false),
            route("candidate", "*", "multivariate-forecast", true),
        ],
    ))
    .unwrap();
    let out = router.score(&batch(1), 0);
    let mut pairs: Vec<(String, String)> = column(&out.live.scored, "device")
        .into_iter()
        .zip(column(&out.live.scored, "model_id"))
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(
        pairs,
        vec![
            ("fan-1".into(), "univariate-forecast".into()),
            ("pump-1".into(), "multivariate-autoencoder".into())
        ]
    );
    assert_eq!(
        out.live.scored.num_rows(),
        9,
        "every reading scored once by a live model"
    );
    let shadow = out
        .shadow
        .expect("the shadow route takes the pump's metrics");
    assert_eq!(
        shadow.num_rows(),
        8,
        "the multivariate shadow takes only its metrics"
    );
    assert!(
        column(&shadow, "model_id")
            .iter()
            .all(|m| m == "multivariate-forecast")
    );
}

#[test]
fn a_changed_manifest_is_swapped_in_between_batches_keeping_series_state() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["manifest.json", "model.onnx"] {
        std::fs::copy(
            models().join("univariate-forecast").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    let mut router = Router::new(&settings(dir.path(), Vec::new())).unwrap();
    let mut seq = 0;
    for _ in 0..120 {
        seq += 1;
        router.score(&batch(seq), 0);
    }
    assert!(router.reload_changed().is_empty(), "nothing changed yet");

    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    std::fs::write(
        dir.path().join("manifest.json"),
        manifest.replace("\"version\": \"1.0.0\"", "\"version\": \"1.0.1\""),
    )
    .unwrap();
    let reloads = router.reload_changed();
    assert_eq!(reloads.len(), 1);
    assert_eq!(
        reloads[0].result.as_ref().unwrap(),
        "univariate-forecast 1.0.1"
    );
    seq += 1;
    let out = router.score(&batch(seq), 0);
    assert!(
        column(&out.live.scored, "model_version")
            .iter()
            .all(|v| v == "1.0.1")
    );
    assert!(
        column(&out.live.scored, "status").iter().all(|s| s == "ok"),
        "series state survived the swap (no new warm-up)"
    );

    // A broken model is refused and the current one keeps scoring.
    std::fs::write(
        dir.path().join("manifest.json"),
        manifest
            .replace("\"version\": \"1.0.0\"", "\"version\": \"2.0.0\"")
            .replace("\"sha256\": \"", "\"sha256\": \"00"),
    )
    .unwrap();
    let reloads = router.reload_changed();
    assert!(matches!(
        reloads[0].result,
        Err(ModelError::Checksum { .. })
    ));
    seq += 1;
    let out = router.score(&batch(seq), 0);
    assert!(
        column(&out.live.scored, "model_version")
            .iter()
            .all(|v| v == "1.0.1")
    );
}
