//! Untrusted envelope bytes: decoding must return a typed error, never panic,
//! and never allocate beyond the configured limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| schemas::fuzzing::envelope_decode(data));
