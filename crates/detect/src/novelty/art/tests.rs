use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn intersection_matches_a_scalar_reference(
        x in proptest::collection::vec(0u8..=240, INPUT),
        w in proptest::collection::vec(0u8..=240, INPUT),
    ) {
        let x: Input = x.try_into().unwrap();
        let w: Input = w.try_into().unwrap();
        let reference: u32 = x.iter().zip(&w).map(|(a, b)| u32::from(*a.min(b))).sum();
        prop_assert_eq!(intersection(&x, &w), reference);
    }
}

proptest! {
    #[test]
    fn the_running_median_is_the_lower_median(levels in proptest::collection::vec(0u8..LEVELS, 1..300)) {
        let mut m = LevelMedian::new();
        for (k, &l) in levels.iter().enumerate() {
            m.add(l);
            let mut sorted = levels[..=k].to_vec();
            sorted.sort_unstable();
            prop_assert_eq!(m.median(), sorted[(sorted.len() - 1) / 2]);
        }
    }
}

#[test]
fn features_are_complement_coded_levels_and_haar() {
    let f = features(&[0, 0, 0, 0, 80, 80, 80, 80]);
    assert_eq!(&f[..8], &[0, 0, 0, 0, 240, 240, 240, 240]);
    for k in 0..FEATURES {
        assert_eq!(u16::from(f[k]) + u16::from(f[k + FEATURES]), 240);
    }
    // A flat window has flat Haar features.
    let flat = features(&[40; 8]);
    assert!(flat[8..16].iter().all(|&v| v == 0));
}

#[test]
fn a_repeated_pattern_is_learned_and_a_new_one_is_reported() {
    let mut inst = Instance::new(200, 0.5);
    let shape = |i: u32| (f64::from(i % 20) * std::f64::consts::TAU / 20.0).sin() * 10.0;
    let mut reported_late = 0;
    for i in 0..2000 {
        let c = inst.update(shape(i), 256);
        if i > 1000 && c > 0.0 {
            reported_late += 1;
        }
    }
    assert_eq!(reported_late, 0, "a learned periodic pattern is not novel");
    // A pattern never seen: a step far off the sine's shape.
    let mut reported = 0.0f64;
    for i in 0..40 {
        reported = reported.max(inst.update(if i % 2 == 0 { 10.0 } else { -10.0 }, 256));
    }
    assert!(reported > 0.5, "a new pattern is a novelty ({reported})");
}
