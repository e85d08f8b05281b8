//! A hub's answer read off the broker (anyone may publish one).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| schemas::fuzzing::batch_ack(data));
