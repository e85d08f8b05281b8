//! Which hub takes this gateway's batches over MQTT ("sticky" routing).
//!
//! A hub's anomaly scores depend on the history it keeps per series: if a
//! shared subscription spread one gateway's batches over several hubs, each
//! would see only part of every series and score gaps. So hubs announce
//! themselves with a retained message on `<prefix>/hubs/<hub-id>` (cleared by
//! their MQTT will when they die, and by themselves when they stop), and the
//! gateway sends every batch to one of them, on `<prefix>/hub/<hub-id>/
//! batches/<gateway>`: the owner by rendezvous hashing of the gateway over
//! the announced hubs. While the set of hubs stands still, all of a
//! gateway's batches reach the same hub, in the order they were sent (one
//! publisher, one topic). When the owner goes away its gateways spread over
//! the others, and only those move (a batch in flight to it gets no answer
//! and is resent to the new owner, which is what the uplink does anyway).
//!
//! With no hub announced (older hubs, or none connected yet) batches go to the
//! shared topic `<prefix>/batches/<gateway>` as before.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The hubs announced on the broker.
#[derive(Debug, Clone, Default)]
pub struct HubDirectory(Arc<Mutex<BTreeSet<String>>>);

impl HubDirectory {
    /// The membership message on `topic` (`<prefix>/hubs/<hub-id>`): a
    /// non-empty payload announces the hub, an empty one (its will, or its
    /// goodbye) removes it. Returns whether `topic` was a membership topic.
    pub fn observe(&self, prefix: &str, topic: &str, payload: &[u8]) -> bool {
        let Some(hub) = topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix("/hubs/"))
            .filter(|h| !h.is_empty() && !h.contains('/'))
        else {
            return false;
        };
        let mut hubs = self.0.lock().expect("hub directory lock");
        if payload.is_empty() {
            if hubs.remove(hub) {
                tracing::info!(hub, "hub left; its gateways move to the others");
            }
        } else if hubs.insert(hub.to_owned()) {
            tracing::info!(hub, "hub announced");
        }
        true
    }

    /// Forgets every hub (before re-subscribing: the broker re-sends the
    /// announcements that still stand).
    pub fn clear(&self) {
        self.0.lock().expect("hub directory lock").clear();
    }

    /// The topic for this gateway's next batch.
    pub fn batch_topic(&self, prefix: &str, gateway: &str) -> String {
        let hubs = self.0.lock().expect("hub directory lock");
        match owner(gateway, hubs.iter().map(String::as_str)) {
            Some(hub) => direct_topic(prefix, hub, gateway),
            None => shared_topic(prefix, gateway),
        }
    }
}

/// A batch for whichever hub of the shared subscription takes it.
pub fn shared_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/batches/{gateway}")
}

/// Filter of the membership messages.
pub fn membership_filter(prefix: &str) -> String {
    format!("{prefix}/hubs/+")
}

/// Where a hub announces itself.
pub fn membership_topic(prefix: &str, hub: &str) -> String {
    format!("{prefix}/hubs/{hub}")
}

/// A batch sent to one hub.
pub fn direct_topic(prefix: &str, hub: &str, gateway: &str) -> String {
    format!("{prefix}/hub/{hub}/batches/{gateway}")
}

/// What a hub subscribes to for the batches sent to it.
pub fn direct_filter(prefix: &str, hub: &str) -> String {
    format!("{prefix}/hub/{hub}/batches/+")
}

/// The hub that owns `gateway` among `hubs`: the one with the highest
/// hash of (hub, gateway) (rendezvous hashing). Removing a hub moves only
/// its own gateways; the hash is FNV-1a, fixed, so the choice does not
/// change with the agent's version or platform.
pub fn owner<'a>(gateway: &str, hubs: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    hubs.into_iter()
        .max_by_key(|hub| (weight(hub, gateway), *hub))
}

fn weight(hub: &str, gateway: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hub.bytes().chain([0]).chain(gateway.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV mixes its last bytes poorly: finish with a 64-bit avalanche.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners<'a>(hubs: &[&'a str], gateways: &[String]) -> Vec<&'a str> {
        gateways
            .iter()
            .map(|g| owner(g, hubs.iter().copied()).unwrap())
            .collect()
    }

    #[test]
    fn gateways_spread_over_hubs_and_only_a_leaving_hubs_gateways_move() {
        let gateways: Vec<String> = (0..3000).map(|i| format!("gw-{i}")).collect();
        let three = owners(&["hub_a", "hub_b", "hub_c"], &gateways);
        for hub in ["hub_a", "hub_b", "hub_c"] {
            let n = three.iter().filter(|&&o| o == hub).count();
            assert!((800..1200).contains(&n), "{hub} owns {n} of 3000");
        }
        let two = owners(&["hub_a", "hub_c"], &gateways);
        for (before, after) in three.iter().zip(&two) {
            if *before != "hub_b" {
                assert_eq!(before, after, "a gateway of a hub that stayed moved");
            }
        }
        // The order hubs are listed in does not matter.
        assert_eq!(owners(&["hub_c", "hub_a"], &gateways), two);
    }

    #[test]
    fn the_directory_follows_announcements_and_wills() {
        let d = HubDirectory::default();
        assert_eq!(d.batch_topic("iot", "gw1"), "iot/batches/gw1");
        assert!(d.observe("iot", "iot/hubs/hub_a", b"{\"hub\":\"hub_a\"}"));
        assert!(!d.observe("iot", "iot/acks/gw1", b"{}"));
        assert!(!d.observe("iot", "other/hubs/hub_x", b"x"));
        assert_eq!(d.batch_topic("iot", "gw1"), "iot/hub/hub_a/batches/gw1");
        assert!(d.observe("iot", "iot/hubs/hub_b", b"x"));
        let owner_of_gw1 = owner("gw1", ["hub_a", "hub_b"]).unwrap();
        assert_eq!(
            d.batch_topic("iot", "gw1"),
            format!("iot/hub/{owner_of_gw1}/batches/gw1")
        );
        // The owner's will: its gateways go to the hub that is left.
        d.observe("iot", &format!("iot/hubs/{owner_of_gw1}"), b"");
        let left = if owner_of_gw1 == "hub_a" {
            "hub_b"
        } else {
            "hub_a"
        };
        assert_eq!(
            d.batch_topic("iot", "gw1"),
            format!("iot/hub/{left}/batches/gw1")
        );
        d.observe("iot", &format!("iot/hubs/{left}"), b"");
        assert_eq!(d.batch_topic("iot", "gw1"), "iot/batches/gw1");
    }
}
