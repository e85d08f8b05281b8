//! The bodies of this crate's fuzz targets (`schemas/fuzz`), here so that an
//! ordinary `cargo test` replays the committed corpora through exactly what
//! the fuzzer runs. Each takes untrusted bytes and must never panic; the
//! assertions are the properties the fuzzer checks besides.

use crate::ack::BatchAck;
use crate::envelope::{self, DecodeLimits, PREAMBLE_LEN};

/// A fuzz target: its name (the corpus directory) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Runs every committed corpus input of each target
/// (`<crate_dir>/fuzz/corpus/<name>/*`) through the target's body, as the
/// fuzzer would; panics on an empty or missing corpus.
pub fn replay_corpora(crate_dir: &str, targets: &[Target]) {
    let root = std::path::Path::new(crate_dir).join("fuzz/corpus");
    for (name, body) in targets {
        let files: Vec<_> = std::fs::read_dir(root.join(name))
            .unwrap_or_else(|e| panic!("corpus of {name}: {e}"))
            .map(|e| e.expect("a corpus entry").path())
            .collect();
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for f in files {
            match std::fs::read(&f) {
                Ok(bytes) => body(&bytes),
                // A fuzzer running alongside replaces corpus entries.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("corpus file {}: {e}", f.display()),
            }
        }
    }
}

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_envelope_bytes: 1 << 20,
        max_rows: 100_000,
        max_decoded_bytes: 64 << 20,
        ..DecodeLimits::default()
    }
}

/// Untrusted envelope bytes: a typed error or a consistent batch.
pub fn envelope_decode(data: &[u8]) {
    if let Ok(batch) = envelope::decode(data, &limits()) {
        assert_eq!(batch.readings.num_rows(), batch.header.row_count as usize);
    }
    let _ = envelope::peek_header(data, &limits());
    let _ = envelope::salvage_header(data);
    let _ = envelope::checksum_ok(data);
}

/// Like [`envelope_decode`], with the checksum fixed up first, so that
/// mutations reach the header parser and the Arrow pre-validation (a hostile
/// sender can compute a valid CRC too).
pub fn envelope_decode_resealed(data: &[u8]) {
    let mut bytes = data.to_vec();
    if bytes.len() >= PREAMBLE_LEN {
        let crc = crc32c::crc32c(&bytes[PREAMBLE_LEN..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    envelope_decode(&bytes);
}

/// A hub's answer as a gateway reads it off the broker (anyone can publish
/// one): parsed, then matched against an envelope.
pub fn batch_ack(data: &[u8]) {
    if let Ok(ack) = serde_json::from_slice::<BatchAck>(data) {
        let _ = ack.names(data);
        let _ = serde_json::to_vec(&ack).expect("an answer serialises");
    }
}

#[cfg(test)]
mod tests {
    /// Every committed corpus input, through its target's body.
    #[test]
    fn fuzz_corpora_replay() {
        super::replay_corpora(
            env!("CARGO_MANIFEST_DIR"),
            &[
                ("envelope_decode", super::envelope_decode),
                ("envelope_decode_resealed", super::envelope_decode_resealed),
                ("batch_ack", super::batch_ack),
            ],
        );
    }
}
