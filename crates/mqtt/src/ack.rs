//! Acknowledgements of received messages, released in arrival order.

use rumqttc::{AsyncClient, Publish, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// A received message awaiting acknowledgement: its place in the
/// [`OrderedAcker`]'s queue (not its payload, so held acknowledgements cost
/// a few bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    pub ordinal: u64,
    pub generation: u64,
}

/// Releases PUBACKs for received messages in the order the messages arrived.
///
/// Some brokers (rumqttd among them) drop a client that acknowledges out of
/// order, and batches settle out of order (retries, parallel HTTP requests),
/// so acknowledgements are queued here and sent only once every earlier
/// message is released too. A reconnect starts a new generation: the broker
/// redelivers what the old connection left unacknowledged, so the old entries
/// are forgotten instead of acknowledged with stale packet ids.
#[derive(Debug, Clone)]
pub struct OrderedAcker {
    client: AsyncClient,
    acks_sent: Arc<AtomicU64>,
    ack_failures: Arc<AtomicU64>,
    queue: Arc<Mutex<AckQueue>>,
}

#[derive(Debug, Default)]
struct AckQueue {
    generation: u64,
    /// Ordinal of the front entry.
    base: u64,
    entries: VecDeque<AckEntry>,
}

#[derive(Debug)]
struct AckEntry {
    pkid: u16,
    qos: QoS,
    released: bool,
}

impl OrderedAcker {
    /// `acks_sent` and `ack_failures` are counters owned by the caller's
    /// stats.
    pub fn new(
        client: &AsyncClient,
        acks_sent: Arc<AtomicU64>,
        ack_failures: Arc<AtomicU64>,
    ) -> Self {
        Self {
            client: client.clone(),
            acks_sent,
            ack_failures,
            queue: Arc::default(),
        }
    }

    /// Registers a received message; its acknowledgement waits for
    /// [`OrderedAcker::release`]. QoS 0 messages need none.
    pub fn register(&self, publish: &Publish) -> Option<PendingAck> {
        if publish.qos == QoS::AtMostOnce {
            return None;
        }
        let mut q = self.queue.lock().expect("ack queue lock");
        let ordinal = q.base + q.entries.len() as u64;
        q.entries.push_back(AckEntry {
            pkid: publish.pkid,
            qos: publish.qos,
            released: false,
        });
        Some(PendingAck {
            ordinal,
            generation: q.generation,
        })
    }

    /// Marks messages as safe and sends every acknowledgement that is now at
    /// the front of the queue.
    pub fn release(&self, acks: &[PendingAck]) {
        let mut q = self.queue.lock().expect("ack queue lock");
        let (generation, base) = (q.generation, q.base);
        for a in acks {
            if a.generation == generation
                && a.ordinal >= base
                && let Some(e) = q.entries.get_mut((a.ordinal - base) as usize)
            {
                e.released = true;
            }
        }
        while q.entries.front().is_some_and(|e| e.released) {
            let e = q.entries.pop_front().expect("front exists");
            q.base += 1;
            let mut p = Publish::new("", e.qos, Vec::<u8>::new());
            p.pkid = e.pkid;
            match self.client.try_ack(&p) {
                Ok(()) => {
                    self.acks_sent.fetch_add(1, Relaxed);
                }
                Err(err) => {
                    // Not data loss: the broker redelivers an unacknowledged
                    // message on the next session.
                    self.ack_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %err, pkid = e.pkid, "could not queue device ack");
                }
            }
        }
    }

    /// A new connection: forget what the old one left unacknowledged.
    pub fn new_generation(&self) {
        let mut q = self.queue.lock().expect("ack queue lock");
        q.generation += 1;
        q.base += q.entries.len() as u64;
        q.entries.clear();
    }

    /// Messages received and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.queue.lock().expect("ack queue lock").entries.len()
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::MqttOptions;

    use super::*;

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, Vec::<u8>::new());
        p.pkid = pkid;
        p
    }

    fn acker() -> (OrderedAcker, Arc<AtomicU64>, rumqttc::EventLoop) {
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 64);
        let sent = Arc::new(AtomicU64::new(0));
        (
            OrderedAcker::new(&client, Arc::clone(&sent), Arc::default()),
            sent,
            eventloop,
        )
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order() {
        let (acker, sent, _eventloop) = acker();
        let a: Vec<PendingAck> = (1..=3)
            .filter_map(|i| acker.register(&publish(i)))
            .collect();
        acker.release(&[a[2]]);
        acker.release(&[a[1]]);
        assert_eq!(
            sent.load(Relaxed),
            0,
            "nothing may pass the unreleased first message"
        );
        assert_eq!(acker.pending(), 3);
        acker.release(&[a[0]]);
        assert_eq!(sent.load(Relaxed), 3);
        assert_eq!(acker.pending(), 0);
    }

    #[test]
    fn a_reconnect_forgets_the_old_connections_messages() {
        let (acker, sent, _eventloop) = acker();
        let old = acker.register(&publish(1)).unwrap();
        acker.new_generation();
        let new = acker.register(&publish(1)).unwrap();
        acker.release(&[old]);
        assert_eq!(
            sent.load(Relaxed),
            0,
            "a stale packet id must not be acknowledged"
        );
        acker.release(&[new]);
        assert_eq!(sent.load(Relaxed), 1);
    }

    #[test]
    fn qos0_messages_need_no_acknowledgement() {
        let (acker, _, _eventloop) = acker();
        let p = Publish::new("t", QoS::AtMostOnce, Vec::<u8>::new());
        assert!(acker.register(&p).is_none());
    }
}
