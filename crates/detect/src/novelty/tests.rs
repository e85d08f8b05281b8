//! Behaviour of the fused detector over long synthetic series: what NAB's
//! files do not test (regime changes, trends, bounded state, restarts).

use super::*;

/// A deterministic pseudo-random sequence in [-0.5, 0.5).
fn noise(i: u64) -> f64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// A daily cycle of 288 readings with noise.
fn daily(i: u64) -> f64 {
    50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 2.0 * noise(i)
}

const ALARM: f64 = 0.6;

/// The readings that alarmed, with the channels behind each.
fn alarms(
    det: &mut Novelty,
    cfg: &NoveltyConfig,
    values: impl Iterator<Item = f64>,
) -> Vec<(usize, f64, f64, bool)> {
    values
        .enumerate()
        .filter_map(|(i, x)| {
            let s = det.update(cfg, x);
            (s.ready && s.score >= ALARM).then_some((i, s.novelty, s.likelihood, s.spatial))
        })
        .collect()
}

#[test]
fn readiness_comes_after_200_readings_whatever_the_series() {
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    for i in 0..READY_AFTER {
        assert!(!det.update(&cfg, daily(i)).ready, "reading {}", i + 1);
    }
    assert!(det.update(&cfg, daily(READY_AFTER)).ready);
}

#[test]
fn a_spike_in_a_learned_daily_cycle_is_flagged_at_once() {
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    let quiet = alarms(&mut det, &cfg, (0..288 * 10).map(daily));
    assert!(
        quiet.len() <= 3,
        "{} alarms in ten normal days: {quiet:?}",
        quiet.len()
    );
    let s = det.update(&cfg, 140.0);
    assert!(s.score >= ALARM, "a spike far outside the range: {s:?}");
}

#[test]
fn a_steady_trend_does_not_storm() {
    // A metric that grows by a small step every reading for 20k readings
    // (a filling disk, a counter): every reading is a new high.
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    let a = alarms(
        &mut det,
        &cfg,
        (0..20_000u64).map(|i| 100.0 + 0.05 * i as f64 + noise(i)),
    );
    assert!(
        a.len() <= 20,
        "{} alarms on a steady trend: {:?}",
        a.len(),
        &a[..a.len().min(20)]
    );
}

#[test]
fn a_sustained_level_shift_alarms_then_becomes_the_new_normal() {
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    let before = alarms(&mut det, &cfg, (0..3000).map(daily));
    assert!(before.len() <= 3, "{before:?}");
    let shifted = |i: u64| daily(i) + 200.0;
    let at_shift = alarms(&mut det, &cfg, (3000..3010).map(shifted));
    assert!(!at_shift.is_empty(), "the shift itself is flagged");
    // Within a few calibration lengths the new level is learned.
    alarms(&mut det, &cfg, (3010..6000).map(shifted));
    let later = alarms(&mut det, &cfg, (6000..12_000).map(shifted));
    assert!(
        later.len() <= 6,
        "{} alarms long after the shift: {later:?}",
        later.len()
    );
}

#[test]
fn slow_drift_is_followed_without_alarms() {
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    // The daily cycle drifts upward by its own amplitude every 10 days.
    let a = alarms(
        &mut det,
        &cfg,
        (0..30_000u64).map(|i| daily(i) + 20.0 * i as f64 / 2880.0),
    );
    assert!(
        a.len() <= 30,
        "{} alarms over 100 days of drift: {:?}",
        a.len(),
        &a[..a.len().min(30)]
    );
}

#[test]
fn state_stays_bounded_on_a_wandering_series() {
    let cfg = NoveltyConfig::full();
    let mut det = Novelty::new(&cfg);
    let mut x = 0.0;
    let mut peak = 0;
    for i in 0..60_000u64 {
        x += 5.0 * noise(i)
            + if i % 5000 == 0 {
                1000.0 * noise(i + 7)
            } else {
                0.0
            };
        det.update(&cfg, x);
        peak = peak.max(det.approx_bytes());
    }
    let instances = cfg.calibration_lengths.len() * cfg.range_margins.len();
    assert!(det.categories() <= instances * usize::from(cfg.max_categories));
    assert!(peak < 1_000_000, "peak state {peak} bytes");
}

#[test]
fn a_restored_state_scores_exactly_as_the_original() {
    let cfg = NoveltyConfig::full();
    let mut original = Novelty::new(&cfg);
    for i in 0..3000 {
        original.update(&cfg, daily(i));
    }
    let saved = postcard::to_allocvec(&original).unwrap();
    let mut restored: Novelty = postcard::from_bytes(&saved).unwrap();
    for i in 3000..4000u64 {
        let x = if i == 3500 { 130.0 } else { daily(i) };
        assert_eq!(
            original.update(&cfg, x),
            restored.update(&cfg, x),
            "reading {i}"
        );
    }
}
