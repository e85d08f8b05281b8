//! Untrusted envelope bytes: decoding must return a typed error, never panic,
//! and never allocate beyond the configured limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::envelope::{self, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_envelope_bytes: 1 << 20,
        max_rows: 100_000,
        max_decoded_bytes: 64 << 20,
    };
    if let Ok(batch) = envelope::decode(data, &limits) {
        assert_eq!(batch.readings.num_rows(), batch.header.row_count as usize);
    }
    let _ = envelope::peek_header(data, &limits);
});
