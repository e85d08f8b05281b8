//! Like `envelope_decode`, but the checksum is recomputed first, so mutations
//! reach the header parser and the Arrow IPC pre-validation instead of being
//! stopped by the CRC (a hostile sender can compute a valid CRC too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::envelope::{self, DecodeLimits, PREAMBLE_LEN};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= PREAMBLE_LEN {
        let crc = crc32c::crc32c(&bytes[PREAMBLE_LEN..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let limits = DecodeLimits {
        max_envelope_bytes: 1 << 20,
        max_rows: 100_000,
        max_decoded_bytes: 64 << 20,
    };
    if let Ok(batch) = envelope::decode(&bytes, &limits) {
        assert_eq!(batch.readings.num_rows(), batch.header.row_count as usize);
    }
});
