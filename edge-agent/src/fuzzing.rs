//! The bodies of this crate's fuzz targets (`edge-agent/fuzz`), here so that
//! an ordinary `cargo test` replays the committed corpora through exactly
//! what the fuzzer runs. Each takes untrusted bytes and must never panic.

use crate::decode::{TopicTemplate, decode_json};
use crate::senml::decode_senml;
use crate::sparkplug::SparkplugState;
use iot_mqtt::routing::HubDirectory;

const NOW: i64 = 1_700_000_000_000_000;

/// A device's JSON payload: typed rejection or finite readings.
pub fn json_payload(data: &[u8]) {
    let template = TopicTemplate::parse("sensors/{device}/{metric}").expect("static template");
    if let Ok(decoded) = decode_json(&template, "sensors/dev/temp", data, NOW) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
}

/// A device's SenML pack: typed rejection or finite readings.
pub fn senml_payload(data: &[u8]) {
    let template = TopicTemplate::parse("senml/+").expect("static template");
    if let Ok(decoded) = decode_senml(&template, "senml/x", data, NOW) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
}

/// Sparkplug B payloads, a birth then data on one session: typed rejection
/// or finite readings, and rebirth requests that are well formed.
pub fn sparkplug_payload(data: &[u8]) {
    let mut state = SparkplugState::default();
    let half = data.len() / 2;
    let _ = state.decode("spBv1.0/g/DBIRTH/node/dev", &data[..half], NOW);
    if let Ok(decoded) = state.decode("spBv1.0/g/DDATA/node/dev", &data[half..], NOW) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
    let _ = state.decode("spBv1.0/g/NDEATH/node", data, NOW);
    for (topic, _) in state.take_commands() {
        assert_eq!(topic, "spBv1.0/g/NCMD/node");
    }
}

/// A message on the hub-membership topics (anyone on the broker may
/// publish one): the first byte picks the topic's hub id length.
pub fn hub_announcement(data: &[u8]) {
    let directory = HubDirectory::default();
    let (split, rest) = data
        .split_first()
        .map_or((0, data), |(n, r)| (*n as usize, r));
    let (hub, payload) = rest.split_at(split.min(rest.len()));
    let topic = format!("iot/hubs/{}", String::from_utf8_lossy(hub));
    directory.observe("iot", &topic, payload, false);
    directory.observe("iot", &topic, payload, true);
    let route = directory.route("iot", "gw-1");
    assert!(route.topic.starts_with("iot/"));
}

/// The spool's `deliveries` file, as a damaged disk may return it.
pub fn spool_deliveries(data: &[u8]) {
    if let Some(ranges) = crate::spool::decode_deliveries(data) {
        assert_eq!(ranges.len() * 16 + 4, data.len());
    }
}

#[cfg(test)]
mod tests {
    /// Every committed corpus input, through its target's body.
    #[test]
    fn fuzz_corpora_replay() {
        schemas::fuzzing::replay_corpora(
            env!("CARGO_MANIFEST_DIR"),
            &[
                ("json_payload", super::json_payload),
                ("senml_payload", super::senml_payload),
                ("sparkplug_payload", super::sparkplug_payload),
                ("hub_announcement", super::hub_announcement),
                ("spool_deliveries", super::spool_deliveries),
            ],
        );
    }
}
