//! Untrusted bytes through `inference_hub::fuzzing::parquet_footer` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inference_hub::fuzzing::parquet_footer(data));
