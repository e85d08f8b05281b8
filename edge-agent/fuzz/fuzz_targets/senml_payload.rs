//! Untrusted SenML packs: typed rejection, never a panic.
#![no_main]

use edge_agent::decode::TopicTemplate;
use edge_agent::senml::decode_senml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let template = TopicTemplate::parse("senml/+").expect("static template");
    if let Ok(decoded) = decode_senml(&template, "senml/x", data, 1_700_000_000_000_000) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
});
