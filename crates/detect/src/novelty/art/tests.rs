use super::network::*;
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

/// A complement-coded input with the given features.
fn coded(features: [u8; FEATURES]) -> Input {
    let mut x = [0u8; INPUT];
    for k in 0..FEATURES {
        x[k] = features[k];
        x[FEATURES + k] = FULL - features[k];
    }
    x
}

/// The specification's scan, written out: `M = r^3 E^2` of every category
/// in `f64`, the first of the largest.
fn reference_best(art: &Art, x: &Input) -> Option<(usize, f64, f64)> {
    let mut best: Option<(usize, f64, f64)> = None;
    for k in 0..art.len() {
        let c = art.category(k);
        let r = if c.inverse_norm == 0.0 {
            1.0
        } else {
            f64::from(
                x.iter()
                    .zip(&c.w)
                    .map(|(a, b)| u32::from(*a.min(b)))
                    .sum::<u32>(),
            ) * c.inverse_norm
        };
        let e = if c.inverse_newest == 0.0 {
            1.0
        } else {
            let hit = u32::from(x[NEWEST].min(c.w[NEWEST]))
                + u32::from(x[NEWEST_COMPLEMENT].min(c.w[NEWEST_COMPLEMENT]));
            f64::from(hit) * c.inverse_newest
        };
        let m = r * r * r * e * e;
        if best.is_none_or(|(_, best_m, _)| m > best_m) {
            best = Some((k, m, e));
        }
    }
    best
}

/// Networks of up to 600 categories (two segments and a remainder), from
/// a few distinct windows (so that ties happen) and from random boxes
/// (including all-zero weights, whose ratio is 1).
fn network() -> impl Strategy<Value = (Art, Vec<Input>)> {
    let window = proptest::array::uniform16(0u8..=240);
    (
        proptest::collection::vec(window, 1..8),
        proptest::collection::vec((0usize..8, any::<bool>(), 0u8..=240), 0..600),
        proptest::collection::vec(proptest::array::uniform16(0u8..=240), 1..6),
    )
        .prop_map(|(windows, picks, probes)| {
            let mut art = Art::default();
            for (pick, widen, by) in picks {
                let mut w = coded(windows[pick % windows.len()]);
                if widen {
                    // A box grown towards everything; by 240, all zeros.
                    for v in &mut w {
                        *v = v.saturating_sub(by);
                    }
                }
                art.push(w, 0, usize::MAX);
            }
            let probes = probes
                .into_iter()
                .map(coded)
                .chain(windows.into_iter().map(coded))
                .collect();
            (art, probes)
        })
}

proptest! {
    #[test]
    fn the_filtered_scan_finds_what_the_scalar_scan_finds((art, probes) in network()) {
        for x in &probes {
            let found = art.best(x);
            prop_assert_eq!(found, reference_best(&art, x));
            prop_assert_eq!(found, art.best_unfiltered(x));
        }
    }
}

#[test]
fn a_network_saves_in_the_snapshot_layout_of_format_1() {
    #[derive(Serialize)]
    struct Saved {
        categories: Vec<Category>,
        clusters: u32,
        steps: u64,
    }
    let mut art = Art::default();
    for k in 0..40u8 {
        let x = coded([k * 6; FEATURES]);
        art.present(&x, 0.9, 0.7, 32);
    }
    let saved = Saved {
        categories: (0..art.len()).map(|k| art.category(k)).collect(),
        clusters: art.clusters,
        steps: art.steps,
    };
    let bytes = postcard::to_allocvec(&art).unwrap();
    assert_eq!(bytes, postcard::to_allocvec(&saved).unwrap());
    let restored: Art = postcard::from_bytes(&bytes).unwrap();
    let probe = coded([100; FEATURES]);
    assert_eq!(restored.best(&probe), art.best(&probe));
    assert_eq!(postcard::to_allocvec(&restored).unwrap(), bytes);
}
