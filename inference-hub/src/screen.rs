//! What the hub refuses to hold, decided before a batch enters the WAL:
//! readings stamped outside a sane time window, and readings of new series
//! beyond the series caps.
//!
//! # The time window
//! A reading stamped more than `intake.max-past` before or `intake.max-future`
//! after the hub's clock (a device without a real-time clock sending 1970,
//! a far-future year) would otherwise be archived under a nonsense
//! partition. The envelope header already carries the batch's event-time
//! range (verified against the payload), so a sane batch costs one
//! comparison.
//!
//! # The series caps
//! Each series (gateway, device, metric) costs the hub memory for as long
//! as it runs (scoring state, the API's recent points; about 5 KiB, see
//! docs/BENCHMARKS.md), so a gateway may hold at most
//! `intake.max-series-per-gateway` series and the hub `intake.max-series`.
//! [`SeriesRegistry`] remembers which series the hub holds (8 bytes of hash
//! each); readings of a *new* series past a cap are refused, those of known
//! series keep flowing.
//!
//! # Refusing rows, not batches
//! When some rows of a batch are refused, the others are re-encoded into a
//! new envelope (same identity) that goes into the WAL; the answer is still
//! `durable` and says how many readings were dropped and why, so the gateway
//! logs and counts them (`dropped` in the answer). Only when no row is left
//! is the batch `rejected`. The decision is made once, before the WAL: a
//! replay never decides again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arrow_array::{Array, BooleanArray, RecordBatch};
use schemas::ack::Dropped;
use schemas::envelope::DecodedBatch;
use schemas::tables::ReadingView;

use crate::stats::HubStats;

/// The screening rules (from `[intake]`).
#[derive(Debug, Clone, Copy)]
pub struct ScreenRules {
    pub max_past: Duration,
    pub max_future: Duration,
    pub max_series: usize,
    pub max_series_per_gateway: usize,
}

/// The series the hub holds, as hashes of `(device, metric)` per gateway.
#[derive(Debug, Default)]
pub struct SeriesRegistry {
    by_gateway: HashMap<String, HashSet<u64>>,
    total: usize,
    hasher: foldhash::fast::FixedState,
}

impl SeriesRegistry {
    fn series_hash(&self, device: &str, metric: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(device.as_bytes());
        h.write_u8(0xff);
        h.write(metric.as_bytes());
        h.finish()
    }

    /// Notes every series of a batch, whatever the caps (WAL replay: what is
    /// durable was already admitted).
    pub fn observe(&mut self, batch: &DecodedBatch) {
        let Ok(view) = ReadingView::try_new(&batch.readings) else {
            return;
        };
        let gateway = batch.header.gateway.as_str();
        for (device, metric) in runs(&view) {
            let hash = self.series_hash(device, metric);
            if self
                .by_gateway
                .entry(gateway.to_owned())
                .or_default()
                .insert(hash)
            {
                self.total += 1;
            }
        }
    }

    /// Series held in all.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// Each distinct `(device, metric)` run of consecutive rows (batches come
/// grouped by series, so this is nearly one comparison per row).
fn runs<'a>(view: &'a ReadingView<'a>) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    let mut previous: Option<(&str, &str)> = None;
    (0..view.device.len()).filter_map(move |i| {
        let current = (view.device.value(i), view.metric.value(i));
        (previous != Some(current)).then(|| {
            previous = Some(current);
            current
        })
    })
}

/// What screening decided for one batch.
#[derive(Debug)]
pub enum Verdict {
    /// Every row is kept.
    Keep,
    /// Only these rows are kept; the rest were dropped for the reason.
    Some(RecordBatch, Dropped),
    /// No row is kept.
    None(String),
}

