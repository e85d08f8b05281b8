use arrow_array::RecordBatch;
use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits};

use super::*;
use crate::config::ScoringSettings;
use crate::scoring::Router;

/// A string column's values, whether plain or keyed.
fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let col = crate::names::StrColumn::of(b.column_by_name(name).unwrap().as_ref()).unwrap();
    (0..col.len()).map(|i| col.value(i).to_owned()).collect()
}

/// (device, metric) -> (model id, statuses) of every scored row.
fn by_series(b: &RecordBatch) -> HashMap<(String, String), (String, Vec<String>)> {
    let (device, metric, model, st) = (
        strings(b, "device"),
        strings(b, "metric"),
        strings(b, "model_id"),
        strings(b, "status"),
    );
    let mut out: HashMap<(String, String), (String, Vec<String>)> = HashMap::new();
    for i in 0..device.len() {
        let e = out
            .entry((device[i].clone(), metric[i].clone()))
            .or_insert_with(|| (model[i].clone(), Vec::new()));
        assert_eq!(e.0, model[i], "one series, one model");
        e.1.push(st[i].clone());
    }
    out
}

/// `records` records per batch of: `pump` (flow, pressure, temp at one
/// timestamp; from batch 5 also `rpm`, and a record with 40 metrics for
/// `console`), `sensor` (one metric), `mixed` (temp alone, with rpm every
/// third time), `pair` (two metrics, alternate timestamps: never two at
/// one time).
fn batch(seq: u64, records: u64) -> DecodedBatch {
    let mut rng = fastrand::Rng::with_seed(seq);
    let mut cols = ReadingColumns::default();
    for r in 0..records {
        let t = seq * records + r;
        let ts = 1_700_000_000_000_000 + t as i64 * 1_000_000;
        let flow = 30.0 + rng.f64();
        cols.push("pump", "flow", ts, flow);
        cols.push("pump", "pressure", ts, 2.0 + 0.05 * flow + 0.01 * rng.f64());
        cols.push(
            "pump",
            "temp",
            ts,
            60.0 + 0.001 * t as f64 + 0.01 * rng.f64(),
        );
        if seq >= 5 {
            cols.push("pump", "rpm", ts, 1500.0 + rng.f64());
            for k in 0..40 {
                cols.push("console", &format!("m{k}"), ts, rng.f64());
            }
        }
        cols.push("sensor", "temp", ts, 20.0 + rng.f64());
        // Mostly one metric, every third message two: not a record device.
        cols.push("mixed", "temp", ts, 20.0 + rng.f64());
        if t % 3 == 1 {
            cols.push("mixed", "rpm", ts, 1000.0 + rng.f64());
        }
        let metric = if t.is_multiple_of(2) { "a" } else { "b" };
        cols.push("pair", metric, ts, rng.f64());
    }
    let (_, bytes) = envelope::encode("gw", 1, seq + 1, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

fn router(records_model_dir: Option<std::path::PathBuf>) -> Router {
    Router::new(&ScoringSettings {
        model_dir: crate::test_models("novelty"),
        records_model_dir,
        ..ScoringSettings::default()
    })
    .unwrap()
}

#[test]
fn record_shaped_devices_go_to_the_state_monitor_and_the_rest_to_the_default() {
    let mut r = router(Some(crate::test_models("state-monitor")));
    let mut last = HashMap::new();
    for seq in 0..7 {
        last = by_series(&r.score(&batch(seq, 100), 0).live.scored);
    }
    let model = |d: &str, m: &str| last[&(d.to_owned(), m.to_owned())].0.clone();
    for m in ["flow", "pressure", "temp"] {
        assert_eq!(model("pump", m), "state-monitor", "{m}");
    }
    // 700 records: past the state monitor's warm-up of 400, judged.
    let statuses = &last[&("pump".to_owned(), "flow".to_owned())].1;
    assert!(
        statuses
            .iter()
            .all(|s| s == status::OK || s == status::ANOMALOUS),
        "{statuses:?}"
    );
    // A metric added later, a one-metric device, a device whose metrics
    // never share a timestamp, and a record of too many metrics stay with
    // the per-series default.
    assert_eq!(model("pump", "rpm"), "novelty");
    assert_eq!(model("sensor", "temp"), "novelty");
    assert_eq!(model("pair", "a"), "novelty");
    assert_eq!(model("console", "m0"), "novelty");
    assert_eq!(model("mixed", "temp"), "novelty");
    assert_eq!(model("mixed", "rpm"), "novelty");
    assert_eq!(
        r.series_count(),
        1 + 1 + 1 + 2 + 2 + 40,
        "one state-monitored device"
    );
}

#[test]
fn the_records_route_takes_a_device_at_its_third_record_of_one_layout() {
    let mut r = router(Some(crate::test_models("state-monitor")));
    let pump = |out: &RecordBatch| {
        by_series(out)[&("pump".to_owned(), "flow".to_owned())]
            .0
            .clone()
    };
    assert_eq!(pump(&r.score(&batch(0, 2), 0).live.scored), "novelty");
    assert_eq!(pump(&r.score(&batch(1, 1), 0).live.scored), "state-monitor");
}

#[test]
fn a_route_before_it_keeps_its_readings_and_it_can_be_turned_off() {
    let mut listed = Router::new(&ScoringSettings {
        model_dir: crate::test_models("novelty"),
        records_model_dir: Some(crate::test_models("state-monitor")),
        routes: vec![crate::config::RouteConfig {
            name: "pumps".into(),
            device: Some("pump".into()),
            metric: Some("flow".into()),
            model_dir: crate::test_models("univariate-forecast"),
            shadow: false,
            threshold: None,
        }],
        ..ScoringSettings::default()
    })
    .unwrap();
    let out = by_series(&listed.score(&batch(0, 50), 0).live.scored);
    assert_eq!(
        out[&("pump".into(), "flow".into())].0,
        "univariate-forecast"
    );
    // Pressure and temperature still share timestamps: a record of two.
    assert_eq!(out[&("pump".into(), "pressure".into())].0, "state-monitor");

    let mut off = router(Some("".into()));
    let out = by_series(&off.score(&batch(0, 50), 0).live.scored);
    assert!(out.values().all(|(m, _)| m == "novelty"));
}

#[test]
fn the_layout_is_the_first_record_and_devices_of_one_layout_share_a_scorer() {
    let model = Model::load(&crate::test_models("state-monitor")).unwrap();
    let mut scorer = RecordsScorer::new(model, 200, None);
    let mut cols = ReadingColumns::default();
    let ts = 1_700_000_000_000_000;
    for device in ["p1", "p2"] {
        cols.push(device, "temp", ts - 1, 1.0); // alone at its time
        cols.push(device, "flow", ts, 1.0);
        cols.push(device, "temp", ts, 2.0);
        cols.push(device, "flow", ts, 3.0); // again: counted once
    }
    cols.push("p3", "temp", ts, 1.0);
    cols.push("p3", "flow", ts, 1.0);
    let batch = cols.finish();
    let view = ReadingView::try_new(&batch).unwrap();
    scorer.claim(&view, 0..batch.num_rows());
    assert_eq!(scorer.device_count(), 3);
    assert_eq!(scorer.layouts.len(), 2, "flow,temp and temp,flow");
    assert!(scorer.takes("p1", "temp") && scorer.takes("p1", "flow"));
    assert!(!scorer.takes("p1", "rpm") && !scorer.takes("p9", "temp"));
    let names: Vec<&str> = scorer.layouts[0].metrics.iter().map(|m| &**m).collect();
    assert_eq!(names, ["flow", "temp"]);
}
