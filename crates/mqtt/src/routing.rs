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
//!
//! An announcement can outlive its hub: a broker that keeps retained
//! messages across a restart while the hub died during the outage, a hub
//! cut off from the broker before its keep-alive runs out, a hub that is
//! alive but no longer answers. So the agent also judges hubs by what they
//! do: a hub that has left batches unanswered for [`PASS_OVER_AFTER`] ack
//! timeouts in a row is passed over (its gateways go to the next hub by the
//! same hashing, or to the shared topic if none is left) until it announces
//! itself again live, the agent reconnects, or [`PASS_OVER_FOR`] has passed.
//!
//! Anyone on an open broker can publish on the membership topics, so an
//! announcement is believed only when it is what a hub sends: at most
//! [`MAX_ANNOUNCEMENT_BYTES`], `{"hub": "<id>"}` naming the hub of its topic,
//! an id a hub could have. Anything else is ignored and counted, and at most
//! [`MAX_HUBS`] hubs are tracked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ack timeouts in a row, with no answer from a hub in between, after which
/// the hub is passed over.
pub const PASS_OVER_AFTER: u32 = 2;
/// How long a silent hub is passed over, unless it re-announces itself first.
pub const PASS_OVER_FOR: Duration = Duration::from_secs(600);
/// Largest announcement believed.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 1024;
/// Hubs tracked at most; announcements of more are ignored.
pub const MAX_HUBS: usize = 256;

/// What the agent knows of one announced hub.
#[derive(Debug, Default)]
struct HubStanding {
    /// Ack timeouts of batches sent to it since its last answer (counted
    /// at most once per ack timeout), and when the last one counted.
    silent_timeouts: u32,
    last_counted: Option<Instant>,
    /// Passed over until then.
    passed_over_until: Option<Instant>,
}

impl HubStanding {
    fn passed_over(&self, now: Instant) -> bool {
        self.passed_over_until.is_some_and(|until| now < until)
    }
}

/// The hubs announced on the broker.
#[derive(Debug, Clone, Default)]
pub struct HubDirectory {
    hubs: Arc<Mutex<BTreeMap<String, HubStanding>>>,
    /// Membership messages ignored as malformed, or past [`MAX_HUBS`].
    ignored: Arc<std::sync::atomic::AtomicU64>,
}

/// Whether an announcement is what a hub sends for `hub` (see the module
/// docs).
fn is_announcement_of(hub: &str, payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Announcement<'a> {
        hub: &'a str,
    }
    let id_ok = hub.len() <= 64 && hub.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    id_ok
        && payload.len() <= MAX_ANNOUNCEMENT_BYTES
        && serde_json::from_slice::<Announcement<'_>>(payload).is_ok_and(|a| a.hub == hub)
}

/// Where one batch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub topic: String,
    /// The hub the topic addresses (`None`: the shared subscription).
    pub hub: Option<String>,
}

