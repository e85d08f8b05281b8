//! Recognises device messages the broker redelivers after a crash although
//! their readings were already spooled.
//!
//! The agent acknowledges a message after the spool's fsync. If the process
//! dies between the fsync and the PUBACK reaching the broker, the broker
//! redelivers the message to the next session, and without this guard its
//! readings would be spooled (and archived) twice under a new incarnation.
//! At start-up the guard is seeded with the keys (device, metric, timestamp,
//! value) of the newest spooled readings; a message any of whose readings
//! matches is acknowledged and dropped. The keys only matter for what the
//! broker redelivers first, so the guard empties itself one minute after the
//! first connection.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use schemas::Reading;

/// Keys held at most (about 16 bytes each).
const MAX_KEYS: usize = 100_000;
/// How long after the first connection redeliveries are expected.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct RedeliveryGuard {
    keys: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    expires_at: Option<Instant>,
}

impl RedeliveryGuard {
    /// Seeds the guard from spooled envelopes, newest first.
    pub fn from_envelopes(envelopes: &[Vec<u8>]) -> Self {
        let mut guard = Self::default();
        let limits = schemas::DecodeLimits::default();
        for bytes in envelopes {
            let Ok(batch) = schemas::envelope::decode(bytes, &limits) else {
                continue;
            };
            for r in schemas::reading::readings_from_batch(&batch.readings) {
                if guard.keys.len() >= MAX_KEYS {
                    return guard;
                }
                let key = guard.key(&r);
                guard.keys.insert(key);
            }
        }
        guard
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Starts the expiry clock on the first connection to the broker.
    pub fn connected(&mut self, now: Instant) {
        self.expires_at.get_or_insert(now + WINDOW);
    }

    /// Whether a message with these readings was already spooled.
    pub fn is_redelivery(&mut self, readings: &[Reading], now: Instant) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            self.keys = HashSet::new();
            return false;
        }
        let mut seen = false;
        for r in readings {
            let key = self.key(r);
            seen |= self.keys.remove(&key);
        }
        seen
    }

    fn key(&self, r: &Reading) -> u64 {
        self.hasher
            .hash_one((&r.device, &r.metric, r.ts_us, r.value.to_bits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: i64) -> Reading {
        Reading {
            device: format!("d{}", i % 3),
            metric: "m".into(),
            ts_us: i,
            value: i as f64,
        }
    }

    fn envelope(range: std::ops::Range<i64>) -> Vec<u8> {
        let mut cols = schemas::ReadingColumns::with_capacity(16);
        for i in range {
            cols.push_reading(&reading(i));
        }
        schemas::envelope::encode("gw", 1, 1, &cols.finish())
            .unwrap()
            .1
    }

    #[test]
    fn matches_spooled_readings_once_and_nothing_else() {
        let mut guard = RedeliveryGuard::from_envelopes(&[envelope(0..10), envelope(10..20)]);
        assert_eq!(guard.len(), 20);
        let now = Instant::now();
        guard.connected(now);
        assert!(guard.is_redelivery(&[reading(3), reading(4)], now));
        assert!(
            !guard.is_redelivery(&[reading(3)], now),
            "each key matches once"
        );
        assert!(!guard.is_redelivery(&[reading(25)], now));
        let mut changed = reading(15);
        changed.value = -1.0;
        assert!(
            !guard.is_redelivery(&[changed], now),
            "same time, other value"
        );
        assert!(
            guard.is_redelivery(&[reading(99), reading(15)], now),
            "any match counts"
        );
    }

    #[test]
    fn expires_a_minute_after_the_first_connection() {
        let mut guard = RedeliveryGuard::from_envelopes(&[envelope(0..10)]);
        let now = Instant::now();
        guard.connected(now);
        guard.connected(now + Duration::from_secs(50));
        assert!(guard.is_redelivery(&[reading(1)], now + Duration::from_secs(59)));
        assert!(!guard.is_redelivery(&[reading(2)], now + WINDOW));
        assert!(guard.is_empty());
    }
}
