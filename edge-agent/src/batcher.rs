//! Groups decoded readings into envelopes, sealing a batch when it reaches
//! `max-rows` readings or its oldest reading has waited `max-age`.
//!
//! Each batch carries the acknowledgements of the device messages whose
//! readings it holds; they travel with it until the hub has acknowledged the
//! batch. Sequence numbers are consecutive from 1 within an incarnation.

use std::time::Instant;

use bytes::Bytes;
use schemas::Reading;
use schemas::ReadingColumns;
use schemas::envelope::{self, BatchHeader};

use crate::config::BatchSettings;

/// A device message awaiting acknowledgement (the agent's device
/// acknowledgements go through [`iot_mqtt::OrderedAcker`]).
pub use iot_mqtt::PendingAck;

/// One decoded device message on its way to the batcher.
#[derive(Debug)]
pub struct IngestItem {
    pub readings: Vec<Reading>,
    pub ack: Option<PendingAck>,
}

/// A sealed, encoded batch and the device acknowledgements it releases.
#[derive(Debug, Clone)]
pub struct SealedBatch {
    pub header: BatchHeader,
    pub bytes: Bytes,
    pub acks: Vec<PendingAck>,
}

#[derive(Debug)]
pub struct Batcher {
    gateway: String,
    incarnation: u64,
    next_seq: u64,
    settings: BatchSettings,
    /// Seal once this many device acknowledgements are held (see
    /// `mqtt.broker-inflight`).
    max_held_acks: usize,
    columns: ReadingColumns,
    acks: Vec<PendingAck>,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(
        gateway: &str,
        incarnation: u64,
        settings: BatchSettings,
        max_held_acks: usize,
    ) -> Self {
        Self {
            max_held_acks: max_held_acks.max(1),
            gateway: gateway.to_owned(),
            incarnation,
            next_seq: 1,
            columns: ReadingColumns::with_capacity(settings.max_rows.min(65_536)),
            settings,
            acks: Vec::new(),
            opened_at: None,
        }
    }

    /// Adds one message's readings; returns a sealed batch when the size
    /// limit or the held-acknowledgement limit is reached. A message's
    /// readings never straddle two batches.
    pub fn push(&mut self, item: IngestItem, now: Instant) -> Option<SealedBatch> {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
        for r in &item.readings {
            self.columns.push_reading(r);
        }
        self.acks.extend(item.ack);
        let full =
            self.columns.len() >= self.settings.max_rows || self.acks.len() >= self.max_held_acks;
        full.then(|| self.seal()).flatten()
    }

    /// When the open batch must be sealed by age, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.settings.max_age)
    }

    /// Seals whatever is open. A batch with acknowledgements but no readings
    /// cannot happen (rejected messages are acknowledged at ingest).
    pub fn seal(&mut self) -> Option<SealedBatch> {
        self.opened_at = None;
        if self.columns.is_empty() {
            return None;
        }
        let batch = self.columns.finish();
        let seq = self.next_seq;
        self.next_seq += 1;
        let (header, bytes) = envelope::encode(&self.gateway, self.incarnation, seq, &batch)
            .expect("gateway id validated by config; batch non-empty with reading schema");
        Some(SealedBatch {
            header,
            bytes: Bytes::from(bytes),
            acks: std::mem::take(&mut self.acks),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use schemas::DecodeLimits;
    use schemas::reading::readings_from_batch;

    use super::*;

    fn item(i: usize) -> IngestItem {
        IngestItem {
            readings: vec![Reading {
                device: format!("d{}", i % 4),
                metric: "m".into(),
                ts_us: i as i64,
                value: i as f64,
                unit: None,
            }],
            ack: Some(PendingAck {
                ordinal: i as u64,
                generation: 0,
            }),
        }
    }

    #[test]
    fn seals_by_size_with_consecutive_sequence_numbers_and_all_acks() {
        let settings = BatchSettings {
            max_rows: 10,
            max_age: Duration::from_secs(60),
        };
        let mut b = Batcher::new("gw", 5, settings, 1000);
        let now = Instant::now();
        let mut sealed = Vec::new();
        for i in 0..25 {
            sealed.extend(b.push(item(i), now));
        }
        sealed.extend(b.seal());
        assert_eq!(
            sealed.iter().map(|s| s.header.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            sealed.iter().map(|s| s.acks.len()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let mut values = Vec::new();
        for s in &sealed {
            let decoded = envelope::decode(&s.bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(decoded.header.incarnation, 5);
            values.extend(
                readings_from_batch(&decoded.readings)
                    .into_iter()
                    .map(|r| r.value),
            );
        }
        assert_eq!(values, (0..25).map(|i| i as f64).collect::<Vec<_>>());
        assert!(b.seal().is_none(), "nothing left after the final seal");
    }

    #[test]
    fn seals_when_half_the_broker_window_of_acks_is_held() {
        let settings = BatchSettings {
            max_rows: 1000,
            max_age: Duration::from_secs(60),
        };
        let mut b = Batcher::new("gw", 1, settings, 10);
        let now = Instant::now();
        let sealed: Vec<SealedBatch> = (0..25).filter_map(|i| b.push(item(i), now)).collect();
        assert_eq!(
            sealed.iter().map(|s| s.acks.len()).collect::<Vec<_>>(),
            vec![10, 10]
        );
    }

    #[test]
    fn deadline_runs_from_the_first_reading_of_a_batch() {
        let settings = BatchSettings {
            max_rows: 100,
            max_age: Duration::from_millis(500),
        };
        let mut b = Batcher::new("gw", 1, settings, 1000);
        assert!(b.deadline().is_none());
        let t0 = Instant::now();
        b.push(item(0), t0);
        b.push(item(1), t0 + Duration::from_millis(300));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(500)));
        b.seal();
        assert!(b.deadline().is_none());
    }
}
