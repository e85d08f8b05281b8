//! Untrusted bytes through `edge_agent::fuzzing::senml_payload` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_agent::fuzzing::senml_payload(data));
