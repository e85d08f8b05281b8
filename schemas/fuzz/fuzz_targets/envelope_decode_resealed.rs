//! Like `envelope_decode`, but the checksum is recomputed first, so mutations
//! reach the header parser and the Arrow IPC pre-validation instead of being
//! stopped by the CRC (a hostile sender can compute a valid CRC too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| schemas::fuzzing::envelope_decode_resealed(data));
