//! Untrusted bytes through `inference_hub::fuzzing::dedup_snapshot` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inference_hub::fuzzing::dedup_snapshot(data));