/// Screens a batch against the rules, admitting its new series into the
/// registry (see the module docs).
pub fn screen(
    batch: &DecodedBatch,
    rules: &ScreenRules,
    registry: &mut SeriesRegistry,
    now_us: i64,
    stats: &HubStats,
) -> Verdict {
    let Ok(view) = ReadingView::try_new(&batch.readings) else {
        return Verdict::Keep;
    };
    let earliest = now_us.saturating_sub(micros(rules.max_past));
    let latest = now_us.saturating_add(micros(rules.max_future));
    let header = &batch.header;
    let times_ok = header.first_event_us >= earliest && header.last_event_us <= latest;
    let gateway = header.gateway.as_str();
    let held = registry.by_gateway.get(gateway).map_or(0, HashSet::len);
    // Fast path: sane times, and room for every row to be a new series.
    let rows = view.device.len();
    if times_ok
        && held + rows <= rules.max_series_per_gateway
        && registry.total + rows <= rules.max_series
    {
        registry.observe(batch);
        return Verdict::Keep;
    }
    let mut keep = vec![true; rows];
    let (mut too_old, mut too_new, mut over_cap) = (0u32, 0u32, 0u32);
    let mut admitted: HashSet<u64> = HashSet::new();
    let mut refused: HashSet<u64> = HashSet::new();
    for (i, kept) in keep.iter_mut().enumerate() {
        let ts = view.ts.value(i);
        if ts < earliest {
            too_old += 1;
            *kept = false;
            continue;
        }
        if ts > latest {
            too_new += 1;
            *kept = false;
            continue;
        }
        let hash = registry.series_hash(view.device.value(i), view.metric.value(i));
        let known = registry
            .by_gateway
            .get(gateway)
            .is_some_and(|s| s.contains(&hash))
            || admitted.contains(&hash);
        if known {
            continue;
        }
        let held = registry.by_gateway.get(gateway).map_or(0, HashSet::len);
        if refused.contains(&hash)
            || held >= rules.max_series_per_gateway
            || registry.total >= rules.max_series
        {
            refused.insert(hash);
            over_cap += 1;
            *kept = false;
            continue;
        }
        admitted.insert(hash);
        registry
            .by_gateway
            .entry(gateway.to_owned())
            .or_default()
            .insert(hash);
        registry.total += 1;
    }
    let dropped = too_old + too_new + over_cap;
    if dropped == 0 {
        return Verdict::Keep;
    }
    stats
        .readings_refused_time
        .fetch_add(u64::from(too_old + too_new), Relaxed);
    stats
        .readings_refused_series
        .fetch_add(u64::from(over_cap), Relaxed);
    let mut reasons = Vec::new();
    if too_old > 0 {
        reasons.push(format!(
            "{too_old} stamped more than {} before the hub's clock",
            humantime::format_duration(rules.max_past)
        ));
    }
    if too_new > 0 {
        reasons.push(format!(
            "{too_new} stamped more than {} after the hub's clock",
            humantime::format_duration(rules.max_future)
        ));
    }
    if over_cap > 0 {
        reasons.push(format!(
            "{over_cap} of {} new series past the series limit (a gateway holds at most {}, the hub {})",
            refused.len(),
            rules.max_series_per_gateway,
            rules.max_series
        ));
    }
    let reason = reasons.join("; ");
    if dropped as usize == rows {
        return Verdict::None(reason);
    }
    let mask = BooleanArray::from(keep);
    match arrow_select::filter::filter_record_batch(&batch.readings, &mask) {
        Ok(kept) => Verdict::Some(
            kept,
            Dropped {
                rows: dropped,
                reason,
            },
        ),
        Err(e) => Verdict::None(format!("cannot filter the batch: {e}")),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use schemas::ReadingColumns;

    use super::*;

    const NOW: i64 = 1_767_225_600_000_000;

    fn rules() -> ScreenRules {
        ScreenRules {
            max_past: Duration::from_secs(3600),
            max_future: Duration::from_secs(60),
            max_series: 10,
            max_series_per_gateway: 3,
        }
    }

    fn batch(gateway: &str, rows: &[(&str, i64)]) -> DecodedBatch {
        let mut cols = ReadingColumns::default();
        for (device, ts) in rows {
            cols.push(device, "temp", *ts, 1.0);
        }
        let bytes = schemas::envelope::encode(gateway, 1, 1, &cols.finish())
            .unwrap()
            .1;
        schemas::envelope::decode(&bytes, &schemas::DecodeLimits::default()).unwrap()
    }

    #[test]
    fn readings_outside_the_time_window_are_dropped_with_a_reason() {
        let mut registry = SeriesRegistry::default();
        let b = batch("gw", &[("d1", NOW), ("d1", 0), ("d1", NOW + 3_600_000_000)]);
        match screen(&b, &rules(), &mut registry, NOW, &HubStats::default()) {
            Verdict::Some(kept, dropped) => {
                assert_eq!(kept.num_rows(), 1);
                assert_eq!(dropped.rows, 2);
                assert!(
                    dropped.reason.contains("1 stamped more than 1h before"),
                    "{}",
                    dropped.reason
                );
                assert!(
                    dropped.reason.contains("1 stamped more than 1m after"),
                    "{}",
                    dropped.reason
                );
            }
            other => panic!("{other:?}"),
        }
        let all_old = batch("gw", &[("d1", 0)]);
        assert!(matches!(
            screen(&all_old, &rules(), &mut registry, NOW, &HubStats::default()),
            Verdict::None(_)
        ));
    }

    #[test]
    fn new_series_past_a_cap_are_refused_and_known_ones_keep_flowing() {
        let mut registry = SeriesRegistry::default();
        let first = batch("gw", &[("d1", NOW), ("d2", NOW), ("d3", NOW)]);
        assert!(matches!(
            screen(&first, &rules(), &mut registry, NOW, &HubStats::default()),
            Verdict::Keep
        ));
        let more = batch(
            "gw",
            &[("d1", NOW + 1), ("d4", NOW), ("d4", NOW + 1), ("d5", NOW)],
        );
        match screen(&more, &rules(), &mut registry, NOW, &HubStats::default()) {
            Verdict::Some(kept, dropped) => {
                assert_eq!(kept.num_rows(), 1, "d1 is known");
                assert_eq!(dropped.rows, 3);
                assert!(
                    dropped.reason.contains("2 new series"),
                    "{}",
                    dropped.reason
                );
            }
            other => panic!("{other:?}"),
        }
        // Another gateway has its own cap, within the hub's.
        let other = batch("gw2", &[("d1", NOW), ("d2", NOW)]);
        assert!(matches!(
            screen(&other, &rules(), &mut registry, NOW, &HubStats::default()),
            Verdict::Keep
        ));
        assert_eq!(registry.total(), 5);
    }
}
