//! Recognises device messages the broker redelivers although their readings
//! were already taken in.
//!
//! Three cases:
//! - **after a crash**: the agent acknowledges a message after the spool's
//!   fsync. If the process dies between the fsync and the PUBACK reaching the
//!   broker, the broker redelivers the message to the next session. At
//!   start-up the guard is seeded with the keys of the newest spooled
//!   readings.
//! - **after a reconnect**: messages forwarded to the batcher whose PUBACK had
//!   not reached the broker when the connection dropped are redelivered on
//!   the new connection, while their readings are still on their way (the
//!   acknowledgement of the old connection is void). The guard remembers the
//!   keys of the last messages it let through (at least the broker's
//!   in-flight window of them: nothing older can be unacknowledged) and arms
//!   them on every reconnect.
//! - **twice on one connection**: a broker restarted from its autosave can
//!   hold a message both in the restored session queue and again from the
//!   device's own resend (QoS 1 is at least once), and deliver both on the
//!   new connection. A message all of whose readings are among the last
//!   messages let through is a copy ([`RedeliveryGuard::is_copy`]); the
//!   chaos test caught such a reading archived twice in one batch.
//!
//! A key is (device, metric, timestamp, value), hashed. A message any of
//! whose readings matches an armed key is acknowledged and dropped, and the
//! key stays armed: the broker may redeliver the same message more than
//! once (a broker that dies within its autosave interval comes back from an
//! older save and redelivers what it had already redelivered and been
//! acknowledged for; the chaos test caught readings archived twice that
//! way). Armed keys only matter for what the broker redelivers first, so
//! they are forgotten one minute after the connection that armed them.

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
    /// Armed keys.
    keys: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    expires_at: Option<Instant>,
    connected_before: bool,
    /// Keys of the last messages let through, one entry per message.
    recent: std::collections::VecDeque<Vec<u64>>,
    /// The same keys, counted, for lookups.
    recent_keys: std::collections::HashMap<u64, u32>,
    remember_messages: usize,
}

impl RedeliveryGuard {
    /// A guard that remembers the last `remember_messages` messages.
    pub fn new(remember_messages: usize) -> Self {
        Self {
            remember_messages,
            ..Self::default()
        }
    }

    /// Arms the keys of spooled envelopes, newest first (at start-up).
    pub fn seed_from_envelopes(&mut self, envelopes: &[Vec<u8>]) {
        let guard = self;
        let limits = schemas::DecodeLimits::default();
        for bytes in envelopes {
            let Ok(batch) = schemas::envelope::decode(bytes, &limits) else {
                continue;
            };
            for r in schemas::reading::readings_from_batch(&batch.readings) {
                if guard.keys.len() >= MAX_KEYS {
                    return;
                }
                let key = guard.key(&r);
                guard.keys.insert(key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A connection to the broker was made: on the first, the seeded keys
    /// start to expire; on a reconnect, the recent messages are armed.
    pub fn connected(&mut self, now: Instant) {
        if self.connected_before {
            for keys in &self.recent {
                if self.keys.len() >= MAX_KEYS {
                    break;
                }
                self.keys.extend(keys.iter().copied());
            }
        }
        self.connected_before = true;
        self.expires_at = Some(now + WINDOW);
    }

    /// Records the readings of a message that was let through.
    pub fn remember(&mut self, readings: &[Reading]) {
        if self.remember_messages == 0 {
            return;
        }
        if self.recent.len() == self.remember_messages
            && let Some(old) = self.recent.pop_front()
        {
            for k in old {
                if let std::collections::hash_map::Entry::Occupied(mut e) =
                    self.recent_keys.entry(k)
                {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
        }
        let keys: Vec<u64> = readings.iter().map(|r| self.key(r)).collect();
        for k in &keys {
            *self.recent_keys.entry(*k).or_default() += 1;
        }
        self.recent.push_back(keys);
    }

    /// Whether every reading of a message is among the last messages let
    /// through: a second copy of one message (a reading sent again with the
    /// same device, metric, time and value is the same reading).
    pub fn is_copy(&self, readings: &[Reading]) -> bool {
        !readings.is_empty()
            && !self.recent_keys.is_empty()
            && readings
                .iter()
                .all(|r| self.recent_keys.contains_key(&self.key(r)))
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
        readings.iter().any(|r| self.keys.contains(&self.key(r)))
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
            unit: None,
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

    fn seeded(envelopes: &[Vec<u8>]) -> RedeliveryGuard {
        let mut guard = RedeliveryGuard::new(0);
        guard.seed_from_envelopes(envelopes);
        guard
    }

    #[test]
    fn matches_spooled_readings_once_and_nothing_else() {
        let mut guard = seeded(&[envelope(0..10), envelope(10..20)]);
        assert_eq!(guard.len(), 20);
        let now = Instant::now();
        guard.connected(now);
        assert!(guard.is_redelivery(&[reading(3), reading(4)], now));
        assert!(
            guard.is_redelivery(&[reading(3)], now),
            "a second redelivery of the same message is recognised too"
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
    fn expires_a_minute_after_the_connection() {
        let mut guard = seeded(&[envelope(0..10)]);
        let now = Instant::now();
        guard.connected(now);
        assert!(guard.is_redelivery(&[reading(1)], now + Duration::from_secs(59)));
        assert!(!guard.is_redelivery(&[reading(2)], now + WINDOW));
        assert!(guard.is_empty());
    }

    #[test]
    fn a_second_copy_on_the_same_connection_is_recognised_and_the_window_slides() {
        let mut guard = RedeliveryGuard::new(3);
        guard.connected(Instant::now());
        assert!(!guard.is_copy(&[reading(1)]), "nothing let through yet");
        for i in 0..3 {
            guard.remember(&[reading(i), reading(100 + i)]);
        }
        assert!(guard.is_copy(&[reading(1), reading(101)]));
        assert!(
            guard.is_copy(&[reading(0)]),
            "a reading seen before is a copy"
        );
        assert!(
            !guard.is_copy(&[reading(1), reading(7)]),
            "a message with a new reading is not a copy"
        );
        guard.remember(&[reading(3)]);
        assert!(!guard.is_copy(&[reading(0)]), "older than the window");
        assert!(guard.is_copy(&[reading(3)]));
        assert!(!guard.is_copy(&[]));
    }

    #[test]
    fn a_reconnect_arms_the_last_messages_let_through() {
        let mut guard = RedeliveryGuard::new(3);
        let now = Instant::now();
        guard.connected(now);
        for i in 0..5 {
            assert!(!guard.is_redelivery(&[reading(i)], now));
            guard.remember(&[reading(i)]);
        }
        guard.connected(now + Duration::from_secs(1));
        assert!(
            !guard.is_redelivery(&[reading(1)], now),
            "older than the window"
        );
        assert!(guard.is_redelivery(&[reading(2)], now));
        assert!(guard.is_redelivery(&[reading(4)], now));
        assert!(!guard.is_redelivery(&[reading(5)], now), "new data passes");
    }
}
