//! Untrusted bytes through `edge_agent::fuzzing::json_payload` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_agent::fuzzing::json_payload(data));
