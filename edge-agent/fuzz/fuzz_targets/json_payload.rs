//! Untrusted JSON device payloads: typed rejection, never a panic.
#![no_main]

use edge_agent::decode::{TopicTemplate, decode_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let template = TopicTemplate::parse("sensors/{device}/{metric}").expect("static template");
    if let Ok(decoded) = decode_json(&template, "sensors/dev/temp", data, 1_700_000_000_000_000) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
});
