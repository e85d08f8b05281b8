use arrow_array::{Array, Float64Array};
use schemas::ReadingColumns;
use schemas::envelope::{self, DecodeLimits, DecodedBatch};

use super::*;
use crate::config::ScoringSettings;

fn router() -> Router {
    let mut r = Router::new(&ScoringSettings {
        model_dir: crate::test_models("novelty"),
        records_model_dir: Some("".into()),
        ..ScoringSettings::default()
    })
    .unwrap();
    r.follow_gateways();
    r
}

/// 100 readings of each of `devices` from `gateway`.
fn batch(gateway: &str, devices: &[&str], seq: u64) -> DecodedBatch {
    let mut rng = fastrand::Rng::with_seed(seq);
    let mut cols = ReadingColumns::default();
    for device in devices {
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
    let (_, bytes) = envelope::encode(gateway, 1, seq + 1, &cols.finish()).unwrap();
    envelope::decode(&bytes, &DecodeLimits::default()).unwrap()
}

fn scores(router: &mut Router, b: &DecodedBatch) -> Vec<Option<u64>> {
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
        .map(|i| (!col.is_null(i)).then(|| col.value(i).to_bits()))
        .collect()
}

#[test]
fn a_gateway_moving_to_another_hub_arrives_with_what_its_last_hub_learned() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedState::Local(dir.path().to_owned());
    let mut first = router();
    for seq in 0..6 {
        first.score(&batch("gw-1", &["a", "b"], seq), 0);
        first.score(&batch("gw-2", &["c"], seq), 0);
    }
    assert!(shared.write(&first, "gw-1").unwrap() > 0);
    assert!(dir.path().join("detector-state/gateway=gw-1.bin").is_file());
    // The hub gw-1 moves to: nothing of it yet, so all of gw-1 is taken,
    // nothing of gw-2.
    let mut second = router();
    assert_eq!(shared.read_into(&mut second, "gw-1", 1 << 30).unwrap(), 2);
    assert_eq!(second.series_count(), 2);
    // A gateway nobody shared: nothing.
    assert_eq!(shared.read_into(&mut second, "gw-9", 1 << 30).unwrap(), 0);
    for seq in 6..10 {
        let b = batch("gw-1", &["a", "b"], seq);
        assert_eq!(
            scores(&mut first, &b),
            scores(&mut second, &b),
            "batch {seq}"
        );
    }
    // Without it, the series learn anew: different scores.
    let mut fresh = router();
    let b = batch("gw-1", &["a", "b"], 10);
    assert_ne!(scores(&mut fresh, &b), scores(&mut first, &b));
}

#[test]
fn what_a_hub_has_is_never_replaced_by_shared_state() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedState::Local(dir.path().to_owned());
    let mut other = router();
    for seq in 0..6 {
        other.score(&batch("gw-1", &["a"], seq), 0);
    }
    shared.write(&other, "gw-1").unwrap();
    let mut here = router();
    for seq in 0..3 {
        here.score(&batch("gw-1", &["a"], seq), 0);
    }
    let before = here.save_gateway("gw-1", Vec::new()).unwrap();
    assert_eq!(shared.read_into(&mut here, "gw-1", 1 << 30).unwrap(), 0);
    assert_eq!(here.save_gateway("gw-1", Vec::new()).unwrap(), before);
}

#[test]
fn a_damaged_oversized_or_foreign_object_is_refused() {
    let payload = b"some state".repeat(50);
    let good = frame(&payload);
    assert_eq!(unframe(&good, 1 << 20).unwrap(), &payload[..]);
    for at in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        assert!(unframe(&bad, 1 << 20).is_err(), "byte {at}");
    }
    assert!(unframe(&good[..good.len() - 1], 1 << 20).is_err());
    assert!(matches!(
        unframe(&good, 100),
        Err(SnapshotError::TooLarge(500))
    ));
    // Through the store: a damaged object is an error, the router untouched.
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedState::Local(dir.path().to_owned());
    let mut r = router();
    r.score(&batch("gw-1", &["a"], 0), 0);
    shared.write(&r, "gw-1").unwrap();
    let path = dir.path().join("detector-state/gateway=gw-1.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let mut fresh = router();
    assert!(shared.read_into(&mut fresh, "gw-1", 1 << 30).is_err());
    assert_eq!(fresh.series_count(), 0);
}

#[test]
fn gateway_names_cannot_leave_the_state_directory() {
    for (gateway, file) in [
        ("gw-1", "gateway=gw-1.bin"),
        ("../../etc", "gateway=%2E%2E%2F%2E%2E%2Fetc.bin"),
        ("a b/ü", "gateway=a%20b%2F%C3%BC.bin"),
    ] {
        let path = relative(gateway);
        assert_eq!(path, Path::new("detector-state").join(file), "{gateway}");
        assert_eq!(path.components().count(), 2);
    }
}