impl HubDirectory {
    /// The membership message on `topic` (`<prefix>/hubs/<hub-id>`): a
    /// non-empty payload announces the hub, an empty one (its will, or its
    /// goodbye) removes it. `retained` is the broker replaying a stored
    /// announcement (on subscribing) rather than the hub announcing itself
    /// now; only the latter ends a pass-over. Returns whether `topic` was a
    /// membership topic.
    pub fn observe(&self, prefix: &str, topic: &str, payload: &[u8], retained: bool) -> bool {
        let Some(hub) = topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix("/hubs/"))
            .filter(|h| !h.is_empty() && !h.contains('/'))
        else {
            return false;
        };
        let mut hubs = self.hubs.lock().expect("hub directory lock");
        if payload.is_empty() {
            if hubs.remove(hub).is_some() {
                tracing::info!(hub, "hub left; its gateways move to the others");
            }
            return true;
        }
        if !is_announcement_of(hub, payload) {
            self.ignored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                topic,
                bytes = payload.len(),
                "ignored a malformed hub announcement"
            );
            return true;
        }
        let full = hubs.len() >= MAX_HUBS;
        match hubs.get_mut(hub) {
            None if full => {
                self.ignored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(hub, "ignored a hub announcement past the hub limit");
            }
            None => {
                hubs.insert(hub.to_owned(), HubStanding::default());
                tracing::info!(hub, "hub announced");
            }
            Some(standing) if !retained => {
                if standing.passed_over_until.is_some() {
                    tracing::info!(hub, "a passed-over hub announced itself again");
                }
                *standing = HubStanding::default();
            }
            Some(_) => {}
        }
        true
    }

    /// Membership messages ignored so far (malformed, or past [`MAX_HUBS`]).
    pub fn ignored(&self) -> u64 {
        self.ignored.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets every hub (before re-subscribing: the broker re-sends the
    /// announcements that still stand).
    pub fn clear(&self) {
        self.hubs.lock().expect("hub directory lock").clear();
    }

    /// Where this gateway's next batch goes: its owner among the hubs not
    /// passed over, else the shared topic.
    pub fn route(&self, prefix: &str, gateway: &str) -> Route {
        let hubs = self.hubs.lock().expect("hub directory lock");
        let now = Instant::now();
        let eligible = hubs
            .iter()
            .filter(|(_, standing)| !standing.passed_over(now))
            .map(|(hub, _)| hub.as_str());
        match owner(gateway, eligible) {
            Some(hub) => Route {
                topic: direct_topic(prefix, hub, gateway),
                hub: Some(hub.to_owned()),
            },
            None => Route {
                topic: shared_topic(prefix, gateway),
                hub: None,
            },
        }
    }

    /// `hub` answered a batch: it is alive.
    pub fn answered(&self, hub: &str) {
        if let Some(standing) = self.hubs.lock().expect("hub directory lock").get_mut(hub) {
            *standing = HubStanding::default();
        }
    }

    /// A batch sent to `hub` went unanswered for an ack timeout. Several
    /// batches timing out together count once per `ack_timeout`, so a hub is
    /// passed over only after [`PASS_OVER_AFTER`] timeouts' worth of silence,
    /// however many batches were in flight. Returns whether this passed it
    /// over.
    pub fn unanswered(&self, hub: &str, ack_timeout: Duration) -> bool {
        let mut hubs = self.hubs.lock().expect("hub directory lock");
        let Some(standing) = hubs.get_mut(hub) else {
            return false;
        };
        let now = Instant::now();
        if standing.passed_over(now) {
            return false;
        }
        // A timer may fire a little early: three quarters of the timeout
        // tell the next round of timeouts from the same round.
        if standing
            .last_counted
            .is_some_and(|last| now.duration_since(last) < ack_timeout * 3 / 4)
        {
            return false;
        }
        standing.last_counted = Some(now);
        standing.silent_timeouts += 1;
        if standing.silent_timeouts < PASS_OVER_AFTER {
            return false;
        }
        standing.silent_timeouts = 0;
        standing.last_counted = None;
        standing.passed_over_until = Some(now + PASS_OVER_FOR);
        tracing::warn!(
            hub,
            silent_for = ?ack_timeout * PASS_OVER_AFTER,
            passed_over_for = ?PASS_OVER_FOR,
            "the gateway's hub answers nothing although announced; its batches go elsewhere"
        );
        true
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

    fn announcement(hub: &str) -> Vec<u8> {
        format!("{{\"hub\":\"{hub}\"}}").into_bytes()
    }

    #[test]
    fn malformed_or_excess_announcements_are_ignored_and_counted() {
        let d = HubDirectory::default();
        let big = format!("{{\"hub\":\"hub_a\",\"pad\":\"{}\"}}", "x".repeat(100_000));
        for (topic, payload) in [
            ("iot/hubs/hub_a", big.as_bytes()),
            ("iot/hubs/hub_a", b"x".as_slice()),
            ("iot/hubs/hub_a", b"{\"hub\":\"hub_b\"}".as_slice()),
            ("iot/hubs/hub a", b"{\"hub\":\"hub a\"}".as_slice()),
        ] {
            assert!(d.observe_live("iot", topic, payload));
        }
        assert_eq!(d.ignored(), 4);
        assert_eq!(d.route("iot", "gw1").hub, None, "no hub was believed");
        for i in 0..MAX_HUBS + 10 {
            let hub = format!("hub_{i}");
            d.observe_live("iot", &format!("iot/hubs/{hub}"), &announcement(&hub));
        }
        assert_eq!(d.hubs.lock().unwrap().len(), MAX_HUBS);
        assert_eq!(d.ignored(), 14);
    }

    impl HubDirectory {
        fn observe_live(&self, prefix: &str, topic: &str, payload: &[u8]) -> bool {
            self.observe(prefix, topic, payload, false)
        }
    }

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
        assert_eq!(d.route("iot", "gw1").topic, "iot/batches/gw1");
        assert!(d.observe_live("iot", "iot/hubs/hub_a", b"{\"hub\":\"hub_a\"}"));
        assert!(!d.observe_live("iot", "iot/acks/gw1", b"{}"));
        assert!(!d.observe_live("iot", "other/hubs/hub_x", b"x"));
        assert_eq!(d.route("iot", "gw1").topic, "iot/hub/hub_a/batches/gw1");
        assert!(d.observe_live("iot", "iot/hubs/hub_b", &announcement("hub_b")));
        let owner_of_gw1 = owner("gw1", ["hub_a", "hub_b"]).unwrap();
        assert_eq!(
            d.route("iot", "gw1").topic,
            format!("iot/hub/{owner_of_gw1}/batches/gw1")
        );
        // The owner's will: its gateways go to the hub that is left.
        d.observe_live("iot", &format!("iot/hubs/{owner_of_gw1}"), b"");
        let left = if owner_of_gw1 == "hub_a" {
            "hub_b"
        } else {
            "hub_a"
        };
        assert_eq!(
            d.route("iot", "gw1").topic,
            format!("iot/hub/{left}/batches/gw1")
        );
        d.observe_live("iot", &format!("iot/hubs/{left}"), b"");
        assert_eq!(d.route("iot", "gw1").topic, "iot/batches/gw1");
    }

    #[test]
    fn a_hub_that_leaves_batches_unanswered_is_passed_over_until_it_announces_itself_live() {
        let timeout = Duration::from_millis(40);
        let d = HubDirectory::default();
        d.observe("iot", "iot/hubs/hub_a", &announcement("hub_a"), true);
        d.observe("iot", "iot/hubs/hub_b", &announcement("hub_b"), true);
        let own = owner("gw1", ["hub_a", "hub_b"]).unwrap();
        let other = if own == "hub_a" { "hub_b" } else { "hub_a" };
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(own));
        // A whole round of batches timing out together is one timeout.
        for _ in 0..8 {
            assert!(!d.unanswered(own, timeout));
        }
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(own));
        // An answer in between starts the count over.
        std::thread::sleep(timeout);
        d.answered(own);
        assert!(!d.unanswered(own, timeout));
        std::thread::sleep(timeout);
        assert!(
            d.unanswered(own, timeout),
            "the second silent timeout passes it over"
        );
        assert_eq!(
            d.route("iot", "gw1"),
            Route {
                topic: format!("iot/hub/{other}/batches/gw1"),
                hub: Some(other.to_owned())
            }
        );
        // The broker replaying its retained announcement changes nothing...
        d.observe("iot", &format!("iot/hubs/{own}"), &announcement(own), true);
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(other));
        // ...the hub announcing itself now does.
        d.observe("iot", &format!("iot/hubs/{own}"), &announcement(own), false);
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(own));
        // Passed over again; once the verdict has run out, it is back.
        std::thread::sleep(timeout);
        assert!(!d.unanswered(own, timeout));
        std::thread::sleep(timeout);
        assert!(d.unanswered(own, timeout));
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(other));
        d.hubs
            .lock()
            .unwrap()
            .get_mut(own)
            .unwrap()
            .passed_over_until = Some(Instant::now());
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some(own));
    }

    #[test]
    fn with_every_hub_passed_over_batches_go_to_the_shared_topic() {
        let timeout = Duration::from_millis(20);
        let d = HubDirectory::default();
        d.observe("iot", "iot/hubs/ghost", &announcement("ghost"), true);
        assert!(!d.unanswered("ghost", timeout));
        std::thread::sleep(timeout);
        assert!(d.unanswered("ghost", timeout));
        assert_eq!(
            d.route("iot", "gw1"),
            Route {
                topic: "iot/batches/gw1".into(),
                hub: None
            }
        );
        // Reconnecting forgets the verdict along with the hubs.
        d.clear();
        d.observe("iot", "iot/hubs/ghost", &announcement("ghost"), true);
        assert_eq!(d.route("iot", "gw1").hub.as_deref(), Some("ghost"));
    }
}
