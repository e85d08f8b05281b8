//! A spool segment as a damaged disk may return it: open, repair, read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| seglog::fuzzing::spool_record(data));
